"""``method="auto"``: an RNN that runs either its parallel solver or ``lax.scan``, as a static
flag says (each assignment of a model compiles once; none pays for the other)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from .._methods import Method

__all__ = ["Auto", "as_auto"]


@dataclasses.dataclass(frozen=True)
class Auto:
    """The method of an :class:`rnnscan.nn.RNN` whose solver is chosen while it runs.

    The layer holds a static flag, ``parallel_active``: ``True`` runs ``parallel`` (a method
    name, resolved with the cell's Jacobian structure, or a method object), ``False`` the
    sequential scan. The flag is part of the module's graph definition, so a jitted function
    compiles once per assignment of a model's flags and then switches between compiled
    programs for free; each program contains one method only, so neither pays for the
    other (a run-time ``lax.cond`` would: reverse mode keeps the residuals of both
    branches). Nothing flips the flag by itself: :class:`rnnscan.train.MethodSelector`
    decides from measured step times (``rnnscan.train`` does so with ``model.method:
    auto``), and :func:`rnnscan.nn.set_methods` applies a decision.

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


def as_auto(method: str | Method | Auto) -> Auto | None:
    """``method`` as an :class:`Auto`, or ``None`` if it is a fixed method."""
    if isinstance(method, Auto):
        return method
    if isinstance(method, str) and method == "auto":
        return Auto()
    return None
