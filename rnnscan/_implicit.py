r"""Implicit differentiation of the carries: their tangent solves one linear recurrence.

At the solution c* of c_t = F(c_{t-1}, x_t, theta), a tangent (dc_{-1}, dx, dtheta) of the inputs
gives the tangent of the carries as the solution of

    dc_t = J_t dc_{t-1} + u_t,    J_t = dF/dc(c*_{t-1}, x_t),
    u_t = dF/dx(c*_{t-1}, x_t) dx_t + dF/dtheta(c*_{t-1}, x_t) dtheta   (+ J_0 dc_{-1} at t = 0),

the same kind of solve as a Newton step, with the exact Jacobians at the solution. It is posed
as ``jax.lax.custom_linear_solve`` of the bidiagonal operator (L v)_t = v_t - J_t v_{t-1}, so
that JAX can transpose it (reverse mode: the adjoint lambda_t = g_t + J_{t+1}^T lambda_{t+1},
one reverse linear scan) and differentiate it again (higher orders), without ever
differentiating through the iterations that found c*.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._structure import Structure
from ._timeline import Timeline


def carry_jacobians(F: Callable, structure: Structure, c_prev, xs, consts):
    """J_t = dF/dc(c_prev_t, x_t) for all t, stored in ``structure``."""

    def at_step(c, x):
        return structure.jacobian(lambda c_: F(c_, x, *consts), c)[1]

    return jax.vmap(at_step)(c_prev, xs)


def tangent_carries(
    F: Callable, structure: Structure, timeline: Timeline, c0, c, xs, consts, tangents
):
    """The tangent of the carries ``c`` (the solution) for input tangents
    ``(dc0, dxs, dconsts)``."""
    dc0, dxs, dconsts = tangents
    c_prev = timeline.shift(c0, c)
    J = carry_jacobians(F, structure, c_prev, xs, consts)

    def all_steps(c_prev, xs, consts):
        return jax.vmap(lambda c_, x: F(c_, x, *consts))(c_prev, xs)

    # The carry tangent enters only at the first step; later steps get it from the solve.
    dc_prev = timeline.shift(dc0, jnp.zeros_like(c))
    _, u = jax.jvp(all_steps, (c_prev, xs, consts), (dc_prev, dxs, dconsts))

    def operator(v):
        return v - structure.matvec(J, timeline.shift(jnp.zeros_like(v[0]), v))

    def solve(_, b):
        return timeline.linear_recurrence(J, b, structure)

    def transpose_solve(_, g):
        # L^T lambda = g is lambda_t = g_t + J_{t+1}^T lambda_{t+1}; the last coefficient
        # multiplies lambda_T = 0, so its value is irrelevant.
        A = timeline.shift_back(jnp.zeros_like(J[0]), structure.transpose(J))
        return timeline.linear_recurrence(A, g, structure, reverse=True)

    return jax.lax.custom_linear_solve(operator, u, solve, transpose_solve)
