"""The exact methods: the steps one after another, no iteration."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from .._structure import Dense, Structure
from ._base import Method


@dataclasses.dataclass(frozen=True)
class Sequential(Method):
    """Plain ``jax.lax.scan``: the reference, O(T) depth."""

    name: ClassVar[str] = "sequential"
    exact: ClassVar[bool] = True

    def on_split_time(self, structure):
        return SplitSequential(jacobian=structure)


@dataclasses.dataclass(frozen=True)
class SplitSequential(Method):
    """``Sequential`` on a time axis split over devices: the carries by scans, block after
    block, differentiated implicitly in ``jacobian`` like the parallel methods (one linear
    recurrence, in parallel over the blocks) instead of by transposing the scans, whose
    cotangents of closed-over arrays JAX cannot create inside a partly manual
    ``shard_map``. Built by ``solve`` from ``Sequential()``, not by users."""

    jacobian: Structure = Dense()

    exact: ClassVar[bool] = True
