r"""The linear recurrence x_t = A_t x_{t-1} + b_t with diagonal or k x k block-diagonal A_t
as a chunked Pallas kernel (written for the diagonal case below; blocks work the same, with
every entry of the k x k blocks one array across the program's lanes).

``jax.lax.associative_scan`` solves it in O(log T) rounds, each reading and writing whole
copies of a and b. The physical limit is one read of a and b and one write of x. This module
is the classic reduce-then-scan design, two kernel launches with a small combine between:

1. **Reduce.** A grid of (time chunk, feature block) programs; each runs its chunk of
   ``chunk`` steps sequentially (a loop over rows of its block, features across the
   program) from x = 0, and writes only the chunk's summary: the end state h_c and the
   product of its coefficients P_c = a_{last} ... a_{first}.
2. **Combine.** The carry into chunk c is s_{c-1}, where s_c = P_c * s_{c-1} + h_c: a
   recurrence over T / chunk summaries (``jax.lax.associative_scan``; small).
3. **Scan.** The same grid runs every chunk again, from its carry, writing x.

Traffic: a and b read twice, x written once (5 passes of T n values against the ideal 3).
Derivatives of every order come from ``jax.lax.custom_linear_solve``: the recurrence is the
linear solve (I - L_a) x = b with (L_a x)_t = a_t x_{t-1}, whose transpose is the same
recurrence run backwards with the coefficients shifted by one step (the adjoint), so the
kernels are never differentiated themselves.

Status: written and tested on the CPU in Pallas interpret mode (against
``jax.lax.associative_scan``), **not yet compiled or timed on a GPU**, so
``linear_recurrence(..., backend="auto")`` never picks it; ask for it with
``backend="pallas"``. Off a GPU it runs in interpret mode (slow: for tests only).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ._recurrence_solve import recurrence_solve
from ._structure import BlockDiagonal, Diagonal, Structure

# Time steps per program, and features per program (lanes). Powers of two, as the GPU
# (Triton) lowering requires; untuned until measured on a device.
CHUNK = 256
FEATURE_BLOCK = 128


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _block_step(a, h, b, k):
    """h' = A h + b per lane, for k x k blocks held as k * k arrays a[r * k + s] and k arrays
    h[r], b[r] (b may be None)."""
    out = []
    for r in range(k):
        value = sum(a[r * k + s] * h[s] for s in range(k))
        out.append(value if b is None else value + b[r])
    return out


def _reduce_kernel(*refs, k: int, chunk: int):
    a_refs, b_refs = refs[: k * k], refs[k * k : k * k + k]
    h_refs, p_refs = refs[k * k + k : k * k + 2 * k], refs[k * k + 2 * k :]

    def step(t, carry):
        h, p = carry
        a = [ref[pl.ds(t, 1), :] for ref in a_refs]
        b = [ref[pl.ds(t, 1), :] for ref in b_refs]
        # P <- A_t P, column by column (P[r * k + s]: entry (r, s)).
        columns = [_block_step(a, [p[q * k + s] for q in range(k)], None, k) for s in range(k)]
        return _block_step(a, h, b, k), [columns[s][r] for r in range(k) for s in range(k)]

    zeros = jnp.zeros(h_refs[0].shape, h_refs[0].dtype)
    eye = [jnp.ones_like(zeros) if r == s else zeros for r in range(k) for s in range(k)]
    h, p = jax.lax.fori_loop(0, chunk, step, ([zeros] * k, eye))
    for ref, value in zip(h_refs + p_refs, h + p):
        ref[...] = value


def _scan_kernel(*refs, k: int, chunk: int):
    a_refs, b_refs = refs[: k * k], refs[k * k : k * k + k]
    carry_refs, x_refs = refs[k * k + k : k * k + 2 * k], refs[k * k + 2 * k :]

    def step(t, h):
        a = [ref[pl.ds(t, 1), :] for ref in a_refs]
        h = _block_step(a, h, [ref[pl.ds(t, 1), :] for ref in b_refs], k)
        for ref, value in zip(x_refs, h):
            ref[pl.ds(t, 1), :] = value
        return h

    jax.lax.fori_loop(0, chunk, step, [ref[...] for ref in carry_refs])


@functools.partial(jax.jit, static_argnames=("chunk", "feature_block", "interpret"))
def forward_scan(
    A: jax.Array, b: jax.Array, *, chunk: int, feature_block: int, interpret: bool
) -> jax.Array:
    """x_t = A_t x_{t-1} + b_t, x_{-1} = 0, for m independent k x k blocks: A (T, m, k, k),
    b (T, m, k); no derivative rules. Each entry of the blocks is one (T, m) array, so the
    kernels work lane-wise (m across a program, as features)."""
    T, m, k = b.shape
    L = min(chunk, pl.next_power_of_2(T))
    F = min(feature_block, pl.next_power_of_2(m))
    T_pad, m_pad = _round_up(T, L), _round_up(m, F)
    # Padded steps come after the real ones (A = b = 0 there), so they change nothing before.
    A = jnp.pad(A, ((0, T_pad - T), (0, m_pad - m), (0, 0), (0, 0)))
    b = jnp.pad(b, ((0, T_pad - T), (0, m_pad - m), (0, 0)))
    a_parts = [A[:, :, r, s] for r in range(k) for s in range(k)]
    b_parts = [b[:, :, r] for r in range(k)]
    chunks, blocks = T_pad // L, m_pad // F
    step_block = pl.BlockSpec((L, F), lambda c, j: (c, j))
    summary_block = pl.BlockSpec((1, F), lambda c, j: (c, j))
    summary = jax.ShapeDtypeStruct((chunks, m_pad), b.dtype)
    summaries = pl.pallas_call(
        functools.partial(_reduce_kernel, k=k, chunk=L),
        out_shape=[summary] * (k + k * k),
        grid=(chunks, blocks),
        in_specs=[step_block] * (k * k + k),
        out_specs=[summary_block] * (k + k * k),
        interpret=interpret,
    )(*a_parts, *b_parts)
    h = jnp.stack(summaries[:k], axis=-1)  # (chunks, m_pad, k)
    p = jnp.stack(summaries[k:], axis=-1).reshape(chunks, m_pad, k, k)

    def combine(earlier, later):
        (p_i, h_i), (p_j, h_j) = earlier, later
        return p_j @ p_i, (p_j @ h_i[..., None])[..., 0] + h_j

    ends = jax.lax.associative_scan(combine, (p, h), axis=0)[1]
    carry_in = jnp.concatenate([jnp.zeros_like(ends[:1]), ends[:-1]], axis=0)
    x_parts = pl.pallas_call(
        functools.partial(_scan_kernel, k=k, chunk=L),
        out_shape=[jax.ShapeDtypeStruct((T_pad, m_pad), b.dtype)] * k,
        grid=(chunks, blocks),
        in_specs=[step_block] * (k * k + k) + [summary_block] * k,
        out_specs=[step_block] * k,
        interpret=interpret,
    )(*a_parts, *b_parts, *[carry_in[..., r] for r in range(k)])
    return jnp.stack(x_parts, axis=-1)[:T, :m]


def _to_blocks(structure: Structure, A: jax.Array, b: jax.Array):
    """``(A, b)`` as (T, m, k, k) and (T, m, k), and the inverse map for x; ValueError
    naming the shapes when they do not fit ``structure``."""
    if isinstance(structure, Diagonal) and A.ndim == 2 and A.shape == b.shape:
        return A[..., None, None], b[..., None], lambda x: x[..., 0]
    if isinstance(structure, BlockDiagonal) and b.ndim == 2:
        T, n = b.shape
        k = structure.block_size
        if n % k == 0 and A.shape == (T, n // k, k, k):
            # The flat carry is viewed as (k, m): component r of block i is entry r * m + i.
            def back(x):
                return jnp.swapaxes(x, 1, 2).reshape(T, n)

            return A, jnp.swapaxes(b.reshape(T, k, n // k), 1, 2), back
    raise ValueError(
        f"pallas_linear_recurrence: for {structure!r}, A must be (T, n) (Diagonal) or "
        f"(T, n // k, k, k) (BlockDiagonal(k)) and b (T, n); got A {A.shape} and b {b.shape}"
    )


def pallas_linear_recurrence(
    A: jax.Array,
    b: jax.Array,
    structure: Structure,
    *,
    reverse: bool = False,
    interpret: bool | None = None,
    chunk: int = CHUNK,
    feature_block: int = FEATURE_BLOCK,
) -> jax.Array:
    r"""x_t = A_t x_{t-1} + b_t (``reverse``: x_t = A_t x_{t+1} + b_t) for ``Diagonal()``
    (A (T, n)) or ``BlockDiagonal(k)`` (A (T, n // k, k, k)) Jacobians, b (T, n), by the
    Pallas kernels above; differentiable to any order, batched by ``jax.vmap``.

    ``interpret`` defaults to True off a GPU. Reference loop::

        x = zeros(n)
        for t in (reversed(range(T)) if reverse else range(T)):
            x = structure.matvec(A[t], x) + b[t]
            out[t] = x
    """
    _to_blocks(structure, A, b)  # check the shapes before tracing anything
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    scan = functools.partial(
        forward_scan, chunk=chunk, feature_block=feature_block, interpret=interpret
    )

    def run(A, rhs, backwards):
        blocks, rhs_blocks, back = _to_blocks(structure, A, rhs)
        if backwards:
            return back(jnp.flip(scan(jnp.flip(blocks, 0), jnp.flip(rhs_blocks, 0)), 0))
        return back(scan(blocks, rhs_blocks))

    return recurrence_solve(run, A, b, structure, reverse)
