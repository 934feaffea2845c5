"""Solves that stay cheap when Newton struggles: early give-up, ELK / quasi-ELK, sliding
windows — all against jax.lax.scan."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    TOLERANCES,
    bind,
    diagonal_lstm,
    diagonal_rnn,
    gru,
    tanh_rnn,
    tree_allclose,
)

import rnnscan

F64 = TOLERANCES[jnp.float64]
GAVE_UP = (rnnscan.RESULTS.diverged, rnnscan.RESULTS.stalled)


def _tanh_problem(gain, T, n=8, dtype=jnp.float64, seed=7):
    params, init, f = tanh_rnn(jax.random.PRNGKey(seed), n, 2, dtype, gain=gain)
    xs = jax.random.normal(jax.random.PRNGKey(seed + 1), (T, 2), dtype)
    return f, params, init, xs


def _solve(step, init, xs, method, on_failure="fallback"):
    return jax.jit(lambda xs: rnnscan.solve(step, init, xs, method=method, on_failure=on_failure))(
        xs
    )


def _loss(f, scan_fn, params, init, xs):
    final, ys = scan_fn(functools.partial(f, params), init, xs)
    leaves = jax.tree_util.tree_leaves((final, ys))
    weights = [jnp.cos(jnp.arange(leaf.size).reshape(leaf.shape)) for leaf in leaves]
    return sum(jnp.sum(w * jnp.sin(leaf)) for w, leaf in zip(weights, leaves))


def _values_and_gradients(f, method, params, init, xs, on_failure="fallback"):
    """(ys, gradients w.r.t. params, init and xs) of ``method`` and of jax.lax.scan."""

    def run(scan_fn):
        ys = scan_fn(functools.partial(f, params), init, xs)[1]
        grads = jax.grad(_loss, argnums=(2, 3, 4))(f, scan_fn, params, init, xs)
        return ys, grads

    scan = functools.partial(rnnscan.scan, method=method, on_failure=on_failure)
    ours = jax.jit(lambda: run(scan))()
    return ours, jax.jit(lambda: run(jax.lax.scan))()


# ---------------------------------------------------------------------------------------------
# Early give-up.


@pytest.mark.parametrize(
    "method, budget",
    [
        # Newton overflows at once on these; the linear methods stall.
        ("newton", 8),
        ("quasi_newton", 20),
        ("fixed_point", 20),
        # The damped methods' merit must halve from the first guess's (issue 29: within 8).
        ("elk", 8),
        ("quasi_elk", 8),
    ],
)
@pytest.mark.parametrize("gain", [2.5, 3.0])
def test_chaotic_recurrences_give_up_early_and_fall_back(method, budget, gain):
    f, params, init, xs = _tanh_problem(gain, 1000)
    step = bind(f, params)
    raw = _solve(step, init, xs, method, on_failure="return")
    assert int(raw.result) in GAVE_UP and not raw.ok, rnnscan.RESULTS.message(raw.result)
    assert raw.iterations <= budget, raw.iterations
    sol = _solve(step, init, xs, method)
    assert sol.fell_back and sol.ok and sol.iterations == raw.iterations
    tree_allclose(sol.ys, jax.lax.scan(step, init, xs)[1], **F64)


@pytest.mark.parametrize("method", ["newton", "quasi_newton"])
@pytest.mark.parametrize("gain", [0.5, 1.0, 1.5])
def test_give_up_never_stops_a_solve_that_converges(method, gain):
    """The rules must not trigger where the method converges: the same iterations as with
    give_up=False, and the exact values."""
    f, params, init, xs = _tanh_problem(gain, 1000)
    step = bind(f, params)
    cls = rnnscan.Newton if method == "newton" else rnnscan.QuasiNewton
    with_rules = _solve(step, init, xs, cls(), on_failure="return")
    without = _solve(step, init, xs, cls(give_up=False), on_failure="return")
    assert with_rules.converged and without.converged
    assert with_rules.iterations == without.iterations
    tree_allclose(with_rules.ys, jax.lax.scan(step, init, xs)[1], rtol=1e-7, atol=1e-7)


def test_give_up_can_be_switched_off():
    f, params, init, xs = _tanh_problem(3.0, 200)
    sol = _solve(bind(f, params), init, xs, rnnscan.Newton(give_up=False), on_failure="return")
    assert sol.result == rnnscan.RESULTS.max_steps_reached and sol.iterations == 50


def test_gru_beyond_the_edge_of_stability_gives_up():
    params, init, f = gru(jax.random.PRNGKey(7), 16, 4, jnp.float64)
    params = dict(params, Wh=3 * params["Wh"])
    xs = jax.random.normal(jax.random.PRNGKey(8), (1000, 4))
    step = bind(f, params)
    sol = _solve(step, init, xs, "newton")
    assert int(sol.result) in GAVE_UP and sol.fell_back and sol.iterations <= 8
    tree_allclose(sol.ys, jax.lax.scan(step, init, xs)[1], **F64)


def test_batch_mixing_easy_and_hopeless_sequences():
    """Under vmap each sequence keeps its own statistics, and the fallback stays one
    conditional that only the hopeless sequences need."""
    f, params, init, xs = _tanh_problem(1.0, 300)
    hopeless = dict(params, W=3.0 * params["W"])
    batched = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), params, hopeless)
    solve = jax.jit(
        jax.vmap(lambda p: rnnscan.solve(functools.partial(f, p), init, xs, method="newton"))
    )
    sols = solve(batched)
    np.testing.assert_array_equal(sols.fell_back, [False, True])
    assert sols.converged[0] and int(sols.result[1]) in GAVE_UP and sols.iterations[1] <= 8
    expected = jax.vmap(lambda p: jax.lax.scan(functools.partial(f, p), init, xs)[1])(batched)
    tree_allclose(sols.ys, expected, **F64)


def test_nan_input_is_still_reported_as_nonfinite():
    f, params, init, xs = _tanh_problem(0.9, 200)
    xs = xs.at[40, 1].set(jnp.nan)
    step = bind(f, params)
    # Every method runs through the one loop of rnnscan/_methods/_loop.py.
    for method in ["newton", "elk", rnnscan.Newton(window=64)]:
        # The fallback keeps the parallel solve's result code, so one program checks both.
        fallback = _solve(step, init, xs, method)
        assert fallback.result == rnnscan.RESULTS.nonfinite, (method, fallback.result)
        assert fallback.fell_back
        tree_allclose(fallback.ys, jax.lax.scan(step, init, xs)[1], **F64)


# ---------------------------------------------------------------------------------------------
# ELK and quasi-ELK.


@pytest.mark.parametrize(
    "cell, structure, method",
    [
        # Dense ELK and quasi-ELK: test_elk_converges_where_newton_diverges (values and
        # gradients too, on a harder system). Gradients do not depend on the forward method
        # (one implicit linear solve in the declared structure, tested in test_scan.py).
        (diagonal_rnn, rnnscan.Diagonal(), rnnscan.QuasiELK),
        (diagonal_lstm, rnnscan.BlockDiagonal(2), rnnscan.ELK),
    ],
)
def test_elk_matches_lax_scan(cell, structure, method):
    params, init, f = cell(jax.random.PRNGKey(3), 4, 2, jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(4), (120, 2))
    step = bind(f, params)
    sol = _solve(step, init, xs, method(jacobian=structure), on_failure="return")
    assert sol.converged, rnnscan.RESULTS.message(sol.result)
    tree_allclose(sol.ys, jax.lax.scan(step, init, xs)[1], **F64)


def forced_bistable(params, h, x):
    """n overdamped Duffing units, forward Euler with dt = 0.05: h' = h + dt (h - h^3 + C h + x).

    Unforced, each unit is bistable (wells at +-1, an unstable equilibrium at 0 where
    dF/dh = 1 + dt); a forcing of amplitude 3 (> 2 / (3 sqrt 3), the fold) leaves a single
    attractor, which the state follows back and forth through the unstable middle. Not
    chaotic (largest Lyapunov exponent about -0.15 per step), but Newton's first steps
    overshoot into the cubic and overflow."""
    h = h + 0.05 * (h - h**3 + params["C"] @ h + x)
    return h, h


def _forced_bistable_problem(T, dtype, n=4, coupling=0.2):
    C = coupling * jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype) / np.sqrt(n)
    phases = jnp.linspace(0, 2 * np.pi, n, endpoint=False, dtype=dtype)
    t = jnp.arange(T, dtype=dtype)[:, None]
    xs = 3.0 * jnp.sin(2 * np.pi * t / 100 + phases[None, :])
    return {"C": C.astype(dtype)}, jnp.zeros(n, dtype), xs.astype(dtype)


def test_elk_converges_where_newton_diverges():
    """The acceptance case of the damped methods: on an unstable-but-not-chaotic system,
    Newton and quasi-Newton diverge (and fall back after a few iterations), ELK and
    quasi-ELK converge — on_failure="raise", so no fallback can hide a failure — with values
    and gradients equal to jax.lax.scan's."""
    params, init, xs = _forced_bistable_problem(300, jnp.float64)
    step = bind(forced_bistable, params)
    for method in ["newton", "quasi_newton"]:
        sol = _solve(step, init, xs, method, on_failure="return")
        assert int(sol.result) == rnnscan.RESULTS.diverged and sol.iterations <= 8, (
            method,
            rnnscan.RESULTS.message(sol.result),
            sol.iterations,
        )
    for method in ["elk", "quasi_elk"]:
        (ys, grads), (ref_ys, ref_grads) = _values_and_gradients(
            forced_bistable, method, params, init, xs, on_failure="raise"
        )
        tree_allclose(ys, ref_ys, **F64)
        tree_allclose(grads, ref_grads, rtol=1e-7, atol=1e-9)


def test_quasi_elk_converges_where_newton_diverges_float32():
    """(Dense ELK in float32 is tested on a GRU above; its compile is the costly part.)"""
    params, init, xs = _forced_bistable_problem(2000, jnp.float32)
    step = bind(forced_bistable, params)
    assert int(_solve(step, init, xs, "quasi_newton", on_failure="return").result) in GAVE_UP
    sol = _solve(step, init, xs, "quasi_elk", on_failure="return")
    assert sol.converged and sol.iterations <= 30, (
        rnnscan.RESULTS.message(sol.result),
        sol.iterations,
    )
    tree_allclose(sol.ys, jax.lax.scan(step, init, xs)[1], **TOLERANCES[jnp.float32])


def test_elk_with_fixed_damping_as_in_the_paper():
    f, params, init, xs = _tanh_problem(0.9, 200, n=4)
    step = bind(f, params)
    sol = _solve(step, init, xs, rnnscan.ELK(damping=0.1, adaptive=False), on_failure="return")
    assert sol.converged
    tree_allclose(sol.ys, jax.lax.scan(step, init, xs)[1], **F64)


def test_elk_float32():
    params, init, f = gru(jax.random.PRNGKey(5), 6, 2, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(6), (500, 2), jnp.float32)
    step = bind(f, params)
    sol = _solve(step, init, xs, "elk", on_failure="return")
    assert sol.converged
    tree_allclose(sol.ys, jax.lax.scan(step, init, xs)[1], **TOLERANCES[jnp.float32])


# ---------------------------------------------------------------------------------------------
# Sliding windows.


@pytest.mark.parametrize(
    "solver, window",
    [
        (rnnscan.Newton, 1),
        (rnnscan.Newton, 16),
        (rnnscan.Newton, 50),
        # The window logic is the solver's; one window length each for the others.
        (rnnscan.QuasiNewton, 16),
        (rnnscan.FixedPoint, 50),
    ],
)
def test_windows_match_lax_scan(solver, window):
    """T = 130 is not a multiple of the windows."""
    f, params, init, xs = _tanh_problem(0.9, 130, n=4)
    method = solver(window=window)
    sol = _solve(bind(f, params), init, xs, method, on_failure="return")
    assert sol.converged
    (ys, grads), (ref_ys, ref_grads) = _values_and_gradients(f, method, params, init, xs)
    tree_allclose(ys, ref_ys, **F64)
    tree_allclose(grads, ref_grads, rtol=1e-7, atol=1e-9)


def test_windows_structured_and_float32():
    params, init, f = diagonal_lstm(jax.random.PRNGKey(9), 5, 2, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(10), (700, 2), jnp.float32)
    step = bind(f, params)
    method = rnnscan.Newton(jacobian=rnnscan.BlockDiagonal(2), window=128)
    sol = _solve(step, init, xs, method, on_failure="return")
    assert sol.converged
    tree_allclose(sol.ys, jax.lax.scan(step, init, xs)[1], **TOLERANCES[jnp.float32])


def test_windows_converge_where_the_whole_sequence_cannot():
    """On a chaotic recurrence Newton over all T steps gives up, but a window short enough
    for the linearisation to hold converges window by window (no fallback)."""
    f, params, init, xs = _tanh_problem(3.0, 1000)
    step = bind(f, params)
    assert int(_solve(step, init, xs, "newton", on_failure="return").result) in GAVE_UP
    sol = _solve(step, init, xs, rnnscan.Newton(window=100), on_failure="return")
    assert sol.converged, rnnscan.RESULTS.message(sol.result)
    tree_allclose(sol.ys, jax.lax.scan(step, init, xs)[1], **F64)


def test_window_option_is_checked():
    with pytest.raises(ValueError, match="window"):
        rnnscan.Newton(window=0)
    with pytest.raises(ValueError, match="window"):
        rnnscan.ELK(window=10)
