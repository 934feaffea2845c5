"""``method="auto"``: an RNN that can run either its parallel solver or ``lax.scan``, switched
at run time by a flag in the model's state (so switching never recompiles)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from flax import nnx

from .._methods import Method

__all__ = ["Auto", "SolverChoice", "as_auto"]


@dataclasses.dataclass(frozen=True)
class Auto:
    """The method of an :class:`rnnscan.nn.RNN` whose solver is chosen while it runs.

    The layer holds a boolean :class:`SolverChoice` variable: ``True`` runs ``parallel`` (a
    method name, resolved with the cell's Jacobian structure, or a method object), ``False``
    runs the sequential scan. Both are compiled into one ``lax.cond``, so flipping the flag
    between calls of a jitted function changes which branch runs without recompiling.
    Nothing flips it by itself: :class:`rnnscan.nn.MethodSelector` decides from measured
    step times (``rnnscan.train`` does so with ``model.method: auto``), and
    :func:`rnnscan.nn.set_methods` applies a decision.

    Args:
        parallel: the parallel method (default ``"newton"``).
        start: which branch runs until something flips it.
    """

    parallel: str | Method = "newton"
    start: Literal["parallel", "sequential"] = "parallel"

    def __post_init__(self):
        if self.start not in ("parallel", "sequential"):
            raise ValueError(f"Auto: start must be 'parallel' or 'sequential', got {self.start!r}")
        if isinstance(self.parallel, str) and self.parallel in ("auto", "sequential"):
            raise ValueError(f"Auto: parallel must be a parallel method, got {self.parallel!r}")


class SolverChoice(nnx.Variable):
    """The run-time flag of an ``Auto`` RNN: ``True`` for the parallel method.

    It is neither an ``nnx.Param`` (optimisers leave it alone) nor an ``nnx.Intermediate``;
    ``nnx.split(model, nnx.Param, ...)`` puts it with the rest of the model's state, which
    checkpoints store.
    """


def as_auto(method: str | Method | Auto) -> Auto | None:
    """``method`` as an :class:`Auto`, or ``None`` if it is a fixed method."""
    if isinstance(method, Auto):
        return method
    if isinstance(method, str) and method == "auto":
        return Auto()
    return None
