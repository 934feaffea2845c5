r"""A forward-only solver of the linear recurrence made differentiable to any order.

The recurrence x_t = A_t x_{t-1} + b_t is the linear system (I - L_A) x = b with
(L_A x)_t = A_t x_{t-1}. Posed as ``jax.lax.custom_linear_solve``, JAX never differentiates
through the solver's loops or kernels: a tangent is one more solve, and reverse mode solves
the transposed system, (L_A^T y)_s = A_{s+1}^T y_{s+1}, which is the same recurrence run the
other way with the coefficients transposed and shifted a step. The chunked passes
(``_chunked_recurrence.py``) and the Pallas kernel (``_pallas_recurrence.py``) both sit behind
it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ._structure import Structure


def shift(x: jax.Array, later: bool) -> jax.Array:
    """x_{t-1} (or with ``later`` x_{t+1}) at every t, zero beyond the ends."""
    zero = jnp.zeros_like(x[:1])
    if later:
        return jnp.concatenate([x[1:], zero], axis=0)
    return jnp.concatenate([zero, x[:-1]], axis=0)


def recurrence_solve(
    run: Callable[[jax.Array, jax.Array, bool], jax.Array],
    A: jax.Array,
    b: jax.Array,
    structure: Structure,
    reverse: bool,
) -> jax.Array:
    """x_t = A_t x_{t-1} + b_t (``reverse``: x_t = A_t x_{t+1} + b_t) by ``run(A, rhs,
    backwards)``, a solver that need not be differentiable, with derivatives of every
    order."""

    def matvec(x):  # (I - L_A) x
        return x - structure.matvec(A, shift(x, later=reverse))

    def solve(_, rhs):
        return run(A, rhs, reverse)

    def transpose_solve(_, rhs):
        return run(shift(structure.transpose(A), later=not reverse), rhs, not reverse)

    return jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve)
