"""Bistable recurrent cells (Vecoven, Ernst, Wehenkel and Drion, 2021, "A bio-inspired bistable
recurrent cell allows for long-lasting memory", PLoS ONE 16(6): e0252676).

Each unit's feedback gain a = 1 + tanh(...) lies in (0, 2). With a > 1 the unit's update
h' = c h + (1 - c) tanh(U x + a h) has two stable fixed points at zero input (the map
h -> tanh(a h) is bistable), so the unit holds a bit of memory indefinitely instead of leaking
it: the memory lives in each unit's own dynamics, not in its connections.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype, Initializer

from .._structure import Dense, Diagonal
from ._base import (
    Cell,
    carry_dtype,
    default_bias_init,
    default_recurrent_kernel_init,
    gate_stacked,
    lift,
    ones_init,
    promote_dtype,
)

#: The reference implementation's input kernels (Keras ``glorot_uniform``).
glorot_uniform_init = nnx.initializers.glorot_uniform()


def _brc_update(h, input_part, recurrent_part, bias):
    """a = 1 + tanh(.), c = sigmoid(.), h' = c h + (1 - c) tanh(U x + a h), given the input
    projections [U_a x | U_c x | U x], the recurrent parts [r_a | r_c] and biases [b_a | b_c]."""
    x_a, x_c, x_h = jnp.split(input_part, 3, axis=-1)
    r_a, r_c = jnp.split(recurrent_part, 2, axis=-1)
    b_a, b_c = jnp.split(bias, 2, axis=-1)
    a = 1.0 + jnp.tanh(x_a + r_a + b_a)
    c = nnx.sigmoid(x_c + r_c + b_c)
    return c * h + (1.0 - c) * jnp.tanh(x_h + a * h)


class BRCCell(Cell):
    r"""Bistable recurrent cell (BRC; Vecoven et al., PLoS ONE 2021):

    .. math::

        a &= 1 + \tanh(U_a x + w_a \odot h + b_a) \\
        c &= \sigma(U_c x + w_c \odot h + b_c) \\
        h' &= c \odot h + (1 - c) \odot \tanh(U x + a \odot h)

    The recurrence is cellular: unit j reads only its own h_j (through the vectors w_a, w_c
    and the product a ⊙ h). Where a_j > 1 the unit is bistable at zero input; where a_j < 1 it
    is monostable. The carry is h and the output is h'.

    Parameters: ``input_kernel`` (d, 3n) = [U_a | U_c | U]ᵀ, ``recurrent_weight`` (2n,) =
    [w_a | w_c], ``bias`` (2n,) = [b_a | b_c]: 3nd + 4n. The paper's equations have no
    biases; its reference implementation adds b_a and b_c (zero-initialised), as here, and no
    bias on the candidate. Initialisation (the reference implementation's): Glorot-uniform
    input kernels, w_a = w_c = 1, zero biases.

    Carry Jacobian: diagonal (exactly): Newton costs O(T n) per iteration and quasi-Newton
    *is* Newton.

    Args:
        in_features: d, the input size.
        hidden_features: n, the carry and output size.
        kernel_init, recurrent_init, bias_init: initialisers of the input kernel, of
            [w_a | w_c] and of [b_a | b_c].
        dtype: the computation dtype (default: inferred from inputs and parameters).
        param_dtype: the parameters' dtype.
        rngs: the random streams that initialise the parameters.
    """

    jacobian_structure = Diagonal()
    carry_linear = False

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        kernel_init: Initializer = glorot_uniform_init,
        recurrent_init: Initializer = ones_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n = in_features, hidden_features
        self.input_kernel = nnx.Param(
            gate_stacked(kernel_init, 3)(rngs.params(), (d, 3 * n), param_dtype)
        )
        self.recurrent_weight = nnx.Param(recurrent_init(rngs.params(), (2 * n,), param_dtype))
        self.bias = nnx.Param(bias_init(rngs.params(), (2 * n,), param_dtype))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, U, w, b = promote_dtype(
            (
                carry,
                inputs,
                self.input_kernel[...],
                self.recurrent_weight[...],
                self.bias[...],
            ),
            dtype=self.dtype,
        )
        w, b = lift(w, h.ndim), lift(b, h.ndim)
        new_h = _brc_update(h, x @ U, w * jnp.concatenate([h, h], axis=-1), b)
        return new_h, new_h


class NBRCCell(Cell):
    r"""Recurrently neuromodulated bistable recurrent cell (nBRC; Vecoven et al., PLoS ONE
    2021): the BRC with dense recurrent connections in its gates,

    .. math::

        a &= 1 + \tanh(U_a x + W_a h + b_a) \\
        c &= \sigma(U_c x + W_c h + b_c) \\
        h' &= c \odot h + (1 - c) \odot \tanh(U x + a \odot h)

    so that the network state modulates each unit's bistability and memory (the candidate
    still reads h only through a ⊙ h). The carry is h and the output is h'.

    Parameters: ``input_kernel`` (d, 3n) = [U_a | U_c | U]ᵀ, ``recurrent_kernel`` (n, 2n) =
    [W_a | W_c]ᵀ, ``bias`` (2n,) = [b_a | b_c]: 3nd + 2n² + 2n. Initialisation (the reference
    implementation's): Glorot-uniform input kernels, an orthogonal W_a and W_c each, zero
    biases (the paper's equations have no biases; its code has b_a, b_c).

    Carry Jacobian: dense (W_a, W_c couple every unit to every other).

    Args:
        in_features: d, the input size.
        hidden_features: n, the carry and output size.
        kernel_init, recurrent_kernel_init, bias_init: initialisers (the recurrent one is
            applied to W_a and W_c separately).
        dtype: the computation dtype (default: inferred from inputs and parameters).
        param_dtype: the parameters' dtype.
        rngs: the random streams that initialise the parameters.
    """

    jacobian_structure = Dense()
    carry_linear = False

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        kernel_init: Initializer = glorot_uniform_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n = in_features, hidden_features
        self.input_kernel = nnx.Param(
            gate_stacked(kernel_init, 3)(rngs.params(), (d, 3 * n), param_dtype)
        )
        self.recurrent_kernel = nnx.Param(
            gate_stacked(recurrent_kernel_init, 2)(rngs.params(), (n, 2 * n), param_dtype)
        )
        self.bias = nnx.Param(bias_init(rngs.params(), (2 * n,), param_dtype))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, U, W, b = promote_dtype(
            (
                carry,
                inputs,
                self.input_kernel[...],
                self.recurrent_kernel[...],
                self.bias[...],
            ),
            dtype=self.dtype,
        )
        new_h = _brc_update(h, x @ U, h @ W, lift(b, h.ndim))
        return new_h, new_h
