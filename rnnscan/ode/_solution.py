"""What an ODE solve returns: the solution on the grid, and how the parallel solve went."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jaxtyping import Array, Bool, Float, Int

from .._solution import Outcome


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ODESolution(Outcome):
    """The result of :func:`rnnscan.ode.solve_ivp` and :func:`rnnscan.ode.diffeqsolve`.

    Attributes:
        ts: the time grid, shape ``(N,)`` (as passed).
        ys: the solution at every grid point, stacked on a leading axis of length N:
            ``ys[0]`` is ``y0`` and ``ys[k]`` the one-step scheme's value at ``ts[k]``; the
            same pytree structure as ``y0``. This is what ``diffrax.diffeqsolve`` returns
            as ``sol.ys`` with ``saveat=SaveAt(ts=ts)`` and ``StepTo(ts)``.
        iterations: parallel iterations taken (0 for ``"sequential"``).
        residual: the size of the last update (explicit schemes: as for
            :class:`rnnscan.Solution`), or max |G| of the implicit step equations
            (implicit schemes).
        result: an :class:`rnnscan.RESULTS` code for the *parallel* solve.
        fell_back: whether ``ys`` was recomputed by sequential time stepping because the
            parallel solve failed (``on_failure="fallback"``).

    Under ``jax.vmap`` every field gains the batch axis. ``converged`` (the parallel solve
    converged) and ``ok`` (the values can be trusted: converged or recomputed) are
    conveniences.
    """

    ts: Float[Array, " N"]
    ys: Any
    iterations: Int[Array, ""]
    residual: Float[Array, ""]
    result: Int[Array, ""]
    fell_back: Bool[Array, ""]
