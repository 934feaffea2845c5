"""The gated recurrent unit, in the PyTorch / ``flax.linen`` form."""

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
    promote_dtype,
)
from ._low_rank import (
    check_rank,
    effective_recurrent_kernel,
    low_rank_factors,
    recurrent_arrays,
    recurrent_product,
)


class GRUCell(Cell):
    r"""Gated recurrent unit (Cho et al., 2014), in the form of PyTorch's ``nn.GRU`` and
    ``flax.linen.GRUCell``: the reset gate multiplies the hidden-side candidate *after* the
    matmul and its bias b_hn:

    .. math::

        r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h) \\
        z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h) \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h

    (PyTorch's separate hidden biases b_hr, b_hz add to b_ir, b_iz, so they are left out.)
    ``flax.nnx.GRUCell`` has no b_hn. The carry is h and the output is h'.

    Parameters: ``input_kernel`` (d, 3n) = [W_ir | W_iz | W_in]ᵀ, ``input_bias`` (3n,),
    ``recurrent_kernel`` (n, 3n) = [W_hr | W_hz | W_hn]ᵀ, ``recurrent_bias`` (n,) = b_hn:
    3(nd + n² + n) + n in all. Initialisation: lecun-normal input kernels, an orthogonal
    recurrent kernel per gate, zero biases.

    Low rank (``rank=r``): W_h = U Vᵀ with ``recurrent_u`` U (n, r), one projection shared
    by the three gates, and ``recurrent_v`` V (3n, r) in place of ``recurrent_kernel``;
    h W_h is computed as (h U) Vᵀ (Lu, Sindhwani & Sainath 2016, "Learning compact recurrent
    neural networks"). Parameters: 3(nd + n) + n + 4nr (against 3n² recurrent ones: fewer
    when r < 3n/4). Initialisation: U and each gate's V_kᵀ (r, n) drawn on their own by
    ``recurrent_kernel_init``, so each gate's U V_kᵀ is a partial isometry by default.

    Carry Jacobian: dense (every unit reads every other through W_h; also at low rank, where
    h enters only through h U and it is diag(z) plus a term of rank ≤ r, a structure the
    solvers do not exploit).

    Args:
        in_features: d, the input size.
        hidden_features: n, the carry and output size.
        rank: r, the rank of the recurrent kernel (None, the default: a full (n, 3n)
            kernel); 1 ≤ r ≤ n.
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
        self.rank = check_rank("GRUCell", rank, hidden_features)
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n = in_features, hidden_features
        self.input_kernel = nnx.Param(
            gate_stacked(kernel_init, 3)(rngs.params(), (d, 3 * n), param_dtype)
        )
        self.input_bias = nnx.Param(bias_init(rngs.params(), (3 * n,), param_dtype))
        if self.rank is None:
            self.recurrent_kernel = nnx.Param(
                gate_stacked(recurrent_kernel_init, 3)(rngs.params(), (n, 3 * n), param_dtype)
            )
        else:
            self.recurrent_u, self.recurrent_v = low_rank_factors(
                recurrent_kernel_init, 3, n, self.rank, param_dtype, rngs
            )
        self.recurrent_bias = nnx.Param(bias_init(rngs.params(), (n,), param_dtype))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, W_i, b_i, b_hn, *W_h = promote_dtype(
            (
                carry,
                inputs,
                self.input_kernel[...],
                self.input_bias[...],
                self.recurrent_bias[...],
                *recurrent_arrays(self),
            ),
            dtype=self.dtype,
        )
        b_i, b_hn = lift(b_i, h.ndim), lift(b_hn, h.ndim)
        new_h = gru_update(
            h,
            x @ W_i + b_i,
            recurrent_product(h, tuple(W_h)),
            b_hn,
            gate_fn=self.gate_fn,
            activation_fn=self.activation_fn,
        )
        return new_h, new_h

    def recurrent_matrix(self) -> jax.Array:
        """The effective recurrent kernel W_h (n, 3n): ``recurrent_kernel`` or U Vᵀ."""
        return effective_recurrent_kernel(self)


def gru_update(h, input_part, recurrent_part, b_hn, *, gate_fn, activation_fn):
    """The GRU gating given the input projections [x_r | x_z | x_n] (biases included) and the
    recurrent ones [h_r | h_z | h_n] (dense ``h @ W_h`` or diagonal ``a * h``)."""
    x_r, x_z, x_n = jnp.split(input_part, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(recurrent_part, 3, axis=-1)
    r = gate_fn(x_r + h_r)
    z = gate_fn(x_z + h_z)
    n = activation_fn(x_n + r * (h_n + b_hn))
    return (1.0 - z) * n + z * h
