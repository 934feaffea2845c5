"""The options every iterative method shares, and how they resolve."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp

from .._linear_recurrence import BACKENDS
from .._structure import Dense, Diagonal, Structure, as_structure
from ._base import DENSE, Method, Report, default_tolerances
from ._window import Windowed

_COMMON_OPTIONS = """
    Options of every iterative method:
        rtol, atol: stop when max |delta| <= atol + rtol |c| (defaults by dtype:
            1e-10 for float64, 1e-5 for float32).
        max_steps: iteration cap (never more than T + 1 without a window).
        jacobian: the exact structure of the carry Jacobian: ``Dense()``, ``Diagonal()`` or
            ``BlockDiagonal(k)``, used by the gradient (and by the forward solve of the
            Newton-type methods), so it must be exact. Default: the step function's own
            ``jacobian_structure`` where it declares one (every rnnscan cell does), else
            ``Dense()``.
        give_up: stop early when the solve has evidently failed (iterates diverging, or no
            progress for 8 iterations; see ``RESULTS.diverged`` / ``RESULTS.stalled``), so
            that the fallback runs after a few wasted iterations rather than ``max_steps``.
            Default True.
        window: iterate on ``window`` steps at a time, starting at the first unconverged
            step and sliding on as the prefix converges: memory O(window n^2) for dense
            Jacobians in the forward pass instead of O(T n^2). ``max_steps`` then caps the
            iterations per window position (T / window of them). Default None (all T).
        linear_recurrence: how the linear recurrences of the iterations and of the
            gradient are solved: ``"auto"`` (default; today ``jax.lax.associative_scan``
            everywhere), ``"associative"`` or ``"pallas"`` (the chunked Pallas kernel,
            ``Diagonal()`` and ``BlockDiagonal(k)`` Jacobians, not with a time split or a
            window; not yet measured on a GPU, and slow in interpret mode elsewhere).
"""


@dataclasses.dataclass(frozen=True)
class Iterative(Method):
    """Base class of the iterative methods: their common options and how they resolve."""

    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None
    jacobian: Structure | None = None
    give_up: bool = True
    window: int | None = None
    linear_recurrence: str = "auto"

    default_max_steps: ClassVar[int] = 50
    # Whether the forward solve uses only the diagonal of the Jacobian.
    diagonal_only: ClassVar[bool] = False
    # Whether iteration k makes step k exact on an explicit recurrence (so T + 1 suffice).
    exact_prefix: ClassVar[bool] = True
    # An iteration is progress for the stall rule when its measure falls below this factor
    # times the smallest so far (see rnnscan._stopping).
    progress_factor: ClassVar[float] = 1.0

    def __post_init__(self):
        if self.jacobian is not None:
            object.__setattr__(self, "jacobian", as_structure(self.jacobian))
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 0, got {value!r}")
        if self.max_steps is not None and not (
            isinstance(self.max_steps, int) and self.max_steps >= 1
        ):
            raise ValueError(
                f"{type(self).__name__}: max_steps must be a positive int, got {self.max_steps!r}"
            )
        if self.linear_recurrence not in BACKENDS:
            raise ValueError(
                f"{type(self).__name__}: linear_recurrence must be one of {BACKENDS}, got "
                f"{self.linear_recurrence!r}"
            )
        if self.linear_recurrence == "pallas" and self.window is not None:
            raise ValueError(
                f"{type(self).__name__}: linear_recurrence='pallas' does not run with a window "
                "yet; use window=None or linear_recurrence='auto'"
            )
        if self.window is not None and not (isinstance(self.window, int) and self.window >= 1):
            raise ValueError(
                f"{type(self).__name__}: window must be None or a positive int, got {self.window!r}"
            )

    def resolved(self, dtype, length, exact_prefix=True, structure=DENSE):
        rtol, atol = default_tolerances(dtype)
        cap = self.max_steps if self.max_steps is not None else self.default_max_steps
        window = None if self.window is None or self.window >= length else self.window
        give_up = self.give_up
        exact = exact_prefix and self.exact_prefix
        if window is None and exact:
            # T + 1 iterations always suffice in exact arithmetic (T to make every step
            # exact, one more to see a zero update), so a larger cap is never needed, and
            # when they fit under the cap there is nothing to give up on.
            give_up = give_up and cap < length + 1
            cap = max(1, min(cap, length + 1))
        resolved = dataclasses.replace(
            self,
            rtol=rtol if self.rtol is None else self.rtol,
            atol=atol if self.atol is None else self.atol,
            max_steps=cap,
            window=None,
            give_up=give_up,
            jacobian=structure if self.jacobian is None else self.jacobian,
        )
        if window is None:
            return resolved
        # The cap holds per window position: a window slides at least one step every
        # second iteration, so this many always suffice.
        return Windowed(resolved, window, cap * -(-length // window))

    # The protocol (see the module docstring), for subclasses.

    def init(self, problem, c):
        """``(state, nonfinite)`` from the first guess ``c``; ``nonfinite`` ends the solve
        before its first iteration (NaN in the inputs or parameters)."""
        return c, jnp.array(False)

    def step(self, problem, state, k) -> tuple[Any, Report]:
        raise NotImplementedError

    def carries(self, problem, state):
        return state

    def input_nonfinite(self, problem, state):
        """Whether the final state shows non-finite values that can only have come from the
        inputs or parameters (the iterations never write one into the iterate)."""
        return ~problem.timeline.all(jnp.isfinite(self.carries(problem, state)))

    @property
    def forward_structure(self) -> Structure:
        """The structure of the Jacobians the iterations use."""
        return Diagonal() if self.diagonal_only else (self.jacobian or Dense())
