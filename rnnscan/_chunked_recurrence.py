r"""The linear recurrence x_t = A_t x_{t-1} + b_t by chunks: a program whose size does not grow
with T.

``jax.lax.associative_scan`` unrolls its O(log T) levels into the program, each level with
arrays of a different shape, so its compile time grows with T and dominates the compile time
of a whole Newton solve on a CPU (GRU n = 32, T = 4,000: most of it). Here the T steps are
cut into K chunks of C ~ sqrt(T) steps and solved in three passes, each a ``jax.lax.scan``
over a fixed shape, vectorised over the chunks (the classic scan-then-propagate of parallel
prefix sums):

1. every chunk from the zero state: its end state e_k and its transition P_k = A_{kC+C-1}
   ... A_{kC} (C sequential steps, all K chunks at once);
2. the states between chunks, s_k = P_k s_{k-1} + e_k (K sequential steps, tiny);
3. every chunk again from its true starting state s_{k-1}, writing x (C steps).

Depth 2C + K (~3 sqrt(T)) instead of 2 log2(T); work one product per step (T n^3 dense, T n
diagonal) and two matrix-vector products, against the associative scan's ~2 T n^3, and no
stored running products. Measured on a 2-core CPU, compile time falls from seconds to a
fraction of one and run time does not grow (``docs/benchmarks.md``); on accelerators, where
the depth costs kernel launches, it has not been measured, so ``backend="auto"`` picks it on
CPUs only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._structure import Structure


def chunk_size(length: int) -> int:
    """C = ceil(sqrt(T)): balances the 2C steps within chunks against the K = T / C between."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def chunked_linear_recurrence(A, b, structure: Structure, *, reverse: bool = False, chunk=None):
    """:func:`rnnscan._linear_recurrence.linear_recurrence` by chunks of ``chunk`` steps
    (default :func:`chunk_size`).

    Reference loop (what it computes, up to rounding)::

        x = zeros(n)
        for t in (reversed(range(T)) if reverse else range(T)):
            x = A[t] @ x + b[t]
            out[t] = x
    """
    if reverse:
        flip = lambda a: jnp.flip(a, axis=0)
        return flip(chunked_linear_recurrence(flip(A), flip(b), structure, chunk=chunk))
    T = b.shape[0]
    C = chunk_size(T) if chunk is None else chunk
    K = -(-T // C)
    # Steps past T change nothing before them: pad with zeros and drop them at the end.
    pad = lambda a: jnp.concatenate([a, jnp.zeros((K * C - T,) + a.shape[1:], a.dtype)])
    # Time within a chunk leads, the chunks are the batch of every pass: (C, K, ...).
    by_chunk = lambda a: jnp.swapaxes(pad(a).reshape((K, C) + a.shape[1:]), 0, 1)
    A_c, b_c = by_chunk(A), by_chunk(b)

    def from_zero(carry, step):
        x, P = carry
        a, bb = step
        return (structure.matvec(a, x) + bb, structure.compose(a, P)), None

    (ends, transitions), _ = jax.lax.scan(from_zero, (b_c[0], A_c[0]), (A_c[1:], b_c[1:]))

    def between(s, chunk_summary):
        P, e = chunk_summary
        s = structure.matvec(P, s) + e
        return s, s

    _, after = jax.lax.scan(between, jnp.zeros_like(b_c[0, 0]), (transitions, ends))
    starts = jnp.concatenate([jnp.zeros_like(after[:1]), after[:-1]])

    def from_start(x, step):
        a, bb = step
        x = structure.matvec(a, x) + bb
        return x, x

    _, x = jax.lax.scan(from_start, starts, (A_c, b_c))
    return jnp.swapaxes(x, 0, 1).reshape((K * C,) + b.shape[1:])[:T]
