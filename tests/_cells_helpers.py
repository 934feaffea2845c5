"""Helpers for the rnnscan.nn tests: building cells, random carries and comparisons."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rnnscan.nn as rn

# name -> (cell class, extra constructor arguments). RGLRU needs in_features == hidden.
CELLS = {
    "gru": (rn.GRUCell, {}),
    "lstm": (rn.LSTMCell, {}),
    "min_gru": (rn.MinGRUCell, {}),
    "min_lstm": (rn.MinLSTMCell, {}),
    "lru": (rn.LRUCell, {}),
    "rglru": (rn.RGLRUCell, {}),
    "diag_gru": (rn.DiagGRUCell, {}),
    "diag_lstm": (rn.DiagLSTMCell, {}),
    "second_order": (rn.SecondOrderCell, {}),
    "mirnn": (rn.MIRNNCell, {}),
    "cp_rnn": (rn.CPRNNCell, {"rank": 3}),
    "brc": (rn.BRCCell, {}),
    "nbrc": (rn.NBRCCell, {}),
    "col_ei": (rn.ColEICell, {}),
    "dann": (rn.DANNCell, {}),
    "cfc": (rn.CfCCell, {"rank": 2, "sparsity": 0.5, "backbone_features": 8}),
    # Away from the neutral warp, which is the plain LSTM / GRU exactly.
    "time_warp_lstm": (rn.TimeWarpLSTMCell, {"warp": 2.0}),
    "time_warp_gru": (rn.TimeWarpGRUCell, {"warp": 0.5}),
    # Low-rank recurrent kernels, W_h = U Vᵀ (Lu et al. 2016).
    "gru_rank2": (rn.GRUCell, {"rank": 2}),
    "lstm_rank2": (rn.LSTMCell, {"rank": 2}),
    # Away from the plain RNN (tau = 1), with unequal time constants.
    "leaky_rnn": (rn.LeakyRNNCell, {"tau_init": (1.5, 6.0)}),
}
# Entries that are a named cell of rnnscan.nn.CELLS with options: entry -> that name.
OPTION_VARIANTS = {"gru_rank2": "gru", "lstm_rank2": "lstm"}
CELL_NAMES = sorted(CELLS)
CARRY_LINEAR = sorted(name for name, (cls, _) in CELLS.items() if cls.carry_linear)

TOLERANCES = {
    jnp.float64: dict(rtol=1e-8, atol=1e-8),
    jnp.float32: dict(rtol=1e-4, atol=1e-4),
}


def make_cell(
    name: str, in_features: int, hidden: int, param_dtype=jnp.float32, seed: int = 0, **overrides
):
    cls, kwargs = CELLS[name]
    if name == "rglru":
        hidden = in_features
    kwargs = {**kwargs, **overrides}
    return cls(in_features, hidden, param_dtype=param_dtype, rngs=nnx.Rngs(seed), **kwargs)


def random_like(seed: int, tree, scale=0.5):
    """A random pytree with ``tree``'s shapes and dtypes (complex leaves get both parts).
    Drawn with NumPy: no XLA compilation per shape, which dominates small eager tests."""
    rng = np.random.default_rng(seed)

    def draw(leaf):
        value = scale * rng.standard_normal(leaf.shape)
        if jnp.iscomplexobj(leaf):
            value = value + 1j * scale * rng.standard_normal(leaf.shape)
        return jnp.asarray(value.astype(leaf.dtype))

    return jax.tree_util.tree_map(draw, tree)


def randomize_params(model: nnx.Module, seed: int, scale=0.3) -> None:
    """Perturb every parameter in place, so that zero-initialised biases are exercised too."""
    params = nnx.state(model, nnx.Param)
    noise = random_like(seed, params, scale)
    nnx.update(model, jax.tree_util.tree_map(lambda p, e: p + e, params, noise))


def normal(seed: int, shape, dtype=np.float64):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def flat_carry(carry) -> jax.Array:
    """The carry as one real vector: leaves in order, a complex leaf as [Re, Im]."""
    parts = []
    for leaf in jax.tree_util.tree_leaves(carry):
        leaf = jnp.ravel(leaf)
        parts += [leaf.real, leaf.imag] if jnp.iscomplexobj(leaf) else [leaf]
    return jnp.concatenate(parts)


def count_params(model: nnx.Module) -> int:
    return sum(
        int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))
    )


def tree_allclose(actual, expected, *, rtol, atol) -> None:
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)
    ):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path)
        )
