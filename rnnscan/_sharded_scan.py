"""The front door to time-split solves: ``sharded_solve`` / ``sharded_scan`` do the
``jax.shard_map`` over a mesh, the padding of T to a multiple of the device count, and an
optional batch axis split over a second mesh axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._flatten import sequence_length
from ._masked import masked_step
from ._methods import Method
from ._scan import solve
from ._solution import Solution

Carry = Any
PyTree = Any


def _leading_size(tree, what: str) -> int | None:
    sizes = {jnp.shape(leaf)[0] for leaf in jax.tree_util.tree_leaves(tree) if jnp.ndim(leaf)}
    if len(sizes) > 1:
        raise ValueError(f"{what}: leaves have different leading (batch) sizes {sorted(sizes)}")
    if any(jnp.ndim(leaf) == 0 for leaf in jax.tree_util.tree_leaves(tree)):
        raise ValueError(f"{what}: with batch_axis every leaf needs a leading batch axis")
    return sizes.pop() if sizes else None


def _pad_time(tree, pad: int, time_axis: int):
    """Append ``pad`` copies of the last step along ``time_axis`` (edge padding: the padded
    steps see real-looking inputs, so the step function stays finite there)."""
    if pad == 0:
        return tree

    def edge(leaf):
        widths = [(0, 0)] * jnp.ndim(leaf)
        widths[time_axis] = (0, pad)
        return jnp.pad(leaf, widths, mode="edge")

    return jax.tree_util.tree_map(edge, tree)


def _place(tree, mesh: Mesh, spec: P):
    """Ask for ``tree`` to be laid out as ``spec`` on ``mesh`` (time blocks, and the batch
    over its axis): a sharding constraint on a mesh with Auto axes (``jax.sharding.Mesh``'s
    default), a ``reshard`` on Explicit axes (``jax.make_mesh``'s default)."""
    explicit = getattr(jax.sharding.AxisType, "Explicit", None)
    sharding = NamedSharding(mesh, spec)
    if explicit is not None and explicit in tuple(getattr(mesh, "axis_types", ())):
        place = lambda leaf: jax.sharding.reshard(leaf, sharding)
    else:
        place = lambda leaf: jax.lax.with_sharding_constraint(leaf, sharding)
    return jax.tree_util.tree_map(place, tree)


def sharded_solve(
    f: Callable[[Carry, PyTree], tuple[Carry, PyTree]],
    init: Carry,
    xs: PyTree = None,
    length: int | None = None,
    reverse: bool = False,
    *,
    mesh: Mesh,
    axis: str,
    batch_axis: str | None = None,
    batched: bool = False,
    method: str | Method = "newton",
    on_failure: Literal["fallback", "raise", "return"] = "fallback",
    guess: Carry | None = None,
) -> Solution:
    r""":func:`rnnscan.solve` with the time axis split over the devices of mesh axis ``axis``.

    The same values and statistics as ``rnnscan.solve(f, init, xs, length, reverse, ...)``
    (up to the solver tolerance; exactly the same maths), computed by ``jax.shard_map``
    over ``mesh``: with D devices on ``axis`` each holds a contiguous block of ~T/D steps
    and runs :func:`rnnscan.solve` with ``axis_name=axis`` on it, so the per-device memory
    of the solve (the T n^2 Jacobians of dense Newton, the carries, the adjoint) falls as
    1/D. Call it under ``jax.jit`` or not; arrays may live anywhere, ``shard_map`` moves
    them.

    ``batch_axis``: ``xs``, ``init`` (and ``guess``) have a leading batch axis of B
    sequences, split over the devices of mesh axis ``batch_axis`` (data parallelism;
    B must be a multiple of their count) and vmapped on each device; the time axis is
    then axis 1. Every sequence has its own statistics, as under ``jax.vmap``. ``batched``:
    the same leading batch axis without ``batch_axis``, vmapped whole on every device (what
    :class:`rnnscan.nn.RNN` does with a mesh but no batch axis). Without either, ``init`` is
    one carry (replicated).

    T not a multiple of D: the sequence is padded at the end to the next multiple with
    copies of its last input on which the step keeps the carry (an identity step). Such
    steps are exact as soon as the real ones are and report the same update size, so they
    change neither the iterations, nor the convergence flags, nor the fallback, nor any
    real carry; the last carry of the padded sequence is the real last carry (with
    ``reverse`` the padded steps run first, from ``init``, and leave it unchanged). The
    padding's outputs are dropped. Derivatives pass through the padding unchanged (a
    padded step's cotangent is zero).

    Returns:
        A :class:`rnnscan.Solution` of global arrays: ``carries`` and ``ys`` with the whole
        time axis (sharded over ``axis``, and the batch over ``batch_axis``),
        ``final_carry`` and the statistics replicated over ``axis``.

    Reference: ``rnnscan.solve(f, init, xs, length, reverse, method=..., ...)``, or with
    ``batch_axis`` / ``batched`` ``jax.vmap`` of it over the leading axis.
    """
    batched = batched or batch_axis is not None
    if axis not in mesh.shape:
        raise ValueError(f"axis {axis!r} is not an axis of the mesh {dict(mesh.shape)}")
    if batch_axis is not None and batch_axis not in mesh.shape:
        raise ValueError(f"batch_axis {batch_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
    if batch_axis == axis:
        raise ValueError("axis and batch_axis must be different mesh axes")
    D = mesh.shape[axis]
    time_axis = 1 if batched else 0
    batch = ()
    if batched:
        B = _leading_size((init, xs), "init and xs")
        if B is None:
            raise ValueError("batch_axis: init and xs have no leading batch axis")
        batch = (batch_axis,)
    if batch_axis is not None:
        if B % mesh.shape[batch_axis]:
            raise ValueError(
                f"batch_axis {batch_axis!r}: the batch of {B} sequences is not a multiple of "
                f"the {mesh.shape[batch_axis]} devices on that mesh axis"
            )
    if batched:
        T = sequence_length(jax.tree_util.tree_map(lambda leaf: leaf[0], xs), length)
    else:
        T = sequence_length(xs, length)
    init = jax.tree_util.tree_map(jnp.asarray, init)

    T_padded = -(-max(T, 1) // D) * D
    pad = T_padded - T
    step, xs_all = f, xs
    if pad:
        valid = jnp.arange(T_padded) < T
        if batched:
            valid = jnp.broadcast_to(valid, (B, T_padded))
        step = masked_step(f)
        xs_all = (_pad_time(xs, pad, time_axis), valid)
    if guess is not None:
        guess = jax.lax.stop_gradient(_pad_time(guess, pad, time_axis))

    local_length = T_padded // D

    def one_sequence(init, xs, guess):
        return solve(
            step,
            init,
            xs,
            length=local_length,
            reverse=reverse,
            method=method,
            on_failure=on_failure,
            guess=guess,
            axis_name=axis,
        )

    def local(init, xs, guess):
        if not batched:
            return one_sequence(init, xs, guess)
        return jax.vmap(one_sequence)(init, xs, guess)

    # Manual over the time axis only: the batch axis stays with the compiler, which splits
    # it as the sharding constraints below ask. (Manual over the batch axis too, the
    # solver's loop state would start replicated over it and end up varying, which
    # shard_map's type check rightly refuses.)
    lead = (None,) if batched else ()
    time_spec, per_sequence = P(*lead, axis), P()
    out_specs = Solution(
        final_carry=per_sequence,
        carries=time_spec,
        ys=time_spec,
        iterations=per_sequence,
        residual=per_sequence,
        result=per_sequence,
        fell_back=per_sequence,
    )
    batch_spec, batch_time_spec = P(*batch), P(*batch, axis)
    args = (
        _place(init, mesh, batch_spec),
        _place(xs_all, mesh, batch_time_spec),
        None if guess is None else _place(guess, mesh, batch_time_spec),
    )
    sol = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(per_sequence, time_spec, time_spec),
        out_specs=out_specs,
        axis_names={axis},
    )(*args)
    if pad:
        index = (slice(None),) * time_axis + (slice(0, T),)
        cut = lambda tree: jax.tree_util.tree_map(lambda leaf: leaf[index], tree)
        sol = dataclasses.replace(sol, carries=cut(sol.carries), ys=cut(sol.ys))
    return sol


def sharded_scan(
    f: Callable[[Carry, PyTree], tuple[Carry, PyTree]],
    init: Carry,
    xs: PyTree = None,
    *,
    mesh: Mesh,
    axis: str,
    batch_axis: str | None = None,
    **scan_kwargs,
) -> tuple[Carry, PyTree]:
    r""":func:`rnnscan.scan` with the time axis split over the devices of mesh axis ``axis``:
    returns ``(final_carry, ys)`` like ``jax.lax.scan``.

    ``scan_kwargs`` are those of :func:`rnnscan.scan` (``length``, ``reverse``, ``method``,
    ``on_failure``, ``guess``; ``unroll`` is accepted and ignored). See
    :func:`sharded_solve` for the batch axis, the padding of T to a multiple of the device
    count, and what is returned where.

    Example (8 devices: 2 sequences in parallel, each split over 4 devices in time)::

        mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "time"))
        final, ys = rnnscan.sharded_scan(cell, h0, xs, mesh=mesh, axis="time",
                                         batch_axis="data")   # xs: (batch, T, d)
    """
    scan_kwargs.pop("unroll", None)
    sol = sharded_solve(f, init, xs, mesh=mesh, axis=axis, batch_axis=batch_axis, **scan_kwargs)
    return sol.final_carry, sol.ys
