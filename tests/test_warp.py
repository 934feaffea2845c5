"""Time-warping LSTM and GRU cells: equations against a NumPy reference, the neutral warp
against the plain cells, exact re-timing of a time-lag system, parallel solves against
jax.lax.scan, training only the warp, parameter counts and errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cells_helpers import (
    count_params,
    normal,
    random_like,
    randomize_params,
    tree_allclose,
)
from flax import nnx

import rnnscan.nn as rn
from rnnscan.nn._warp import TimeWarpGRUCell, TimeWarpLSTMCell, WarpParam, retime

D, N, T = 3, 5, 40
WARP_CELLS = {"lstm": (TimeWarpLSTMCell, rn.LSTMCell), "gru": (TimeWarpGRUCell, rn.GRUCell)}


def _make(name, param_dtype=jnp.float64, seed=0, **kwargs):
    return WARP_CELLS[name][0](D, N, param_dtype=param_dtype, rngs=nnx.Rngs(seed), **kwargs)


def _set_warp(cell, kappa):
    cell.log_time_scale[...] = jnp.log(jnp.asarray(kappa, cell.log_time_scale[...].dtype))


def _run(cell, carry, xs):
    """The cell over a sequence with jax.lax.scan (jitted)."""
    return nnx.jit(lambda cell, carry, xs: jax.lax.scan(cell, carry, xs))(cell, carry, xs)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _np(variable):
    return np.asarray(variable[...])


# ---------------------------------------------------------------------------------------------
# Equations against a NumPy reference.


def _reference_lstm(cell, c, h, x):
    W_i, W_h, b = _np(cell.input_kernel), _np(cell.recurrent_kernel), _np(cell.bias)
    s = np.exp(-_np(cell.log_time_scale))
    a_i, a_f, a_g, a_o = np.split(x @ W_i + h @ W_h + b, 4, axis=-1)
    i = 1.0 - (1.0 - _sigmoid(a_i)) ** s
    f = _sigmoid(a_f) ** s
    new_c = f * c + i * np.tanh(a_g)
    return new_c, _sigmoid(a_o) * np.tanh(new_c)


def _reference_gru(cell, h, x):
    W_i, b_i = _np(cell.input_kernel), _np(cell.input_bias)
    W_h, b_hn = _np(cell.recurrent_kernel), _np(cell.recurrent_bias)
    s = np.exp(-_np(cell.log_time_scale))
    x_r, x_z, x_n = np.split(x @ W_i + b_i, 3, axis=-1)
    h_r, h_z, h_n = np.split(h @ W_h, 3, axis=-1)
    r = _sigmoid(x_r + h_r)
    z = _sigmoid(x_z + h_z) ** s
    n = np.tanh(x_n + r * (h_n + b_hn))
    return (1.0 - z) * n + z * h


@pytest.mark.parametrize("name, warp_shape", [("lstm", "unit"), ("gru", "scalar")])
def test_equations_match_numpy_reference(name, warp_shape):
    xs = np.asarray(normal(0, (4, D)))
    cell = _make(name, warp_shape=warp_shape)
    randomize_params(cell, 1, scale=0.5)
    warps = np.exp(np.random.default_rng(2).uniform(-2.5, 2.5, cell.log_time_scale.shape))
    _set_warp(cell, warps)  # time constants from 0.08x to 12x
    carry = random_like(3, cell.initialize_carry((4, D)))
    new_carry, out = nnx.jit(lambda cell, c, x: cell(c, x))(cell, carry, jnp.asarray(xs))
    if name == "lstm":
        expected = _reference_lstm(cell, *(np.asarray(v) for v in carry), xs)
        np.testing.assert_allclose(out, expected[1], rtol=1e-12, atol=1e-13)
    else:
        expected = _reference_gru(cell, np.asarray(carry), xs)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-13)
    tree_allclose(new_carry, expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("name", sorted(WARP_CELLS))
def test_neutral_warp_is_the_plain_cell_exactly(name):
    """Same weights, warp 1: the same outputs bit for bit over a sequence, and the same
    gradients w.r.t. the shared weights."""
    plain_cls = WARP_CELLS[name][1]

    @nnx.jit
    def run(model, carry, xs):
        def loss(model):
            final, ys = jax.lax.scan(model, carry, xs)
            return jnp.sum(ys**2), (final, ys)

        return nnx.value_and_grad(loss, has_aux=True)(model)

    for dtype in (jnp.float64,):  # float32 runs the same code (test_parallel_matches_lax_scan)
        plain = plain_cls(D, N, param_dtype=dtype, rngs=nnx.Rngs(0))
        randomize_params(plain, 1)
        cell = _make(name, dtype)
        nnx.update(cell, nnx.state(plain, nnx.Param))
        np.testing.assert_array_equal(_np(cell.log_time_scale), 0.0)
        carry = random_like(2, cell.initialize_carry((D,)))
        xs = normal(3, (T, D), dtype)
        (_, outputs), grads = run(cell, carry, xs)
        (_, plain_outputs), plain_grads = run(plain, carry, xs)
        tree_allclose(outputs, plain_outputs, rtol=0, atol=0)
        warp_free = nnx.All(nnx.Param, nnx.Not(WarpParam))
        tree_allclose(
            nnx.state(grads, warp_free), nnx.state(plain_grads, nnx.Param), rtol=1e-13, atol=1e-13
        )


# ---------------------------------------------------------------------------------------------
# Re-timing: exact on a time-lag system, k then 1/k the identity.


def _lag_cell(name, tau, kappa, w):
    """A cell whose state is exactly the lag y_t = a y_{t-1} + (1 - a) tanh(w x_t),
    a = exp(-1 / (kappa tau)): constant gates from ``time_scale=tau`` (every kernel zero but
    the candidate's input weights w), warp kappa."""
    cell = _make(name, time_scale=tau, warp=kappa, kernel_init=nnx.initializers.zeros_init())
    cell.recurrent_kernel[...] = jnp.zeros_like(cell.recurrent_kernel[...])
    kernel = np.zeros(cell.input_kernel.shape)
    candidate = slice(2 * N, 3 * N)  # g in [i | f | g | o], n in [r | z | n]
    kernel[:, candidate] = w
    cell.input_kernel[...] = jnp.asarray(kernel)
    return cell


@pytest.mark.parametrize("name", sorted(WARP_CELLS))
def test_warp_retimes_a_time_lag_exactly(name):
    tau, kappa = 4.0, 7.5
    w = np.asarray(normal(0, (D, N)))
    xs = normal(1, (T, D))
    cell = _lag_cell(name, tau, 1.0, w)
    if name == "lstm":  # chrono biases: f = exp(-1/tau), i = 1 - f
        np.testing.assert_allclose(_sigmoid(_np(cell.bias)[N : 2 * N]), math.exp(-1 / tau))
        np.testing.assert_allclose(_np(cell.bias)[:N], -_np(cell.bias)[N : 2 * N])
    else:
        np.testing.assert_allclose(_sigmoid(_np(cell.input_bias)[N : 2 * N]), math.exp(-1 / tau))
    u = np.tanh(np.asarray(xs) @ w)
    for warped in (_lag_cell(name, tau, kappa, w), cell.warped(kappa)):
        a = math.exp(-1.0 / (kappa * tau))
        y, expected = np.zeros(N), []
        for u_t in u:
            y = a * y + (1 - a) * u_t
            expected.append(y)
        carry = warped.initialize_carry((D,))
        final, _ = _run(warped, carry, xs)
        state = final[0] if name == "lstm" else final  # the LSTM's lag is its cell state c
        np.testing.assert_allclose(state, expected[-1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(WARP_CELLS))
def test_warped_k_then_inverse_is_the_identity(name):
    cell = _make(name)
    randomize_params(cell, 1)
    carry = random_like(2, cell.initialize_carry((D,)))
    xs = normal(3, (T, D))
    before = nnx.state(cell)
    slow = cell.warped(30.0)
    tree_allclose(nnx.state(cell), before, rtol=0, atol=0)  # the original is unchanged
    np.testing.assert_allclose(
        _np(slow.log_time_scale), _np(cell.log_time_scale) + math.log(30.0), rtol=1e-15
    )
    back = slow.warped(1 / 30.0)
    tree_allclose(nnx.state(back), before, rtol=1e-15, atol=1e-15)
    tree_allclose(_run(back, carry, xs), _run(cell, carry, xs), rtol=1e-13, atol=1e-13)
    assert not np.allclose(_run(slow, carry, xs)[1], _run(cell, carry, xs)[1])


class _Model(nnx.Module):
    def __init__(self, rngs):
        self.cell = TimeWarpGRUCell(D, N, param_dtype=jnp.float64, rngs=rngs)
        self.other = TimeWarpLSTMCell(D, N, warp_shape="scalar", param_dtype=jnp.float64, rngs=rngs)
        self.readout = nnx.Linear(N, 1, param_dtype=jnp.float64, rngs=rngs)


def test_retime_shifts_every_warp_of_a_model_and_nothing_else():
    model = _Model(nnx.Rngs(0))
    new = retime(model, 0.2)
    warp_free = nnx.All(nnx.Param, nnx.Not(WarpParam))
    tree_allclose(nnx.state(new, warp_free), nnx.state(model, warp_free), rtol=0, atol=0)
    for warp in jax.tree_util.tree_leaves(nnx.state(new, WarpParam)):
        np.testing.assert_allclose(warp, math.log(0.2), rtol=1e-15)
    np.testing.assert_array_equal(_np(model.cell.log_time_scale), 0.0)


# ---------------------------------------------------------------------------------------------
# Parallel solves, flax.nnx.RNN, Jacobian structure and carry dtype.


# ---------------------------------------------------------------------------------------------
# Training only the warp.


@pytest.mark.parametrize("name", sorted(WARP_CELLS))
def test_training_only_the_warp_changes_only_the_warp(name):
    model = _Model(nnx.Rngs(1))
    model.cell = _make(name)
    xs, target = normal(0, (T, D)), normal(1, (T, 1))

    def loss(model):
        carry = model.cell.initialize_carry((D,))
        hs = jax.lax.scan(model.cell, carry, xs)[1]
        return jnp.mean((model.readout(hs) - target) ** 2)

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, WarpParam))(model)
    assert {type(v) for v in jax.tree_util.tree_leaves(grads, is_leaf=_is_variable)} == {WarpParam}
    warp_free = nnx.All(nnx.Param, nnx.Not(WarpParam))
    before_params = nnx.clone(nnx.state(model, warp_free))
    before_warps = nnx.clone(nnx.state(model, WarpParam))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=WarpParam)

    @nnx.jit
    def train_step(model, optimizer):
        value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, WarpParam))(model)
        optimizer.update(model, grads)
        return value, grads

    first, grads = train_step(model, optimizer)
    assert {type(v) for v in jax.tree_util.tree_leaves(grads, is_leaf=_is_variable)} == {WarpParam}
    tree_allclose(nnx.state(model, warp_free), before_params, rtol=0, atol=0)
    moved = jax.tree_util.tree_map(
        lambda a, b: np.abs(np.asarray(a) - np.asarray(b)),
        nnx.state(model, WarpParam),
        before_warps,
    )
    # Adam's first step moves every warp with a non-zero gradient by ~ the learning rate.
    np.testing.assert_allclose(moved["cell"]["log_time_scale"][...], 1e-2, rtol=1e-3)
    np.testing.assert_array_equal(moved["other"]["log_time_scale"][...], 0.0)  # unused cell
    assert float(train_step(model, optimizer)[0]) < float(first)


def _is_variable(x):
    return isinstance(x, nnx.Variable)


# ---------------------------------------------------------------------------------------------
# Parameter counts and errors.


PARAM_COUNTS = {
    ("lstm", "unit"): lambda n, d: 4 * (n * d + n**2 + n) + n,
    ("lstm", "scalar"): lambda n, d: 4 * (n * d + n**2 + n) + 1,
    ("gru", "unit"): lambda n, d: 3 * (n * d + n**2 + n) + 2 * n,
    ("gru", "scalar"): lambda n, d: 3 * (n * d + n**2 + n) + n + 1,
}


@pytest.mark.parametrize("name, warp_shape", sorted(PARAM_COUNTS))
def test_parameter_counts(name, warp_shape):
    cell = _make(name, warp_shape=warp_shape)
    plain = WARP_CELLS[name][1](D, N, rngs=nnx.Rngs(0))
    assert count_params(cell) == PARAM_COUNTS[name, warp_shape](N, D)
    n_warp = N if warp_shape == "unit" else 1
    assert count_params(cell) == count_params(plain) + n_warp
    warps = jax.tree_util.tree_leaves(nnx.state(cell, WarpParam))
    assert sum(w.size for w in warps) == n_warp


@pytest.mark.parametrize("name", sorted(WARP_CELLS))
def test_bad_options_raise(name):
    for bad in (0.0, -2.0, math.inf, math.nan, "slow"):
        with pytest.raises(ValueError, match=r"time_scale.*" + repr(bad)[:3]):
            _make(name, time_scale=bad)
        with pytest.raises(ValueError, match=r"warp must"):
            _make(name, warp=bad)
    with pytest.raises(ValueError, match=r"warp_shape.*'vector'"):
        _make(name, warp_shape="vector")
    cell = _make(name)
    with pytest.raises(ValueError, match=r"factor.*0"):
        cell.warped(0)
    with pytest.raises(ValueError, match=r"factor.*-1"):
        retime(cell, -1.0)
