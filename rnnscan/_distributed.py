r"""Building blocks for splitting the time axis across the devices of a mesh axis.

Every function here is called *inside* ``jax.shard_map`` with the time axis split over the
mesh axis ``axis_name``: with D devices on that axis, device d (``jax.lax.axis_index``) holds
the contiguous block of steps d T_loc .. (d + 1) T_loc - 1, T_loc = T / D, and every array
argument with a time axis holds only its block (leading axis T_loc). Arguments without a
time axis (``c0``) must be the same on every device.

The maths (see ``shared/design/parallel-scan-maths.md``, "Splitting time across devices").
The recurrence x_t = A_t x_{t-1} + b_t is the composition of the affine maps
x -> A_t x + b_t, and a run of steps s..t is again one affine map, its *summary pair*
(A_t ... A_s, x_t from x_{s-1} = 0). Pairs compose with the associative operator

    (A_i, b_i) o (A_j, b_j) = (A_j A_i, A_j b_i + b_j)        (run j after run i)

which is what :func:`~rnnscan._linear_recurrence.linear_recurrence` scans over. So the
split solve is three steps:

1. each device scans its block from a zero start, keeping the prefix products
   P_t = A_t ... A_{d T_loc} next to the local values; its last pair is its block summary;
2. the D block summaries are all-gathered and scanned (D is small: every device repeats this
   tiny scan) to give each block the true state x_in it starts from;
3. each device fixes its block up: x_t += P_t x_in, one matrix-vector product per step.

Reverse-time recurrences (the adjoint) are the mirror image: blocks run from the last device
to the first, P_t = A_t ... A_{(d+1) T_loc - 1}.

Communication per call, with D devices on the axis and n the flat carry size:

- :func:`linear_recurrence_sharded`: one all-gather of the D block summaries, one product
  in ``structure``'s storage (n^2 for Dense, n for Diagonal, n k for BlockDiagonal(k)) and
  one n-vector each, so D (n^2 + n) numbers received per device for Dense.
- :func:`shift_sharded`: one ``ppermute`` of one carry (n numbers) to the neighbour.
- :func:`sequential_sharded`: D - 1 ``ppermute`` rounds of one carry each, D - 1 sequential
  passes over a block before the final one (the wall time of a sequential pass over T).
- :func:`global_all`, :func:`global_any`, :func:`global_max`, :func:`global_sum`,
  :func:`last_carry`: one all-reduce of a scalar (an n-vector for ``last_carry``).

Results meant to be the same on every device (the reductions, :func:`last_carry`) come from
``psum``/``pmax``/``pmin``, so under ``shard_map``'s default ``check_vma=True`` they are
typed device-invariant and may leave ``shard_map`` with ``out_specs=P()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._linear_recurrence import linear_recurrence, linear_recurrence_with_products
from ._structure import Structure

AxisName = Any


def _varying(tree: PyTree, axis_name: AxisName) -> PyTree:
    """Mark replicated values as device-varying over ``axis_name``.

    Under ``check_vma`` a loop carry must keep one type, so a replicated start value that
    the loop replaces by a received (varying) value has to be varying from the start.
    Without ``check_vma`` (or on a JAX without ``pcast``) this is the identity.
    """
    pcast = getattr(jax.lax, "pcast", None)
    if pcast is None:
        return tree

    def cast(leaf):
        try:
            return pcast(leaf, axis_name, to="varying")
        except ValueError:
            # Already varying: pcast refuses varying -> varying (at trace time), and reading
            # the type's varying axes needs private attributes that moved between versions.
            return leaf

    return jax.tree_util.tree_map(cast, tree)


def _to_next(D: int, reverse: bool) -> list[tuple[int, int]]:
    """``ppermute`` pairs sending each device's value to the next block in time order;
    the first block (device 0, or D - 1 with ``reverse``) receives zeros."""
    if reverse:
        return [(d + 1, d) for d in range(D - 1)]
    return [(d, d + 1) for d in range(D - 1)]


def linear_recurrence_sharded(
    A: Float[Array, "T_loc ..."],
    b: Float[Array, "T_loc n"],
    structure: Structure,
    axis_name: AxisName,
    *,
    reverse: bool = False,
) -> Float[Array, "T_loc n"]:
    r"""This device's block of the solution of x_t = A_t x_{t-1} + b_t over the whole split
    sequence, x_{-1} = 0 (with ``reverse``: x_t = A_t x_{t+1} + b_t, x_T = 0).

    The same values as :func:`~rnnscan._linear_recurrence.linear_recurrence` on the full
    (unsplit) A and b; A is in ``structure``'s storage, (T_loc, n, n) for Dense, (T_loc, n)
    for Diagonal, (T_loc, n // k, k, k) for BlockDiagonal(k). Differentiable (the
    all-gather transposes to a reduce-scatter).

    Work per device: the local associative scan, O(T_loc n^3) for Dense (as unsplit), a
    redundant scan over the D block summaries, and one matvec per step for the fix-up.
    Communication: one all-gather of D summary pairs, D x (one A in ``structure``'s storage
    + n) numbers. For large D, log D ``ppermute`` rounds of the same pairs would replace it.

    Reference (the whole sequence, on one device)::

        x_in = 0
        for d in (reversed(range(D)) if reverse else range(D)):
            P, x = block d's prefix products and values from a zero start
            out[block d] = x + P @ x_in       # per step
            x_in = out[block d][first step if reverse else last step]
    """
    d = jax.lax.axis_index(axis_name)
    P, x = linear_recurrence_with_products(A, b, structure, reverse=reverse)

    # The block summary: the pair at the block's last step in the recurrence's direction.
    end = 0 if reverse else -1
    P_blocks, x_blocks = jax.lax.all_gather((P[end], x[end]), axis_name)
    # X[j]: the true state at block j's last step in the recurrence's direction (the scan
    # over blocks runs the same way as the scan over steps).
    # D summaries only: the associative scan (the chunked passes' loops would carry
    # device-varying values inside shard_map, and buy nothing at this size).
    X = linear_recurrence(P_blocks, x_blocks, structure, reverse=reverse, backend="associative")
    zero = jnp.zeros_like(X[:1])
    if reverse:
        # Block d starts from block d + 1's first step; the last block from x_T = 0.
        x_in = jnp.concatenate([X, zero], axis=0)[d + 1]
    else:
        x_in = jnp.concatenate([zero, X], axis=0)[d]
    # Broadcast explicitly: matvec reshapes by the vector's shape (BlockDiagonal).
    return x + structure.matvec(P, jnp.broadcast_to(x_in, x.shape))


def shift_sharded(
    c0: PyTree[Float[Array, "..."]],
    c: PyTree[Float[Array, "T_loc ..."]],
    axis_name: AxisName,
    *,
    reverse: bool = False,
) -> PyTree[Float[Array, "T_loc ..."]]:
    r"""This device's block of (c_{-1} = c0, c_0, ..., c_{T-2}): the carry each step starts
    from, over the whole split sequence.

    Locally [incoming, c[:-1]], where incoming is the previous device's last carry (one
    ``ppermute`` of one carry) and ``c0`` on device 0. ``c0`` must be replicated.

    With ``reverse``, the mirror image (c_1, ..., c_{T-1}, c_T = c0): the value each step of
    a reverse-time recurrence reads from the step after it (the adjoint's J_{t+1});
    incoming is the next device's first carry, ``c0`` on the last device.

    Works leaf by leaf on a pytree of carries.
    """
    D = jax.lax.axis_size(axis_name)
    d = jax.lax.axis_index(axis_name)
    first = D - 1 if reverse else 0

    def shift(boundary, c_):
        sent = c_[0] if reverse else c_[-1]
        received = jax.lax.ppermute(sent, axis_name, _to_next(D, reverse))
        incoming = jnp.where(d == first, boundary, received)
        if reverse:
            return jnp.concatenate([c_[1:], incoming[None]], axis=0)
        return jnp.concatenate([incoming[None], c_[:-1]], axis=0)

    return jax.tree_util.tree_map(shift, c0, c)


def sequential_sharded(
    step: Callable[[PyTree, PyTree], PyTree],
    c0: PyTree[Float[Array, "..."]],
    xs: PyTree[Float[Array, "T_loc ..."]],
    axis_name: AxisName,
    *,
    length: int | None = None,
    reverse: bool = False,
) -> PyTree[Float[Array, "T_loc ..."]]:
    r"""This device's block of the exact sequential carries c_t = step(c_{t-1}, x_t),
    c_{-1} = c0, over the whole split sequence (the fallback when a parallel solve fails).

    Time order is inherently sequential, so the blocks run one after the other: in round
    r = 0..D-2 every device runs its block from the carry it currently holds and the r-th
    block in time order (whose carry is by then the true one) passes its last carry to the
    next block by ``ppermute``; a final round runs every block from its now-true incoming
    carry and keeps the carries. Every device computes every round (selecting what it
    keeps), so the wall time is that of one sequential pass over T steps plus D - 1
    ``ppermute`` of one carry; only the final round stores carries, O(T_loc) memory.
    ``length`` is T_loc, needed only when ``xs`` has no leaves. ``c0`` must be replicated.

    With ``reverse``, time runs from the last step to the first (c_t = step(c_{t+1}, x_t),
    c_T = c0, as ``jax.lax.scan(..., reverse=True)``): the blocks run from the last device
    to the first.

    Reference::

        c = c0
        for t in (reversed(range(T)) if reverse else range(T)):
            c = step(c, xs[t]); out[t] = c
    """
    D = jax.lax.axis_size(axis_name)
    d = jax.lax.axis_index(axis_name)
    # This block's place in processing order.
    rank = D - 1 - d if reverse else d

    def run_block(c_in):
        return jax.lax.scan(
            lambda c, x: (step(c, x), None), c_in, xs, length=length, reverse=reverse
        )[0]

    def one_round(r, incoming):
        received = jax.lax.ppermute(run_block(incoming), axis_name, _to_next(D, reverse))
        return jax.tree_util.tree_map(
            lambda s, c: jnp.where(rank == r + 1, s, c), received, incoming
        )

    # A loop rather than D unrolled scans keeps the program size independent of D.
    incoming = jax.lax.fori_loop(0, D - 1, one_round, _varying(c0, axis_name))

    def keep(c, x):
        c = step(c, x)
        return c, c

    return jax.lax.scan(keep, incoming, xs, length=length, reverse=reverse)[1]


def last_carry(
    c: PyTree[Float[Array, "T_loc ..."]], axis_name: AxisName, *, reverse: bool = False
) -> PyTree[Float[Array, "..."]]:
    """c_{T-1}, the last carry of the whole sequence (held by the last device), replicated on
    every device: one ``psum`` of one carry, zeros from all but the last device (zeros, not
    a product with a mask, so a non-finite carry elsewhere does not leak in).

    With ``reverse`` (time running from the last step to the first), the last carry in that
    order: c_0, held by device 0."""
    D = jax.lax.axis_size(axis_name)
    d = jax.lax.axis_index(axis_name)
    holder, index = (0, 0) if reverse else (D - 1, -1)

    def last(c_):
        mine = jnp.where(d == holder, c_[index], jnp.zeros_like(c_[index]))
        return jax.lax.psum(mine, axis_name)

    return jax.tree_util.tree_map(last, c)


def global_positions(
    length: int, axis_name: AxisName, *, reverse: bool = False
) -> Int[Array, " T_loc"]:
    """The global time indices d T_loc .. (d + 1) T_loc - 1 of this device's steps
    (``length`` = T_loc). No communication.

    With ``reverse``, the positions in processing order from the last step to the first:
    T - 1 - t for global index t."""
    D = jax.lax.axis_size(axis_name)
    t = jax.lax.axis_index(axis_name) * length + jnp.arange(length)
    return D * length - 1 - t if reverse else t


def global_all(pred: Bool[Array, "..."], axis_name: AxisName) -> Bool[Array, ""]:
    """Whether ``pred`` holds everywhere on every device (one ``pmin`` of a scalar)."""
    return jax.lax.pmin(jnp.all(pred).astype(jnp.int32), axis_name) > 0


def global_any(pred: Bool[Array, "..."], axis_name: AxisName) -> Bool[Array, ""]:
    """Whether ``pred`` holds anywhere on any device (one ``pmax`` of a scalar)."""
    return jax.lax.pmax(jnp.any(pred).astype(jnp.int32), axis_name) > 0


def global_max(x: Float[Array, "..."], axis_name: AxisName) -> Float[Array, ""]:
    """The maximum of ``x`` over every device (one ``pmax`` of a scalar).

    Whether a NaN on one device survives the cross-device maximum is up to the backend's
    all-reduce; decide finiteness with :func:`global_all` of ``jnp.isfinite`` instead.
    """
    return jax.lax.pmax(jnp.max(x), axis_name)


def global_sum(x: Float[Array, "..."], axis_name: AxisName) -> Float[Array, ""]:
    """The sum of ``x`` over every device (one ``psum`` of a scalar)."""
    return jax.lax.psum(jnp.sum(x), axis_name)
