"""Cells whose carry update is affine in the carry: h' = a(x) ⊙ h + b(x).

Their gates read the input only, so the whole sequence is one linear recurrence: Newton's
method with ``carry_linear=True`` evaluates it exactly with a single parallel scan (the solve
reports 1 iteration), at O(T n) cost since the recurrence is (block-)diagonal.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype, Initializer

from .._structure import BlockDiagonal, Diagonal
from ._base import (
    Cell,
    carry_dtype,
    default_bias_init,
    default_kernel_init,
    gate_stacked,
    lift,
    make_carry,
    promote_dtype,
)


class MinGRUCell(Cell):
    r"""minGRU (Feng et al., 2024, "Were RNNs all we needed?"): a GRU whose gate and candidate
    read only the input.

    .. math::

        z &= \sigma(W_z x + b_z) \\
        \tilde h &= W_h x + b_h \\
        h' &= (1 - z) \odot h + z \odot \tilde h

    The carry is h and the output is h'.

    Parameters: ``input_kernel`` (d, 2n) = [W_z | W_h]ᵀ and ``input_bias`` (2n,): 2(nd + n).
    Initialisation: lecun-normal kernel, zero biases.

    Carry Jacobian: diagonal, diag(1 - z); affine in the carry (one parallel scan is exact).
    """

    jacobian_structure = Diagonal()
    carry_linear = True

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        kernel_init: Initializer = default_kernel_init,
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
            gate_stacked(kernel_init, 2)(rngs.params(), (d, 2 * n), param_dtype)
        )
        self.input_bias = nnx.Param(bias_init(rngs.params(), (2 * n,), param_dtype))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, W, b = promote_dtype(
            (carry, inputs, self.input_kernel[...], self.input_bias[...]), dtype=self.dtype
        )
        z_pre, candidate = jnp.split(x @ W + lift(b, x.ndim), 2, axis=-1)
        z = nnx.sigmoid(z_pre)
        new_h = (1.0 - z) * h + z * candidate
        return new_h, new_h


class MinLSTMCell(Cell):
    r"""minLSTM (Feng et al., 2024, "Were RNNs all we needed?"): an LSTM whose gates read only the
    input, with normalised forget and input gates and no output gate or cell state.

    .. math::

        f &= \sigma(W_f x + b_f), \qquad i = \sigma(W_i x + b_i) \\
        \tilde h &= W_h x + b_h \\
        h' &= \frac{f}{f + i} \odot h + \frac{i}{f + i} \odot \tilde h

    The carry is h and the output is h'.

    Parameters: ``input_kernel`` (d, 3n) = [W_f | W_i | W_h]ᵀ and ``input_bias`` (3n,):
    3(nd + n). Initialisation: lecun-normal kernel, zero biases.

    Carry Jacobian: diagonal, diag(f / (f + i)); affine in the carry.
    """

    jacobian_structure = Diagonal()
    carry_linear = True

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        kernel_init: Initializer = default_kernel_init,
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
        self.input_bias = nnx.Param(bias_init(rngs.params(), (3 * n,), param_dtype))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, W, b = promote_dtype(
            (carry, inputs, self.input_kernel[...], self.input_bias[...]), dtype=self.dtype
        )
        f_pre, i_pre, candidate = jnp.split(x @ W + lift(b, x.ndim), 3, axis=-1)
        f, i = nnx.sigmoid(f_pre), nnx.sigmoid(i_pre)
        new_h = (f * h + i * candidate) / (f + i)
        return new_h, new_h


class LRUCell(Cell):
    r"""Linear recurrent unit (Orvieto et al., 2023, "Resurrecting recurrent neural networks for
    long sequences"): a complex diagonal linear recurrence with a real read-out.

    .. math::

        \lambda &= \exp(-\exp(\nu) + i \exp(\theta)) \in \mathbb{C}^n, \qquad
        \gamma = \exp(\gamma_{\log}) \\
        h' &= \lambda \odot h + \gamma \odot (B x), \qquad B = B_{re} + i B_{im} \\
        y &= \mathrm{Re}(C h') + D \odot x, \qquad C = C_{re} + i C_{im}

    The carry h is a complex array of size n (``hidden_features``); the output y has the input's
    size d (the skip term D ⊙ x needs it).

    Parameters: ``nu_log``, ``theta_log``, ``gamma_log`` (n,); ``B_re``, ``B_im`` (n, d);
    ``C_re``, ``C_im`` (d, n); ``D`` (d,): 3n + 4nd + d in all.

    Initialisation (the paper's): λ uniform on the ring r_min ≤ |λ| ≤ r_max with phase in
    [0, max_phase]; γ = sqrt(1 - |λ|²) so that white-noise inputs keep their scale; B with
    entries N(0, 1/(2d)) per part, C with N(0, 1/n) per part, D with N(0, 1).

    Carry Jacobian: the flat carry is [Re h, Im h] and unit j couples (Re h_j, Im h_j) through
    [[Re λ_j, -Im λ_j], [Im λ_j, Re λ_j]]: ``BlockDiagonal(2)``; affine in the carry.
    """

    jacobian_structure = BlockDiagonal(2)
    carry_linear = True

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if not 0.0 <= r_min < r_max <= 1.0:
            raise ValueError(f"LRUCell: need 0 <= r_min < r_max <= 1, got {r_min=}, {r_max=}")
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.dtype = dtype
        # The carry is complex with the precision of the (real) computation dtype.
        self.carry_dtype = jnp.result_type(carry_dtype(dtype, param_dtype), jnp.complex64)
        d, n = in_features, hidden_features

        # |λ|² uniform on [r_min², r_max²] makes λ uniform on the ring's area.
        u1 = jax.random.uniform(rngs.params(), (n,), param_dtype)
        u2 = jax.random.uniform(rngs.params(), (n,), param_dtype)
        nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = jnp.log(max_phase * u2)
        modulus = jnp.exp(-jnp.exp(nu_log))
        self.nu_log = nnx.Param(nu_log)
        self.theta_log = nnx.Param(theta_log)
        self.gamma_log = nnx.Param(0.5 * jnp.log1p(-(modulus**2)))

        def normal(std, shape):
            return nnx.Param(std * jax.random.normal(rngs.params(), shape, param_dtype))

        self.B_re = normal(1 / math.sqrt(2 * d), (n, d))
        self.B_im = normal(1 / math.sqrt(2 * d), (n, d))
        self.C_re = normal(1 / math.sqrt(n), (d, n))
        self.C_im = normal(1 / math.sqrt(n), (d, n))
        self.D = normal(1.0, (d,))

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, D = promote_dtype(
            (
                inputs,
                self.nu_log[...],
                self.theta_log[...],
                self.gamma_log[...],
                self.B_re[...],
                self.B_im[...],
                self.C_re[...],
                self.C_im[...],
                self.D[...],
            ),
            dtype=self.dtype,
        )
        nu_log, theta_log, gamma_log, D = (
            lift(v, x.ndim) for v in (nu_log, theta_log, gamma_log, D)
        )
        # Real arithmetic on (Re, Im) pairs: cheaper than complex matmuls of real inputs.
        modulus = jnp.exp(-jnp.exp(nu_log))
        phase = jnp.exp(theta_log)
        lam_re, lam_im = modulus * jnp.cos(phase), modulus * jnp.sin(phase)
        gamma = jnp.exp(gamma_log)
        h_re, h_im = carry.real.astype(x.dtype), carry.imag.astype(x.dtype)
        new_re = lam_re * h_re - lam_im * h_im + gamma * (x @ B_re.T)
        new_im = lam_re * h_im + lam_im * h_re + gamma * (x @ B_im.T)
        y = new_re @ C_re.T - new_im @ C_im.T + D * x
        return jax.lax.complex(new_re, new_im).astype(carry.dtype), y

    def initialize_carry(self, input_shape, rngs=None, carry_init=None):
        """A zero complex carry for inputs of shape ``(*batch, in_features)``."""
        shape = tuple(input_shape[:-1]) + (self.hidden_features,)
        return make_carry(shape, self.carry_dtype, rngs, carry_init)


class RGLRUCell(Cell):
    r"""Real-gated linear recurrent unit (De et al., 2024, "Griffin"): a diagonal real
    recurrence whose decay is gated by the input.

    .. math::

        r &= \sigma(W_a x + b_a), \qquad i = \sigma(W_x x + b_x) \\
        a_t &= a^{c r}, \qquad a = \sigma(\Lambda), \quad c = 8 \\
        h' &= a_t \odot h + \sqrt{1 - a_t^2} \odot (i \odot x)

    computed in log space, log a_t = -c r ⊙ softplus(-Λ). The carry is h and the output is h'.
    The recurrence is elementwise in x, so ``in_features == hidden_features`` (in Griffin a
    linear layer before the cell sets the width).

    Parameters: ``gate_kernel`` (n, 2n) = [W_a | W_x]ᵀ, ``gate_bias`` (2n,), ``Lambda`` (n,):
    2(n² + n) + n. Initialisation: lecun-normal gate kernels, zero biases, and Λ such that
    a^c is uniform on [0.9, 0.999] (the paper's).

    Carry Jacobian: diagonal, diag(a_t); affine in the carry.
    """

    jacobian_structure = Diagonal()
    carry_linear = True

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        *,
        c: float = 8.0,
        min_decay: float = 0.9,
        max_decay: float = 0.999,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if hidden_features is None:
            hidden_features = in_features
        if hidden_features != in_features:
            raise ValueError(
                f"RGLRUCell: the recurrence is elementwise in the input, so hidden_features must "
                f"equal in_features; got {in_features=}, {hidden_features=} (project the input "
                f"with a linear layer first)"
            )
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.c = c
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        n = hidden_features
        self.gate_kernel = nnx.Param(
            gate_stacked(kernel_init, 2)(rngs.params(), (n, 2 * n), param_dtype)
        )
        self.gate_bias = nnx.Param(bias_init(rngs.params(), (2 * n,), param_dtype))
        decay = jax.random.uniform(
            rngs.params(), (n,), param_dtype, minval=min_decay, maxval=max_decay
        )
        a = decay ** (1.0 / c)
        self.Lambda = nnx.Param(jnp.log(a) - jnp.log1p(-a))  # logit(a)

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, W, b, Lambda = promote_dtype(
            (carry, inputs, self.gate_kernel[...], self.gate_bias[...], self.Lambda[...]),
            dtype=self.dtype,
        )
        r_pre, i_pre = jnp.split(x @ W + lift(b, x.ndim), 2, axis=-1)
        Lambda = lift(Lambda, x.ndim)
        r, i = nnx.sigmoid(r_pre), nnx.sigmoid(i_pre)
        log_a = -self.c * r * jax.nn.softplus(-Lambda)
        a = jnp.exp(log_a)
        # sqrt(1 - a²) = sqrt(-expm1(2 log a)): accurate when a is close to 1.
        new_h = a * h + jnp.sqrt(-jnp.expm1(2 * log_a)) * (i * x)
        return new_h, new_h
