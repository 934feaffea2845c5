"""Carries as flat real vectors, and the input checks that name what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _path(prefix: str, path) -> str:
    return prefix + jax.tree_util.keystr(path)


def carry_dtype(init) -> jnp.dtype:
    """The real dtype of the flat carry; every leaf must be floating or complex."""
    leaves = jax.tree_util.tree_leaves_with_path(init)
    if not leaves:
        raise ValueError("init: the carry has no array leaves; there is nothing to solve for")
    real_dtypes = []
    for path, leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating)):
            raise TypeError(
                f"{_path('init', path)} has dtype {dtype}; carries must be floating or complex "
                "arrays (an integer carry has no Jacobian: keep counters out of the carry)"
            )
        real_dtypes.append(jnp.finfo(dtype).dtype)
    return jnp.result_type(*real_dtypes)


def make_flattener(
    init,
) -> tuple[jax.Array, Callable[[Any], jax.Array], Callable[[jax.Array], Any]]:
    """``(flat_init, flatten, unflatten)``: the carry as one real vector (complex leaves as their
    real parts followed by their imaginary parts), and the maps between carries and vectors."""
    dtype = carry_dtype(init)
    leaves, treedef = jax.tree_util.tree_flatten(init)
    leaves = [jnp.asarray(leaf) for leaf in leaves]
    specs = [(leaf.shape, leaf.dtype) for leaf in leaves]

    def to_real(leaf):
        leaf = jnp.ravel(leaf)
        if jnp.iscomplexobj(leaf):
            return [leaf.real.astype(dtype), leaf.imag.astype(dtype)]
        return [leaf.astype(dtype)]

    def flatten(carry):
        parts = [part for leaf in jax.tree_util.tree_leaves(carry) for part in to_real(leaf)]
        return jnp.concatenate(parts)

    def unflatten(vector):
        out, start = [], 0
        for shape, leaf_dtype in specs:
            size = int(np.prod(shape))
            if jnp.issubdtype(leaf_dtype, jnp.complexfloating):
                re = vector[start : start + size]
                im = vector[start + size : start + 2 * size]
                leaf = jax.lax.complex(re, im)
                start += 2 * size
            else:
                leaf = vector[start : start + size]
                start += size
            out.append(leaf.reshape(shape).astype(leaf_dtype))
        return jax.tree_util.tree_unflatten(treedef, out)

    return flatten(init), flatten, unflatten


def sequence_length(xs, length: int | None) -> int:
    """The number of steps T, checking every leaf of ``xs`` against the others and ``length``."""
    leaves = jax.tree_util.tree_leaves_with_path(xs)
    if not leaves:
        if length is None:
            raise ValueError(
                "xs has no array leaves (xs=None?): pass length= to say how many steps to run"
            )
        _check_length(length)
        return int(length)
    lengths = {}
    for path, leaf in leaves:
        shape = jnp.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"{_path('xs', path)} is a scalar; every leaf of xs needs a leading time axis"
            )
        lengths[_path("xs", path)] = shape[0]
    first_path, T = next(iter(lengths.items()))
    for path, leaf_length in lengths.items():
        if leaf_length != T:
            raise ValueError(
                f"xs leaves disagree on the time length: {first_path} has {T} steps but "
                f"{path} has {leaf_length} (leading axes: {lengths})"
            )
    if length is not None:
        _check_length(length)
        if int(length) != T:
            raise ValueError(
                f"length={length} but xs has {T} steps along its leading axis ({first_path})"
            )
    return int(T)


def concrete(value, name: str, kind: str):
    """``value`` itself; a traced one raises ``jax.lax.scan``'s error (a traced ``length`` or
    ``unroll`` fixes the shape of the program, so it must be known when tracing)."""
    if isinstance(value, jax.core.Tracer):
        raise jax.errors.ConcretizationTypeError(
            value, f"The `{name}` argument to `scan` expects a concrete {kind} value."
        )
    return value


def _check_length(length):
    concrete(length, "length", "`int`")
    if not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length must be a non-negative Python int, got {length!r}")


def check_step_function(f, init, xs) -> tuple[Any, Any]:
    """Trace ``f`` once (abstractly) and check it returns ``(carry, y)`` with the carry's
    structure, shapes and dtypes unchanged. Returns ``(init, y)``: ``init`` with its weakly
    typed leaves (Python numbers) cast to the dtype ``f`` gives them, as ``jax.lax.scan``
    does, and the abstract ``y``."""
    x0 = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(jnp.shape(leaf)[1:], jnp.result_type(leaf)), xs
    )
    out = jax.eval_shape(f, init, x0)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "f must return a pair (new_carry, y), like jax.lax.scan's f; it returned "
            + type(out).__name__
            + (f" of length {len(out)}" if isinstance(out, tuple) else "")
        )
    new_carry, y = out
    init_def = jax.tree_util.tree_structure(init)
    new_def = jax.tree_util.tree_structure(new_carry)
    if init_def != new_def:
        raise TypeError(
            f"f changed the carry's pytree structure: init is {init_def} but f returned {new_def}"
        )
    promoted = []
    for (path, old), new in zip(
        jax.tree_util.tree_leaves_with_path(init), jax.tree_util.tree_leaves(new_carry)
    ):
        old_shape, old_dtype = jnp.shape(old), jnp.result_type(old)
        if new.shape == old_shape and new.dtype != old_dtype and _weakly_typed(old):
            old, old_dtype = jnp.asarray(old, new.dtype), new.dtype
        if new.shape != old_shape or new.dtype != old_dtype:
            raise TypeError(
                f"f changed the carry at {_path('carry', path)}: it came in as "
                f"{old_dtype}{list(old_shape)} and went out as {new.dtype}{list(new.shape)}; "
                "the carry's shapes and dtypes must stay fixed (as in jax.lax.scan)"
            )
        promoted.append(old)
    return jax.tree_util.tree_unflatten(init_def, promoted), y


def _weakly_typed(leaf) -> bool:
    return isinstance(leaf, (int, float, complex)) or bool(getattr(leaf, "weak_type", False))
