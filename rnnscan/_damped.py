r"""The damped methods (ELK, quasi-ELK): Levenberg-Marquardt steps inside a trust region.

Iterate on the merit m(c) = 1/2 sum_t ||r_t(c)||^2, r_t(c) = F(c_{t-1}, x_t) - c_t. From the
linearisation at c (J_t, r_t), the step delta minimises the linearised merit plus
lambda ||delta||^2 (``_kalman.damped_linear_recurrence``). The linear model predicts the merit
1/2 sum_t ||r_t - (delta_t - J_t delta_{t-1})||^2 after the step; with the actual merit after
it, rho = (actual decrease) / (predicted decrease) drives lambda (Nocedal & Wright,
*Numerical Optimization*, ch. 10): a step is accepted when rho > 1e-4, lambda shrinks 3x when
rho > 3/4, grows 2x when rho < 1/4 and 4x on a rejected (or non-finite) step.

Works on flat real carries and ``F(c_prev, x, *consts)`` like ``_iterate.py``; nothing here is
differentiated.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._iterate import first_guess, linearise
from ._kalman import damped_linear_recurrence, linearised_residual
from ._methods import ELK
from ._solution import RESULTS
from ._stopping import DAMPED_PROGRESS, carry_scale, observe, start
from ._timeline import Timeline

_ACCEPT, _GOOD, _POOR = 1e-4, 0.75, 0.25
_SHRINK, _GROW, _GROW_REJECTED = 1 / 3, 2.0, 4.0
_DAMPING_RANGE = (1e-12, 1e12)


def damped_carries(
    F: Callable, method: ELK, timeline: Timeline, length: int, c0, xs, consts, guess
):
    """Iterate to the carries. Returns ``(carries, iterations, residual, result)``."""
    if timeline.split:
        raise NotImplementedError(
            f"{type(method).__name__} does not split time across devices yet (its Kalman "
            "smoother is a one-device scan); use newton or quasi_newton with axis_name"
        )
    c = first_guess(F, length, c0, xs, consts, guess)
    dtype = c.dtype

    def model_at(c):
        """The linearisation at c, its residual, merit and whether all of it is finite."""
        value, J, structure = linearise(F, method, timeline, c0, c, xs, consts)
        r = value - c
        finite = jnp.all(jnp.isfinite(r)) & jnp.all(jnp.isfinite(J))
        merit = 0.5 * jnp.sum(jnp.where(jnp.isfinite(r), r, 0) ** 2)
        return J, r, jnp.where(finite, merit, jnp.inf), finite, structure

    J, r, merit, finite, structure = model_at(c)
    scale = carry_scale(c0, c, timeline)

    def cond(state):
        k, done = state[0], state[-1]
        return (k < method.max_steps) & ~done

    def body(state):
        k, c, J, r, merit, damping, progress, result, _ = state
        delta = damped_linear_recurrence(J, r, damping, structure)
        predicted = 0.5 * jnp.sum(linearised_residual(J, r, delta, structure) ** 2)
        new_c = c + delta
        new_J, new_r, new_merit, new_finite, _ = model_at(new_c)
        rho = (merit - new_merit) / jnp.maximum(merit - predicted, jnp.finfo(dtype).tiny)
        if method.adaptive:
            accept = new_finite & (rho > _ACCEPT)
            factor = jnp.where(
                accept,
                jnp.where(rho > _GOOD, _SHRINK, jnp.where(rho < _POOR, _GROW, 1.0)),
                _GROW_REJECTED,
            )
            damping = jnp.clip(damping * factor, *_DAMPING_RANGE)
        else:
            accept = new_finite
        c, J, r, merit = jax.tree_util.tree_map(
            lambda new, old: jnp.where(accept, new, old),
            (new_c, new_J, new_r, new_merit),
            (c, J, r, merit),
        )
        tolerance = method.atol + method.rtol * jnp.abs(c)
        converged = accept & jnp.all(jnp.abs(delta) <= tolerance) & jnp.all(jnp.abs(r) <= tolerance)
        progress, verdict = observe(
            progress, jnp.sqrt(2 * merit), jnp.array(True), scale, DAMPED_PROGRESS
        )
        gave_up = method.give_up & (verdict != RESULTS.successful)
        result = jnp.where(
            converged, RESULTS.successful, jnp.where(gave_up, verdict, RESULTS.max_steps_reached)
        ).astype(jnp.int32)
        return k + 1, c, J, r, merit, damping, progress, result, converged | gave_up

    state = (
        jnp.array(0, jnp.int32),
        c,
        J,
        r,
        merit,
        jnp.array(method.damping, dtype),
        start(dtype),
        jnp.array(RESULTS.max_steps_reached, jnp.int32),
        ~finite,  # a non-finite first residual is NaN in the inputs or parameters
    )
    k, c, _, r, _, _, _, result, _ = jax.lax.while_loop(cond, body, state)
    result = jnp.where(finite, result, RESULTS.nonfinite)
    return c, k, jnp.max(jnp.abs(r)), result
