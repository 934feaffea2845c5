r"""The damped methods (ELK, quasi-ELK): Levenberg-Marquardt steps inside a trust region.

Iterate on the merit m(c) = 1/2 sum_t ||b_t(c)||^2 of the residuals b_t(c) = F(c_{t-1}, x_t)
- c_t. From the linearisation at c (A_t, b_t), the step delta minimises the linearised merit
plus lambda ||delta||^2 (``rnnscan._kalman.damped_linear_recurrence``). The linear model
predicts the merit 1/2 sum_t ||b_t - (delta_t - A_t delta_{t-1})||^2 after the step; with the
actual merit after it, rho = (actual decrease) / (predicted decrease) drives lambda (Nocedal &
Wright, *Numerical Optimization*, ch. 10): a step is accepted when rho > 1e-4, lambda shrinks
3x when rho > 3/4, grows 2x when rho < 1/4 and 4x on a rejected (or non-finite) step.

With ``update="filter"`` (the default) the step is the Kalman filter's means, which is causal
(step t sees the residuals up to t only, so a converged prefix stays converged and grows) and
need not lower the linear model's merit at all, so rho means nothing. There the fidelity
mismatch |actual - predicted merit| / max(merit, predicted, the merit of residuals at the
tolerance) drives lambda instead: shrink 3x below 1/2, reject and grow 4x above 1; the
converged prefix (leading steps with every residual within tolerance) counts as progress for
the give-up rules whenever it grows by more than one step; and two accepted iterates in a row
whose residuals are all within tolerance also end the solve (float32 rounding can keep the
updates of a long, nearly neutral sequence above tolerance for good).

Reference loop (smoother)::

    c, lam = first_guess, damping
    for k in range(max_steps):
        delta = argmin sum_t ||delta_t - A_t delta_{t-1} - b_t||^2 + lam ||delta||^2
        rho = (m(c) - m(c + delta)) / (m(c) - predicted merit)
        if rho > 1e-4: c = c + delta            # (always, without ``adaptive``)
        lam = lam * (1/3 if rho > 3/4 else 2 if rho < 1/4 else 1)   # 4 if rejected
        if accepted and |delta| and |b(c)| within tolerance: break
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from .._kalman import damped_linear_recurrence, linearised_residual
from .._stopping import DAMPED_PROGRESS
from ._base import Report
from ._iterative import _COMMON_OPTIONS, Iterative

_ACCEPT, _GOOD, _POOR = 1e-4, 0.75, 0.25
_SHRINK, _GROW, _GROW_REJECTED = 1 / 3, 2.0, 4.0
_DAMPING_RANGE = (1e-12, 1e12)
# Filter steps: the mismatch |actual - predicted merit| / max(merit, predicted) below which
# the damping shrinks, and above which the step is rejected and the damping grows.
_FIT_GOOD, _FIT_POOR = 0.5, 1.0
# How the Kalman scans make a step: the filtered means, or the smoothed ones.
UPDATES = ("filter", "smoother")


@dataclasses.dataclass(frozen=True)
class ELK(Iterative):
    r"""ELK (Gonzalez, Warrington, Smith, Linderman, NeurIPS 2024): Newton with
    Levenberg-Marquardt damping, for recurrences on which plain Newton diverges.

    Each iteration minimises the linearised merit plus a damping term,

        sum_t || delta_t - J_t delta_{t-1} - r_t ||^2 + lambda sum_t || delta_t ||^2,
        r_t = F(c_{t-1}, x_t) - c_t,

    solved exactly as a linear-Gaussian smoothing problem by a parallel Kalman filter and
    smoother (Särkkä & García-Fernández, 2021; ``_kalman.py``): O(log T) depth, O(T n^3) work
    for dense Jacobians. lambda -> 0 is a Newton (DEER) step; a large lambda takes a short
    step along the gradient of the merit 1/2 sum_t ||r_t||^2.

    With ``adaptive`` (default) the damping is a trust region: a step is accepted only if it
    lowers the merit; lambda shrinks 3x after a step that did at least 3/4 of the decrease
    the linear model predicted, grows 2x after one that did less than 1/4, and 4x after a
    rejected step. Without it, every finite step is taken with the fixed ``damping``, as in
    the paper. Converged when an accepted step and the residual after it are both within
    tolerance. Default cap: 100 iterations (rejected steps count).

    ``update``: ``"filter"`` (default) takes the Kalman filter's means, as ELK's reference
    code does: step t then depends on the residuals up to t only, so the converged prefix
    keeps growing. The damping then follows the linear model's fidelity (the mismatch of
    actual and predicted merit) rather than rho, the converged prefix counts as progress for
    the give-up rules, and two accepted iterates in a row with every residual within
    tolerance also count as converged. ``"smoother"`` takes the minimiser above (the Kalman
    smoother's means) with the trust region as described. Measured on the ELK paper's AR-GRU
    (T = 9,999, float32): "filter" converges in 65 / 96 / 76 iterations (seeds 1-3),
    "smoother" not in 400 (docs/methods.md, "ELK's benchmark").
    """

    name: ClassVar[str] = "elk"

    damping: float = 1e-3
    adaptive: bool = True
    update: str = "filter"

    default_max_steps: ClassVar[int] = 100
    exact_prefix: ClassVar[bool] = False
    # The root merit falls monotonically over accepted steps, so "a new smallest value" alone
    # would never stall: progress is halving it (see rnnscan._stopping).
    progress_factor: ClassVar[float] = DAMPED_PROGRESS
    # A filter's prefix often grows slowly for most of a solve and then converges the rest
    # at once: any growth beyond one step is progress, whatever the iterations left.
    prefix_budget: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        if not self.damping >= 0:
            raise ValueError(f"{type(self).__name__}: damping must be >= 0, got {self.damping!r}")
        if self.window is not None:
            raise ValueError(f"{type(self).__name__}: window= is not supported (yet)")
        if self.update not in UPDATES:
            raise ValueError(
                f"{type(self).__name__}: update must be one of {UPDATES}, got {self.update!r}"
            )

    def _model(self, problem, c):
        """The linearisation at c, its residual, merit and whether all of it is finite."""
        J, r = problem.linearise(c, self.jacobian, self.diagonal_only)
        finite = jnp.all(jnp.isfinite(r)) & jnp.all(jnp.isfinite(J))
        merit = 0.5 * jnp.sum(jnp.where(jnp.isfinite(r), r, 0) ** 2)
        return J, r, jnp.where(finite, merit, jnp.inf), finite

    def init(self, problem, c):
        if problem.timeline.split:
            raise NotImplementedError(
                f"{type(self).__name__} does not split time across devices yet (its Kalman "
                "smoother is a one-device scan); use newton or quasi_newton with axis_name"
            )
        J, r, merit, finite = self._model(problem, c)
        prefix = self._prefix(r, c)
        # A non-finite first residual is NaN in the inputs or parameters.
        return (c, J, r, merit, jnp.array(self.damping, c.dtype), prefix), ~finite

    def _prefix(self, r, c):
        """The number of leading steps whose residual is within the tolerance."""
        within = jnp.all(jnp.abs(r) <= self.atol + self.rtol * jnp.abs(c), axis=-1)
        return jnp.where(jnp.all(within), r.shape[0], jnp.argmin(within)).astype(jnp.int32)

    def step(self, problem, state, k):
        c, J, r, merit, damping, prefix = state
        structure, dtype, length = self.forward_structure, c.dtype, r.shape[0]
        causal = self.update == "filter"
        delta = damped_linear_recurrence(J, r, damping, structure, self.update)
        predicted = 0.5 * jnp.sum(linearised_residual(J, r, delta, structure) ** 2)
        new_c = c + delta
        new_J, new_r, new_merit, new_finite = self._model(problem, new_c)
        new_prefix = self._prefix(new_r, new_c)
        if causal:
            # The damping follows the linear model's fidelity: too little damping lets the
            # unconverged tail leave the region where the linearisation holds, and the
            # actual merit shoots past the predicted one. Merits below that of residuals at
            # the tolerance are rounding, not a model.
            floor = 0.5 * jnp.sum((self.atol + self.rtol * jnp.abs(c)) ** 2)
            mismatch = jnp.abs(new_merit - predicted) / jnp.maximum(
                jnp.maximum(merit, predicted), jnp.maximum(floor, jnp.finfo(dtype).tiny)
            )
            good, poor = mismatch < _FIT_GOOD, mismatch > _FIT_POOR
            # A step that leaves every residual and update within tolerance is the answer,
            # whatever its fidelity (float32 rounding dominates both merits there).
            within = (new_prefix == length) & jnp.all(
                jnp.abs(delta) <= self.atol + self.rtol * jnp.abs(new_c)
            )
            acceptable = ~poor | within
        else:
            rho = (merit - new_merit) / jnp.maximum(merit - predicted, jnp.finfo(dtype).tiny)
            good, poor, acceptable = rho > _GOOD, rho < _POOR, rho > _ACCEPT
        if self.adaptive:
            accept = new_finite & acceptable
            factor = jnp.where(
                accept, jnp.where(good, _SHRINK, jnp.where(poor, _GROW, 1.0)), _GROW_REJECTED
            )
            damping = jnp.clip(damping * factor, *_DAMPING_RANGE)
        else:
            accept = new_finite
        c, J, r, merit, new_prefix = jax.tree_util.tree_map(
            lambda new, old: jnp.where(accept, new, old),
            (new_c, new_J, new_r, new_merit, new_prefix),
            (c, J, r, merit, prefix),
        )
        tolerance = self.atol + self.rtol * jnp.abs(c)
        converged = accept & jnp.all(jnp.abs(delta) <= tolerance) & jnp.all(jnp.abs(r) <= tolerance)
        if causal:
            # Two accepted iterates in a row with every residual within tolerance.
            converged = converged | (accept & (new_prefix == length) & (prefix == length))
        report = Report(
            measure=jnp.sqrt(2 * merit),
            finite=jnp.array(True),
            residual=jnp.max(jnp.abs(r)),
            converged=converged,
            nonfinite=jnp.array(False),
            prefix=new_prefix if causal else None,
            unconverged=length - new_prefix if causal else None,
        )
        return (c, J, r, merit, damping, new_prefix), report

    def carries(self, problem, state):
        return state[0]

    def initial_measure(self, state):
        # The first guess's root merit: a chaotic recurrence's first damped step can be far
        # worse (tanh RNN, gain 3: 84 -> 221), after which halving the worse value would
        # count as progress (221 -> 106 in 7 iterations, then a grind at ~75).
        return jnp.sqrt(2 * state[3])

    def input_nonfinite(self, problem, state):
        return jnp.array(False)  # judged once, on the first residual (``init``)


@dataclasses.dataclass(frozen=True)
class QuasiELK(ELK):
    r"""Quasi-ELK (Gonzalez et al., NeurIPS 2024): :class:`ELK` with diag(J_t) only, so the
    Kalman filter and smoother are elementwise: O(T n) memory and work per iteration. The
    gradient still uses the declared exact ``jacobian``.

    The diagonal model cannot predict the merit (it omits the coupling), so the adaptive
    damping can settle too high: on ELK's AR-GRU (T = 9,999) it gives up after 18-28
    iterations, while the paper's fixed damping, ``QuasiELK(damping=0.01, adaptive=False,
    give_up=False, max_steps=3000)``, converges in ~1,600 (docs/methods.md, "ELK's
    benchmark")."""

    name: ClassVar[str] = "quasi_elk"
    diagonal_only: ClassVar[bool] = True
    # Its diagonal model grows the prefix by a step or so per iteration even where it cannot
    # converge (RK4 on a pendulum ran to the cap): the prefix must also be fast enough.
    prefix_budget: ClassVar[bool] = True


for _cls in (ELK, QuasiELK):
    _cls.__doc__ += _COMMON_OPTIONS
