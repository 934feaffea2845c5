r"""Implicit schemes: all step equations G(y_{k-1}, y_k; x_k) = 0 solved by one global Newton.

An implicit one-step scheme cannot be written as an explicit recurrence y_k = F(y_{k-1}, x_k)
without solving for y_k inside F (an explicit F can always be evaluated step by step, an
implicit step cannot). Rather than nest a per-step solve inside every evaluation of F, the
step equations of all K steps are stacked into one system and solved together (Lim et al.,
ICLR 2024, section on ODEs; the same structure as DEER's Newton for recurrences):

    G_k(y_{k-1}, y_k) = 0,  k = 1..K,  y_0 given.

Newton linearises every G_k around the current iterate, with P_k = dG_k/dy_{k-1} and
N_k = dG_k/dy_k:

    P_k delta_{k-1} + N_k delta_k = -G_k   <=>   delta_k = A_k delta_{k-1} + b_k,
    A_k = -N_k^{-1} P_k,  b_k = -N_k^{-1} G_k,  delta_0 = 0,

a linear recurrence solved by the same parallel associative scan as a DEER step
(``rnnscan._linear_recurrence``): O(log K) depth, K small n x n solves per iteration, all in
parallel. :class:`ImplicitSteps` poses it to the solvers of ``rnnscan._methods`` exactly as
an explicit recurrence is posed (``rnnscan._problem``), so the same loop runs every method on
it: the quasi-Newton variant keeps diag(P_k) and diag(N_k) (elementwise); fixed point takes
A_k = 0 and N_k = I (Picard sweeps, y_k <- y_k - G_k); ELK damps the Newton step. Unlike an
explicit recurrence, step 1 is itself a nonlinear equation, so the "one more step exact per
iteration" bound does not hold: the cap is the method's ``max_steps`` and the give-up rules
always apply.

Failure: the sequential fallback runs the steps one after the other, each solved by a dense
Newton iteration from the previous value (``sequential_steps``), which is also what
``method="sequential"`` computes.

Derivatives: the converged iterate y* is not differentiated through. Instead it is passed
(as a constant) to the explicit recurrence

    y_k = Phi_k(y_{k-1}) = y*_k - N*_k^{-1} G_k(y_{k-1}, y*_k),   N*_k = dG_k/dy_k at y*,

solved by :func:`rnnscan.solve` with the warm start y* (one Picard sweep, whose values are
discarded: the returned values are y* itself, the derivatives those of the solve). At the
solution Phi_k(y*_{k-1}) = y*_k, dPhi_k/dy_{k-1} = -N_k^{-1} P_k = dy_k/dy_{k-1} and
dPhi_k/dtheta = -N_k^{-1} dG_k/dtheta: exactly the implicit-function derivatives of the
implicit scheme, so the core's implicit differentiation (custom_jvp, every mode, vmap)
gives exact first derivatives. (Second derivatives ignore the variation of N_k and are
approximate.)
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._closure import closure_convert
from .._linear_recurrence import linear_recurrence
from .._methods import FixedPoint, Method, Newton, solve
from .._scan import solve as _solve
from .._structure import Dense, Diagonal, Structure
from .._timeline import WHOLE

# Per-step Newton of the sequential path: iterations per step at most.
SEQUENTIAL_NEWTON_STEPS = 50


def _shift(c0, c):
    return jnp.concatenate([c0[None], c[:-1]], axis=0)


def _step_jacobian(structure: Structure, fn, c):
    """dfn/dc in ``structure`` (dense matrix, or the exact diagonal)."""
    if isinstance(structure, Diagonal):
        return structure.diagonal(fn, c)[1]
    return Dense().jacobian(fn, c)[1]


def _apply_inverse(structure: Structure, N, v):
    if isinstance(structure, Diagonal):
        return v / N
    return jnp.linalg.solve(N, v)


def sequential_steps(G, c0, xs, consts, rtol, atol):
    """The steps one after the other, each G(c_prev, c, x) = 0 solved by dense Newton from
    c = c_prev (the reference, and the fallback)."""

    def one_step(c_prev, x):
        g_of = lambda c: G(c_prev, c, x, *consts)

        def cond(state):
            k, _, done = state
            return (k < SEQUENTIAL_NEWTON_STEPS) & ~done

        def body(state):
            k, c, _ = state
            value, N = Dense().jacobian(g_of, c)
            delta = -jnp.linalg.solve(N, value)
            new_c = c + delta
            done = jnp.all(jnp.abs(delta) <= atol + rtol * jnp.abs(new_c))
            done = done | ~jnp.all(jnp.isfinite(delta))
            return k + 1, new_c, done

        _, c, _ = jax.lax.while_loop(cond, body, (jnp.array(0), c_prev, jnp.array(False)))
        return c, c

    return jax.lax.scan(one_step, c0, xs)[1]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["c0", "xs", "consts"],
    meta_fields=["G", "rtol", "atol"],
)
@dataclasses.dataclass(frozen=True)
class ImplicitSteps:
    """The step equations G(c_{k-1}, c_k, x_k, *consts) = 0, k = 1..K, c_0 given, as a problem
    for the solvers (the interface of ``rnnscan._problem.Recurrence``): the update solves
    delta_k = A_k delta_{k-1} + b_k with A_k = -N_k^{-1} P_k, b_k = -N_k^{-1} G_k (fixed
    point: b_k = -G_k). ``rtol`` / ``atol``: the per-step Newton of :meth:`sequential`."""

    G: Callable
    c0: Any
    xs: Any
    consts: Any
    rtol: float
    atol: float

    timeline = WHOLE
    exact_prefix = False

    @property
    def length(self) -> int:
        return jax.tree_util.tree_leaves(self.xs)[0].shape[0]

    def first_guess(self, guess):
        if guess is not None:
            return guess
        return jnp.broadcast_to(self.c0, (self.length,) + self.c0.shape)

    def residual(self, c):
        g = lambda cp, cc, x: self.G(cp, cc, x, *self.consts)
        return -jax.vmap(g)(_shift(self.c0, c), c, self.xs)

    def linearise(self, c, jacobian: Structure, diagonal_only: bool):
        structure = Diagonal() if diagonal_only else jacobian

        def at_step(cp, cc, x):
            G = lambda a, b: self.G(a, b, x, *self.consts)
            P = _step_jacobian(structure, lambda v: G(v, cc), cp)
            N = _step_jacobian(structure, lambda v: G(cp, v), cc)
            return -_apply_inverse(structure, N, P), -_apply_inverse(structure, N, G(cp, cc))

        return jax.vmap(at_step)(_shift(self.c0, c), c, self.xs)

    def linear_solve(self, A, b, structure: Structure):
        return linear_recurrence(A, b, structure)

    def sequential(self):
        return sequential_steps(self.G, self.c0, self.xs, self.consts, self.rtol, self.atol)


def implicit_solve(G, method: Method, on_failure: str, c0, xs, guess):
    """The K carries of the implicit scheme with step equations ``G(c_prev, c, x) = 0`` (flat
    real carries), differentiable w.r.t. ``c0``, ``xs`` and what ``G`` closes over.

    Returns ``(carries, iterations, residual, result, fell_back)``."""
    x_first = jax.tree_util.tree_map(lambda leaf: leaf[0], xs)
    G_pair = lambda cp, pair: G(cp, pair[0], pair[1])
    G_converted, consts = closure_convert(G_pair, c0, (c0, x_first))
    G_flat = lambda cp, c, x, *k: G_converted(cp, (c, x), *k)

    K = jax.tree_util.tree_leaves(xs)[0].shape[0]
    # The step equations are solved with a diagonal or a dense Jacobian (block structure: dense).
    declared = getattr(method, "jacobian", None)
    structure = Diagonal() if isinstance(declared, Diagonal) else Dense()
    if declared is not None:
        method = dataclasses.replace(method, jacobian=structure)
    method = method.resolved(c0.dtype, K, exact_prefix=False, structure=structure)
    # The steps' own Newton (sequential, and the fallback) uses the method's tolerances, or
    # Newton's for the exact method.
    tolerances = method if hasattr(method, "rtol") else Newton().resolved(c0.dtype, K)
    rtol, atol = tolerances.rtol, tolerances.atol
    sg = jax.lax.stop_gradient
    problem = ImplicitSteps(G_flat, sg(c0), sg(xs), [sg(k) for k in consts], rtol, atol)
    guess = None if guess is None else sg(guess)
    c, (iterations, residual, result, fell_back) = solve(method, problem, on_failure, guess)

    # The differentiable refinement: Phi_k(y_{k-1}) = y*_k - N*_k^{-1} G_k(y_{k-1}, y*_k).
    c_prev = _shift(problem.c0, c)
    N = jax.vmap(
        lambda cp, cc, x: _step_jacobian(structure, lambda v: G_flat(cp, v, x, *problem.consts), cc)
    )(c_prev, c, problem.xs)

    def phi(y_prev, x_aug):
        x, y_star, N_k = x_aug
        return y_star - _apply_inverse(structure, N_k, G(y_prev, y_star, x)), None

    # One parallel Picard sweep from y* (no propagation along the grid: each step's
    # correction is local, so rounding in y* cannot be amplified by expanding dynamics). Its
    # values are discarded (straight-through); its derivatives are the implicit ones, with
    # the step Jacobians at y*.
    refine = FixedPoint(rtol=rtol, atol=atol, max_steps=1, give_up=False, jacobian=structure)
    sol = _solve(phi, c0, (xs, c, N), method=refine, on_failure="return", guess=c)
    carries = c + (sol.carries - jax.lax.stop_gradient(sol.carries))
    return carries, iterations, residual, result, fell_back
