r"""Time-warping LSTM and GRU cells: gated cells with a small set of time-scale parameters
(:class:`WarpParam`) that stretch or compress their dynamics in time, for transfer learning
across time scales (Hirschi, "Time-Warping Recurrent Neural Networks for Transfer Learning",
arXiv:2604.02474, 2026; Hirschi, Mandel & Kochanski, arXiv:2605.08379, 2026: fuel-moisture
models pretrained on 10 h fuels transferred to 1 h, 100 h and 1000 h fuels by changing only
the forget- and input-gate biases of the LSTM), after Tallec & Ollivier ("Can recurrent neural
networks warp time?", ICLR 2018: a time warping t -> alpha t of a leaky or gated system is a
rescaling of its gates).

The construction here is our derivation following those papers, not code or formulas copied
from them. A first-order time lag with time constant tau, sampled with step 1 (zero-order hold
on the input),

    y_t = a y_{t-1} + (1 - a) u_t,        a = exp(-1 / tau),

is warped to the time constant kappa tau by a -> a^(1/kappa). An LSTM reproduces the lag on its
cell state with f = a and i = 1 - f, a GRU on its hidden state with z = a. The warp therefore
acts on the gate *values*, step by step:

    f -> f^s,    i -> 1 - (1 - i)^s    (LSTM),        z -> z^s    (GRU),

with the rate s = 1 / kappa = exp(-omega); omega (one per unit, or one per cell) is the only
warp parameter. For gates near 1 (long memories) f^s ~ 1 - s (1 - f) and 1 - (1 - i)^s ~ s i:
both rates scale by s, Tallec & Ollivier's continuous-time warp; the powers keep every gate in
(0, 1) for any s and compose exactly (a warp by s1 then s2 is the warp by s1 s2). Each warp is
applied to the gate's pre-activation as a shift (:func:`warp_shift`),
logit(sigma(x)^s) = x + delta(x, s), with delta(x, 1) = 0 exactly, so the neutral cell
(omega = 0) computes bit for bit what :class:`~rnnscan.nn.LSTMCell` /
:class:`~rnnscan.nn.GRUCell` compute with the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

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
from ._gru import gru_update
from ._lstm import lstm_carry, lstm_update

WarpShape = Literal["unit", "scalar"]
WARP_SHAPES = ("unit", "scalar")


class WarpParam(nnx.Param):
    """A time-warp parameter: the log of a factor kappa by which a cell's time constants are
    multiplied (0 is the neutral warp). A subclass of ``nnx.Param``, so the ``nnx.Param``
    filter still selects it, and ``WarpParam`` alone selects only the warps::

        optimizer = nnx.Optimizer(model, optax.adam(1e-1), wrt=WarpParam)
        grads = nnx.grad(loss, argnums=nnx.DiffState(0, WarpParam))(model, ...)
        others = nnx.All(nnx.Param, nnx.Not(WarpParam))  # every other weight
    """


def warp_shift(pre: jax.Array, rate: jax.Array) -> jax.Array:
    r"""The shift delta of a gate's pre-activation x with sigma(x + delta) = sigma(x)^rate;
    delta = 0 exactly at rate = 1:

    .. math::

        \delta = -(s - 1) L - \log\frac{1 - e^{-s L}}{1 - e^{-L}},
        \qquad L = -\log\sigma(x) = \mathrm{softplus}(-x) > 0

    (from logit(sigma^s) = -sL - log(1 - e^{-sL})). L is floored at the smallest normal
    number, where sigma(x) rounds to 1 (delta -> -log s, its limit)."""
    tiny = jnp.finfo(jnp.result_type(pre)).tiny
    L = jnp.maximum(jax.nn.softplus(-pre), tiny)
    log_ratio = jnp.log(-jnp.expm1(-rate * L)) - jnp.log(-jnp.expm1(-L))
    return -(rate - 1.0) * L - log_ratio


def chrono_logit(time_scale: float) -> float:
    """logit(exp(-1 / tau)): the gate pre-activation of a lag with time constant tau."""
    return -1.0 / time_scale - math.log(-math.expm1(-1.0 / time_scale))


def retime(model: nnx.Module, factor: float) -> nnx.Module:
    """A copy of ``model`` with every :class:`WarpParam` shifted by log(factor): every
    time-warping cell in it runs ``factor`` times slower (time constants x factor; a factor
    below 1 speeds it up). ``model`` itself is unchanged. Re-timing by k then 1/k is the
    identity (up to the rounding of log k)."""
    shift = _positive("factor", factor)
    new = nnx.clone(model)
    warps = nnx.state(new, WarpParam)
    nnx.update(new, jax.tree_util.tree_map(lambda w: w + jnp.asarray(shift, w.dtype), warps))
    return new


def _positive(name: str, value, *, log: bool = True) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return math.log(value) if log else value


def _init_warp(warp: float, warp_shape: str, n: int, param_dtype) -> WarpParam:
    log_kappa = _positive("warp", warp)
    if warp_shape not in WARP_SHAPES:
        raise ValueError(f"warp_shape must be one of {WARP_SHAPES}, got {warp_shape!r}")
    shape = (n,) if warp_shape == "unit" else ()
    return WarpParam(jnp.full(shape, log_kappa, param_dtype))


class _WarpMixin:
    log_time_scale: WarpParam

    def warped(self, factor: float):
        """A copy of this cell whose time constants are ``factor`` times longer (its
        ``log_time_scale`` shifted by log(factor)); see :func:`retime`."""
        return retime(self, factor)

    @property
    def time_warp(self) -> jax.Array:
        """kappa = exp(log_time_scale): the factor on the cell's time constants."""
        return jnp.exp(self.log_time_scale[...])


class TimeWarpLSTMCell(_WarpMixin, Cell):
    r"""An LSTM (the equations of :class:`~rnnscan.nn.LSTMCell`, carry ``(c, h)``) whose forget
    and input gates are time-warped by a factor kappa = exp(omega) (after Hirschi 2026 and
    Tallec & Ollivier 2018; the warp of the gate values is our derivation, see the module):

    .. math::

        s &= e^{-\omega} \\
        i &= 1 - \bigl(1 - \sigma(W_{ii} x + W_{hi} h + b_i)\bigr)^{s} \\
        f &= \sigma(W_{if} x + W_{hf} h + b_f)^{s} \\
        g &= \tanh(W_{ig} x + W_{hg} h + b_g), \qquad
        o = \sigma(W_{io} x + W_{ho} h + b_o) \\
        c' &= f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')

    omega = 0 is the plain LSTM. If the cell state follows a lag y_t = a y_{t-1} + (1 - a) u_t
    (f = a, i = 1 - a), the warp turns it exactly into the lag with time constant kappa times
    longer; in general (gates that vary with x and h, i != 1 - f) the re-timing is
    approximate and training omega alone on the new time scale refines it.

    Parameters: the LSTM's ``input_kernel`` (d, 4n), ``recurrent_kernel`` (n, 4n), ``bias``
    (4n,) (gates i, f, g, o; plain ``nnx.Param``) and ``log_time_scale`` omega, a
    :class:`WarpParam` of shape (n,) (``warp_shape="unit"``) or () (``"scalar"``):
    4(nd + n² + n) + n (or + 1) in all. Initialisation: as :class:`~rnnscan.nn.LSTMCell`
    (b_f = ``forget_bias``), or with ``time_scale=tau`` chrono-style: b_f = logit(e^{-1/tau}),
    b_i = -b_f, so that at zero pre-activation input the cell state is the lag with time
    constant tau; omega = log(``warp``) (0: neutral).

    Carry Jacobian: dense; not affine in the carry.

    Args:
        in_features: d, the input size.
        hidden_features: n, the size of c, h and the output.
        warp: the initial warp factor kappa > 0 (1: the plain LSTM).
        warp_shape: ``"unit"`` (one warp per unit) or ``"scalar"`` (one for the cell).
        time_scale: tau > 0 for the chrono-style gate biases above (overrides
            ``forget_bias``), or None.
        forget_bias: the initial b_f without ``time_scale`` (as in ``LSTMCell``).
        activation_fn: tanh above (the gates are logistic: the warp needs sigma).
        kernel_init, recurrent_kernel_init, bias_init: initialisers.
        dtype: the computation dtype (default: inferred from inputs and parameters).
        param_dtype: the parameters' dtype.
        rngs: the random streams that initialise the parameters.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        warp: float = 1.0,
        warp_shape: WarpShape = "unit",
        time_scale: float | None = None,
        forget_bias: float = 1.0,
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
        self.gate_fn = nnx.sigmoid
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n = in_features, hidden_features
        if time_scale is not None:
            b_f = chrono_logit(_positive("time_scale", time_scale, log=False))
            b_i = -b_f
        else:
            b_f, b_i = float(forget_bias), 0.0
        log_time_scale = _init_warp(warp, warp_shape, n, param_dtype)
        self.input_kernel = nnx.Param(
            gate_stacked(kernel_init, 4)(rngs.params(), (d, 4 * n), param_dtype)
        )
        self.recurrent_kernel = nnx.Param(
            gate_stacked(recurrent_kernel_init, 4)(rngs.params(), (n, 4 * n), param_dtype)
        )
        bias = bias_init(rngs.params(), (4 * n,), param_dtype)
        self.bias = nnx.Param(bias.at[:n].add(b_i).at[n : 2 * n].add(b_f))
        self.log_time_scale = log_time_scale

    def __call__(
        self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        c, h = carry
        c, h, x, W_i, W_h, b, omega = promote_dtype(
            (
                c,
                h,
                inputs,
                self.input_kernel[...],
                self.recurrent_kernel[...],
                self.bias[...],
                self.log_time_scale[...],
            ),
            dtype=self.dtype,
        )
        rate = lift(jnp.exp(-omega), h.ndim)
        i, f, g, o = jnp.split(x @ W_i + h @ W_h + lift(b, h.ndim), 4, axis=-1)
        # f -> f^s; i -> 1 - (1 - i)^s, where 1 - i = sigma(-pre).
        gates = jnp.concatenate([i - warp_shift(-i, rate), f + warp_shift(f, rate), g, o], axis=-1)
        new_c, new_h = lstm_update(c, gates, gate_fn=self.gate_fn, activation_fn=self.activation_fn)
        return (new_c, new_h), new_h

    def initialize_carry(self, input_shape, rngs=None, carry_init=None):
        """Zero ``(c, h)`` (or ``carry_init``'s) for inputs of shape ``(*batch, in_features)``."""
        return lstm_carry(self, input_shape, rngs, carry_init)


class TimeWarpGRUCell(_WarpMixin, Cell):
    r"""A GRU (the equations of :class:`~rnnscan.nn.GRUCell`, PyTorch form) whose update gate
    is time-warped by a factor kappa = exp(omega) (after Hirschi 2026 and Tallec & Ollivier
    2018; the warp of the gate value is our derivation, see the module):

    .. math::

        s &= e^{-\omega} \\
        r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h) \\
        z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h)^{s} \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h

    omega = 0 is the plain GRU. A hidden state following the lag y_t = a y_{t-1} + (1 - a) u_t
    (z = a) becomes exactly the lag with a time constant kappa times longer; in general the
    re-timing is approximate (the reset gate and the candidate are not warped).

    Parameters: the GRU's ``input_kernel`` (d, 3n), ``input_bias`` (3n,), ``recurrent_kernel``
    (n, 3n), ``recurrent_bias`` (n,) (plain ``nnx.Param``) and ``log_time_scale`` omega, a
    :class:`WarpParam` of shape (n,) or (): 3(nd + n² + n) + n + n (or + 1) in all.
    Initialisation: as :class:`~rnnscan.nn.GRUCell` (zero biases), or with ``time_scale=tau``
    b_iz = logit(e^{-1/tau}) (chrono-style: at zero pre-activation input the lag with time
    constant tau); omega = log(``warp``).

    Carry Jacobian: dense; not affine in the carry.

    Args:
        in_features: d, the input size.
        hidden_features: n, the carry and output size.
        warp: the initial warp factor kappa > 0 (1: the plain GRU).
        warp_shape: ``"unit"`` (one warp per unit) or ``"scalar"`` (one for the cell).
        time_scale: tau > 0 for the chrono-style update-gate bias, or None.
        activation_fn: tanh above (the gates are logistic: the warp needs sigma).
        kernel_init, recurrent_kernel_init, bias_init: initialisers.
        dtype: the computation dtype (default: inferred from inputs and parameters).
        param_dtype: the parameters' dtype.
        rngs: the random streams that initialise the parameters.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        warp: float = 1.0,
        warp_shape: WarpShape = "unit",
        time_scale: float | None = None,
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
        self.gate_fn = nnx.sigmoid
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)
        d, n = in_features, hidden_features
        b_z = (
            0.0
            if time_scale is None
            else chrono_logit(_positive("time_scale", time_scale, log=False))
        )
        log_time_scale = _init_warp(warp, warp_shape, n, param_dtype)
        self.input_kernel = nnx.Param(
            gate_stacked(kernel_init, 3)(rngs.params(), (d, 3 * n), param_dtype)
        )
        input_bias = bias_init(rngs.params(), (3 * n,), param_dtype)
        self.input_bias = nnx.Param(input_bias.at[n : 2 * n].add(b_z))
        self.recurrent_kernel = nnx.Param(
            gate_stacked(recurrent_kernel_init, 3)(rngs.params(), (n, 3 * n), param_dtype)
        )
        self.recurrent_bias = nnx.Param(bias_init(rngs.params(), (n,), param_dtype))
        self.log_time_scale = log_time_scale

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, W_i, b_i, W_h, b_hn, omega = promote_dtype(
            (
                carry,
                inputs,
                self.input_kernel[...],
                self.input_bias[...],
                self.recurrent_kernel[...],
                self.recurrent_bias[...],
                self.log_time_scale[...],
            ),
            dtype=self.dtype,
        )
        rate = lift(jnp.exp(-omega), h.ndim)
        b_i, b_hn = lift(b_i, h.ndim), lift(b_hn, h.ndim)
        input_part, recurrent_part = x @ W_i + b_i, h @ W_h
        x_r, x_z, x_n = jnp.split(input_part, 3, axis=-1)
        h_z = jnp.split(recurrent_part, 3, axis=-1)[1]
        # z -> z^s, as a shift of the input-side part of z's pre-activation (0 at s = 1).
        x_z = x_z + warp_shift(x_z + h_z, rate)
        new_h = gru_update(
            h,
            jnp.concatenate([x_r, x_z, x_n], axis=-1),
            recurrent_part,
            b_hn,
            gate_fn=self.gate_fn,
            activation_fn=self.activation_fn,
        )
        return new_h, new_h
