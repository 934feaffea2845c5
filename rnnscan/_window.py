r"""Sliding windows: iterate on W steps at a time instead of all T.

The window starts at the first step not yet converged, s, with the exact carry c_{s-1} (c_0
at the start) as its initial state, and takes one iteration of its method (Newton,
quasi-Newton, fixed point) on steps s .. s + W - 1. The leading steps of the window whose
update is within tolerance are converged, because a step's error depends only on the steps
before it; the window slides past them. Steps beyond the window keep their first guess
F(c_0, x_t) until the window reaches them.

Each iteration touches W steps, so the Jacobians take O(W n^2) memory for a dense cell rather
than O(T n^2), and a long sequence whose far end cannot converge before its near end has
stops paying for it. The price is depth: at least T / W iterations one after another.

Reference loop::

    s, c = 0, first_guess
    while s < T:
        c[s:s+W] += newton_update(c_{s-1}, c[s:s+W], xs[s:s+W])
        s += number of leading steps of the window whose update was within tolerance
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._iterate import first_guess, update
from ._methods import Method
from ._solution import RESULTS
from ._stopping import carry_scale, observe, start
from ._timeline import WHOLE, Timeline


def _pad_end(tree, size: int):
    """Repeat the last step ``size`` times, so that a window never runs off the end."""

    def pad(leaf):
        return jnp.concatenate([leaf, jnp.repeat(leaf[-1:], size, axis=0)], axis=0)

    return jax.tree_util.tree_map(pad, tree)


def windowed_carries(
    F: Callable, method: Method, timeline: Timeline, length: int, c0, xs, consts, guess
):
    """Iterate to the carries with a sliding window of ``method.window`` steps. Returns
    ``(carries, iterations, residual, result)``."""
    if timeline.split:
        raise NotImplementedError("window= does not split time across devices yet")
    W = method.window
    c = first_guess(F, length, c0, xs, consts, guess)
    scale = carry_scale(c0, c, timeline)
    c, xs = _pad_end(c, W), _pad_end(xs, W)
    in_sequence = lambda s: (s + jnp.arange(W)) < length

    def window(tree, s):
        return jax.tree_util.tree_map(lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, s, W), tree)

    def cond(state):
        k, s, done = state[0], state[1], state[-1]
        return (k < method.max_steps) & (s < length) & ~done

    def body(state):
        k, s, at_s, c, _, progress, _, _ = state
        c_in = jnp.where(s == 0, c0, c[jnp.maximum(s - 1, 0)])
        c_window = window(c, s)
        delta = update(F, method, WHOLE, c_in, c_window, window(xs, s), consts)
        valid = in_sequence(s)[:, None]
        finite = jnp.isfinite(delta) | ~valid
        new_window = jnp.where(finite & valid, c_window + delta, c_window)
        c = jax.lax.dynamic_update_slice_in_dim(c, new_window, s, axis=0)
        tolerance = method.atol + method.rtol * jnp.abs(new_window)
        step_done = jnp.all(finite & ((jnp.abs(delta) <= tolerance) | ~valid), axis=-1)
        prefix = jnp.where(jnp.all(step_done), W, jnp.argmin(step_done))
        # The window's first step starts from an exact carry: after one iteration there it
        # is exact too, so a non-finite update there is genuine (NaN in the inputs).
        genuine = (at_s > 0) & ~jnp.all(finite[0])
        residual = jnp.max(jnp.where(finite & valid, jnp.abs(delta), 0))
        # Sliding on is progress, so the stall rule restarts; the divergence rule does not.
        fresh = start(c.dtype)
        progress = progress._replace(
            best=jnp.where(prefix > 0, fresh.best, progress.best),
            since_best=jnp.where(prefix > 0, fresh.since_best, progress.since_best),
        )
        progress, verdict = observe(progress, residual, jnp.all(finite), scale)
        gave_up = method.give_up & (verdict != RESULTS.successful)
        result = jnp.where(
            genuine, RESULTS.nonfinite, jnp.where(gave_up, verdict, RESULTS.successful)
        ).astype(jnp.int32)
        new_s = (s + prefix).astype(jnp.int32)
        at_s = jnp.where(prefix > 0, 0, at_s + 1).astype(jnp.int32)
        return k + 1, new_s, at_s, c, residual, progress, result, genuine | gave_up

    state = (
        jnp.array(0, jnp.int32),
        jnp.array(0, jnp.int32),
        jnp.array(0, jnp.int32),
        c,
        jnp.array(jnp.inf, c.dtype),
        start(c.dtype),
        jnp.array(RESULTS.successful, jnp.int32),
        jnp.array(False),
    )
    k, s, _, c, residual, _, result, stopped = jax.lax.while_loop(cond, body, state)
    c = c[:length]
    result = jnp.where(
        stopped, result, jnp.where(s >= length, RESULTS.successful, RESULTS.max_steps_reached)
    )
    # Non-finite values are never written into the iterate: one left in it came with the
    # first guess, from NaN/inf in the inputs or parameters.
    genuine = (result != RESULTS.successful) & ~jnp.all(jnp.isfinite(c))
    return c, k, residual, jnp.where(genuine, RESULTS.nonfinite, result).astype(jnp.int32)
