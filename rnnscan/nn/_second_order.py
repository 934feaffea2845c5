"""Second-order RNNs: the carry and the input interact multiplicatively.

Lizaire et al. (ICML 2024), "A Tensor Decomposition Perspective on Second-order RNNs", compare
the full second-order RNN (2RNN), its CP-decomposed form (CPRNN) and multiplicative
integration (MIRNN, Wu et al. 2016), which is a CPRNN of a particular shape. All three have
dense carry Jacobians.
"""

from __future__ import annotations

import math
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
    lift,
    ones_init,
    promote_dtype,
)

# Lecun-normal over the (n+1)(d+1) entries that feed each output unit of the 2RNN tensor.
default_tensor_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)


def _append_one(v: jax.Array) -> jax.Array:
    """[v; 1]: the homogeneous coordinate that folds first-order terms and biases into a
    bilinear form."""
    return jnp.concatenate([v, jnp.ones(v.shape[:-1] + (1,), v.dtype)], axis=-1)


class SecondOrderCell(Cell):
    r"""Second-order RNN (2RNN; Giles et al., 1990; notation of Lizaire et al., 2024):

    .. math::

        h' = \tanh\big(\mathcal{A} \times_1 [h; 1] \times_2 [x; 1]\big),
        \qquad \mathcal{A} \in \mathbb{R}^{(n+1) \times (d+1) \times n}

    i.e. h'_k = tanh(Σ_ij A_ijk [h;1]_i [x;1]_j). The appended ones make the first-order terms
    (A[:n, d] h, A[n, :d] x) and the bias A[n, d] slices of the same tensor. The carry is h and
    the output is h'.

    Parameters: ``kernel`` 𝒜: (n+1)(d+1)n. Initialisation: lecun-normal over the (n+1)(d+1)
    fan-in of each output unit.

    Carry Jacobian: dense.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        activation_fn: Callable[[jax.Array], jax.Array] = nnx.tanh,
        kernel_init: Initializer = default_tensor_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n = in_features, hidden_features
        self.kernel = nnx.Param(kernel_init(rngs.params(), (n + 1, d + 1, n), param_dtype))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, A = promote_dtype((carry, inputs, self.kernel[...]), dtype=self.dtype)
        # Contract the input first: (d+1) x (n+1) x n once, then a matrix-vector product in h.
        A_x = jnp.einsum("...j,ijk->...ik", _append_one(x), A)
        new_h = self.activation_fn(jnp.einsum("...i,...ik->...k", _append_one(h), A_x))
        return new_h, new_h


class MIRNNCell(Cell):
    r"""Multiplicative-integration RNN (Wu et al., 2016, "On multiplicative integration with
    recurrent neural networks"), in its general form:

    .. math::

        h' = \tanh(\alpha \odot W x \odot U h + \beta_1 \odot U h + \beta_2 \odot W x + b)

    The carry is h and the output is h'.

    Parameters: ``input_kernel`` W (d, n), ``recurrent_kernel`` U (n, n), ``alpha``,
    ``beta_recurrent`` (β₁), ``beta_input`` (β₂), ``bias`` (n,): nd + n² + 4n.
    Initialisation: lecun-normal W, orthogonal U, α = β₁ = β₂ = 1 (the multiplicative and
    additive paths start equally weighted), b = 0.

    Carry Jacobian: dense.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        activation_fn: Callable[[jax.Array], jax.Array] = nnx.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        gate_init: Initializer = ones_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n = in_features, hidden_features
        self.input_kernel = nnx.Param(kernel_init(rngs.params(), (d, n), param_dtype))
        self.recurrent_kernel = nnx.Param(recurrent_kernel_init(rngs.params(), (n, n), param_dtype))
        self.alpha = nnx.Param(gate_init(rngs.params(), (n,), param_dtype))
        self.beta_recurrent = nnx.Param(gate_init(rngs.params(), (n,), param_dtype))
        self.beta_input = nnx.Param(gate_init(rngs.params(), (n,), param_dtype))
        self.bias = nnx.Param(bias_init(rngs.params(), (n,), param_dtype))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, W, U, alpha, beta_1, beta_2, b = promote_dtype(
            (
                carry,
                inputs,
                self.input_kernel[...],
                self.recurrent_kernel[...],
                self.alpha[...],
                self.beta_recurrent[...],
                self.beta_input[...],
                self.bias[...],
            ),
            dtype=self.dtype,
        )
        Wx, Uh = x @ W, h @ U
        alpha, beta_1, beta_2, b = (lift(v, Uh.ndim) for v in (alpha, beta_1, beta_2, b))
        new_h = self.activation_fn(alpha * Wx * Uh + beta_1 * Uh + beta_2 * Wx + b)
        return new_h, new_h


class CPRNNCell(Cell):
    r"""CP-decomposed second-order RNN (CPRNN; Lizaire et al., 2024): the bilinear term of a 2RNN
    with its tensor in rank-R CP form, plus first-order terms.

    .. math::

        h' = \tanh\big(C\,[(A^\top h) \odot (B^\top x)] + V h + U x + b\big),
        \qquad A \in \mathbb{R}^{n \times R},\; B \in \mathbb{R}^{d \times R},\;
        C \in \mathbb{R}^{n \times R}

    The carry is h and the output is h'. MIRNN is the case R = n with A, B, C tied to U, W and
    diag(α).

    Parameters: ``A`` (n, R), ``B`` (d, R), ``C`` (n, R), ``recurrent_kernel`` V (n, n),
    ``input_kernel`` U (d, n), ``bias`` (n,): R(2n + d) + nd + n² + n.
    Initialisation: A, B and U lecun-normal (unit-variance projections), C normal with variance
    1/R, V orthogonal, b = 0.

    Carry Jacobian: dense.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        rank: int,
        activation_fn: Callable[[jax.Array], jax.Array] = nnx.tanh,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if not (isinstance(rank, int) and rank >= 1):
            raise ValueError(f"CPRNNCell: rank must be a positive int, got {rank!r}")
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.rank = rank
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n, R = in_features, hidden_features, rank
        self.A = nnx.Param(kernel_init(rngs.params(), (n, R), param_dtype))
        self.B = nnx.Param(kernel_init(rngs.params(), (d, R), param_dtype))
        self.C = nnx.Param(jax.random.normal(rngs.params(), (n, R), param_dtype) / math.sqrt(R))
        self.recurrent_kernel = nnx.Param(recurrent_kernel_init(rngs.params(), (n, n), param_dtype))
        self.input_kernel = nnx.Param(kernel_init(rngs.params(), (d, n), param_dtype))
        self.bias = nnx.Param(bias_init(rngs.params(), (n,), param_dtype))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, A, B, C, V, U, b = promote_dtype(
            (
                carry,
                inputs,
                self.A[...],
                self.B[...],
                self.C[...],
                self.recurrent_kernel[...],
                self.input_kernel[...],
                self.bias[...],
            ),
            dtype=self.dtype,
        )
        bilinear = ((h @ A) * (x @ B)) @ C.T
        new_h = self.activation_fn(bilinear + h @ V + x @ U + lift(b, h.ndim))
        return new_h, new_h
