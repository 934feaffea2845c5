r"""The linear recurrence x_t = A_t x_{t-1} + b_t by chunks: a program whose size does not grow
with T.

``jax.lax.associative_scan`` unrolls its O(log T) levels into the program, each level with
arrays of a different shape, so its compile time grows with T and dominates the compile time
of a whole Newton solve on a CPU (GRU n = 32, T = 4,000: most of it). Here the T steps are
cut into K chunks of C ~ sqrt(T) steps and solved in three passes, each a ``while_loop``
over a fixed shape, vectorised over the chunks (the classic scan-then-propagate of parallel
prefix sums):

1. every chunk from the zero state: its end state e_k and its transition P_k = A_{kC+C-1}
   ... A_{kC} (C sequential steps, all K chunks at once);
2. the states between chunks, s_k = P_k s_{k-1} + e_k (K sequential steps, tiny);
3. every chunk again from its true starting state s_{k-1}, writing x (C steps).

Depth 2C + K (~3 sqrt(T)) instead of 2 log2(T); work one product per step (T n^3 dense, T n
diagonal) and two matrix-vector products, against the associative scan's ~2 T n^3, and no
stored running products. Measured on a 2-core CPU (``docs/benchmarks.md``): the dense
recurrence (n = 32, T = 4,000) compiles in 1.5 s against 5.2 s; a diagonal Newton solve
runs faster, a dense one up to 1.5x slower. ``backend="auto"`` therefore picks it for
diagonal and block-diagonal Jacobians on CPUs; accelerators, where the depth costs kernel
launches, have not been measured.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._recurrence_solve import recurrence_solve
from ._structure import Structure


def chunk_size(length: int) -> int:
    """C = ceil(sqrt(T)): balances the 2C steps within chunks against the K = T / C between."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def _loop(step, carry, inputs, collect: bool):
    """``step`` over the leading axis of ``inputs`` from ``carry``, by a ``while_loop``:
    ``(carry, stacked outputs)`` with ``collect``, else ``(carry, None)``. (Not ``lax.scan``:
    nothing here is differentiated, and a ``scan`` would read as a sequential fallback.)"""
    length = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    one_input = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), inputs)
    out = None
    if collect:
        y = jax.eval_shape(step, carry, one_input)[1]
        out = jax.tree_util.tree_map(lambda v: jnp.zeros((length,) + v.shape, v.dtype), y)
    if length == 0:
        return carry, out

    def body(state):
        i, carry, out = state
        carry, y = step(carry, jax.tree_util.tree_map(lambda a: a[i], inputs))
        if collect:
            out = jax.tree_util.tree_map(
                lambda o, v: jax.lax.dynamic_update_index_in_dim(o, v, i, 0), out, y
            )
        return i + 1, carry, out

    _, carry, out = jax.lax.while_loop(
        lambda state: state[0] < length, body, (jnp.array(0, jnp.int32), carry, out)
    )
    return carry, out


def _forward(A, b, structure: Structure, chunk):
    """x_t = A_t x_{t-1} + b_t by the three passes (no derivatives)."""
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

    (ends, transitions), _ = _loop(from_zero, (b_c[0], A_c[0]), (A_c[1:], b_c[1:]), False)

    def between(s, chunk_summary):
        P, e = chunk_summary
        s = structure.matvec(P, s) + e
        return s, s

    _, after = _loop(between, jnp.zeros_like(b_c[0, 0]), (transitions, ends), True)
    starts = jnp.concatenate([jnp.zeros_like(after[:1]), after[:-1]])

    def from_start(x, step):
        a, bb = step
        x = structure.matvec(a, x) + bb
        return x, x

    _, x = _loop(from_start, starts, (A_c, b_c), True)
    return jnp.swapaxes(x, 0, 1).reshape((K * C,) + b.shape[1:])[:T]


def chunked_linear_recurrence(A, b, structure: Structure, *, reverse: bool = False, chunk=None):
    """:func:`rnnscan._linear_recurrence.linear_recurrence` by chunks of ``chunk`` steps
    (default :func:`chunk_size`); differentiable to any order (``_recurrence_solve.py``).

    Reference loop (what it computes, up to rounding)::

        x = zeros(n)
        for t in (reversed(range(T)) if reverse else range(T)):
            x = A[t] @ x + b[t]
            out[t] = x
    """

    def run(A, rhs, backwards):
        if backwards:
            flip = lambda a: jnp.flip(a, axis=0)
            return flip(_forward(flip(A), flip(rhs), structure, chunk))
        return _forward(A, rhs, structure, chunk)

    return recurrence_solve(run, A, b, structure, reverse)


def chunked_associative_scan(combine, elements, *, reverse: bool = False, chunk=None):
    """``jax.lax.associative_scan(combine, elements, reverse=reverse, axis=0)`` by the same
    three fixed-shape passes over ~sqrt(T) chunks, for any associative ``combine`` (called,
    as by ``associative_scan``, on elements with a leading batch axis): each chunk's total,
    the exclusive prefixes of the totals, then each chunk's prefixes from its own. The
    program does not grow with T; about 2 T combines, depth ~3 sqrt(T). Not differentiable
    (nothing that calls it is differentiated).

    Reference loop::

        out[0] = e[0]
        for t in range(1, T):
            out[t] = combine(out[t - 1], e[t])
    """
    tree_map = jax.tree_util.tree_map
    if reverse:
        flip = lambda tree: tree_map(lambda a: jnp.flip(a, axis=0), tree)
        return flip(chunked_associative_scan(combine, flip(elements), chunk=chunk))
    T = jax.tree_util.tree_leaves(elements)[0].shape[0]
    C = chunk_size(T) if chunk is None else chunk
    K = -(-T // C)
    # Padding repeats the last element (finite, harmless): it only follows real steps.
    pad = lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], K * C - T, axis=0)])
    by_chunk = tree_map(
        lambda a: jnp.swapaxes(pad(a).reshape((K, C) + a.shape[1:]), 0, 1), elements
    )
    first = tree_map(lambda a: a[0], by_chunk)  # (K, ...)

    def fold(total, e):
        return combine(total, e), None

    totals, _ = _loop(fold, first, tree_map(lambda a: a[1:], by_chunk), False)

    def inclusive(prefix, total):
        one = lambda tree: tree_map(lambda a: a[None], tree)
        new = tree_map(lambda a: a[0], combine(one(prefix), one(total)))
        return new, new

    # The prefixes of the totals, then shifted by one: chunk k starts after chunks 0..k-1.
    # (Chunk 0 starts from its own first element; its stand-in prefix is never used.)
    head = tree_map(lambda a: a[0], totals)
    _, later = _loop(inclusive, head, tree_map(lambda a: a[1:], totals), True)
    prefixes = tree_map(lambda h, r: jnp.concatenate([h[None], r]), head, later)
    before = tree_map(lambda p: jnp.concatenate([p[:1], p[:-1]]), prefixes)
    starts = combine(before, first)
    is_first = jnp.arange(K) == 0
    starts = tree_map(
        lambda s, f: jnp.where(is_first.reshape((K,) + (1,) * (s.ndim - 1)), f, s), starts, first
    )

    def running(prefix, e):
        new = combine(prefix, e)
        return new, new

    _, rest = _loop(running, starts, tree_map(lambda a: a[1:], by_chunk), True)
    out = tree_map(lambda s, r: jnp.concatenate([s[None], r]), starts, rest)  # (C, K, ...)
    return tree_map(lambda a: jnp.swapaxes(a, 0, 1).reshape((K * C,) + a.shape[2:])[:T], out)
