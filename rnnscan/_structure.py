"""Structure of a carry Jacobian J_t = dF/dc(c_{t-1}, x_t), and how to compute and apply it.

The solver works on the carry flattened to a real vector of size n (see ``_flatten.py``).
A structure says which entries of J_t can be non-zero, so that only those are computed,
stored and multiplied:

- ``Dense()``: all n x n entries. n JVPs per step, O(n^2) memory, O(n^3) scan work.
- ``Diagonal()``: J_t is diagonal. One JVP per step, O(n) memory and work.
- ``BlockDiagonal(k)``: view the flat carry as ``(k, n // k)``; unit i couples the k entries
  ``[:, i]`` (its "strided" block). This is the natural layout of an LSTM's ``(c, h)`` carry
  (unit i couples ``c_i`` and ``h_i``) and of a complex diagonal recurrence (unit i couples
  ``Re h_i`` and ``Im h_i``). k JVPs per step, O(n k) memory, O(n k^2) scan work.

Stored Jacobians have shapes ``(n, n)``, ``(n,)`` and ``(n // k, k, k)`` per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def _eye_like(c: jax.Array) -> jax.Array:
    """The n x n identity with ``c``'s type: adding ``zeros_like(c)`` (exact, folded away by
    XLA) makes it device-varying where ``c`` is (inside ``jax.shard_map``), as
    ``jax.linearize`` requires of tangents of a varying primal."""
    return jnp.eye(c.shape[0], dtype=c.dtype) + jnp.zeros_like(c)[None, :]


class Structure:
    """Base class of the Jacobian structures."""

    def jacobian(self, fn: Callable, c: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(fn(c), J)`` with J = dfn/dc(c) stored in this structure (one step, no time axis)."""
        raise NotImplementedError

    def diagonal(self, fn: Callable, c: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(fn(c), diag(J))``: the exact diagonal, at the cost this structure allows."""
        raise NotImplementedError

    def matvec(self, J: jax.Array, v: jax.Array) -> jax.Array:
        raise NotImplementedError

    def transpose(self, J: jax.Array) -> jax.Array:
        raise NotImplementedError

    def compose(self, J_later: jax.Array, J_earlier: jax.Array) -> jax.Array:
        """``J_later @ J_earlier`` in this structure (batched over leading axes)."""
        raise NotImplementedError

    def validate(self, n: int) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Dense(Structure):
    """A general (dense) carry Jacobian."""

    def jacobian(self, fn, c):
        value, jvp = jax.linearize(fn, c)
        J = jax.vmap(jvp, out_axes=1)(_eye_like(c))
        return value, J

    def diagonal(self, fn, c):
        # Column j of J only to read entry (j, j): n JVPs, but O(n) memory per step.
        value, jvp = jax.linearize(fn, c)
        n = c.shape[0]
        eye = _eye_like(c)
        diag = jax.lax.map(lambda j: jvp(eye[j])[j], jnp.arange(n), batch_size=min(n, 16))
        return value, diag

    def matvec(self, J, v):
        return jnp.einsum("...ij,...j->...i", J, v, precision=_HIGHEST)

    def transpose(self, J):
        return jnp.swapaxes(J, -1, -2)

    def compose(self, J_later, J_earlier):
        return jnp.matmul(J_later, J_earlier, precision=_HIGHEST)


@dataclasses.dataclass(frozen=True)
class Diagonal(Structure):
    """A diagonal carry Jacobian: unit i of the next carry depends only on unit i of the last."""

    def jacobian(self, fn, c):
        return jax.jvp(fn, (c,), (jnp.ones_like(c),))

    diagonal = jacobian

    def matvec(self, J, v):
        return J * v

    def transpose(self, J):
        return J

    def compose(self, J_later, J_earlier):
        return J_later * J_earlier


@dataclasses.dataclass(frozen=True)
class BlockDiagonal(Structure):
    """A block-diagonal carry Jacobian with ``block_size`` x ``block_size`` strided blocks.

    The flat carry of size n is viewed as ``(block_size, n // block_size)``; block i couples
    the entries ``[:, i]``. For a carry made of ``block_size`` leaves of equal size m (an
    LSTM's ``(c, h)``), block i couples the i-th unit of every leaf.
    """

    block_size: int

    def __post_init__(self):
        if not (isinstance(self.block_size, int) and self.block_size >= 1):
            raise ValueError(
                f"BlockDiagonal: block_size must be a positive int, got {self.block_size!r}"
            )

    def validate(self, n):
        if n % self.block_size:
            raise ValueError(
                f"BlockDiagonal({self.block_size}): the flattened carry has size {n}, "
                f"which is not a multiple of the block size"
            )

    def _tangents(self, c):
        k = self.block_size
        m = c.shape[0] // k
        # Tangent j is 1 on every entry of row j of the (k, m) view.
        return jnp.repeat(jnp.eye(k, dtype=c.dtype), m, axis=1) + jnp.zeros_like(c)[None, :]

    def jacobian(self, fn, c):
        k = self.block_size
        m = c.shape[0] // k
        value, jvp = jax.linearize(fn, c)
        cols = jax.vmap(jvp)(self._tangents(c))  # (k_in, n) -> entry (r, i) of column j
        blocks = cols.reshape(k, k, m).transpose(2, 1, 0)  # (m, k_out, k_in)
        return value, blocks

    def diagonal(self, fn, c):
        k = self.block_size
        value, J = self.jacobian(fn, c)
        return value, jnp.diagonal(J, axis1=-2, axis2=-1).T.reshape(k * J.shape[0])

    def _blocks(self, v):
        k = self.block_size
        return jnp.swapaxes(v.reshape(*v.shape[:-1], k, v.shape[-1] // k), -1, -2)  # (..., m, k)

    def matvec(self, J, v):
        out = jnp.einsum("...mij,...mj->...mi", J, self._blocks(v), precision=_HIGHEST)
        return jnp.swapaxes(out, -1, -2).reshape(v.shape)

    def transpose(self, J):
        return jnp.swapaxes(J, -1, -2)

    def compose(self, J_later, J_earlier):
        return jnp.matmul(J_later, J_earlier, precision=_HIGHEST)


def as_structure(jacobian) -> Structure:
    if isinstance(jacobian, Structure):
        return jacobian
    names = {"dense": Dense(), "diagonal": Diagonal()}
    if isinstance(jacobian, str) and jacobian in names:
        return names[jacobian]
    if isinstance(jacobian, tuple) and len(jacobian) == 2 and jacobian[0] == "block":
        return BlockDiagonal(jacobian[1])
    raise ValueError(
        f"jacobian must be rnnscan.Dense(), rnnscan.Diagonal(), rnnscan.BlockDiagonal(k), "
        f"'dense', 'diagonal' or ('block', k); got {jacobian!r}"
    )
