"""A conditional that stays a conditional under ``jax.vmap``.

``lax.cond`` with a batched predicate becomes a ``select`` that evaluates both branches, so a
sequential fallback written with it would run on every call of a batched solve and erase the
speed-up. :func:`lazy_cond` instead reduces the predicate over the batch: the expensive branch
runs (for the whole batch, selected per element) only when some element needs it, and costs
nothing otherwise. Nested ``vmap`` levels are handled one at a time by recursion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap


def _select(pred, on_true, on_false):
    def pick(a, b):
        return jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - pred.ndim)), a, b)

    return jax.tree_util.tree_map(pick, on_true, on_false)


def lazy_cond(pred, true_fun: Callable, false_fun: Callable, operands: Any):
    """``lax.cond(pred, true_fun, false_fun, operands)`` that runs ``true_fun`` under ``vmap``
    only if the predicate holds for some batch element."""

    @custom_vmap
    def cond(pred, operands):
        return jax.lax.cond(pred, true_fun, false_fun, operands)

    @cond.def_vmap
    def cond_batched(axis_size, in_batched, pred, operands):
        pred_batched, operands_batched = in_batched
        # Unbatched operands (cell weights, say) are passed with in_axes=None rather than
        # broadcast, so that no level of nesting copies them once per batch element.
        in_axes = jax.tree_util.tree_map(lambda b: 0 if b else None, operands_batched)
        true_vmapped = jax.vmap(true_fun, in_axes=(in_axes,), axis_size=axis_size)
        false_vmapped = jax.vmap(false_fun, in_axes=(in_axes,), axis_size=axis_size)
        if not pred_batched:
            out = lazy_cond(pred, true_vmapped, false_vmapped, operands)
        else:

            def true_batched(args):
                element_pred, ops = args
                return _select(element_pred, true_vmapped(ops), false_vmapped(ops))

            out = lazy_cond(
                jnp.any(pred), true_batched, lambda args: false_vmapped(args[1]), (pred, operands)
            )
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return cond(pred, operands)
