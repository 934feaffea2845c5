r"""The undamped methods: Newton (DEER), quasi-Newton (quasi-DEER) and fixed point.

Each iteration solves the linearised step equations for the update (``rnnscan._problem``),

    delta_t = A_t delta_{t-1} + b_t,   c <- c + delta,

with A_t the carry Jacobian (Newton), its diagonal (quasi-Newton) or zero (fixed point), and
stops when max_t,i |delta| <= atol + rtol |c|. Solving for the update rather than the next
iterate keeps the right-hand side the residual, which tends to zero, so rounding stays
relative to it.

Reference loop (one device)::

    c = first_guess
    for k in range(max_steps):
        delta = linear_recurrence(A(c), b(c))
        c = where(isfinite(delta), c + delta, c)
        if all(|delta| <= atol + rtol |c|): break
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from .._structure import BlockDiagonal, Diagonal
from ._base import DENSE, Report
from ._iterative import _COMMON_OPTIONS, Iterative


@dataclasses.dataclass(frozen=True)
class _Undamped(Iterative):
    """An iteration that adds the solution of the linearised step equations."""

    def update(self, problem, c):
        """The update delta with c + delta the next iterate."""
        A, b = problem.linearise(c, self.jacobian, self.diagonal_only)
        return problem.linear_solve(A, b, self.forward_structure)

    def step(self, problem, c, k):
        timeline = problem.timeline
        delta = self.update(problem, c)
        finite = jnp.isfinite(delta)
        # Non-finite entries are reset to the previous iterate so they cannot poison the
        # rest of the solve.
        new_c = jnp.where(finite, c + delta, c)
        step_bad = ~jnp.all(finite, axis=-1)
        tolerance = self.atol + self.rtol * jnp.abs(new_c)
        step_converged = jnp.all(finite & (jnp.abs(delta) <= tolerance), axis=-1)
        residual = timeline.max(jnp.where(finite, jnp.abs(delta), 0))
        report = dict(
            measure=residual,
            finite=~timeline.any(step_bad),
            residual=residual,
            converged=timeline.all(step_converged),
            nonfinite=jnp.array(False),
        )
        if problem.exact_prefix:
            positions = timeline.positions(problem.length)
            total = timeline.max(positions) + 1  # T, also when split across devices
            # Steps t < k are exact by now, so a non-finite update there is genuine (NaN in
            # the inputs or parameters) and further iterations cannot help.
            report["nonfinite"] = timeline.any(step_bad & (positions < k))
            # The leading run of converged steps ends at the first unconverged position.
            prefix = -timeline.max(jnp.where(step_converged, -total, -positions))
            report.update(prefix=prefix, unconverged=total - prefix)
        return new_c, Report(**report)


@dataclasses.dataclass(frozen=True)
class Newton(_Undamped):
    r"""DEER (Lim et al., ICLR 2024): Newton's method on all T steps at once.

    Each iteration linearises the carry update around the current guess, J_t = dF/dc(c_{t-1},
    x_t), and solves the linear recurrence delta_t = J_t delta_{t-1} + (F(c_{t-1}, x_t) - c_t)
    with a parallel scan, then c <- c + delta. Quadratic convergence near the solution;
    typically 3-10 iterations for GRUs.

    Default cap: 50 iterations. Besides the common options below:

        carry_linear: declare that F is affine in the carry. One Newton step is then exact:
            no loop, no convergence test, 1 iteration reported.
    """

    name: ClassVar[str] = "newton"

    carry_linear: bool = False

    @property
    def single_step(self) -> bool:
        return self.carry_linear

    def resolved(self, dtype, length, exact_prefix=True, structure=DENSE):
        method = self
        jacobian = structure if self.jacobian is None else self.jacobian
        elementwise = isinstance(jacobian, Diagonal | BlockDiagonal)
        if self.carry_linear and elementwise and self.linear_recurrence == "auto":
            # One element-wise scan and no loop: on CPUs the associative scan runs it a
            # little faster than the chunked passes "auto" picks, whose ~3 sqrt(T) loop steps
            # cost more than their tiny bodies (2-core CPU, MinGRU n = 32: 2.6 against 2.9 ms
            # at T = 10k, 52 against 58 ms at 100k); dense Jacobians do not pay that.
            method = dataclasses.replace(self, linear_recurrence="associative")
        return super(Newton, method).resolved(dtype, length, exact_prefix, structure)

    def step(self, problem, c, k):
        if not self.carry_linear:
            return super().step(problem, c, k)
        delta = self.update(problem, c)
        finite = problem.timeline.all(jnp.isfinite(delta))
        residual = problem.timeline.max(jnp.abs(delta))
        return c + delta, Report(residual, finite, residual, finite, ~finite)


@dataclasses.dataclass(frozen=True)
class QuasiNewton(_Undamped):
    r"""Quasi-DEER (Gonzalez et al., NeurIPS 2024): Newton with diag(J_t) only.

    The forward solve costs O(T n) memory and work per iteration (an elementwise scan); it
    converges more slowly than Newton unless J_t is diagonal, in which case it *is* Newton.
    ``jacobian`` declares the exact structure of the carry Jacobian; the forward pass uses its
    exact diagonal, the gradient uses the whole structure (an approximate adjoint would give
    wrong gradients). Default cap: 200 iterations.

    Convergence is linear, not quadratic: when an update of size u contracts by a factor rho per
    iteration, the error left is about u rho / (1 - rho), so tighten ``rtol``/``atol`` for weakly
    contractive cells if the stopping tolerance must bound the error.
    """

    name: ClassVar[str] = "quasi_newton"
    default_max_steps: ClassVar[int] = 200
    diagonal_only: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True)
class FixedPoint(_Undamped):
    r"""Jacobi / Picard iteration: c^{k+1}_t = F(c^k_{t-1}, x_t) for all t at once (J_t = 0).

    Exact after at most T iterations; fast only for strongly contractive cells. ``jacobian`` is
    the exact structure used by the gradient. Default cap: 1000 iterations. As for
    :class:`QuasiNewton`, convergence is linear, so the error can exceed the last update by a
    factor of about rho / (1 - rho) for a contraction factor rho.
    """

    name: ClassVar[str] = "fixed_point"
    default_max_steps: ClassVar[int] = 1000

    @property
    def forward_structure(self):
        return None

    def update(self, problem, c):
        return problem.residual(c)


for _cls in (Newton, QuasiNewton, FixedPoint):
    _cls.__doc__ += _COMMON_OPTIONS
