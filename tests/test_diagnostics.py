"""rnnscan.diagnostics: Lyapunov exponents against closed forms and a plain QR loop, and the
parallelizability report."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import rnnscan
from rnnscan import diagnostics

# Jitted entry points: eager calls would trace the trajectory anew every time. With
# eqx.filter_jit the arrays (also those inside a step function that is an eqx.Module, like
# _TanhRNN) are traced and everything else is static, so calls with the same shapes share one
# compiled program whatever the weights are.
lyapunov_exponents = eqx.filter_jit(diagnostics.lyapunov_exponents)
finite_time_lyapunov_exponents = eqx.filter_jit(diagnostics.finite_time_lyapunov_exponents)
parallelizability = eqx.filter_jit(diagnostics.parallelizability)
solve = eqx.filter_jit(rnnscan.solve)


def _rotation(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def _linear(A):
    A = jnp.asarray(A)

    def f(h, x):
        h = A @ h + x
        return h, h

    return f


def _normal(seed, shape):
    """Random data by numpy: eager jax.random calls would compile a sampler for every shape."""
    return np.random.default_rng(seed).standard_normal(shape)


def _inputs(T, n, seed=0, scale=0.1):
    return scale * _normal(seed, (T, n))


@eqx.filter_jit
def _reference_jacobians(f, init, xs):
    """The flat carries before every step and dF/dc there, by jax.lax.scan and jax.jacfwd."""
    flat0, unravel = ravel_pytree(init)

    def F(c, x):
        return ravel_pytree(f(unravel(c), x)[0])[0]

    carries = jax.lax.scan(lambda c, x: (F(c, x),) * 2, flat0, xs)[1]
    c_prev = jnp.concatenate([flat0[None], carries[:-1]])
    return jax.vmap(jax.jacfwd(F))(c_prev, xs)


def reference_exponents(f, init, xs, k):
    """The plain QR loop: trajectory and Jacobians by jax (jax.lax.scan, jax.jacfwd), QR by
    numpy in float64, random orthonormal start."""
    J = np.asarray(_reference_jacobians(f, init, xs), np.float64)
    Q = np.linalg.qr(np.random.default_rng(1).standard_normal((J.shape[-1], k)))[0]
    total = np.zeros(k)
    for Jt in J:
        Q, R = np.linalg.qr(Jt @ Q)
        total += np.log(np.abs(np.diag(R)))
    return np.sort(total / len(J))[::-1]


def _close(actual, expected, rel=0.05, abs_=0.01):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=rel, atol=abs_)


# --- closed forms ------------------------------------------------------------------------


@pytest.mark.parametrize("jacobian", [rnnscan.Dense(), rnnscan.Diagonal()])
def test_diagonal_linear_recurrence(jacobian):
    a = np.array([0.3, -0.9, 0.5, 1.1])
    f = _linear(np.diag(a))
    xs = _inputs(400, 4)
    got = lyapunov_exponents(f, np.ones(4), xs, k=4, jacobian=jacobian, transient=20)
    expected = np.sort(np.log(np.abs(a)))[::-1]
    np.testing.assert_allclose(
        np.asarray(got), expected, atol=5e-3 if isinstance(jacobian, rnnscan.Dense) else 1e-12
    )
    top2 = lyapunov_exponents(f, np.ones(4), xs, k=2, jacobian=jacobian, transient=20)
    np.testing.assert_allclose(np.asarray(top2), expected[:2], atol=5e-3)


def test_rotation_times_scaling_in_blocks_with_pytree_carry():
    # Carry (u, v): unit i is the 2-vector (u_i, v_i), rotated by theta_i and scaled by rho_i:
    # both exponents of unit i are log(rho_i). The strided layout is BlockDiagonal(2)'s.
    rho = np.array([0.95, 0.5, 1.2])
    theta = np.array([0.3, 1.1, 2.0])

    def f(carry, x):
        u, v = carry
        c, s = jnp.cos(theta), jnp.sin(theta)
        u, v = rho * (c * u - s * v) + x, rho * (s * u + c * v)
        return (u, v), u

    init = (np.ones(3), np.zeros(3))
    xs = _inputs(300, 3)
    expected = np.sort(np.repeat(np.log(rho), 2))[::-1]
    for jacobian in (rnnscan.Dense(), rnnscan.BlockDiagonal(2)):
        got = lyapunov_exponents(f, init, xs, k=6, jacobian=jacobian, transient=10)
        np.testing.assert_allclose(np.asarray(got), expected, atol=2e-3)


def test_block_triangular():
    # Constant A: the exponents are the log moduli of the eigenvalues, whatever the coupling B.
    A = np.zeros((4, 4))
    A[:2, :2] = 0.9 * _rotation(0.4)
    A[2:, 2:] = 0.5 * _rotation(1.3)
    A[:2, 2:] = np.array([[2.0, -1.0], [0.5, 3.0]])
    f = _linear(A.T)  # lower block-triangular: the strong block drives the weak one
    got = lyapunov_exponents(f, np.ones(4), _inputs(1500, 4), k=4, transient=50)
    expected = np.log([0.9, 0.9, 0.5, 0.5])
    np.testing.assert_allclose(np.asarray(got), expected, atol=5e-3)


# --- nonlinear cells against the QR reference loop ---------------------------------------


class _TanhRNN(eqx.Module):
    """h' = tanh(W h + U x): a pytree, so jitted calls with other weights reuse programs."""

    W: jax.Array
    U: jax.Array

    def __call__(self, h, x):
        h = jnp.tanh(self.W @ h + self.U @ x)
        return h, h

    def jacobians(self, xs):
        """Closed form, in numpy: J_t = diag(1 - h_t^2) W along the trajectory from 0."""
        W, U = np.asarray(self.W, np.float64), np.asarray(self.U, np.float64)
        h, out = np.zeros(W.shape[0]), []
        for x in np.asarray(xs, np.float64):
            h = np.tanh(W @ h + U @ x)
            out.append((1 - h**2)[:, None] * W)
        return np.stack(out)


def _tanh_rnn(n, gain, dtype=jnp.float64, seed=0):
    W = gain * _normal(seed, (n, n)) / np.sqrt(n)
    U = _normal(seed + 100, (n, 2)) / np.sqrt(2)
    return _TanhRNN(W.astype(dtype), U.astype(dtype)), np.zeros(n, dtype)


def _lstm(n, seed=0):
    Wi = _normal(seed, (4 * n, 2)) / np.sqrt(2)
    Wh = 1.5 * _normal(seed + 100, (4 * n, n)) / np.sqrt(n)

    def f(carry, x):
        c, h = carry
        i, fg, g, o = jnp.split(Wi @ x + Wh @ h, 4)
        c = jax.nn.sigmoid(fg + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    return f, (np.zeros(n), np.zeros(n))


def test_nonlinear_cells_against_qr_reference():
    xs = _normal(3, (300, 2))
    f, init = _tanh_rnn(6, 1.8)
    _close(lyapunov_exponents(f, init, xs, k=3), reference_exponents(f, init, xs, 3))
    f, init = _lstm(4)  # pytree carry (c, h), n = 8
    _close(lyapunov_exponents(f, init, xs, k=2), reference_exponents(f, init, xs, 2))


def test_diagonal_cell_is_exact_and_cheap():
    a = jnp.array([0.5, -0.8, 0.9])

    def f(h, x):
        h = jnp.tanh(a * h + x[:1])
        return h, h

    f.jacobian_structure = rnnscan.Diagonal()  # declared on the step function
    xs = _normal(0, (200, 2))
    got = lyapunov_exponents(f, np.zeros(3), xs, k=3)
    _close(got, reference_exponents(f, np.zeros(3), xs, 3), rel=0.02, abs_=0.01)


def test_carries_reverse_and_solution_carries():
    # Same shapes as test_nonlinear_cells_against_qr_reference (n = 6, T = 300, k = 3): the
    # direct estimate reuses its compiled program.
    f, init = _tanh_rnn(6, 1.2)
    xs = _normal(4, (300, 2))
    carries = jax.lax.scan(lambda h, x: f(h, x), init, xs)[1]  # what jax.lax.scan collects
    direct = lyapunov_exponents(f, init, xs, k=3)
    np.testing.assert_allclose(lyapunov_exponents(f, init, xs, k=3, carries=carries), direct)
    # Solution.carries, reversed: aligned with xs, so carries[t] is the carry after step t of
    # the reversed run, as for jax.lax.scan(reverse=True).
    sol_r = solve(f, init, xs, reverse=True)
    rev = lyapunov_exponents(f, init, xs, reverse=True, k=3, carries=sol_r.carries)
    np.testing.assert_allclose(rev, lyapunov_exponents(f, init, xs[::-1], k=3), rtol=1e-10)
    assert not np.allclose(rev, direct, rtol=1e-3)  # the reversed sequence is another problem


def test_float32_jit_and_vmap():
    f64, init64 = _tanh_rnn(6, 1.5)
    f32, init32 = _tanh_rnn(6, 1.5, dtype=jnp.float32)
    xs = _normal(5, (3, 300, 2))
    lle = jax.jit(jax.vmap(lambda xs: lyapunov_exponents(f32, init32, xs, k=2)))
    got = lle(xs.astype(np.float32))
    assert got.shape == (3, 2) and got.dtype == jnp.float32
    for b in range(3):
        expected = reference_exponents(f64, init64, xs[b], 2)
        _close(got[b], expected)


def test_finite_time_exponents_against_window_products():
    f, init = _tanh_rnn(4, 1.6)
    xs = _normal(6, (100, 2))
    w = 8
    got = finite_time_lyapunov_exponents(f, init, xs, window=w, power_iterations=30)
    J = f.jacobians(xs)  # closed form, numpy
    expected = []
    for j in range(100 // w):
        P = np.eye(4)
        for t in range(j * w, (j + 1) * w):
            P = J[t] @ P
        expected.append(np.log(np.linalg.norm(P, 2)) / w)
    assert got.shape == (12,)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)


# --- bad input ---------------------------------------------------------------------------


def test_errors_name_the_problem():
    lyapunov_exponents = diagnostics.lyapunov_exponents
    finite_time_lyapunov_exponents = diagnostics.finite_time_lyapunov_exponents
    parallelizability = diagnostics.parallelizability
    f, init = _tanh_rnn(3, 1.0)
    xs = np.zeros((10, 2))
    with pytest.raises(ValueError, match="k=4 exponents.*n = 3"):
        lyapunov_exponents(f, init, xs, k=4)
    with pytest.raises(ValueError, match="k must be a positive int"):
        lyapunov_exponents(f, init, xs, k=0)
    with pytest.raises(ValueError, match="empty"):
        lyapunov_exponents(f, init, np.zeros((0, 2)))
    with pytest.raises(ValueError, match=r"carries.*shape \(9, 3\)"):
        lyapunov_exponents(f, init, xs, carries=np.zeros((9, 3)))
    with pytest.raises(ValueError, match="transient"):
        lyapunov_exponents(f, init, xs, transient=10)
    with pytest.raises(ValueError, match="window"):
        finite_time_lyapunov_exponents(f, init, xs, window=11)
    with pytest.raises(ValueError, match="method"):
        parallelizability(f, init, xs, method="elk")
    bad = np.zeros((10, 3))
    bad[4, 1] = np.nan
    with pytest.raises(Exception, match="not finite"):
        jax.block_until_ready(lyapunov_exponents(f, init, xs, carries=bad))
    with pytest.raises(Exception, match="not finite"):
        jax.block_until_ready(
            lyapunov_exponents(f, init, np.where(np.arange(10)[:, None] == 3, np.inf, xs))
        )


# --- the report --------------------------------------------------------------------------


def test_parallelizability_predicts_newton():
    xs = _normal(7, (200, 2))
    for gain, predictable in ((0.6, True), (5.0, False)):
        f, init = _tanh_rnn(16, gain)  # both gains share the compiled report and solve
        rep = parallelizability(f, init, xs)
        assert bool(rep.predictable) is predictable
        assert rep.lyapunov.shape == () and rep.method == "newton"
        sol = solve(f, init, xs)
        if predictable:
            assert sol.converged
            n_pred, n_meas = float(rep.expected_newton_iterations), int(sol.iterations)
            assert abs(n_pred - n_meas) <= 2 or n_pred / 3 <= n_meas <= 3 * n_pred
            assert "should converge in ~" in rep.summary
            assert np.isfinite(float(rep.iterations_for("fixed_point")))
        else:
            assert float(rep.lyapunov) > 0.01 and not sol.converged
            assert np.isinf(float(rep.expected_newton_iterations))
            assert "sequential" in str(rep)
    # The report's finite-time estimate against the QR method on the same trajectory.
    _close(rep.lyapunov, lyapunov_exponents(f, init, xs)[0], rel=0.02, abs_=0.01)


def _window_log_norm(J):
    """log ||J[-1] ... J[0]||_2 in numpy, renormalising as it goes (diagonal: J is (k, n))."""
    if J.ndim == 2:
        return np.max(np.sum(np.log(np.abs(J)), axis=0))
    P, log_scale = np.eye(J.shape[-1]), 0.0
    for Jt in J:
        P = Jt @ P
        scale = np.abs(P).max()
        P, log_scale = P / scale, log_scale + np.log(scale)
    return log_scale + np.log(np.linalg.norm(P, 2))


@pytest.mark.parametrize("structure", ["dense", "diagonal"])
def test_report_growth_against_window_products(structure):
    # T = 77 = 0b1001101: levels with an unpaired window, which must not count as a window.
    T = 77
    xs = _normal(9, (T, 2))
    if structure == "dense":
        f, init = _tanh_rnn(6, 1.4)
        J = np.asarray(_reference_jacobians(f, init, xs), np.float64)
    else:
        a = jnp.array([0.5, -1.3, 0.9, 1.1])

        def f(h, x):
            h = jnp.tanh(a * h + x[:1] - 0.3 * x[1:])
            return h, h

        f.jacobian_structure = rnnscan.Diagonal()
        init = np.zeros(4)
        J = np.asarray(jax.vmap(jnp.diagonal)(_reference_jacobians(f, init, xs)))
    rep = parallelizability(f, init, xs)

    def growth(J):
        return [
            max(_window_log_norm(J[i * 2**j : (i + 1) * 2**j]) for i in range(T // 2**j))
            for j in range(7)
        ]

    expected = growth(J)
    # 2-norms by power iteration: from below, converged to ~1e-6 on these windows.
    np.testing.assert_allclose(np.asarray(rep.growth), expected, rtol=0, atol=1e-5)
    assert float(rep.amplification) == pytest.approx(max(0.0, max(expected)), abs=1e-5)
    np.testing.assert_allclose(float(rep.lyapunov), _window_log_norm(J) / T, rtol=1e-6)
    # At Newton's first guess c_t = F(c_0, x_t): Jacobians at c_{t-1} = F(c_0, x_{t-1}).
    guess = jax.vmap(lambda x: f(init, x)[0])(xs)
    c_prev = jnp.concatenate([jnp.asarray(init)[None], guess[:-1]])
    J_guess = np.asarray(jax.vmap(lambda c, x: jax.jacfwd(lambda c: f(c, x)[0])(c))(c_prev, xs))
    if structure == "diagonal":
        J_guess = np.stack([np.diagonal(Jt) for Jt in J_guess])
    expected_guess = max(0.0, max(growth(J_guess)))
    assert float(rep.guess_amplification) == pytest.approx(expected_guess, abs=1e-5)
    assert expected_guess != pytest.approx(float(rep.amplification), abs=1e-3)


def test_newton_is_predicted_to_diverge_from_an_amplifying_first_guess():
    from rnnscan.diagnostics._predict import predict_iterations

    G = jnp.array([0.5, 0.2, -1.0, -3.0])  # a benign trajectory: log S ~ 1
    a, log_s = jnp.array(0.5), jnp.array(1.0)
    method = rnnscan.Newton().resolved(jnp.float64, 1000)
    for guess_amplification, finite in ((5.0, True), (np.log(1e8) + 0.1, False)):
        n = predict_iterations(
            G, a, log_s, jnp.array(guess_amplification), method, rnnscan.Dense(), 1000
        )
        assert bool(jnp.isfinite(n)) is finite


def test_parallelizability_vmap_and_prefix():
    f, init = _tanh_rnn(4, 0.8)
    xs = _normal(8, (2, 64, 2))
    reps = jax.jit(jax.vmap(lambda xs: parallelizability(f, init, xs, method="quasi_newton")))(xs)
    assert reps.lyapunov.shape == (2,) and reps.growth.shape == (2, 7)
    assert len(reps.summary.splitlines()) == 2
    assert reps.iterations_for(rnnscan.Newton()).shape == (2,)
    one = parallelizability(f, init, xs[1], method="quasi_newton")
    np.testing.assert_allclose(reps.lyapunov[1], one.lyapunov, rtol=1e-10)
    prefix = parallelizability(f, init, xs[1], max_length=16)
    assert prefix.growth.shape == (5,) and prefix.length == 64


# --- the estimate a solve reports (solve(..., diagnostics=True)) ---------------------------


def _product_exponent(J):
    """(1/T) log ||J_T ... J_1||_2 in numpy, renormalising as it goes."""
    P, log_scale = np.eye(J.shape[-1]), 0.0
    for Jt in J:
        P = Jt @ P
        scale = np.abs(P).max()
        P, log_scale = P / scale, log_scale + np.log(scale)
    return (log_scale + np.log(np.linalg.norm(P, 2))) / len(J)


@pytest.mark.parametrize("method", ["newton", "quasi_newton", "sequential"])
def test_solve_reports_the_finite_time_exponent(method):
    # T = 77 is no power of two: the reduction tree carries unpaired products up a level.
    f, init = _tanh_rnn(4, 1.6)
    xs = _normal(9, (77, 2))
    sol = solve(f, init, xs, method=method, diagnostics=True)
    assert sol.converged and sol.lyapunov.shape == ()
    np.testing.assert_allclose(sol.lyapunov, _product_exponent(f.jacobians(xs)), atol=1e-8)
    # ... close to the QR estimate over a long sequence, and absent unless asked for.
    xs = _normal(10, (1000, 2))
    lle = solve(f, init, xs, method=method, diagnostics=True).lyapunov
    _close(lle, reference_exponents(f, init, xs, 1)[0])
    assert solve(f, init, xs[:77], method=method).lyapunov is None


def test_solve_diagnostics_structures_vmap_reverse_float32():
    # Rotation x scaling in BlockDiagonal(2) and a diagonal recurrence declared on f:
    # closed forms log max rho and log max |a| (constant Jacobians, exact up to rounding).
    rho, theta = np.array([0.95, 0.5, 0.8]), np.array([0.3, 1.1, 2.0])

    def rotating(carry, x):
        u, v = carry
        c, s = jnp.cos(theta), jnp.sin(theta)
        u, v = rho * (c * u - s * v) + x, rho * (s * u + c * v)
        return (u, v), u

    xs = _inputs(50, 3)
    method = rnnscan.Newton(jacobian=rnnscan.BlockDiagonal(2))
    sol = solve(rotating, (np.ones(3), np.zeros(3)), xs, method=method, diagnostics=True)
    np.testing.assert_allclose(sol.lyapunov, np.log(0.95), atol=1e-6)

    a = np.array([0.5, -0.8, 0.3], np.float32)

    def diagonal(h, x):
        h = a * h + x
        return h, h

    diagonal.jacobian_structure = rnnscan.Diagonal()  # what "sequential" reads
    xs32 = _inputs(4 * 60, 3).astype(np.float32).reshape(4, 60, 3)
    batched = jax.vmap(
        lambda xs: (
            rnnscan.solve(
                diagonal,
                np.zeros(3, np.float32),
                xs,
                method="sequential",
                diagnostics=True,
                reverse=True,
            ).lyapunov
        )
    )(xs32)
    assert batched.shape == (4,) and batched.dtype == jnp.float32
    np.testing.assert_allclose(batched, np.log(0.8), rtol=1e-5)


def test_solve_diagnostics_bad_input():
    f, init = _tanh_rnn(3, 1.0)
    xs = np.zeros((10, 2))
    with pytest.raises(TypeError, match="diagnostics must be a bool"):
        rnnscan.solve(f, init, xs, diagnostics="yes")
    with pytest.raises(ValueError, match="diagnostics=True is not available.*axis_name"):
        rnnscan.solve(f, init, xs, axis_name="time", diagnostics=True)
    empty = rnnscan.solve(f, init, np.zeros((0, 2)), diagnostics=True)
    assert np.isnan(empty.lyapunov)  # undefined over no steps
