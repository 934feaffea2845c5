"""A leaky RNN whose per-neuron time constants are trained with the weights.

Khajehabdollahi, Zeraati, Giannakakis, Schäfer, Martius & Levina, "Emergent mechanisms for
long timescales depend on training curriculum and affect performance in memory tasks"
(arXiv:2309.12927, 2023) train such networks on N-parity and N-delayed-match-to-sample
tasks and ask whether long memory comes from the single-neuron time constants τ or from the
recurrent interactions (network-mediated timescales); :mod:`rnnscan.diagnostics` estimates the
latter from the activity (:func:`rnnscan.diagnostics.network_timescales`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.typing import Dtype, Initializer

from .._structure import Dense
from ._base import (
    Cell,
    carry_dtype,
    default_bias_init,
    default_kernel_init,
    default_recurrent_kernel_init,
    lift,
    promote_dtype,
)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"relu": nnx.relu, "tanh": nnx.tanh}
"""The activations :class:`LeakyRNNCell` knows by name (the paper's ReLU and tanh)."""


def _inverse_softplus(y: jax.Array) -> jax.Array:
    """x with softplus(x) = y > 0, computed stably (log(expm1(y)) = y + log(1 - exp(-y)))."""
    return y + jnp.log(-jnp.expm1(-y))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"LeakyRNNCell: {name} must be a positive integer, got {value!r}")
    return int(value)


def _initial_taus(tau_init, tau_min: float, n: int, key, dtype) -> jax.Array:
    """The initial τ of the ``n`` units: one value for all, or uniform in a range ``(lo, hi)``."""
    if isinstance(tau_init, (tuple, list)):
        if len(tau_init) != 2:
            raise ValueError(f"LeakyRNNCell: tau_init range must be (lo, hi), got {tau_init!r}")
        lo, hi = (float(v) for v in tau_init)
        if not tau_min < lo <= hi:
            raise ValueError(
                f"LeakyRNNCell: tau_init range must satisfy tau_min < lo <= hi, got "
                f"({lo}, {hi}) with tau_min={tau_min}"
            )
        return jax.random.uniform(key, (n,), dtype, minval=lo, maxval=hi)
    value = float(tau_init)
    if not value > tau_min:
        raise ValueError(
            f"LeakyRNNCell: tau_init must be > tau_min={tau_min} (τ = tau_min + softplus(raw) "
            f"reaches tau_min only as raw -> -inf), got {tau_init!r}"
        )
    return jnp.full((n,), value, dtype)


class LeakyRNNCell(Cell):
    r"""Leaky (rate) RNN with a trainable time constant τ_i >= τ_min per neuron:

    .. math::

        h_t = \Big(1 - \frac{1}{\tau}\Big) \odot h_{t-1}
              + \frac{1}{\tau} \odot \phi\big(W h_{t-1} + U x_t + b\big),
        \qquad \tau = \tau_{\min} + \mathrm{softplus}(\rho)

    the discretised rate equation τ dh/dt = -h + φ(W h + U x + b) with a step of one time unit
    (Khajehabdollahi et al., arXiv:2309.12927, Eq. 1). τ = 1 is a plain (Elman) RNN; a
    larger τ makes the unit a slower low-pass filter of its input: alone (W = 0, φ linear) its
    activity decays as (1 - 1/τ)^k, an exponential with timescale -1 / log(1 - 1/τ) ≈ τ - 1/2
    steps (:func:`rnnscan.diagnostics.leak_timescale`).

    τ is parametrised as τ_min + softplus(ρ) with ρ = ``tau_raw`` the trained parameter, so
    that τ >= τ_min holds for every parameter value (no projection or clipping after an
    optimiser step; τ_min itself is reached only as ρ -> -inf, or in rounding) and the
    gradient in ρ stays smooth. The paper constrains τ >= 1; the
    softplus map is our choice (document any comparison with it). :attr:`tau` gives τ.

    The carry is h and the output is h. :meth:`recurrent_matrix` returns W (n, n)
    [post, pre], :meth:`input_matrix` U (n, d).

    Parameters: ``input_kernel`` U^T (d, n), ``recurrent_kernel`` W^T (n, n), ``bias`` b (n,),
    ``tau_raw`` ρ (n,): nd + n² + 2n. Initialisation: U^T LeCun normal, W^T orthogonal (unit
    spectral radius, so the linearised dynamics start neither exploding nor collapsing),
    b = 0, τ = ``tau_init`` (default 2: at τ close to τ_min the softplus is flat and τ would
    barely move). These are our defaults; the paper's initialisation may differ.

    Carry Jacobian: dense, diag(1 - 1/τ) + diag(φ'(·) / τ) W, and not affine in h.

    Args:
        in_features: d, the input size.
        hidden_features: n, the number of neurons.
        activation: φ: ``"relu"`` (default, as in the paper), ``"tanh"``, or a function.
        tau_init: the initial τ of every neuron (> ``tau_min``), or a range ``(lo, hi)`` to
            draw each neuron's τ uniformly from.
        tau_min: the lower bound τ_min of τ (default 1: the leak never exceeds the update).
        train_tau: whether τ is a trained parameter (default ``True``); ``False`` keeps it a
            fixed :class:`flax.nnx.Variable` (the baseline of a fixed-τ network).
        kernel_init, recurrent_kernel_init, bias_init: initialisers of U^T, W^T and b.
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
        activation: str | Callable[[jax.Array], jax.Array] = "relu",
        tau_init: float | tuple[float, float] = 2.0,
        tau_min: float = 1.0,
        train_tau: bool = True,
        kernel_init: Initializer = default_kernel_init,
        recurrent_kernel_init: Initializer = default_recurrent_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        d = _positive_int("in_features", in_features)
        n = _positive_int("hidden_features", hidden_features)
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(
                    f"LeakyRNNCell: activation must be one of {sorted(ACTIVATIONS)} or a "
                    f"function, got {activation!r}"
                )
            self.activation_name = activation
            activation = ACTIVATIONS[activation]
        elif callable(activation):
            self.activation_name = getattr(activation, "__name__", "custom")
        else:
            raise ValueError(
                f"LeakyRNNCell: activation must be a name or a function, got {activation!r}"
            )
        tau_min = float(tau_min)
        if not (math.isfinite(tau_min) and tau_min > 0.0):
            raise ValueError(f"LeakyRNNCell: tau_min must be a positive number, got {tau_min!r}")
        self.in_features = d
        self.hidden_features = n
        self.activation_fn = activation
        self.tau_min = tau_min
        self.train_tau = bool(train_tau)
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)

        self.input_kernel = nnx.Param(kernel_init(rngs.params(), (d, n), param_dtype))
        self.recurrent_kernel = nnx.Param(recurrent_kernel_init(rngs.params(), (n, n), param_dtype))
        self.bias = nnx.Param(bias_init(rngs.params(), (n,), param_dtype))
        taus = _initial_taus(tau_init, tau_min, n, rngs.params(), param_dtype)
        raw = _inverse_softplus(taus - jnp.asarray(tau_min, param_dtype))
        self.tau_raw = nnx.Param(raw) if self.train_tau else nnx.Variable(raw)

    @property
    def tau(self) -> jax.Array:
        """τ (n,): every neuron's time constant, τ_min + softplus(``tau_raw``)."""
        (raw,) = promote_dtype((self.tau_raw[...],), dtype=self.dtype)
        return self.tau_min + jax.nn.softplus(raw)

    def recurrent_matrix(self) -> jax.Array:
        """W (n, n), [post, pre]."""
        return self.recurrent_kernel[...].T

    def input_matrix(self) -> jax.Array:
        """U (n, d)."""
        return self.input_kernel[...].T

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, K, R, b, raw = promote_dtype(
            (
                carry,
                inputs,
                self.input_kernel[...],
                self.recurrent_kernel[...],
                self.bias[...],
                self.tau_raw[...],
            ),
            dtype=self.dtype,
        )
        rate = lift(1.0 / (self.tau_min + jax.nn.softplus(raw)), h.ndim)  # 1/τ
        drive = self.activation_fn(h @ R + x @ K + lift(b, h.ndim))
        new_h = h + rate * (drive - h)  # (1 - 1/τ) h + (1/τ) φ(...)
        return new_h, new_h
