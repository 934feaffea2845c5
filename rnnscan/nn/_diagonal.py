"""GRU and LSTM with diagonal recurrences (as in ParaRNN, Danieli et al., 2025).

Replacing each recurrent matrix by a vector makes unit j of the next carry depend only on unit
j of the last one. The cells stay nonlinear, but their carry Jacobians are (block-)diagonal, so
Newton's method needs only O(T n) memory and work per iteration, and quasi-Newton (diagonal)
*is* Newton for the GRU.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype, Initializer

from .._structure import BlockDiagonal, Diagonal
from ._base import (
    Cell,
    carry_dtype,
    default_bias_init,
    default_diagonal_recurrent_init,
    default_kernel_init,
    gate_stacked,
    lift,
    promote_dtype,
)
from ._gru import gru_update
from ._lstm import lstm_carry, lstm_update


class DiagGRUCell(Cell):
    r"""GRU with diagonal recurrent weights (ParaRNN, Danieli et al., 2025):

    .. math::

        r &= \sigma(W_{ir} x + b_{ir} + a_r \odot h) \\
        z &= \sigma(W_{iz} x + b_{iz} + a_z \odot h) \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (a_n \odot h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h

    :class:`GRUCell` with W_h replaced by diag(a). The carry is h and the output is h'.

    Parameters: ``input_kernel`` (d, 3n), ``input_bias`` (3n,), ``recurrent_weight``
    (3n,) = [a_r | a_z | a_n], ``recurrent_bias`` (n,) = b_hn: 3nd + 7n. Initialisation:
    lecun-normal input kernel, recurrent weights uniform on [-1, 1], zero biases.

    Carry Jacobian: diagonal (exactly): quasi-Newton is Newton, at O(T n) cost.
    """

    jacobian_structure = Diagonal()
    carry_linear = False

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        gate_fn: Callable[[jax.Array], jax.Array] = nnx.sigmoid,
        activation_fn: Callable[[jax.Array], jax.Array] = nnx.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_init: Initializer = default_diagonal_recurrent_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n = in_features, hidden_features
        self.input_kernel = nnx.Param(
            gate_stacked(kernel_init, 3)(rngs.params(), (d, 3 * n), param_dtype)
        )
        self.input_bias = nnx.Param(bias_init(rngs.params(), (3 * n,), param_dtype))
        self.recurrent_weight = nnx.Param(recurrent_init(rngs.params(), (3 * n,), param_dtype))
        self.recurrent_bias = nnx.Param(bias_init(rngs.params(), (n,), param_dtype))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, W_i, b_i, a, b_hn = promote_dtype(
            (
                carry,
                inputs,
                self.input_kernel[...],
                self.input_bias[...],
                self.recurrent_weight[...],
                self.recurrent_bias[...],
            ),
            dtype=self.dtype,
        )
        b_i, a, b_hn = lift(b_i, h.ndim), lift(a, h.ndim), lift(b_hn, h.ndim)
        # [a_r | a_z | a_n] ⊙ [h | h | h]: the diagonal recurrent part of each gate.
        recurrent = a * jnp.concatenate([h] * 3, axis=-1)
        new_h = gru_update(
            h,
            x @ W_i + b_i,
            recurrent,
            b_hn,
            gate_fn=self.gate_fn,
            activation_fn=self.activation_fn,
        )
        return new_h, new_h


class DiagLSTMCell(Cell):
    r"""LSTM with diagonal recurrent weights (ParaRNN, Danieli et al., 2025):

    .. math::

        i &= \sigma(W_{ii} x + a_i \odot h + b_i), \qquad
        f = \sigma(W_{if} x + a_f \odot h + b_f) \\
        g &= \tanh(W_{ig} x + a_g \odot h + b_g), \qquad
        o = \sigma(W_{io} x + a_o \odot h + b_o) \\
        c' &= f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')

    :class:`LSTMCell` with W_h replaced by diag(a). The carry is ``(c, h)`` and the output is h'.

    Parameters: ``input_kernel`` (d, 4n), ``recurrent_weight`` (4n,) = [a_i | a_f | a_g | a_o],
    ``bias`` (4n,): 4nd + 8n. Initialisation: lecun-normal input kernel, recurrent weights
    uniform on [-1, 1], zero biases except b_f = ``forget_bias``.

    Carry Jacobian: unit j's (c_j, h_j) depends only on (c_j, h_j): a 2 x 2 block per unit,
    ``BlockDiagonal(2)`` in the flat layout [c, h]. Newton costs O(T n) per iteration.
    """

    jacobian_structure = BlockDiagonal(2)
    carry_linear = False

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        forget_bias: float = 1.0,
        gate_fn: Callable[[jax.Array], jax.Array] = nnx.sigmoid,
        activation_fn: Callable[[jax.Array], jax.Array] = nnx.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_init: Initializer = default_diagonal_recurrent_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n = in_features, hidden_features
        self.input_kernel = nnx.Param(
            gate_stacked(kernel_init, 4)(rngs.params(), (d, 4 * n), param_dtype)
        )
        self.recurrent_weight = nnx.Param(recurrent_init(rngs.params(), (4 * n,), param_dtype))
        bias = bias_init(rngs.params(), (4 * n,), param_dtype)
        self.bias = nnx.Param(bias.at[n : 2 * n].add(forget_bias))

    def __call__(
        self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        c, h = carry
        c, h, x, W_i, a, b = promote_dtype(
            (c, h, inputs, self.input_kernel[...], self.recurrent_weight[...], self.bias[...]),
            dtype=self.dtype,
        )
        a, b = lift(a, h.ndim), lift(b, h.ndim)
        # h broadcast over the four gates: [a_i | a_f | a_g | a_o] ⊙ [h | h | h | h].
        gates = x @ W_i + a * jnp.concatenate([h] * 4, axis=-1) + b
        new_c, new_h = lstm_update(c, gates, gate_fn=self.gate_fn, activation_fn=self.activation_fn)
        return (new_c, new_h), new_h

    def initialize_carry(self, input_shape, rngs=None, carry_init=None):
        """Zero ``(c, h)`` (or ``carry_init``'s) for inputs of shape ``(*batch, in_features)``."""
        return lstm_carry(self, input_shape, rngs, carry_init)
