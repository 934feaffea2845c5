r"""Sliding windows: a wrapper that runs an undamped method on W steps at a time.

The window starts at the first step not yet converged, s, with the exact carry c_{s-1} (c_0
at the start) as its initial state, and takes one iteration of its method (Newton,
quasi-Newton, fixed point) on steps s .. s + W - 1. The leading steps of the window whose
update is within tolerance are converged, because a step's error depends only on the steps
before it; the window slides past them. Steps beyond the window keep their first guess
F(c_0, x_t) until the window reaches them.

Each iteration touches W steps, so the Jacobians take O(W n^2) memory for a dense cell rather
than O(T n^2), and a long sequence whose far end cannot converge before its near end has
stops paying for it. The price is depth: at least T / W iterations one after another.

Built by ``Newton(window=W).resolved(...)`` and the like, not by users.

Reference loop::

    s, c = 0, first_guess
    while s < T:
        c[s:s+W] += inner_update(c_{s-1}, c[s:s+W], xs[s:s+W])
        s += number of leading steps of the window whose update was within tolerance
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ._base import Method, Report


def _pad_end(tree, size: int):
    """Repeat the last step ``size`` times, so that a window never runs off the end."""

    def pad(leaf):
        return jnp.concatenate([leaf, jnp.repeat(leaf[-1:], size, axis=0)], axis=0)

    return jax.tree_util.tree_map(pad, tree)


@dataclasses.dataclass(frozen=True)
class Windowed(Method):
    """``inner`` (a resolved undamped method) on ``window`` steps at a time; ``max_steps``
    caps the iterations of the whole solve."""

    inner: Any
    window: int
    max_steps: int

    progress_factor = 1.0

    # What the rest of rnnscan reads off a method is the inner method's.
    name = property(lambda self: self.inner.name)
    jacobian = property(lambda self: self.inner.jacobian)
    rtol = property(lambda self: self.inner.rtol)
    atol = property(lambda self: self.inner.atol)
    give_up = property(lambda self: self.inner.give_up)
    linear_recurrence = property(lambda self: self.inner.linear_recurrence)
    diagonal_only = property(lambda self: self.inner.diagonal_only)
    forward_structure = property(lambda self: self.inner.forward_structure)

    def init(self, problem, c):
        if problem.timeline.split:
            raise NotImplementedError("window= does not split time across devices yet")
        if not hasattr(problem, "restricted"):
            raise ValueError(f"window= is not available for {type(problem).__name__} problems")
        W = self.window
        state = (jnp.array(0, jnp.int32), jnp.array(0, jnp.int32), _pad_end(c, W))
        return (state, _pad_end(problem.xs, W)), jnp.array(False)

    def step(self, problem, state, k):
        (s, at_s, c), xs = state
        W, length = self.window, problem.length
        c_in = jnp.where(s == 0, problem.c0, c[jnp.maximum(s - 1, 0)])
        c_window = jax.lax.dynamic_slice_in_dim(c, s, W)
        window = dataclasses.replace(problem, xs=xs).restricted(c_in, s, W)
        delta = self.inner.update(window, c_window)
        valid = ((s + jnp.arange(W)) < length)[:, None]
        finite = jnp.isfinite(delta) | ~valid
        new_window = jnp.where(finite & valid, c_window + delta, c_window)
        c = jax.lax.dynamic_update_slice_in_dim(c, new_window, s, axis=0)
        tolerance = self.atol + self.rtol * jnp.abs(new_window)
        step_done = jnp.all(finite & ((jnp.abs(delta) <= tolerance) | ~valid), axis=-1)
        prefix = jnp.where(jnp.all(step_done), W, jnp.argmin(step_done))
        residual = jnp.max(jnp.where(finite & valid, jnp.abs(delta), 0))
        new_s = (s + prefix).astype(jnp.int32)
        report = Report(
            measure=residual,
            finite=jnp.all(finite),
            residual=residual,
            converged=new_s >= length,
            # The window's first step starts from an exact carry: after one iteration there
            # it is exact too, so a non-finite update there is genuine (NaN in the inputs).
            nonfinite=(at_s > 0) & ~jnp.all(finite[0]),
            # Sliding on is progress, so the stall rule restarts; the divergence rule does not.
            restart=prefix > 0,
        )
        at_s = jnp.where(prefix > 0, 0, at_s + 1).astype(jnp.int32)
        return ((new_s, at_s, c), xs), report

    def carries(self, problem, state):
        return state[0][2][: problem.length]

    def input_nonfinite(self, problem, state):
        return ~jnp.all(jnp.isfinite(self.carries(problem, state)))
