"""rnnscan.scan / rnnscan.solve against the sequential reference, jax.lax.scan."""

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from helpers import (
    CELLS,
    TOLERANCES,
    bind,
    diagonal_lstm,
    diagonal_rnn,
    gru,
    jit_scan,
    jit_solve,
    linear,
    tanh_rnn,
    tree_allclose,
)

import rnnscan

PARALLEL = ["newton", "quasi_newton", "fixed_point"]


def _inputs(key, T, d, dtype):
    return jax.random.normal(key, (T, d), dtype)


def _solve_and_reference(cell, method, T, n, dtype, *, reverse=False, d=3, seed=0):
    params, init, f = cell(jax.random.PRNGKey(seed), n, d, dtype)
    xs = _inputs(jax.random.PRNGKey(seed + 1), T, d, dtype)
    step = bind(f, params)
    sol = jit_solve(step, init, xs, reverse=reverse, method=method)
    expected = jax.lax.scan(step, init, xs, reverse=reverse)
    return sol, expected


@pytest.mark.parametrize("method", PARALLEL)
@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("T, n", [(1, 4), (2, 1), (37, 8), (1000, 32)])
def test_matches_lax_scan_float64(cell, method, T, n):
    sol, (final, ys) = _solve_and_reference(CELLS[cell], method, T, n, jnp.float64)
    tree_allclose(sol.final_carry, final, **TOLERANCES[jnp.float64])
    tree_allclose(sol.ys, ys, **TOLERANCES[jnp.float64])
    assert sol.ok
    if method == "newton":
        # Newton on these contractive cells converges well before the cap.
        assert sol.converged and sol.iterations <= 20, (sol.iterations, sol.result)


@pytest.mark.parametrize("method", PARALLEL)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("T, n", [(300, 16), (3000, 8)])
def test_matches_lax_scan_float32(cell, method, T, n):
    sol, (final, ys) = _solve_and_reference(CELLS[cell], method, T, n, jnp.float32)
    tree_allclose(sol.final_carry, final, **TOLERANCES[jnp.float32])
    tree_allclose(sol.ys, ys, **TOLERANCES[jnp.float32])
    if method == "newton":
        assert sol.converged, "float32 default tolerances should be reachable by Newton"


@pytest.mark.parametrize("method", ["newton", "quasi_newton"])
@pytest.mark.parametrize("gain", [0.5, 1.0, 1.5, 3.0])
def test_tanh_rnn_across_recurrent_gains(method, gain):
    """Contractive (0.5), edge of stability (1.0) and expansive (1.5, 3) recurrences."""
    params, init, f = tanh_rnn(jax.random.PRNGKey(7), 16, 2, jnp.float64, gain=gain)
    step = bind(f, params)
    xs = _inputs(jax.random.PRNGKey(8), 500, 2, jnp.float64)
    sol = jit_solve(step, init, xs, method=method)
    final, ys = jax.lax.scan(step, init, xs)
    tree_allclose(sol.ys, ys, rtol=1e-7, atol=1e-7)
    tree_allclose(sol.final_carry, final, rtol=1e-7, atol=1e-7)
    assert sol.ok


@pytest.mark.parametrize("method", PARALLEL)
@pytest.mark.parametrize("cell", ["tanh", "lstm"])
def test_reverse(cell, method):
    sol, (final, ys) = _solve_and_reference(CELLS[cell], method, 200, 6, jnp.float64, reverse=True)
    tree_allclose(sol.final_carry, final, **TOLERANCES[jnp.float64])
    tree_allclose(sol.ys, ys, **TOLERANCES[jnp.float64])


def _loss(step_fn, scan_fn, params, init, xs):
    final, ys = scan_fn(functools.partial(step_fn, params), init, xs)
    leaves = jax.tree_util.tree_leaves(ys) + jax.tree_util.tree_leaves(final)
    weights = [jnp.cos(jnp.arange(leaf.size).reshape(leaf.shape)) for leaf in leaves]
    return sum(jnp.sum(w * jnp.sin(leaf)) for w, leaf in zip(weights, leaves))


@pytest.mark.parametrize("method", PARALLEL)
@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_match_sequential(cell, method, reverse):
    dtype = jnp.float64
    params, init, f = CELLS[cell](jax.random.PRNGKey(3), 5, 2, dtype)
    xs = _inputs(jax.random.PRNGKey(4), 120, 2, dtype)
    ours = functools.partial(jit_scan, method=method, reverse=reverse)
    ref = functools.partial(jax.lax.scan, reverse=reverse)
    grad = jax.jit(jax.grad(_loss, argnums=(2, 3, 4)), static_argnums=(0, 1))
    tree_allclose(
        grad(f, ours, params, init, xs), grad(f, ref, params, init, xs), rtol=1e-7, atol=1e-9
    )


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_gradients_float32(cell):
    params, init, f = CELLS[cell](jax.random.PRNGKey(3), 8, 3, jnp.float32)
    xs = _inputs(jax.random.PRNGKey(4), 1000, 3, jnp.float32)
    grad = jax.jit(jax.grad(_loss, argnums=(2, 3, 4)), static_argnums=(0, 1))
    ours = grad(f, jit_scan, params, init, xs)
    ref = grad(f, jax.lax.scan, params, init, xs)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.abs(b).max()))


@pytest.mark.parametrize("method", ["newton", "quasi_newton"])
def test_check_grads(method):
    params, init, f = gru(jax.random.PRNGKey(5), 3, 2, jnp.float64)
    xs = _inputs(jax.random.PRNGKey(6), 25, 2, jnp.float64)
    loss = lambda params, init, xs: _loss(
        f, functools.partial(jit_scan, method=method), params, init, xs
    )
    jax.test_util.check_grads(
        loss, (params, init, xs), order=1, modes=["rev"], atol=1e-6, rtol=1e-6
    )


@pytest.mark.parametrize(
    "cell, jacobian",
    [(diagonal_rnn, rnnscan.Diagonal()), (diagonal_lstm, rnnscan.BlockDiagonal(2))],
)
@pytest.mark.parametrize("solver", [rnnscan.Newton, rnnscan.QuasiNewton])
def test_structured_jacobians(cell, jacobian, solver):
    params, init, f = cell(jax.random.PRNGKey(9), 6, 2, jnp.float64)
    xs = _inputs(jax.random.PRNGKey(10), 300, 2, jnp.float64)
    method = solver(jacobian=jacobian)
    step = bind(f, params)
    sol = jit_solve(step, init, xs, method=method)
    final, ys = jax.lax.scan(step, init, xs)
    tree_allclose(sol.ys, ys, **TOLERANCES[jnp.float64])
    assert sol.converged
    if isinstance(jacobian, rnnscan.Diagonal):
        # A diagonal Jacobian makes quasi-Newton exact Newton: the same iterations.
        dense = jit_solve(step, init, xs, method="newton")
        assert sol.iterations == dense.iterations
    grad = jax.grad(_loss, argnums=(2, 3, 4))
    tree_allclose(
        grad(f, functools.partial(jit_scan, method=method), params, init, xs),
        grad(f, jax.lax.scan, params, init, xs),
        rtol=1e-7,
        atol=1e-9,
    )


def test_linear_cell_one_step():
    params, init, f = linear(jax.random.PRNGKey(11), 8, 3, jnp.float64)
    xs = _inputs(jax.random.PRNGKey(12), 500, 3, jnp.float64)
    step = bind(f, params)
    sol = jit_solve(step, init, xs, method=rnnscan.Newton(carry_linear=True))
    assert sol.iterations == 1 and sol.converged
    tree_allclose(sol.ys, jax.lax.scan(step, init, xs)[1], **TOLERANCES[jnp.float64])


def test_complex_carry():
    """A complex diagonal linear recurrence: Re/Im of a unit form a strided 2x2 block."""
    n, T = 5, 400
    k1, k2 = jax.random.split(jax.random.PRNGKey(13))
    lam = 0.95 * jnp.exp(1j * jnp.linspace(0.1, 2.0, n))
    B = jax.random.normal(k1, (n, 2)) + 1j * jax.random.normal(k2, (n, 2))
    xs = _inputs(jax.random.PRNGKey(14), T, 2, jnp.float64)
    step = lambda h, x: (lam * h + B @ x, jnp.real(h))
    init = jnp.zeros(n, jnp.complex128)
    final, ys = jax.lax.scan(step, init, xs)
    for method in [rnnscan.Newton(jacobian=rnnscan.BlockDiagonal(2), carry_linear=True), "newton"]:
        sol = jit_solve(step, init, xs, method=method)
        assert sol.final_carry.dtype == jnp.complex128
        tree_allclose(sol.final_carry, final, **TOLERANCES[jnp.float64])
        tree_allclose(sol.ys, ys, **TOLERANCES[jnp.float64])
    grad = jax.grad(lambda xs, scan: jnp.sum(jnp.abs(scan(step, init, xs)[0]) ** 2), argnums=0)
    tree_allclose(
        grad(xs, functools.partial(jit_scan, method=method)),
        grad(xs, jax.lax.scan),
        **TOLERANCES[jnp.float64],
    )


def test_xs_none_with_length():
    step = lambda h, _: (jnp.tanh(0.5 * h + 1.0), h.sum())
    init = jnp.arange(3.0)
    sol = jit_solve(step, init, None, length=50)
    final, ys = jax.lax.scan(step, init, None, length=50)
    tree_allclose((sol.final_carry, sol.ys), (final, ys), **TOLERANCES[jnp.float64])


def test_warm_start_converges_at_once():
    params, init, f = gru(jax.random.PRNGKey(15), 8, 3, jnp.float64)
    xs = _inputs(jax.random.PRNGKey(16), 400, 3, jnp.float64)
    step = bind(f, params)
    cold = jit_solve(step, init, xs)
    warm = jit_solve(step, init, xs, guess=cold.carries)
    assert cold.iterations > 1 and warm.iterations == 1
    tree_allclose(warm.ys, cold.ys, **TOLERANCES[jnp.float64])


def test_vmap_each_sequence_has_its_own_statistics():
    params, init, f = tanh_rnn(jax.random.PRNGKey(17), 8, 2, jnp.float64)
    step = bind(f, params)
    xs = jax.random.normal(jax.random.PRNGKey(18), (3, 300, 2))
    xs = xs.at[2, 150].set(jnp.nan)  # a poisoned sequence: must fall back on its own
    final, ys = jax.vmap(lambda x: jax.lax.scan(step, init, x))(xs)
    exact_carries = jax.vmap(lambda x: jax.lax.scan(lambda c, x: (step(c, x)[0],) * 2, init, x))(
        xs
    )[1]
    # Sequence 1 starts from its exact solution, the others from zeros.
    guess = jnp.zeros_like(exact_carries).at[1].set(exact_carries[1])
    sols = jax.jit(jax.vmap(lambda x, g: rnnscan.solve(step, init, x, guess=g)))(xs, guess)
    tree_allclose(sols.ys, ys, **TOLERANCES[jnp.float64])
    assert sols.iterations[1] == 1 and sols.iterations[0] > 1
    np.testing.assert_array_equal(sols.fell_back, [False, False, True])
    np.testing.assert_array_equal(sols.result[:2], [rnnscan.RESULTS.successful] * 2)
    # With a finite warm start the NaN only ever appears in updates, which the divergence
    # rule sees (3 in a row) before the exact prefix reaches step 150.
    assert int(sols.result[2]) in (rnnscan.RESULTS.nonfinite, rnnscan.RESULTS.diverged)
    assert np.isnan(sols.ys[2, 150:]).all() and np.isfinite(sols.ys[2, :150]).all()


def _primitives(jaxpr, inside_cond=False):
    """(primitive name, whether it sits inside a cond branch) for every equation, recursively."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name, inside_cond
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _primitives(sub, inside_cond or eqn.primitive.name == "cond")


@pytest.mark.parametrize("batch_dims", [0, 1, 2])
@pytest.mark.parametrize("differentiate", [False, True])
def test_fallback_is_a_real_conditional_under_vmap(batch_dims, differentiate):
    """The sequential fallback must sit inside a cond even when batched (a select would run
    it on every call): no sequential `scan` may appear outside a cond branch."""
    params, init, f = tanh_rnn(jax.random.PRNGKey(19), 4, 2, jnp.float32)
    step = bind(f, params)
    fn = lambda x: rnnscan.scan(step, init, x)[1].sum()
    if differentiate:
        fn = jax.grad(fn)
    for _ in range(batch_dims):
        fn = jax.vmap(fn)
    xs = jnp.ones((2,) * batch_dims + (30, 2), jnp.float32)
    prims = list(_primitives(jax.make_jaxpr(fn)(xs).jaxpr))
    assert not [name for name, inside in prims if name == "scan" and not inside]
    assert any(name == "scan" and inside for name, inside in prims)


def test_nan_input_is_flagged_and_terminates():
    params, init, f = gru(jax.random.PRNGKey(20), 4, 2, jnp.float64)
    step = bind(f, params)
    xs = _inputs(jax.random.PRNGKey(21), 100, 2, jnp.float64).at[10, 0].set(jnp.nan)
    for method in PARALLEL:
        sol = jit_solve(step, init, xs, method=method, on_failure="return")
        assert sol.result == rnnscan.RESULTS.nonfinite and not sol.ok
        # Detected once the steps before the NaN are exact, not after max_steps.
        assert sol.iterations < 20, (method, sol.iterations)
        fallback = jit_solve(step, init, xs, method=method)
        assert fallback.fell_back and fallback.ok
        tree_allclose(fallback.ys, jax.lax.scan(step, init, xs)[1], rtol=1e-8, atol=1e-8)


def test_non_convergence_is_visible():
    params, init, f = gru(jax.random.PRNGKey(22), 8, 2, jnp.float64)
    step = bind(f, params)
    xs = _inputs(jax.random.PRNGKey(23), 200, 2, jnp.float64)
    capped = rnnscan.Newton(max_steps=1)
    raw = jit_solve(step, init, xs, method=capped, on_failure="return")
    assert raw.result == rnnscan.RESULTS.max_steps_reached and not raw.ok and not raw.fell_back
    expected = jax.lax.scan(step, init, xs)[1]
    assert np.abs(raw.ys - expected).max() > 1e-6  # the unconverged iterate, flagged
    sol = jit_solve(step, init, xs, method=capped)
    assert sol.fell_back and sol.result == rnnscan.RESULTS.max_steps_reached and sol.ok
    tree_allclose(sol.ys, expected, **TOLERANCES[jnp.float64])
    with pytest.raises(Exception, match="max_steps"):
        jax.block_until_ready(
            jax.jit(lambda xs: rnnscan.scan(step, init, xs, method=capped, on_failure="raise"))(xs)
        )


def test_iteration_cap_never_exceeds_T_plus_one():
    """Even Jacobi converges within T + 1 iterations: each makes one more step exact."""
    params, init, f = tanh_rnn(jax.random.PRNGKey(24), 4, 2, jnp.float64, gain=2.0)
    step = bind(f, params)
    xs = _inputs(jax.random.PRNGKey(25), 30, 2, jnp.float64)
    sol = jit_solve(step, init, xs, method=rnnscan.FixedPoint(max_steps=10_000))
    assert sol.converged and sol.iterations <= 31
    tree_allclose(sol.ys, jax.lax.scan(step, init, xs)[1], **TOLERANCES[jnp.float64])


def test_training_loop_matches_sequential():
    """A few jitted SGD steps through rnnscan.scan follow the sequential trajectory."""
    params, init, f = gru(jax.random.PRNGKey(26), 6, 2, jnp.float64)
    xs = _inputs(jax.random.PRNGKey(27), 150, 2, jnp.float64)

    def train(scan_fn, params):
        @jax.jit
        def update(params):
            grads = jax.grad(_loss, argnums=2)(f, scan_fn, params, init, xs)
            return jax.tree_util.tree_map(lambda p, g: p - 0.01 * g, params, grads)

        for _ in range(5):
            params = update(params)
        return params

    tree_allclose(train(jit_scan, params), train(jax.lax.scan, params), rtol=1e-8, atol=1e-10)


def test_vmap_over_closed_over_integers_and_parameters():
    """Per-sequence lengths (integers) and scales closed over by f, batched by vmap."""
    W = 0.5 * jnp.eye(3)

    def run(scan_fn, xs, length, scale):
        def step(h, x):
            t, u = x
            new = jnp.tanh(scale * (W @ h) + u)
            new = jnp.where(t < length, new, h)
            return new, new

        return scan_fn(step, jnp.zeros(3), (jnp.arange(xs.shape[0]), xs))[1]

    xs = jax.random.normal(jax.random.PRNGKey(30), (2, 40, 3))
    lengths, scales = jnp.array([5, 40]), jnp.array([1.0, 2.0])
    loss = lambda scales, scan_fn: jax.vmap(functools.partial(run, scan_fn))(xs, lengths, scales)
    tree_allclose(
        jax.jit(loss, static_argnums=1)(scales, rnnscan.scan),
        loss(scales, jax.lax.scan),
        **TOLERANCES[jnp.float64],
    )
    grad = jax.jit(
        jax.grad(lambda s, scan_fn: jnp.sum(jnp.sin(loss(s, scan_fn)))), static_argnums=1
    )
    tree_allclose(grad(scales, rnnscan.scan), grad(scales, jax.lax.scan), rtol=1e-8, atol=1e-10)
