"""How the solver sees the time axis: whole on one device, or split over a mesh axis.

The iterations (``_methods``), the tangent solve (``_implicit.py``) and the outputs
(``_scan.py``) touch the time axis only through a :class:`Timeline`: shifting carries by
one step, solving linear recurrences, reducing flags over all steps, and the sequential
fallback. With ``axis_name=None`` these are the one-device operations; with the name of a
mesh axis that splits time (inside ``jax.shard_map``) they are those of ``py``,
and every method, structure and derivative works unchanged.

``reverse=True`` says that the recurrence runs from the last step to the first
(c_t = F(c_{t+1}, x_t), as ``jax.lax.scan(..., reverse=True)``) with the arrays left in
their original order. Every operation is then its mirror image — "the step before" is the
step after, a forward linear recurrence runs backwards and vice versa, the last carry is
the one at index 0 — which is how a split solve runs in reverse without moving any block
between devices: reversing the array order globally would send block d to device D-1-d.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._distributed import (
    _varying,
    global_all,
    global_any,
    global_max,
    global_positions,
    last_carry,
    linear_recurrence_sharded,
    sequential_sharded,
    shift_sharded,
)
from ._linear_recurrence import linear_recurrence
from ._structure import Structure


def _shift_whole(c0, c, *, from_after: bool):
    """One device: (c0, c_0, ..., c_{T-2}), or with ``from_after`` (c_1, ..., c_{T-1}, c0)."""

    def shift(first, rest):
        if from_after:
            return jnp.concatenate([rest[1:], first[None]], axis=0)
        return jnp.concatenate([first[None], rest[:-1]], axis=0)

    return jax.tree_util.tree_map(shift, c0, c)


@dataclasses.dataclass(frozen=True)
class Timeline:
    """The time axis of a solve: ``axis_name=None`` (whole, the default) or the mesh axis
    name that splits it into contiguous blocks, one per device; ``reverse``: processed from
    the last step to the first."""

    axis_name: Any = None
    reverse: bool = False
    # How its linear recurrences are solved (``linear_recurrence``'s ``backend``).
    backend: str = "auto"

    @property
    def split(self) -> bool:
        return self.axis_name is not None

    def varying(self, tree):
        """``tree`` typed as device-varying over the split axis (``shard_map``'s
        ``check_vma``), so that a function traced once sees the same types at every call;
        the identity when whole."""
        return _varying(tree, self.axis_name) if self.split else tree

    def devices(self) -> int:
        """D, the number of blocks the time axis is split into (1 when whole)."""
        return jax.lax.axis_size(self.axis_name) if self.split else 1

    def shift(self, c0, c):
        """The carry each step starts from: (c_{-1} = c0, c_0, ..., c_{T-2}); with
        ``reverse``, (c_1, ..., c_{T-1}, c_T = c0)."""
        if self.split:
            return shift_sharded(c0, c, self.axis_name, reverse=self.reverse)
        return _shift_whole(c0, c, from_after=self.reverse)

    def shift_back(self, end, c):
        """The value each step reads from the step after it in processing order:
        (c_1, ..., c_{T-1}, c_T = end); with ``reverse``, (end, c_0, ..., c_{T-2})."""
        if self.split:
            return shift_sharded(end, c, self.axis_name, reverse=not self.reverse)
        return _shift_whole(end, c, from_after=not self.reverse)

    def linear_recurrence(self, A, b, structure: Structure, *, reverse: bool = False):
        """x_t = A_t x_{t-1} + b_t in processing order (``reverse``: against it)."""
        backwards = reverse != self.reverse
        if self.split:
            if self.backend == "pallas":
                raise NotImplementedError(
                    "linear_recurrence='pallas' does not run on a time axis split over "
                    "devices yet; use 'auto' there"
                )
            return linear_recurrence_sharded(A, b, structure, self.axis_name, reverse=backwards)
        return linear_recurrence(A, b, structure, reverse=backwards, backend=self.backend)

    def positions(self, length: int):
        """The position of each local step in processing order (its global time index when
        not reversed)."""
        if self.split:
            return global_positions(length, self.axis_name, reverse=self.reverse)
        t = jnp.arange(length)
        return length - 1 - t if self.reverse else t

    def all(self, pred):
        return global_all(pred, self.axis_name) if self.split else jnp.all(pred)

    def any(self, pred):
        return global_any(pred, self.axis_name) if self.split else jnp.any(pred)

    def max(self, x):
        return global_max(x, self.axis_name) if self.split else jnp.max(x)

    def last(self, c):
        """The carry after the last step in processing order (on every device)."""
        if self.split:
            return last_carry(c, self.axis_name, reverse=self.reverse)
        index = 0 if self.reverse else -1
        return jax.tree_util.tree_map(lambda leaf: leaf[index], c)

    def sequential(self, step: Callable[[Any, Any], Any], c0, xs, length: int):
        """The exact carries c_t = step(c_{t-1}, x_t) (in processing order) by
        ``jax.lax.scan``."""
        if self.split:
            return sequential_sharded(
                step, c0, xs, self.axis_name, length=length, reverse=self.reverse
            )

        def keep(c, x):
            c = step(c, x)
            return c, c

        return jax.lax.scan(keep, c0, xs, length=length, reverse=self.reverse)[1]


WHOLE = Timeline()
