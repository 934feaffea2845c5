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
stored running products. The chunks lead in memory (K, C, ...): each pass reads one step of
every chunk as a strided slice, which costs far less than transposing A to put time first
(that copy of the largest array was 12 of a pass's 13 ms at n = 32, T = 4,000). Measured on
a 2-core CPU (``docs/benchmarks.md``): a GRU n = 32, T = 4,000 Newton solve compiles in 0.8 s
against 1.7 s with the associative scan and runs in 0.6-1.0x its time (n = 8-128), with the
gradient 0.8-1.1x; so ``backend="auto"`` picks it on CPUs. Accelerators, where the depth
costs kernel launches, have not been measured.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._recurrence_solve import recurrence_solve
from ._structure import Structure


def chunk_size(length: int) -> int:
    """C ~ sqrt(T), balancing the 2C steps within chunks against the K = T / C between: the
    divisor of T nearest to ceil(sqrt(T)) within a third of it (no padding to copy), else
    ceil(sqrt(T))."""
    root = math.isqrt(max(length - 1, 0)) + 1
    for distance in range(root // 3 + 1):  # nearest first, the larger one on a tie
        for candidate in (root + distance, root - distance):
            if candidate >= 1 and length % candidate == 0:
                return candidate
    return root


def _loop(step, carry, inputs, collect: bool, *, axis: int, start: int = 0):
    """``step`` over ``inputs``' axis ``axis`` (from index ``start``) from ``carry``, by a
    ``while_loop``: ``(carry, outputs stacked on that axis)`` with ``collect``, else
    ``(carry, None)``. (Not ``lax.scan``: nothing here is differentiated, and a ``scan``
    would read as a sequential fallback.)"""
    length = jax.tree_util.tree_leaves(inputs)[0].shape[axis]
    take = lambda a, i: jax.lax.dynamic_index_in_dim(a, i, axis, keepdims=False)
    out = None
    if collect:
        one = lambda a: jax.ShapeDtypeStruct(a.shape[:axis] + a.shape[axis + 1 :], a.dtype)
        y = jax.eval_shape(step, carry, jax.tree_util.tree_map(one, inputs))[1]
        stacked = lambda v: jnp.zeros(v.shape[:axis] + (length,) + v.shape[axis:], v.dtype)
        out = jax.tree_util.tree_map(stacked, y)
    if length <= start:
        return carry, out

    def body(state):
        i, carry, out = state
        carry, y = step(carry, jax.tree_util.tree_map(lambda a: take(a, i), inputs))
        if collect:
            out = jax.tree_util.tree_map(
                lambda o, v: jax.lax.dynamic_update_index_in_dim(o, v, i, axis), out, y
            )
        return i + 1, carry, out

    _, carry, out = jax.lax.while_loop(
        lambda state: state[0] < length, body, (jnp.array(start, jnp.int32), carry, out)
    )
    return carry, out


def _by_chunk(a: jax.Array, K: int, C: int, fill: str) -> jax.Array:
    """``a`` (T, ...) as (K, C, ...): padded at the end to K C steps (with zeros, or
    ``fill="last"`` with copies of the last step) where C does not divide T."""
    extra = K * C - a.shape[0]
    if extra:
        tail = jnp.zeros_like(a[:1]) if fill == "zeros" else a[-1:]
        a = jnp.concatenate([a, jnp.repeat(tail, extra, axis=0)])
    return a.reshape((K, C) + a.shape[1:])


def _forward(A, b, structure: Structure, chunk):
    """x_t = A_t x_{t-1} + b_t by the three passes (no derivatives)."""
    T = b.shape[0]
    C = chunk_size(T) if chunk is None else chunk
    K = -(-T // C)
    # Steps past T change nothing before them: zeros, dropped at the end.
    A_c, b_c = _by_chunk(A, K, C, "zeros"), _by_chunk(b, K, C, "zeros")  # (K, C, ...)

    def from_zero(carry, step):
        x, P = carry
        a, bb = step
        return (structure.matvec(a, x) + bb, structure.compose(a, P)), None

    first = (b_c[:, 0], A_c[:, 0])
    (ends, transitions), _ = _loop(from_zero, first, (A_c, b_c), False, axis=1, start=1)

    def between(s, chunk_summary):
        P, e = chunk_summary
        s = structure.matvec(P, s) + e
        return s, s

    _, after = _loop(between, jnp.zeros_like(b_c[0, 0]), (transitions, ends), True, axis=0)
    starts = jnp.concatenate([jnp.zeros_like(after[:1]), after[:-1]])

    def from_start(x, step):
        a, bb = step
        x = structure.matvec(a, x) + bb
        return x, x

    _, x = _loop(from_start, starts, (A_c, b_c), True, axis=1)
    return x.reshape((K * C,) + b.shape[1:])[:T]


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
    by_chunk = tree_map(lambda a: _by_chunk(a, K, C, "last"), elements)  # (K, C, ...)
    first = tree_map(lambda a: a[:, 0], by_chunk)  # (K, ...)

    def fold(total, e):
        return combine(total, e), None

    totals, _ = _loop(fold, first, by_chunk, False, axis=1, start=1)

    def inclusive(prefix, total):
        one = lambda tree: tree_map(lambda a: a[None], tree)
        new = tree_map(lambda a: a[0], combine(one(prefix), one(total)))
        return new, new

    # The prefixes of the totals, then shifted by one: chunk k starts after chunks 0..k-1.
    # (Chunk 0 starts from its own first element; its stand-in prefix is never used.)
    head = tree_map(lambda a: a[0], totals)
    _, later = _loop(inclusive, head, tree_map(lambda a: a[1:], totals), True, axis=0)
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

    # Each chunk's prefixes from its start; the first step of every chunk is its start.
    _, out = _loop(running, starts, by_chunk, True, axis=1, start=1)
    out = tree_map(
        lambda o, s: jax.lax.dynamic_update_index_in_dim(o, s, 0, 1), out, starts
    )  # (K, C, ...)
    return tree_map(lambda a: a.reshape((K * C,) + a.shape[2:])[:T], out)
