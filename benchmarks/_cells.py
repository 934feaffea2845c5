"""The cells a configuration can name: the library's one table, ``rnnscan.nn.CELLS``."""

from __future__ import annotations

from typing import Any

import rnnscan.nn

# Configuration name -> rnnscan.nn cell class ("gru", "lstm", "min_gru", "cp_rnn", ...).
CELL_NAMES = tuple(rnnscan.nn.CELLS)

# Constructor arguments used unless the configuration's cell_options say otherwise.
DEFAULT_CELL_OPTIONS: dict[str, dict[str, Any]] = {"cp_rnn": {"rank": 8}}


def cell_options(name: str, config_options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The extra constructor arguments for cell ``name``: defaults, then the configuration's."""
    return {**DEFAULT_CELL_OPTIONS.get(name, {}), **(config_options or {}).get(name, {})}


# Initialisers such as the orthogonal one (a QR decomposition) do not support these dtypes,
# so the parameters are drawn in float32 and cast.
CAST_AFTER_INIT = ("bfloat16", "float16")


def make_cell(
    name: str, in_features: int, hidden: int, dtype: str, seed: int, options: dict[str, Any]
):
    """An ``rnnscan.nn`` cell with parameters (and carry) of ``dtype``, initialised from
    ``seed`` (in float32 and cast, for bfloat16 and float16)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    cls = rnnscan.nn.CELLS[name]
    init_dtype = "float32" if dtype in CAST_AFTER_INIT else dtype
    cell = cls(
        in_features,
        hidden,
        param_dtype=jnp.dtype(init_dtype),
        rngs=nnx.Rngs(seed),
        **cell_options(name, options),
    )
    if init_dtype != dtype:
        graphdef, state = nnx.split(cell)
        state = jax.tree_util.tree_map(lambda leaf: leaf.astype(dtype), state)
        cell = nnx.merge(graphdef, state)
        cell.carry_dtype = jnp.dtype(dtype)
    return cell
