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
parallel. The quasi-Newton variant keeps diag(P_k) and diag(N_k) (elementwise); fixed point
takes A_k = 0 and N_k = I (Picard sweeps, y_k <- y_k - G_k). Unlike an explicit recurrence,
step 1 is itself a nonlinear equation, so the "one more step exact per iteration" bound does
not hold: the cap is the method's ``max_steps`` and the give-up rules always apply.

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

import equinox as eqx
import jax
import jax.numpy as jnp

from .._fallback import lazy_cond
from .._linear_recurrence import linear_recurrence
from .._methods import FixedPoint, Method, Newton, Sequential, default_tolerances
from .._scan import _closure_convert
from .._scan import solve as _solve
from .._solution import RESULTS
from .._stopping import carry_scale, observe, start
from .._structure import Dense, Diagonal, Structure
from .._timeline import WHOLE

# Per-step Newton of the sequential path: iterations per step at most.
SEQUENTIAL_NEWTON_STEPS = 50


def _shift(c0, c):
    return jnp.concatenate([c0[None], c[:-1]], axis=0)


def _options(method: Method, dtype):
    rtol, atol = default_tolerances(dtype)
    rtol = rtol if method.rtol is None else method.rtol
    atol = atol if method.atol is None else method.atol
    cap = method.max_steps if method.max_steps is not None else method.default_max_steps
    return rtol, atol, cap


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


def _parallel(G, method, structure, c0, xs, consts, guess, rtol, atol, cap):
    """Global Newton (or quasi-Newton / Picard) on all step equations at once.

    Returns ``(c, iterations, residual, result)``."""
    T = jax.tree_util.tree_leaves(xs)[0].shape[0]
    c = jnp.broadcast_to(c0, (T,) + c0.shape) if guess is None else guess
    fixed_point = isinstance(method, FixedPoint)
    forward_structure = Diagonal() if method.diagonal_only else structure
    scale = carry_scale(c0, c, WHOLE)

    def update(c):
        c_prev = _shift(c0, c)

        def at_step(cp, cc, x):
            g = G(cp, cc, x, *consts)
            if fixed_point:
                return -g
            P = _step_jacobian(forward_structure, lambda v: G(v, cc, x, *consts), cp)
            N = _step_jacobian(forward_structure, lambda v: G(cp, v, x, *consts), cc)
            return -_apply_inverse(forward_structure, N, P), -_apply_inverse(
                forward_structure, N, g
            )

        if fixed_point:
            return jax.vmap(at_step)(c_prev, c, xs)
        A, b = jax.vmap(at_step)(c_prev, c, xs)
        return linear_recurrence(A, b, forward_structure)

    def cond(state):
        k, _, _, done, _, _ = state
        return (k < cap) & ~done

    def body(state):
        k, c, _, _, progress, _ = state
        delta = update(c)
        finite = jnp.isfinite(delta)
        new_c = jnp.where(finite, c + delta, c)
        converged = jnp.all(finite & (jnp.abs(delta) <= atol + rtol * jnp.abs(new_c)))
        residual = jnp.max(jnp.where(finite, jnp.abs(delta), 0))
        progress, verdict = observe(progress, residual, jnp.all(finite), scale)
        gave_up = method.give_up & (verdict != RESULTS.successful)
        result = jnp.where(
            converged,
            RESULTS.successful,
            jnp.where(gave_up, verdict, RESULTS.max_steps_reached),
        ).astype(jnp.int32)
        return k + 1, new_c, residual, converged | gave_up, progress, result

    dtype = c.dtype
    state = (
        jnp.array(0, jnp.int32),
        c,
        jnp.array(jnp.inf, dtype),
        jnp.array(False),
        start(dtype),
        jnp.array(RESULTS.max_steps_reached, jnp.int32),
    )
    k, c, residual, _, _, result = jax.lax.while_loop(cond, body, state)
    return c, k, residual, result


def implicit_solve(G, method: Method, on_failure: str, c0, xs, guess):
    """The K carries of the implicit scheme with step equations ``G(c_prev, c, x) = 0`` (flat
    real carries), differentiable w.r.t. ``c0``, ``xs`` and what ``G`` closes over.

    Returns ``(carries, iterations, residual, result, fell_back)``."""
    x_first = jax.tree_util.tree_map(lambda leaf: leaf[0], xs)
    G_pair = lambda cp, pair: G(cp, pair[0], pair[1])
    G_converted, consts = _closure_convert(G_pair, c0, (c0, x_first))
    G_flat = lambda cp, c, x, *k: G_converted(cp, (c, x), *k)

    rtol, atol, cap = _options(method if not isinstance(method, Sequential) else Newton(), c0.dtype)
    structure = getattr(method, "jacobian", Dense())
    if not isinstance(structure, Diagonal):
        structure = Dense()
    sg = jax.lax.stop_gradient
    c0_s, xs_s, consts_s = sg(c0), sg(xs), [sg(k) for k in consts]
    guess = None if guess is None else sg(guess)

    if isinstance(method, Sequential):
        c = sequential_steps(G_flat, c0_s, xs_s, consts_s, rtol, atol)
        iterations = jnp.array(0, jnp.int32)
        residual = jnp.zeros((), c0.dtype)
        result = jnp.array(RESULTS.successful, jnp.int32)
        fell_back = jnp.array(False)
    else:
        c, iterations, residual, result = _parallel(
            G_flat, method, structure, c0_s, xs_s, consts_s, guess, rtol, atol, cap
        )
        failed = result != RESULTS.successful
        if on_failure == "fallback":
            c = lazy_cond(
                failed,
                lambda ops: sequential_steps(G_flat, *ops[:3], rtol, atol),
                lambda ops: ops[-1],
                (c0_s, xs_s, consts_s, c),
            )
            fell_back = failed
        else:
            fell_back = jnp.array(False)
            if on_failure == "raise":
                c = eqx.branched_error_if(c, failed, result, RESULTS.messages())

    # The differentiable refinement: Phi_k(y_{k-1}) = y*_k - N*_k^{-1} G_k(y_{k-1}, y*_k).
    c_prev = _shift(c0_s, c)
    N = jax.vmap(
        lambda cp, cc, x: _step_jacobian(structure, lambda v: G_flat(cp, v, x, *consts_s), cc)
    )(c_prev, c, xs_s)

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
