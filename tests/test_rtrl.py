"""rnnscan.rtrl against backpropagation through time: jax.grad through jax.lax.scan.

Every element-wise cell, one step at a time and by chunks (a partial last chunk), batched,
float64 to 1e-10; the online API (init / step / gradient / step_value_and_grad); dense RTRL
for a dense cell; the refusals; influence memory independent of the sequence length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cells_helpers import make_cell, normal, random_like, randomize_params
from flax import nnx

import rnnscan
import rnnscan.nn as rn
from rnnscan import rtrl

ELEMENTWISE = ["diag_gru", "diag_lstm", "min_gru", "min_lstm", "lru", "rglru", "brc"]
D, N, BATCH, T = 3, 4, 2, 150
RTOL = 1e-10


def setup(name, T=T, seed=0):
    cell = make_cell(name, D, N, param_dtype=jnp.float64, seed=seed)
    randomize_params(cell, seed + 1)
    d = cell.in_features
    xs = normal(seed + 2, (T, BATCH, d))
    carry = random_like(seed + 3, cell.initialize_carry((BATCH, d)))
    y_shape = jax.eval_shape(cell, carry, xs[0])[1].shape
    targets = normal(seed + 4, (T,) + y_shape)

    def loss_fn(y, t):
        # Nonlinear in y, weighted by t: every step's loss differs.
        return jnp.sum(jnp.sin(1.3 * y + targets[t]) * (1.0 + 0.01 * t)) / y.size

    return cell, carry, xs, loss_fn


def bptt_gradient(cell, carry, xs, loss_fn):
    def total(cell):
        _, ys = jax.lax.scan(lambda c, x: cell(c, x), carry, xs)
        return jnp.sum(jax.vmap(loss_fn)(ys, jnp.arange(xs.shape[0])))

    return nnx.jit(nnx.value_and_grad(total))(cell)


def cell_params(cell):
    return nnx.to_pure_dict(nnx.state(cell, nnx.Param))


def assert_gradients_equal(actual, expected, rtol=RTOL):
    """Leaf by leaf, to ``rtol`` relative to the leaf's largest entry."""
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)
    ):
        b = np.asarray(b)
        scale = max(float(np.max(np.abs(b))), 1e-300)
        np.testing.assert_allclose(
            np.asarray(a), b, rtol=rtol, atol=rtol * scale, err_msg=jax.tree_util.keystr(path)
        )


@nnx.jit(static_argnames=("loss_fn", "chunk"))
def jit_sequence_gradient(cell, carry, xs, loss_fn, chunk):
    return rtrl.sequence_gradient(cell, carry, xs, loss_fn, chunk=chunk, return_value=True)


@pytest.mark.parametrize("chunk", [None, 64])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_sequence_gradient_equals_bptt(name, chunk):
    cell, carry, xs, loss_fn = setup(name)
    value, expected = bptt_gradient(cell, carry, xs, loss_fn)
    rtrl_value, grads = jit_sequence_gradient(cell, carry, xs, loss_fn, chunk)
    assert_gradients_equal(grads, expected)
    np.testing.assert_allclose(rtrl_value, value, rtol=1e-12)
    # What nnx.grad returns, so that optax / nnx.Optimizer take it as it is.
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(
        nnx.state(cell, nnx.Param)
    )


@pytest.mark.parametrize("name", ["diag_lstm", "lru"])
def test_online_steps_equal_bptt(name):
    """init / step_value_and_grad step by step: the per-step gradients sum to BPTT's; and
    gradient() of a loss on the final carry equals jax.grad of it."""
    T = 12
    cell, carry, xs, loss_fn = setup(name, T=T)
    _, expected = bptt_gradient(cell, carry, xs, loss_fn)

    @nnx.jit
    def online_step(cell, state, x, t):
        return rtrl.step_value_and_grad(cell, state, x, lambda y: loss_fn(y, t))

    state = rtrl.init(cell, carry)
    total = jax.tree_util.tree_map(jnp.zeros_like, nnx.state(cell, nnx.Param))
    for t in range(T):
        state, _, _, grads = online_step(cell, state, xs[t], t)
        total = jax.tree_util.tree_map(jnp.add, total, grads)
    assert_gradients_equal(total, expected)

    # A loss of the final carry through rtrl.step and rtrl.gradient.
    weights = random_like(7, carry)

    def carry_loss(c):
        return sum(
            jnp.sum(jnp.real(w * jnp.conj(leaf)) + jnp.abs(leaf) ** 2)
            for w, leaf in zip(jax.tree_util.tree_leaves(weights), jax.tree_util.tree_leaves(c))
        )

    def final_loss(cell):
        final, _ = jax.lax.scan(lambda c, x: cell(c, x), carry, xs)
        return carry_loss(final)

    expected = nnx.grad(final_loss)(cell)
    state = rtrl.init(cell, carry)
    step = nnx.jit(rtrl.step)
    for t in range(T):
        state, _ = step(cell, state, xs[t])
    grads = rtrl.gradient(cell, state, jax.grad(carry_loss)(state.carry))
    assert_gradients_equal(grads, expected)


def test_dense_cell_refused():
    cell = make_cell("gru", D, N, param_dtype=jnp.float64)
    carry = cell.initialize_carry((D,))
    with pytest.raises(
        ValueError, match=r"GRUCell declares jacobian_structure=Dense\(\).*dense=True"
    ):
        rtrl.init(cell, carry)
    with pytest.raises(ValueError, match="GRUCell"):
        rtrl.sequence_gradient(cell, carry, jnp.zeros((3, D)), lambda y, t: y.sum())


@pytest.mark.parametrize("chunk", [None, 8])
def test_dense_mode_equals_bptt(chunk):
    """dense=True: classic RTRL on a GRU (the whole carry one unit)."""
    cell, carry, xs, loss_fn = setup("gru", T=20)
    _, expected = bptt_gradient(cell, carry, xs, loss_fn)
    grads = nnx.jit(rtrl.sequence_gradient, static_argnums=(3, 4), static_argnames="dense")(
        cell, carry, xs, loss_fn, chunk, dense=True
    )
    assert_gradients_equal(grads, expected)
    state = rtrl.init(cell, carry, dense=True)
    n_params = sum(leaf.size for leaf in jax.tree_util.tree_leaves(nnx.state(cell, nnx.Param)))
    assert state.influence.shape == (BATCH, N, n_params)


class MisdeclaredCell(rn.GRUCell):
    """A dense GRU that claims a diagonal Jacobian."""

    jacobian_structure = rnnscan.Diagonal()


def test_misdeclared_structure_detected():
    cell = MisdeclaredCell(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="reads other units' carries"):
        rtrl.init(cell, cell.initialize_carry((D,)))


class SharedScaleCell(rn.Cell):
    """h' = tanh(s * (a ⊙ h) + W x): the scalar s moves every unit (a shared column)."""

    jacobian_structure = rnnscan.Diagonal()

    def __init__(self, d, n, *, rngs):
        self.in_features, self.hidden_features = d, n
        self.carry_dtype = jnp.float64
        self.a = nnx.Param(jax.random.uniform(rngs.params(), (n,), jnp.float64, -1, 1))
        self.W = nnx.Param(jax.random.normal(rngs.params(), (d, n), jnp.float64))
        self.s = nnx.Param(jnp.asarray(0.8, jnp.float64))

    def __call__(self, h, x):
        h = jnp.tanh(self.s[...] * (rn._base.lift(self.a[...], h.ndim) * h) + x @ self.W[...])
        return h, h


@pytest.mark.parametrize("chunk", [None, 7])
def test_shared_parameter_equals_bptt(chunk):
    cell = SharedScaleCell(D, N, rngs=nnx.Rngs(0))
    xs = normal(1, (30, BATCH, D))
    carry = normal(2, (BATCH, N))

    def loss_fn(y, t):
        return jnp.sum(jnp.cos(y + 0.1 * t))

    state = rtrl.init(cell, carry)
    paths = [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(cell_params(cell))
    ]
    shared = {path: index.size for path, index in zip(paths, state.plan.shared_index)}
    assert shared == {"['W']": 0, "['a']": 0, "['s']": 1}, shared  # s moves every unit
    _, expected = bptt_gradient(cell, carry, xs, loss_fn)
    _, grads = jit_sequence_gradient(cell, carry, xs, loss_fn, chunk)
    assert_gradients_equal(grads, expected)


def test_influence_memory_constant_in_length():
    """The influence is (batch, N, Q) whatever T, and the compiled gradient program's
    temporary memory does not grow with T (BPTT's does)."""
    cell = make_cell("diag_gru", D, N, param_dtype=jnp.float64)
    carry = cell.initialize_carry((BATCH, D))
    state = rtrl.init(cell, carry)
    q = 3 * D + 7  # DiagGRU: 3 input-kernel entries per input, 3 + 3 biases, 3 recurrent weights
    assert state.plan.columns == q
    assert state.influence.shape == (BATCH, N, q)
    graphdef, params = nnx.split(cell)

    def loss_fn(y, t):
        return jnp.sum(y**2)

    def rtrl_program(params, xs):
        return rtrl.sequence_gradient(nnx.merge(graphdef, params), carry, xs, loss_fn)

    def bptt_program(params, xs):
        return bptt_gradient(nnx.merge(graphdef, params), carry, xs, loss_fn)[1]

    def temp_bytes(program, T):
        xs = jnp.zeros((T, BATCH, D))
        stats = jax.jit(program).lower(params, xs).compile().memory_analysis()
        if stats is None:
            pytest.skip("no compiled memory analysis on this backend")
        return stats.temp_size_in_bytes

    assert temp_bytes(rtrl_program, 64) == temp_bytes(rtrl_program, 1024)
    assert temp_bytes(bptt_program, 1024) > 8 * temp_bytes(bptt_program, 64)


def test_bad_arguments():
    cell = make_cell("min_gru", D, N, param_dtype=jnp.float64)
    carry = cell.initialize_carry((D,))
    xs = jnp.zeros((5, D))
    for chunk in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="chunk must be a positive int"):
            rtrl.sequence_gradient(cell, carry, xs, lambda y, t: y.sum(), chunk=chunk)
    with pytest.raises(ValueError, match="loss_fn must return a scalar"):
        rtrl.sequence_gradient(cell, carry, xs, lambda y, t: y)
    with pytest.raises(ValueError, match="carry"):
        rtrl.init(cell, jnp.zeros((2, N + 1)))
    with pytest.raises(TypeError, match="RTRLState"):
        rtrl.step(cell, carry, xs[0])
