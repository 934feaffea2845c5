"""rnnscan._kalman.damped_linear_recurrence (the ELK / Levenberg–Marquardt step) against a
dense solve of the normal equations and a sequential Kalman filter + RTS smoother."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnnscan._kalman import damped_linear_recurrence, linearised_residual
from rnnscan._linear_recurrence import linear_recurrence
from rnnscan._structure import BlockDiagonal, Dense, Diagonal

# (structure, n): n a multiple of the block size, and Diagonal's n odd so that a layout
# mix-up cannot pass by luck.
STRUCTURES = [(Dense(), 4), (Diagonal(), 5), (BlockDiagonal(2), 6), (BlockDiagonal(3), 6)]
STRUCTURE_IDS = ["dense", "diagonal", "block2", "block3"]
DAMPINGS = [0.0, 1e-3, 1.0, 1e3]
LENGTHS = [1, 2, 7, 64]
RADII = {"stable": 0.8, "unstable": 1.1}
RTOL = {jnp.float64: 1e-9, jnp.float32: 1e-4}
# float32 runs at T = 64 only, and BlockDiagonal(2) differs from BlockDiagonal(3) only in k.
F32_STRUCTURES = [STRUCTURES[i] for i in (0, 1, 3)]
F32_IDS = [STRUCTURE_IDS[i] for i in (0, 1, 3)]

# Compiling the scans dominates this file's run time. Damping is always passed as an array of
# the problem's dtype, so one compilation per (structure, shape, dtype) serves every damping,
# and LLVM's optimisation level 0 halves the compile time (it does not change floating-point
# semantics; test_default_compile_options checks the default).
_FAST_COMPILE = {"xla_backend_optimization_level": 0}
_jit_solve = jax.jit(
    damped_linear_recurrence,
    static_argnames=("structure", "update"),
    compiler_options=_FAST_COMPILE,
)
_jit_linear = jax.jit(
    linear_recurrence, static_argnames="structure", compiler_options=_FAST_COMPILE
)


def _solve(J, r, damping, structure, update="smoother"):
    return _jit_solve(J, r, jnp.asarray(damping, r.dtype), structure=structure, update=update)


def _dense(J, structure, n):
    """Expand stored Jacobians (T, ...) to full (T, n, n) numpy matrices."""
    J = np.asarray(J)
    T = J.shape[0]
    if isinstance(structure, Dense):
        return J.copy()
    out = np.zeros((T, n, n), J.dtype)
    if isinstance(structure, Diagonal):
        out[:, np.arange(n), np.arange(n)] = J
        return out
    k = structure.block_size
    m = n // k
    # Flat entry a * m + i is row a of unit i in the (k, m) view; block i couples [:, i].
    for i in range(m):
        idx = np.arange(k) * m + i
        out[:, idx[:, None], idx[None, :]] = J[:, i]
    return out


def _problem(seed, structure, n, T, radius, dtype=jnp.float64):
    """Random J in the structure's layout, every J_t of spectral radius ``radius``, and r."""
    # numpy's generator: jax.random would compile a kernel for every one of the many shapes.
    rng = np.random.default_rng(seed)
    if isinstance(structure, Dense):
        shape = (T, n, n)
    elif isinstance(structure, Diagonal):
        shape = (T, n)
    else:
        k = structure.block_size
        shape = (T, n // k, k, k)
    J = rng.standard_normal(shape)
    rho = np.abs(np.linalg.eigvals(_dense(J, structure, n))).max(axis=-1)
    J = J * (radius / rho).reshape((T,) + (1,) * (J.ndim - 1))
    r = rng.standard_normal((T, n))
    return jnp.asarray(J, dtype), jnp.asarray(r, dtype)


def _bidiagonal(Jd):
    """The (T n x T n) operator (L delta)_t = delta_t - J_t delta_{t-1}."""
    T, n, _ = Jd.shape
    L = np.eye(T * n)
    for t in range(1, T):
        L[t * n : (t + 1) * n, (t - 1) * n : t * n] = -Jd[t]
    return L


def _normal_equations(J, r, damping, structure):
    """Direct dense solve of (L^T L + damping I) delta = L^T r, in float64."""
    r = np.asarray(r, np.float64)
    T, n = r.shape
    L = _bidiagonal(_dense(J, structure, n).astype(np.float64))
    lhs = L.T @ L + damping * np.eye(T * n)
    return np.linalg.solve(lhs, L.T @ r.reshape(-1)).reshape(T, n)


def _transpose_apply(J, v, structure):
    """(L^T v)_t = v_t - J_{t+1}^T v_{t+1}, in the structure's layout."""
    later = structure.matvec(structure.transpose(J[1:]), v[1:])
    return v - jnp.concatenate([later, jnp.zeros_like(v[:1])])


def _sequential_kalman(Jd, r, damping, update="smoother"):
    """Sequential Kalman filter (covariance form) + RTS smoother on full matrices, in numpy;
    ``update="filter"``: the filtered means."""
    T, n = r.shape
    eye = np.eye(n)
    ms, Ps = np.zeros((T, n)), np.zeros((T, n, n))
    m, P = np.zeros(n), np.zeros((n, n))
    for t in range(T):
        m_pred = Jd[t] @ m + r[t]
        P_pred = Jd[t] @ P @ Jd[t].T + eye
        # Observing 0 = delta_t + v_t with precision `damping`: the gain K = damping P_pred G
        # and I - K = G, with G = (I + damping P_pred)^{-1}.
        G = np.linalg.inv(eye + damping * P_pred)
        m, P = G @ m_pred, G @ P_pred
        P = 0.5 * (P + P.T)
        ms[t], Ps[t] = m, P
    if update == "filter":
        return ms
    delta = ms.copy()
    for t in reversed(range(T - 1)):
        E = Ps[t] @ Jd[t + 1].T @ np.linalg.inv(Jd[t + 1] @ Ps[t] @ Jd[t + 1].T + eye)
        delta[t] = ms[t] + E @ (delta[t + 1] - Jd[t + 1] @ ms[t] - r[t + 1])
    return delta


def _assert_close(actual, expected, rtol):
    """Finite, and close elementwise relative to the largest entry (entries span decades)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert np.all(np.isfinite(actual))
    scale = max(float(np.abs(expected).max()), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


parametrize_structures = pytest.mark.parametrize("structure, n", STRUCTURES, ids=STRUCTURE_IDS)
parametrize_f32_structures = pytest.mark.parametrize("structure, n", F32_STRUCTURES, ids=F32_IDS)


@parametrize_structures
def test_dense_expansion_matches_matvec(structure, n):
    J, r = _problem(0, structure, n, 3, 0.9)
    expected = np.einsum("tij,tj->ti", _dense(J, structure, n), np.asarray(r))
    np.testing.assert_allclose(structure.matvec(J, r), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("radius", RADII.values(), ids=RADII.keys())
@pytest.mark.parametrize("damping", DAMPINGS)
@pytest.mark.parametrize("T", LENGTHS)
@parametrize_structures
def test_matches_normal_equations_float64(structure, n, T, damping, radius):
    J, r = _problem(T, structure, n, T, radius)
    delta = _solve(J, r, damping, structure)
    _assert_close(delta, _normal_equations(J, r, damping, structure), RTOL[jnp.float64])


@pytest.mark.parametrize("damping", DAMPINGS)
@pytest.mark.parametrize("T", LENGTHS)
@parametrize_structures
def test_matches_sequential_kalman_float64(structure, n, T, damping):
    J, r = _problem(T + 100, structure, n, T, RADII["unstable"])
    delta = _solve(J, r, damping, structure)
    expected = _sequential_kalman(_dense(J, structure, n), np.asarray(r), damping)
    _assert_close(delta, expected, RTOL[jnp.float64])


@pytest.mark.parametrize("radius", RADII.values(), ids=RADII.keys())
@pytest.mark.parametrize("damping", DAMPINGS)
@parametrize_f32_structures
def test_matches_normal_equations_float32(structure, n, damping, radius):
    J, r = _problem(200, structure, n, 64, radius, jnp.float32)
    delta = _solve(J, r, damping, structure)
    assert delta.dtype == jnp.float32
    # The reference solves the float32 problem exactly, in float64.
    _assert_close(delta, _normal_equations(J, r, damping, structure), RTOL[jnp.float32])


@pytest.mark.parametrize("T", LENGTHS)
@parametrize_structures
def test_zero_damping_is_newton_step(structure, n, T):
    J, r = _problem(T + 300, structure, n, T, 1.2)
    _assert_close(_solve(J, r, 0.0, structure), _jit_linear(J, r, structure=structure), 1e-12)


@parametrize_f32_structures
def test_float32_unstable_zero_and_small_damping(structure, n):
    # 1.3^64 ~ 2e7: the filtered covariances reach ~1e14, far beyond float32's resolution of
    # their unit part. The RTS-form smoother gain turns singular (NaN) here.
    J, r = _problem(350, structure, n, 64, 1.3, jnp.float32)
    newton = _jit_linear(J, r, structure=structure)
    _assert_close(_solve(J, r, 0.0, structure), newton, 1e-5)
    for damping in [1e-12, 1e-8, 1e-6, 1e-3]:
        delta = _solve(J, r, damping, structure)
        assert np.all(np.isfinite(delta)), damping
        # Never longer than the Newton step (the damped step's norm shrinks with damping).
        assert float(jnp.linalg.norm(delta)) <= 1.0001 * float(jnp.linalg.norm(newton))


@pytest.mark.parametrize(
    "structure, n, dtype",
    [(*s, jnp.float64) for s in STRUCTURES] + [(*s, jnp.float32) for s in F32_STRUCTURES],
    ids=[f"{i}-float64" for i in STRUCTURE_IDS] + [f"{i}-float32" for i in F32_IDS],
)
def test_large_damping_is_short_gradient_step(structure, n, dtype):
    J, r = _problem(400, structure, n, 64, 1.2, dtype)
    LTr = _transpose_apply(J, r, structure)
    for damping in [1e6, 1e12]:
        _assert_close(damping * _solve(J, r, damping, structure), LTr, 1e-4)
    delta = _solve(J, r, 1e30, structure)
    assert np.all(np.isfinite(delta)) and float(jnp.abs(delta).max()) < 1e-28


@pytest.mark.parametrize("damping", DAMPINGS)
@pytest.mark.parametrize("T", [1, 7, 64])
@parametrize_structures
def test_filter_update_matches_sequential_filter_float64(structure, n, T, damping):
    """update="filter": the filtered means, each from the residuals up to its own step."""
    J, r = _problem(T + 1000, structure, n, T, RADII["unstable"])
    delta = _solve(J, r, damping, structure, "filter")
    expected = _sequential_kalman(_dense(J, structure, n), np.asarray(r), damping, "filter")
    _assert_close(delta, expected, RTOL[jnp.float64])
    # Causal: zero residuals up to t give a zero step up to t (a converged prefix stays).
    r0 = r.at[: T // 2].set(0)
    assert float(jnp.abs(_solve(J, r0, damping, structure, "filter")[: T // 2]).max(initial=0)) == 0


@parametrize_f32_structures
def test_filter_update_float32(structure, n):
    J, r = _problem(1100, structure, n, 64, RADII["unstable"], jnp.float32)
    for damping in [0.0, 1e-6, 1e-2]:
        delta = _solve(J, r, damping, structure, "filter")
        assert delta.dtype == jnp.float32
        expected = _sequential_kalman(
            _dense(J, structure, n).astype(np.float64), np.asarray(r, np.float64), damping, "filter"
        )
        _assert_close(delta, expected, RTOL[jnp.float32])


@parametrize_structures
def test_step_shrinks_with_damping(structure, n):
    J, r = _problem(500, structure, n, 64, RADII["unstable"])
    dampings = [0.0, 1e-3, 1e-1, 1.0, 10.0, 1e3]
    norms = [float(jnp.linalg.norm(_solve(J, r, d, structure))) for d in dampings]
    assert all(a > b for a, b in zip(norms, norms[1:])), norms


@parametrize_structures
def test_vmap_with_per_problem_and_shared_damping(structure, n):
    T = 2
    problems = [_problem(600 + i, structure, n, T, RADII["unstable"]) for i in range(4)]
    J = jnp.stack([p[0] for p in problems])
    r = jnp.stack([p[1] for p in problems])
    solve = functools.partial(damped_linear_recurrence, structure=structure)

    @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
    def both(J, r, dampings, shared_damping):
        return jax.vmap(solve)(J, r, dampings), jax.vmap(solve, (0, 0, None))(J, r, shared_damping)

    per_problem, shared = both(J, r, jnp.array(DAMPINGS), jnp.asarray(1.0))
    for i, (Ji, ri) in enumerate(problems):
        _assert_close(per_problem[i], _normal_equations(Ji, ri, DAMPINGS[i], structure), 1e-9)
        _assert_close(shared[i], _normal_equations(Ji, ri, 1.0, structure), 1e-9)


@parametrize_structures
def test_default_compile_options(structure, n):
    J, r = _problem(650, structure, n, 2, RADII["unstable"])
    jitted = jax.jit(damped_linear_recurrence, static_argnames="structure")
    delta = jitted(J, r, jnp.asarray(0.5), structure=structure)
    _assert_close(delta, _normal_equations(J, r, 0.5, structure), 1e-9)


@parametrize_structures
def test_linearised_residual_and_optimality(structure, n):
    T, damping = 7, 0.3
    J, r = _problem(800, structure, n, T, RADII["unstable"])
    delta = _solve(J, r, damping, structure)
    residual = linearised_residual(J, r, delta, structure)
    L = _bidiagonal(_dense(J, structure, n))
    expected = np.asarray(r).reshape(-1) - L @ np.asarray(delta).reshape(-1)
    _assert_close(residual, expected.reshape(T, n), 1e-12)
    # Stationarity of the objective: L^T (r - L delta) = damping * delta.
    _assert_close(_transpose_apply(J, residual, structure), damping * delta, 1e-9)


def test_eager_with_python_scalar_damping_keeps_dtype():
    J, r = _problem(900, Diagonal(), 5, 2, 0.9, jnp.float32)
    delta = damped_linear_recurrence(J, r, 1, Diagonal())
    assert delta.dtype == jnp.float32
    _assert_close(delta, _normal_equations(J, r, 1.0, Diagonal()), 1e-5)


def test_bad_structure_raises():
    J, r = _problem(0, Diagonal(), 5, 3, 0.9)
    with pytest.raises(TypeError, match="unsupported structure"):
        damped_linear_recurrence(J, r, 1.0, object())
    J, r = _problem(0, BlockDiagonal(3), 6, 3, 0.9)
    with pytest.raises(ValueError, match="not a multiple"):
        damped_linear_recurrence(J, r[:, :4], 1.0, BlockDiagonal(3))


def test_elk_update_option_is_checked():
    import rnnscan

    assert rnnscan.ELK().update == "filter" and rnnscan.QuasiELK().update == "filter"
    assert rnnscan.ELK(update="smoother").update == "smoother"
    with pytest.raises(ValueError, match="update must be one of"):
        rnnscan.ELK(update="smoothed")
