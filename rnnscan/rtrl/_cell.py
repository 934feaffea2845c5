"""A cell as a pure function of (parameters, flat carry, input), one sample at a time.

RTRL differentiates the cell's step with respect to its parameters and its carry, sample by
sample: this module splits the ``flax.nnx`` cell into its parameters (an ``nnx.State``, the
structure ``nnx.grad`` returns) and the rest, flattens the carry to a real vector (complex
leaves as [Re, Im], the solver's layout, ``rnnscan/_flatten.py``) and finds the batch axes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from .._flatten import make_flattener


@dataclasses.dataclass(frozen=True)
class FunctionalCell:
    """``step(params, c, x) -> (c', y)`` for one sample with a flat real carry ``c`` of size
    ``size``, and the maps between the cell's (batched) carries and ``(B, size)`` arrays."""

    params: Any  # the nnx.State of the cell's nnx.Param variables
    step: Callable[[Any, jax.Array, Any], tuple[jax.Array, Any]]
    flatten: Callable[[Any], jax.Array]  # one sample's carry -> (size,)
    unflatten: Callable[[jax.Array], Any]
    size: int
    batch_shape: tuple[int, ...]
    dtype: Any

    @property
    def batch(self) -> int:
        return math.prod(self.batch_shape)

    def flat_carry(self, carry) -> jax.Array:
        """The cell's carry ``(*batch, ...)`` as a ``(B, size)`` array."""
        return jax.vmap(self.flatten)(merge_batch(carry, len(self.batch_shape)))

    def carry(self, flat: jax.Array):
        """The inverse of :meth:`flat_carry`."""
        return split_batch(jax.vmap(self.unflatten)(flat), self.batch_shape)

    def flat_cotangent(self, flat: jax.Array, cotangent) -> jax.Array:
        """A cotangent of the cell's carry as one of the flat carry (JAX's convention for
        complex leaves, whatever it is, carried through the ``vjp`` of the unflattening)."""
        cotangent = merge_batch(cotangent, len(self.batch_shape))

        def one(c, ct):
            return jax.vjp(self.unflatten, c)[1](ct)[0]

        return jax.vmap(one)(flat, cotangent)


def merge_batch(tree, batch_ndim: int):
    """Every leaf ``(*batch, ...)`` as ``(B, ...)``."""
    return jax.tree_util.tree_map(
        lambda leaf: jnp.reshape(
            leaf, (math.prod(jnp.shape(leaf)[:batch_ndim]),) + jnp.shape(leaf)[batch_ndim:]
        ),
        tree,
    )


def split_batch(tree, batch_shape: tuple[int, ...]):
    """Every leaf ``(B, ...)`` as ``(*batch, ...)``."""
    return jax.tree_util.tree_map(
        lambda leaf: jnp.reshape(leaf, batch_shape + jnp.shape(leaf)[1:]), tree
    )


def functional_cell(cell: nnx.Module, carry, caller: str) -> FunctionalCell:
    """Split ``cell`` and read the batch shape off ``carry`` against one sample's carry
    (``cell.initialize_carry((cell.in_features,))``)."""
    graphdef, params, rest = nnx.split(cell, nnx.Param, ...)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError(f"{caller}: {type(cell).__name__} has no nnx.Param to differentiate")
    sample = sample_carry(cell, carry, caller)
    _, flatten, unflatten = make_flattener(sample)
    size = int(flatten(sample).shape[0])
    batch_shape = batch_shape_of(carry, sample, caller)

    def step(params, c, x):
        model = nnx.merge(graphdef, params, rest)
        new_carry, y = model(unflatten(c), x)
        return flatten(new_carry), y

    dtype = jnp.result_type(flatten(sample))
    return FunctionalCell(params, step, flatten, unflatten, size, batch_shape, dtype)


def sample_carry(cell, carry, caller: str):
    """One sample's carry: the cell's own zero carry for an unbatched input, with ``carry``'s
    dtypes; ``carry`` itself when the cell cannot say (no ``initialize_carry``/``in_features``,
    i.e. the carry is taken as unbatched)."""
    if not (hasattr(cell, "initialize_carry") and hasattr(cell, "in_features")):
        return jax.tree_util.tree_map(jnp.zeros_like, carry)
    template = cell.initialize_carry((cell.in_features,))
    if jax.tree_util.tree_structure(template) != jax.tree_util.tree_structure(carry):
        raise ValueError(
            f"{caller}: carry has structure {jax.tree_util.tree_structure(carry)} but "
            f"{type(cell).__name__}.initialize_carry gives {jax.tree_util.tree_structure(template)}"
        )
    return jax.tree_util.tree_map(
        lambda t, c: jnp.zeros(jnp.shape(t), jnp.result_type(c)), template, carry
    )


def batch_shape_of(carry, sample, caller: str) -> tuple[int, ...]:
    """The leading axes every leaf of ``carry`` has beyond one sample's carry."""
    shapes = set()
    for (path, leaf), one in zip(
        jax.tree_util.tree_leaves_with_path(carry), jax.tree_util.tree_leaves(sample)
    ):
        shape, sample_shape = jnp.shape(leaf), jnp.shape(one)
        extra = len(shape) - len(sample_shape)
        if extra < 0 or tuple(shape[extra:]) != tuple(sample_shape):
            raise ValueError(
                f"{caller}: carry{jax.tree_util.keystr(path)} has shape {shape}, which is not "
                f"(*batch, {', '.join(map(str, sample_shape))}) (one sample's carry)"
            )
        shapes.add(tuple(shape[:extra]))
    if len(shapes) != 1:
        raise ValueError(f"{caller}: the carry's leaves disagree on the batch shape: {shapes}")
    return shapes.pop()
