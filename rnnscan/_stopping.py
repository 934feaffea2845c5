r"""Giving up early: when a parallel solve is evidently not going to converge, say so at once
so that the sequential fallback runs after a few wasted iterations, not after the cap.

Two rules, applied after every iteration to a scalar measure of progress (the largest
update for Newton, quasi-Newton and fixed point; the largest residual for the damped
methods):

- **Diverged** (``RESULTS.diverged``): the update was non-finite, or larger than
  ``DIVERGENCE_FACTOR`` times the scale of the carries (1 + the largest entry of the first
  guess F(c_0, x_t) and of c_0), for ``DIVERGENCE_PATIENCE`` iterations in a row. Newton on
  an unstable or chaotic recurrence extrapolates its linearisation to iterates of 10^12 and
  beyond, or overflows; those that converge leave such a range within one or two iterations.
- **Stalled** (``RESULTS.stalled``): no iteration in the last ``STALL_PATIENCE`` has
  produced a measure below the smallest one seen before them (for the damped methods:
  below ``DAMPED_PROGRESS`` times it, see below).

The damped methods (ELK, quasi-ELK) measure the root merit sqrt(sum_t ||r_t||^2), the quantity
their accepted steps decrease monotonically, so "a new smallest value" alone would never fire
on them. Far from a solution they grind instead: on a tanh RNN with gain 2 (n = 16, T = 1,000,
float64) the merit fell by ~1.5x per 10 iterations for 200 iterations without converging,
while on problems they solve it falls by orders of magnitude in as many. So a damped solve
stalls when its root merit has not halved in ``STALL_PATIENCE`` iterations, counted from the
first guess's merit (``Method.initial_measure``): on a chaotic tanh RNN (gain 3, n = 16,
T = 1,000) ELK's first step raises the root merit from 84 to 221 and then halves *that* by
iteration 7 before grinding at ~75, which counted from the first step kept it going to 15.

Both rules are vetoed by a fast-growing converged prefix (Newton, quasi-Newton and fixed
point, whose iteration k makes at least step k exact): an iteration counts as progress,
however large its update, when the leading run of converged steps grew by more than the
one step per iteration that exactness guarantees, and by so much that the same growth would
converge the rest within half the iterations left. The
prefix is judged from the updates, so it lags an iteration; the veto is deliberately
conservative. It does not yet save every solve that would converge: RK4 on a damped
pendulum (1,000 steps over 20 s, float64) passes through iterates of 10^15 and converges in
35 Newton iterations without the rules, but its prefix grows fast only from the third
iteration on, after the divergence rule has fired, so it falls back after 3 (exactly). A
fixed threshold (4 steps of growth) saved it but let RK4 on Lorenz run 12 iterations.

Measured on a tanh RNN (n = 16, T = 4,000, float64) and a GRU (n = 32, T = 3,000), and
recorded in the README: every solve that converges within its cap today still does, and every
Newton solve that hit the cap gives up within 3-5 iterations. The prefix alone predicts
little: on these cells it grows by about one step per iteration until the whole sequence
converges at once, in converging and hopeless solves alike; hence a veto, not a rule.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from ._solution import RESULTS

DIVERGENCE_FACTOR = 1e8
DIVERGENCE_PATIENCE = 3
STALL_PATIENCE = 8
DAMPED_PROGRESS = 0.5


class Progress(NamedTuple):
    """What the rules remember between iterations."""

    best: jnp.ndarray  # the smallest measure so far
    since_best: jnp.ndarray  # iterations since it was last improved on
    huge_run: jnp.ndarray  # consecutive iterations with a diverging update
    prefix: jnp.ndarray  # the length of the converged prefix after the last iteration


def start(dtype, initial=None) -> Progress:
    """The rules' memory before the first iteration; ``initial``: the measure at the first
    guess, if the method has one (then the first iterations must improve on it)."""
    return Progress(
        best=jnp.array(jnp.inf if initial is None else initial, dtype),
        since_best=jnp.array(0, jnp.int32),
        huge_run=jnp.array(0, jnp.int32),
        prefix=jnp.array(0, jnp.int32),
    )


def carry_scale(c0, first_guess, timeline):
    """The scale the divergence rule compares updates with."""
    return 1.0 + jnp.maximum(jnp.max(jnp.abs(c0)), timeline.max(jnp.abs(first_guess)))


def observe(
    progress: Progress,
    measure,
    finite,
    scale,
    progress_factor: float = 1.0,
    prefix=None,
    unconverged=None,
    iterations_left=None,
) -> tuple[Progress, jnp.ndarray]:
    """Record one iteration's ``measure`` (a scalar; ``finite``: whether everything it was
    taken over was finite). An iteration counts as progress when its measure is below
    ``progress_factor`` times the smallest so far, or (exact-prefix methods) when ``prefix``,
    the length of the converged prefix after it, grew by more than one step and by at least
    2 ``unconverged`` (the steps after the prefix) / ``iterations_left`` (not asked when
    ``iterations_left`` is None: the damped filter's prefix often grows slowly for most of
    a solve and then converges the rest at once).
    Returns the new state and the verdict: ``RESULTS.successful`` to go on, or
    ``RESULTS.diverged`` / ``RESULTS.stalled``."""
    if prefix is None:
        prefix, advanced = progress.prefix, jnp.array(False)
    else:
        growth = prefix - progress.prefix
        # More than the one step per iteration that exactness guarantees, and (unless
        # ``iterations_left`` is None) fast enough to finish with half the iterations left.
        advanced = growth > 1
        if iterations_left is not None:
            advanced = advanced & (2 * unconverged <= growth * iterations_left)
    huge = (~finite | (measure > DIVERGENCE_FACTOR * scale)) & ~advanced
    improved = finite & (measure < progress_factor * progress.best)
    progress = Progress(
        best=jnp.where(improved, measure, progress.best),
        since_best=jnp.where(improved | advanced, 0, progress.since_best + 1).astype(jnp.int32),
        huge_run=jnp.where(huge, progress.huge_run + 1, 0).astype(jnp.int32),
        prefix=jnp.maximum(prefix, progress.prefix).astype(jnp.int32),
    )
    verdict = jnp.where(
        progress.huge_run >= DIVERGENCE_PATIENCE,
        RESULTS.diverged,
        jnp.where(progress.since_best >= STALL_PATIENCE, RESULTS.stalled, RESULTS.successful),
    )
    return progress, verdict.astype(jnp.int32)
