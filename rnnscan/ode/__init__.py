"""Parallel-in-time integration of ODEs on a fixed grid (DEER's second use case).

- :func:`solve_ivp`: dy/dt = f(t, y, args) on a grid ``ts`` with a fixed one-step scheme
  (Euler, Heun, midpoint, Ralston, RK4, any explicit tableau; trapezoid and implicit
  midpoint), optionally driven by an input signal sampled on the grid.
- :func:`diffeqsolve`: a ``diffrax`` term and explicit solver stepped on the grid ``ts``,
  returning what ``diffrax.diffeqsolve(..., saveat=SaveAt(ts=ts), stepsize_controller=
  StepTo(ts))`` returns there (needs the optional ``diffrax``; imported only when called).

Both solve for every grid value at once with any rnnscan method (Newton / DEER by default),
fall back to sequential time stepping when the parallel solve fails, and differentiate
implicitly. See ``docs/ode.md``.
"""

from ._diffrax import diffeqsolve as diffeqsolve
from ._ivp import solve_ivp as solve_ivp
from ._schemes import RK4 as RK4
from ._schemes import SCHEMES as SCHEMES
from ._schemes import Euler as Euler
from ._schemes import ExplicitRungeKutta as ExplicitRungeKutta
from ._schemes import Heun as Heun
from ._schemes import ImplicitMidpoint as ImplicitMidpoint
from ._schemes import ImplicitScheme as ImplicitScheme
from ._schemes import Midpoint as Midpoint
from ._schemes import Ralston as Ralston
from ._schemes import Scheme as Scheme
from ._schemes import Trapezoid as Trapezoid
from ._solution import ODESolution as ODESolution
