"""The long short-term memory cell."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype, Initializer

from ._base import (
    Cell,
    carry_dtype,
    default_bias_init,
    default_kernel_init,
    default_recurrent_kernel_init,
    gate_stacked,
    lift,
    make_carry,
    promote_dtype,
)
from ._low_rank import (
    check_rank,
    effective_recurrent_kernel,
    low_rank_factors,
    recurrent_arrays,
    recurrent_product,
)


class LSTMCell(Cell):
    r"""Long short-term memory (Hochreiter & Schmidhuber, 1997; with the forget gate of Gers et
    al., 2000), with ``flax.nnx.LSTMCell``'s equations and carry order ``(c, h)``:

    .. math::

        i &= \sigma(W_{ii} x + W_{hi} h + b_i) \\
        f &= \sigma(W_{if} x + W_{hf} h + b_f) \\
        g &= \tanh(W_{ig} x + W_{hg} h + b_g) \\
        o &= \sigma(W_{io} x + W_{ho} h + b_o) \\
        c' &= f \odot c + i \odot g \\
        h' &= o \odot \tanh(c')

    The carry is ``(c, h)`` and the output is h'.

    Parameters: ``input_kernel`` (d, 4n), ``recurrent_kernel`` (n, 4n), ``bias`` (4n,), gates
    in the order i, f, g, o: 4(nd + n² + n) in all. Initialisation: lecun-normal input kernel,
    an orthogonal recurrent kernel per gate, zero biases except b_f = ``forget_bias``
    (1 by default, Jozefowicz et al. 2015: the cell starts by remembering).

    Low rank (``rank=r``): W_h = U Vᵀ with ``recurrent_u`` U (n, r), one projection shared
    by the four gates, and ``recurrent_v`` V (4n, r) in place of ``recurrent_kernel``;
    h W_h is computed as (h U) Vᵀ (Lu, Sindhwani & Sainath 2016, "Learning compact recurrent
    neural networks"). Parameters: 4(nd + n) + 5nr (against 4n² recurrent ones: fewer when
    r < 4n/5). Initialisation: U and each gate's V_kᵀ (r, n) drawn on their own by
    ``recurrent_kernel_init``, so each gate's U V_kᵀ is a partial isometry by default.

    Carry Jacobian: dense (also at low rank).

    Args:
        in_features: d, the input size.
        hidden_features: n, the size of c, h and the output.
        rank: r, the rank of the recurrent kernel (None, the default: a full (n, 4n)
            kernel); 1 ≤ r ≤ n.
        forget_bias: the initial value of the forget gate's bias b_f (a parameter, trained).
        gate_fn, activation_fn: σ and tanh above.
        kernel_init, recurrent_kernel_init, bias_init: initialisers (the recurrent one is
            applied to each gate's (n, n) block separately; at low rank to U and to each
            gate's (r, n) block of Vᵀ).
        dtype: the computation dtype (default: inferred from inputs and parameters).
        param_dtype: the parameters' dtype.
        rngs: the random streams that initialise the parameters.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        rank: int | None = None,
        forget_bias: float = 1.0,
        gate_fn: Callable[[jax.Array], jax.Array] = nnx.sigmoid,
        activation_fn: Callable[[jax.Array], jax.Array] = nnx.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.gate_fn = gate_fn
        self.activation_fn = activation_fn
        self.rank = check_rank("LSTMCell", rank, hidden_features)
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n = in_features, hidden_features
        self.input_kernel = nnx.Param(
            gate_stacked(kernel_init, 4)(rngs.params(), (d, 4 * n), param_dtype)
        )
        if self.rank is None:
            self.recurrent_kernel = nnx.Param(
                gate_stacked(recurrent_kernel_init, 4)(rngs.params(), (n, 4 * n), param_dtype)
            )
        else:
            self.recurrent_u, self.recurrent_v = low_rank_factors(
                recurrent_kernel_init, 4, n, self.rank, param_dtype, rngs
            )
        bias = bias_init(rngs.params(), (4 * n,), param_dtype)
        self.bias = nnx.Param(bias.at[n : 2 * n].add(forget_bias))

    def __call__(
        self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        c, h = carry
        c, h, x, W_i, b, *W_h = promote_dtype(
            (c, h, inputs, self.input_kernel[...], self.bias[...], *recurrent_arrays(self)),
            dtype=self.dtype,
        )
        b = lift(b, h.ndim)
        new_c, new_h = lstm_update(
            c,
            x @ W_i + recurrent_product(h, tuple(W_h)) + b,
            gate_fn=self.gate_fn,
            activation_fn=self.activation_fn,
        )
        return (new_c, new_h), new_h

    def recurrent_matrix(self) -> jax.Array:
        """The effective recurrent kernel W_h (n, 4n): ``recurrent_kernel`` or U Vᵀ."""
        return effective_recurrent_kernel(self)

    def initialize_carry(self, input_shape, rngs=None, carry_init=None):
        """Zero ``(c, h)`` (or ``carry_init``'s) for inputs of shape ``(*batch, in_features)``."""
        return lstm_carry(self, input_shape, rngs, carry_init)


def lstm_update(c, gates, *, gate_fn, activation_fn):
    """``(c', h')`` from the pre-activations [i | f | g | o] of the four gates."""
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    new_c = gate_fn(f) * c + gate_fn(i) * activation_fn(g)
    return new_c, gate_fn(o) * activation_fn(new_c)


def lstm_carry(cell, input_shape, rngs, carry_init):
    """An LSTM-style ``(c, h)`` carry for inputs of shape ``(*batch, in_features)``."""
    shape = tuple(input_shape[:-1]) + (cell.hidden_features,)
    c = make_carry(shape, cell.carry_dtype, rngs, carry_init)
    h = make_carry(shape, cell.carry_dtype, rngs, carry_init)
    return c, h
