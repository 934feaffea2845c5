r"""The solver protocol: options classes that carry their own behaviour.

A method is a small frozen dataclass of options (in the style of optimistix). An iterative
method also knows how to take one iteration on a problem (``rnnscan._problem``); the single
driver loop (``_loop.py``) does everything else: the first guess, the tolerance test it is
told about, the give-up rules (``rnnscan._stopping``), the cap and the result code. The
protocol of an iterative method::

    state, nonfinite = method.init(problem, c)        # c: the first guess
    state, report = method.step(problem, state, k)    # iteration k (0-based)
    c = method.carries(problem, state)
    method.input_nonfinite(problem, state)            # checked when the solve failed
    method.initial_measure(state)                     # the first guess's measure, or None

A :class:`Report` says what one iteration achieved; ``progress_factor`` and ``give_up`` tune
the give-up rules; ``exact`` methods (sequential) are not iterated at all.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax.numpy as jnp

from .._structure import Dense, Structure

DENSE = Dense()  # the structure of a step function that declares none

# Default tolerances on the Newton update, per real dtype: max_t,i |delta| <= atol + rtol |c|.
# float32 cannot get much below ~1e-5 on long, weakly contractive sequences: rounding in the
# parallel scan grows with the number of nearly-undamped steps.
_DEFAULT_TOLERANCES = {
    jnp.dtype("float64"): (1e-10, 1e-10),
    jnp.dtype("float32"): (1e-5, 1e-5),
    jnp.dtype("bfloat16"): (1e-2, 1e-2),
    jnp.dtype("float16"): (1e-3, 1e-3),
}


def default_tolerances(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for a real dtype."""
    return _DEFAULT_TOLERANCES.get(jnp.dtype(dtype), (1e-5, 1e-5))


class Report(NamedTuple):
    """What one iteration achieved, for the driver loop.

    ``measure`` is the scalar the give-up rules watch (``finite``: whether everything it was
    taken over was finite); ``residual`` is reported as ``Solution.residual``; ``converged``
    ends the loop with success, ``nonfinite`` with ``RESULTS.nonfinite`` (non-finite values
    that further iterations cannot remove). Optional: ``prefix`` / ``unconverged``, the
    converged prefix and the steps after it (exact-prefix methods: a fast-growing prefix
    vetoes giving up), and ``restart``, which clears the stall rule (a window that slid).
    """

    measure: Any
    finite: Any
    residual: Any
    converged: Any
    nonfinite: Any
    prefix: Any = None
    unconverged: Any = None
    restart: Any = None


@dataclasses.dataclass(frozen=True)
class Method:
    """Base class of the solvers. ``name`` is the string that selects a solver class
    (``method="newton"``); subclasses without one are not selectable by name."""

    name: ClassVar[str | None] = None
    # Whether the method computes the carries exactly, one step after another (no iteration).
    exact: ClassVar[bool] = False
    # Whether one iteration is exact by construction (no loop is built around it).
    single_step: ClassVar[bool] = False

    def resolved(
        self, dtype, length: int, exact_prefix: bool = True, structure: Structure = DENSE
    ) -> "Method":
        """The method with every default filled in for carries of ``dtype`` and ``length``
        steps (``exact_prefix``: whether the problem makes step k exact at iteration k;
        ``structure``: the Jacobian structure the step function declares, used when the
        method was given none)."""
        return self

    def initial_measure(self, state) -> Any:
        """The give-up rules' measure at the first guess (``init``'s state), the bar the
        first iterations must improve on; None where there is none (an update's size exists
        only after an update)."""
        return None

    def on_split_time(self, structure: Structure) -> "Method":
        """The method to use when time is split across devices (``structure``: the step
        function's declared Jacobian structure)."""
        return self
