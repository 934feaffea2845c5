r"""RTRL over a whole sequence: the summed gradient of Σ_t ℓ(y_t, t), step by step or by chunks.

Step by step (``chunk=None``), a ``lax.scan`` carries (c_t, S_t) and the running gradient:
memory independent of T.

By chunks of W steps, the influence recursion S_t = J_t S_{t-1} + B_t is a *linear*
recurrence whose matrices are the cell's own (block-)diagonal Jacobians, one per parameter
column. Given the chunk's carries (a forward pass), every J_t and B_t is independent of the
others, so they are formed for all W steps at once (vectorised), and the recurrence is solved
by rnnscan's parallel linear recurrence (``rnnscan/_linear_recurrence.py``), the entering
influence folded into the first step. The chunk's gradient is Σ_t u_t · S_{t-1}, with u_t the
loss's cotangent on the carry each output reads. Memory O(W N Q) within a chunk, still
independent of T; the sequential depth is T / W chunks instead of T steps.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from ._cell import merge_batch, split_batch
from ._online import batched_advance, output_vjp, prepare


def _check_chunk(chunk) -> None:
    if chunk is None:
        return
    if isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk < 1:
        raise ValueError(f"sequence_gradient: chunk must be a positive int or None, got {chunk!r}")


def sequence_gradient(
    cell: nnx.Module,
    carry: Any,
    xs: Any,
    loss_fn: Callable[[Any, jax.Array], Float[Array, ""]],
    chunk: int | None = None,
    *,
    dense: bool = False,
    return_value: bool = False,
) -> nnx.State | tuple[jax.Array, nnx.State]:
    r"""The exact gradient of L = Σ_t loss_fn(y_t, t) by real-time recurrent learning, where
    ``(c_t, y_t) = cell(c_{t-1}, xs[t])`` from ``c_{-1} = carry``: the same numbers as
    ``jax.grad`` through ``jax.lax.scan`` (backpropagation through time), computed forward in
    time with memory independent of the sequence length.

    Args:
        cell: a cell whose ``jacobian_structure`` is ``Diagonal()`` or ``BlockDiagonal(k)``
            (``dense=True`` admits any cell at classic RTRL's cost; see :func:`init`).
        carry: the starting carry, with any leading batch axes.
        xs: the inputs, time first: every leaf ``(T, *batch, ...)``.
        loss_fn: ``loss_fn(y_t, t)``, a scalar (``y_t`` with the batch axes; ``t`` a traced
            int), e.g. a mean over the batch.
        chunk: None: one step at a time (a ``lax.scan`` of T steps). W: W steps at a time,
            the influence recursion solved in parallel over each chunk by rnnscan's linear
            recurrence (a partial last chunk when W does not divide T); memory O(W N Q).
        dense: see :func:`init`.
        return_value: also return L: ``(L, grads)``.

    Returns:
        The gradient as an ``nnx.State`` like ``nnx.state(cell, nnx.Param)``.

    Reference (what it equals)::

        def L(cell):
            def f(c, xt):
                return cell(c, xt)
            _, ys = jax.lax.scan(f, carry, xs)
            return sum(loss_fn(ys[t], t) for t in range(T))
        grads = nnx.grad(L)(cell)
    """
    _check_chunk(chunk)
    leaves = jax.tree_util.tree_leaves(xs)
    if not leaves:
        raise ValueError("sequence_gradient: xs has no array leaves")
    T = int(jnp.shape(leaves[0])[0]) if jnp.ndim(leaves[0]) else 0
    if T == 0:
        raise ValueError("sequence_gradient: xs needs a leading time axis of at least one step")
    x0 = jax.tree_util.tree_map(lambda leaf: leaf[0], xs)
    fc, plan = prepare(cell, carry, x0, dense, "rtrl.sequence_gradient")
    batch_ndim = len(fc.batch_shape)
    xs = jax.tree_util.tree_map(
        lambda leaf: jax.vmap(lambda x: merge_batch(x, batch_ndim))(leaf), xs
    )
    c = fc.flat_carry(carry)
    S = jnp.zeros((fc.batch, fc.size, plan.columns), fc.dtype)
    acc = jnp.zeros((plan.units, plan.columns), fc.dtype)
    direct = jax.tree_util.tree_map(jnp.zeros_like, fc.params)
    value = jnp.zeros((), fc.dtype)
    state = (c, S, acc, direct, value)

    def add(state, c, S, d_acc, d_direct, d_value):
        _, _, acc, direct, value = state
        direct = jax.tree_util.tree_map(jnp.add, direct, d_direct)
        return (c, S, acc + d_acc, direct, value + d_value)

    if chunk is None:

        def one_step(state, inputs):
            t, x = inputs
            c, S = state[0], state[1]
            v, g, u = output_vjp(fc, fc.params, c, x, lambda y: loss_fn(y, t))
            c_new, _, S_new = batched_advance(fc, plan, fc.params, c, S, x)
            return add(state, c_new, S_new, plan.contract(u, S), g, v), None

        state, _ = jax.lax.scan(one_step, state, (jnp.arange(T), xs))
    else:
        state = _chunked(fc, plan, state, xs, T, min(int(chunk), T), loss_fn, add)
    _, _, acc, direct, value = state
    through = plan.expand(acc, fc.params)
    grads = jax.tree_util.tree_map(jnp.add, direct, through)
    return (value, grads) if return_value else grads


def _chunked(fc, plan, state, xs, T, W, loss_fn, add):
    full, rest = divmod(T, W)

    def run_chunk(state, inputs):
        t0, x = inputs
        return add(state, *_chunk(fc, plan, state[0], state[1], x, t0, loss_fn)), None

    if full:
        chunks = jax.tree_util.tree_map(
            lambda leaf: leaf[: full * W].reshape((full, W) + leaf.shape[1:]), xs
        )
        state, _ = jax.lax.scan(run_chunk, state, (jnp.arange(full) * W, chunks))
    if rest:
        tail = jax.tree_util.tree_map(lambda leaf: leaf[full * W :], xs)
        state, _ = run_chunk(state, (jnp.asarray(full * W), tail))
    return state


def _chunk(fc, plan, c_in, S_in, xs, t0, loss_fn):
    """One chunk of W steps: ``(c_out, S_out, Σ_t u_t · S_{t-1}, direct grads, loss)``."""
    params = fc.params
    W = jax.tree_util.tree_leaves(xs)[0].shape[0]
    batched_step = jax.vmap(fc.step, in_axes=(None, 0, 0))

    def forward(c, x):
        c_new, _ = batched_step(params, c, x)
        return c_new, c_new

    c_out, cs = jax.lax.scan(forward, c_in, xs)
    c_prev = jnp.concatenate([c_in[None], cs[:-1]])  # (W, B, N): what step t reads

    def chunk_loss(y_all):
        ts = t0 + jnp.arange(W)
        ys = jax.vmap(lambda y: split_batch(y, fc.batch_shape))(y_all)
        return jnp.sum(jax.vmap(loss_fn)(ys, ts))

    def step_outputs(params, c_prev):
        return jax.vmap(lambda c, x: batched_step(params, c, x)[1])(c_prev, xs)

    def total(params, c_prev):
        return chunk_loss(step_outputs(params, c_prev))

    value, vjp = jax.vjp(total, params, c_prev)
    direct, U = vjp(jnp.ones_like(value))

    def jac_and_immediate(c, x):
        _, J = plan.structure.jacobian(lambda c: fc.step(params, c, x)[0], c)
        B = plan.immediate(lambda p, c: fc.step(p, c, x)[0], params, c)
        return J, B

    J, B = jax.vmap(jax.vmap(jac_and_immediate))(c_prev, xs)  # (W, B, ...), (W, B, N, Q)
    # Fold the entering influence into the first step: b_0 <- B_0 + J_0 S_in.
    first = jax.vmap(plan.propagate)(J[0], S_in) + B[0]
    B = B.at[0].set(first)

    S_all = plan.solve(J, B)  # (W, B, N, Q)
    S_prev = jnp.concatenate([S_in[None], S_all[:-1]])
    return c_out, S_all[-1], plan.contract(U, S_prev), direct, value
