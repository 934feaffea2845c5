"""``diffeqsolve``: a diffrax solver's fixed-grid steps as a recurrence solved in parallel.

diffrax is optional: it is imported only when :func:`diffeqsolve` is called.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
from jaxtyping import Array, Float

from .._methods import Method, as_method
from .._scan import solve as _solve
from .._solve import ON_FAILURE
from ._ivp import _trivial, check_grid, check_on_grid, check_y0, grid_inputs, with_initial
from ._solution import ODESolution

PyTree = Any

# Solvers whose state carries information from step to step (beyond what init(y) rebuilds),
# so that the per-step recurrence y_{k+1} = step(y_k) would be a different method.
_STATEFUL_SOLVERS = ("ReversibleHeun", "LeapfrogMidpoint", "SemiImplicitEuler")


def _import_diffrax():
    try:
        import diffrax
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rnnscan.ode.diffeqsolve needs diffrax: pip install 'rnnscan[ode]' (or "
            "pip install diffrax); rnnscan.ode.solve_ivp works without it"
        ) from err
    return diffrax


def _differentiable_stages(solver):
    """diffrax's Runge-Kutta solvers loop over their stages with a checkpointed while loop,
    which supports reverse mode only; rnnscan linearises the step (forward mode) and
    transposes that, so the stage loop is switched to equinox's ``"bounded"`` kind, which
    supports both (same arithmetic, same values)."""
    if getattr(solver, "scan_kind", "bounded") in (None, "checkpointed"):
        solver = dataclasses.replace(solver, scan_kind="bounded")
    return solver


def diffeqsolve(
    terms: Any,
    solver: Any,
    ts: Float[Array, " N"],
    y0: PyTree,
    args: PyTree = None,
    *,
    method: str | Method = "newton",
    on_failure: Literal["fallback", "raise", "return"] = "fallback",
    guess: PyTree = None,
) -> ODESolution:
    r"""Step a diffrax solver over the grid ``ts``, solving for all grid values at once.

    The same numbers, to the rnnscan solver tolerance, as

        sol = diffrax.diffeqsolve(terms, solver, ts[0], ts[-1], None, y0, args,
                                  saveat=diffrax.SaveAt(ts=ts),
                                  stepsize_controller=diffrax.StepTo(ts))

    returns in ``sol.ts`` and ``sol.ys`` — the solver's own ``init`` / ``step`` API defines
    the recurrence

        y_{k+1} = solver.step(terms, t_k, t_{k+1}, y_k, args,
                              solver.init(terms, t_k, t_{k+1}, y_k, args), made_jump=False)[0]

    which :func:`rnnscan.solve` solves with ``method`` (Newton / DEER by default), with its
    fallback and implicit derivatives (w.r.t. ``y0``, ``args``, ``ts`` and arrays the vector
    field closes over; any mode; ``jax.vmap``). Re-initialising the solver state each step
    changes nothing for Runge-Kutta solvers: their state is only the first-same-as-last
    stage f(t_k, y_k), which ``init`` recomputes from y_k.

    Reference loop::

        ys = [y0]
        for k in range(len(ts) - 1):
            state = solver.init(terms, ts[k], ts[k + 1], ys[-1], args)
            y, *_ = solver.step(terms, ts[k], ts[k + 1], ys[-1], args, state, made_jump=False)
            ys.append(y)
        return ODESolution(ts=ts, ys=stack(ys), ...)

    Arguments:
        terms: the diffrax term, e.g. ``diffrax.ODETerm(lambda t, y, args: ...)``.
        solver: an explicit diffrax solver: ``Euler``, ``Heun``, ``Midpoint``, ``Ralston``,
            ``Bosh3``, ``Tsit5``, ``Dopri5``, ``Dopri8``, ... (its error estimate is unused:
            the grid is fixed). Implicit diffrax solvers and solvers with state across steps
            (``ReversibleHeun``, ``LeapfrogMidpoint``, ``SemiImplicitEuler``) are refused;
            use :func:`rnnscan.ode.solve_ivp` with ``scheme="trapezoid"`` or
            ``"implicit_midpoint"`` for implicit schemes.
        ts: the grid, shape ``(N,)``; ``ts[0]`` is where ``y0`` is given.
        y0: the initial state (a pytree of floating arrays).
        args, method, on_failure, guess: as for :func:`rnnscan.ode.solve_ivp`.

    Returns:
        An :class:`rnnscan.ode.ODESolution` (not a ``diffrax.Solution``): ``ts`` and ``ys``
        correspond to diffrax's ``sol.ts`` and ``sol.ys`` for ``SaveAt(ts=ts)``; the
        statistics are rnnscan's (``iterations``, ``residual``, ``result``, ``fell_back``),
        and the number of steps is ``len(ts) - 1``.
    """
    diffrax = _import_diffrax()
    method = as_method(method)
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if not isinstance(solver, diffrax.AbstractSolver):
        raise TypeError(
            f"solver must be a diffrax solver (diffrax.Tsit5(), ...), got {type(solver).__name__}"
        )
    if isinstance(solver, diffrax.AbstractImplicitSolver):
        raise ValueError(
            f"solver={type(solver).__name__}() is implicit: its step runs an inner root find; "
            "use rnnscan.ode.solve_ivp(..., scheme='trapezoid' or 'implicit_midpoint'), whose "
            "implicit steps are folded into the global Newton system"
        )
    if type(solver).__name__ in _STATEFUL_SOLVERS:
        raise ValueError(
            f"solver={type(solver).__name__}() keeps state from step to step, so its grid "
            "values are not a one-step recurrence in y alone; use an explicit Runge-Kutta "
            "solver (Tsit5, Dopri5, Heun, ...)"
        )
    solver = _differentiable_stages(solver)
    y0 = check_y0(y0)
    ts = check_grid(ts)
    N = ts.shape[0]
    if guess is not None:
        check_on_grid("guess", guess, N, template=y0)
        guess = jax.tree_util.tree_map(lambda leaf: leaf[1:], guess)
    if N == 1:
        return _trivial(ts, y0)

    def step(y, x):
        t0, t1 = x["t0"], x["t1"]
        state = solver.init(terms, t0, t1, y, args)
        y1, _, _, _, _ = solver.step(terms, t0, t1, y, args, state, made_jump=False)
        return y1, None

    sol = _solve(step, y0, grid_inputs(ts, None), method=method, on_failure=on_failure, guess=guess)
    return ODESolution(
        ts=ts,
        ys=with_initial(y0, sol.carries),
        iterations=sol.iterations,
        residual=sol.residual,
        result=sol.result,
        fell_back=sol.fell_back,
    )
