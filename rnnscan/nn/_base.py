"""What every rnnscan cell shares: the NNX cell interface and the declared Jacobian structure."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes
from flax.typing import Dtype, Initializer

from .._structure import Dense, Structure

promote_dtype = dtypes.promote_dtype

default_kernel_init = nnx.initializers.lecun_normal()
default_recurrent_kernel_init = nnx.initializers.orthogonal()
default_bias_init = nnx.initializers.zeros_init()


class Cell(nnx.RNNCellBase):
    """Base class of the rnnscan cells: ``flax.nnx``'s RNN-cell interface plus two class
    attributes that tell the parallel solver how the carry update is structured.

    Attributes:
        jacobian_structure: the exact sparsity of the carry Jacobian dF/dc (an rnnscan
            structure: ``Dense()``, ``Diagonal()`` or ``BlockDiagonal(k)`` in the strided layout
            of the flattened carry).
        carry_linear: whether the carry update F(c, x) is affine in c, so that one linear scan
            evaluates the whole sequence exactly.

    Subclasses set ``self.hidden_features`` and ``self.carry_dtype`` and, if the carry is not a
    single real array of shape ``(..., hidden_features)``, override :meth:`initialize_carry`.
    """

    jacobian_structure: ClassVar[Structure] = Dense()
    carry_linear: ClassVar[bool] = False

    hidden_features: int
    carry_dtype: Any

    def initialize_carry(
        self,
        input_shape: tuple[int, ...],
        rngs: nnx.Rngs | nnx.RngStream | None = None,
        carry_init: Initializer | None = None,
    ) -> Any:
        """A zero carry (or ``carry_init``'s) for inputs of shape ``(*batch, in_features)``."""
        shape = tuple(input_shape[:-1]) + (self.hidden_features,)
        return make_carry(shape, self.carry_dtype, rngs, carry_init)

    @property
    def num_feature_axes(self) -> int:
        return 1


def make_carry(shape, dtype, rngs, carry_init):
    """One carry array: zeros, or drawn from ``carry_init`` (which needs ``rngs``)."""
    if carry_init is None:
        return jnp.zeros(shape, dtype)
    if isinstance(rngs, nnx.Rngs):
        rngs = rngs.carry
    if rngs is None:
        raise ValueError("initialize_carry: a carry_init needs rngs to draw from")
    return carry_init(rngs(), shape, dtype)


def lift(value: jax.Array, ndim: int) -> jax.Array:
    """``value`` with leading axes of length 1 added up to rank ``ndim``: the explicit form of
    NumPy's rank promotion, so that a per-feature parameter of shape ``(n,)`` combines with
    ``(*batch, n)`` arrays under ``jax_numpy_rank_promotion="raise"`` (the numbers are the
    same as broadcasting implicitly)."""
    return jnp.reshape(value, (1,) * (ndim - jnp.ndim(value)) + jnp.shape(value))


def carry_dtype(dtype: Dtype | None, param_dtype: Dtype) -> Any:
    """The carry's dtype: the computation dtype if given, else the parameters' (as in flax)."""
    return jnp.dtype(param_dtype if dtype is None else dtype)


def gate_stacked(init: Initializer, num_gates: int) -> Initializer:
    """Initialise a ``(fan_in, num_gates * n)`` kernel as ``num_gates`` independent ``(fan_in, n)``
    blocks, so that e.g. each gate's recurrent matrix is orthogonal on its own (an orthogonal
    ``(n, 3n)`` matrix would only have orthonormal rows)."""

    def init_stacked(key, shape, dtype=jnp.float32):
        *lead, width = shape
        if width % num_gates:
            raise ValueError(f"gate_stacked: width {width} is not a multiple of {num_gates} gates")
        block_shape = (*lead, width // num_gates)
        keys = jax.random.split(key, num_gates)
        return jnp.concatenate([init(k, block_shape, dtype) for k in keys], axis=-1)

    return init_stacked


def symmetric_uniform(scale: float = 1.0) -> Initializer:
    """U(-scale, scale): the recurrent vectors of the diagonal cells, the entries of an
    orthogonal matrix's diagonal analogue bounded by 1 in magnitude."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-scale, maxval=scale)

    return init


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``."""

    def init(key, shape, dtype=jnp.float32):
        del key
        return jnp.full(shape, value, dtype)

    return init


default_diagonal_recurrent_init = symmetric_uniform(1.0)
ones_init = constant(1.0)
