r"""What the solvers solve: T coupled step equations, seen through one small interface.

A solver (``rnnscan._methods``) never looks at the step function itself. It asks a problem
for a first guess, for the linearisation of the step equations at an iterate c,

    delta_t = A_t delta_{t-1} + b_t,  delta_{-1} = 0,

whose solution delta is the Newton update (b alone is the fixed-point update), for the
linear recurrence's solution, and, when the parallel solve fails, for the exact answer step
by step. Two problems implement it: :class:`Recurrence` here (c_t = F(c_{t-1}, x_t); A_t the
carry Jacobian, b_t = F(c_{t-1}, x_t) - c_t) and the implicit ODE schemes of
``rnnscan.ode`` (G(c_{t-1}, c_t, x_t) = 0; A_t = -N_t^{-1} P_t, b_t = -N_t^{-1} G_t).

Every problem works on flat real carries ``c`` of shape (T, n) and says, by
``exact_prefix``, whether iteration k of an undamped Newton-type method makes step k exact
(explicit recurrences: the first step's equation is solved by one evaluation of F).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._structure import Structure
from ._timeline import WHOLE, Timeline


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["c0", "xs", "consts"],
    meta_fields=["F", "timeline", "length"],
)
@dataclasses.dataclass(frozen=True)
class Recurrence:
    """c_t = F(c_{t-1}, x_t, *consts), t = 0..T-1, c_{-1} = c0, on ``timeline``. A pytree
    (its arrays are the leaves), so that the fallback's conditional can take it whole."""

    F: Callable
    timeline: Timeline
    length: int
    c0: Any
    xs: Any
    consts: Any

    exact_prefix = True

    def first_guess(self, guess):
        """The warm start if given, else F(c0, x_t) for all t: exact at t = 0 and usually a
        good start elsewhere."""
        if guess is not None:
            return guess
        F, c0, consts = self.F, self.c0, self.consts
        if jax.tree_util.tree_leaves(self.xs):
            return jax.vmap(lambda x: F(c0, x, *consts))(self.xs)
        return jnp.broadcast_to(F(c0, self.xs, *consts), (self.length,) + c0.shape)

    def residual(self, c):
        """b_t = F(c_{t-1}, x_t) - c_t for all t: the fixed-point update."""
        c_prev = self.timeline.shift(self.c0, c)
        return jax.vmap(lambda cp, x: self.F(cp, x, *self.consts))(c_prev, self.xs) - c

    def linearise(self, c, jacobian: Structure, diagonal_only: bool):
        """``(A, b)``: the carry Jacobians A_t = dF/dc(c_{t-1}, x_t) in ``jacobian`` (or
        their exact diagonal), and b as in :meth:`residual`."""
        c_prev = self.timeline.shift(self.c0, c)

        def at_step(c_prev, x):
            fn = lambda c_: self.F(c_, x, *self.consts)
            return jacobian.diagonal(fn, c_prev) if diagonal_only else jacobian.jacobian(fn, c_prev)

        value, A = jax.vmap(at_step)(c_prev, self.xs)
        return A, value - c

    def linear_solve(self, A, b, structure: Structure):
        """delta with delta_t = A_t delta_{t-1} + b_t, by a parallel scan."""
        return self.timeline.linear_recurrence(A, b, structure)

    def sequential(self):
        """The exact carries by ``jax.lax.scan``: the reference, and the fallback."""
        return self.timeline.sequential(
            lambda c, x: self.F(c, x, *self.consts), self.c0, self.xs, self.length
        )

    def restricted(self, c_in, start, size: int):
        """The same recurrence on steps start .. start + size - 1 from the carry ``c_in``
        (one device; ``xs`` must extend ``size`` steps past ``start``)."""
        xs = jax.tree_util.tree_map(
            lambda leaf: jax.lax.dynamic_slice_in_dim(leaf, start, size), self.xs
        )
        return Recurrence(self.F, WHOLE, size, c_in, xs, self.consts)
