"""Recurrent cells that obey Dale's law: every unit is excitatory or inhibitory.

Two ways to build a sign-constrained recurrence, compared by Li, Cornford, Ghosh & Richards,
"Learning better with Dale's Law: A Spectral Perspective" (NeurIPS 2023):

* :class:`ColEICell` ("column EI"): the units of a simple RNN are split into excitatory and
  inhibitory ones and every column of the recurrent matrix (a presynaptic unit's outgoing
  weights) has that unit's sign.
* :class:`DANNCell` (recurrent Dale's ANN, after Cornford et al., "Learning to live with
  Dale's principle", ICLR 2021): the carry holds excitatory units only; inhibitory
  interneurons driven by them subtract from their input within the step,
  W = W_EE - W_EI W_IE, with all three parts non-negative.

Sign constraints hold *by construction*: the parameters are unconstrained real arrays and the
cells use their absolute values (times a fixed sign where needed), so any optimiser step, or a
perturbation of the parameters, keeps the effective weights Dale-compliant. ``abs`` is the
identity on the non-negative initial magnitudes (so the initial distribution is exactly the
paper's), has unit-magnitude gradient everywhere (JAX takes d|w|/dw = 1 at w = 0, so even
an entry initialised to zero can grow), and reflects a weight that would cross zero instead
of clipping it there; Li et al. instead train with projected gradient descent (negative
magnitudes clipped to zero after each update), under which weights can stick at exactly zero.

Both cells use ReLU by default: Li et al.'s networks are ReLU RNNs, and a non-negative rate
keeps the excitatory / inhibitory reading of a unit's output meaningful (with tanh a negative
"rate" would flip the sign of a unit's effect). Any activation can be passed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.typing import Dtype, Initializer

from .._structure import Dense
from ._base import Cell, carry_dtype, default_bias_init, lift, promote_dtype


def _exponential(key, shape, scale: float, dtype) -> jax.Array:
    """i.i.d. exponential entries with mean (and standard deviation) ``scale``."""
    return jax.random.exponential(key, shape, dtype) * jnp.asarray(scale, dtype)


def _spectral_radius(matrix: jax.Array) -> jax.Array:
    """max |eigenvalue| of a real square matrix, on the host (``jnp.linalg.eigvals`` is CPU
    only): a callback, so it also runs inside ``jit`` / ``eval_shape`` and on accelerators."""

    def host(w):
        w = np.asarray(w)
        return np.asarray(np.max(np.abs(np.linalg.eigvals(w.astype(np.float64)))), w.dtype)

    return jax.pure_callback(host, jax.ShapeDtypeStruct((), matrix.dtype), matrix)


def _sign(n: int, ne: int) -> jax.Array:
    return jnp.where(jnp.arange(n) < ne, 1, -1)


# The initialisations run as one compiled computation each (eager, every primitive would be
# compiled separately for every new shape, which dominates building small cells).
@functools.partial(
    jax.jit, static_argnames=("n", "d", "ne", "zero_diagonal", "spectral_radius", "dtype")
)
def _col_ei_init(key, *, n, d, ne, zero_diagonal, spectral_radius, dtype):
    """|V| (n, n) and |A| (n, d) of :class:`ColEICell` (see its docstring)."""
    ni = n - ne
    sigma_e = math.sqrt(2 * math.pi / ((2 * math.pi - 1) * (ne + ne**2 / ni)))
    sigma_i = sigma_e * ne / ni
    key_e, key_i, key_u = jax.random.split(key, 3)
    magnitude = jnp.concatenate(
        [
            _exponential(key_e, (n, ne), sigma_e, dtype),
            _exponential(key_i, (n, ni), sigma_i, dtype),
        ],
        axis=1,
    )
    if zero_diagonal:
        magnitude = magnitude * (1.0 - jnp.eye(n, dtype=dtype))
    if spectral_radius is not None:
        signed = magnitude * _sign(n, ne).astype(dtype)[None, :]
        magnitude = magnitude * (spectral_radius / _spectral_radius(signed))
    return magnitude, _exponential(key_u, (n, d), 1.0 / math.sqrt(d), dtype)


@functools.partial(jax.jit, static_argnames=("n", "d", "ni", "mi", "dtype"))
def _dann_init(key, *, n, d, ni, mi, dtype):
    """The six non-negative matrices of :class:`DANNCell` (see its docstring)."""
    sigma = math.sqrt(1.0 / (3.0 * max(n - 1, 1)))
    keys = jax.random.split(key, 5)
    w_ei = _exponential(keys[2], (n, ni), 1.0, dtype)
    u_ee = _exponential(keys[3], (n, d), 1.0 / math.sqrt(3.0 * d), dtype)
    u_ei = _exponential(keys[4], (n, mi), 1.0, dtype)
    return {
        "recurrent_ee": _exponential(keys[0], (n, n), sigma, dtype),
        "recurrent_ie": _exponential(keys[1], (ni, n), sigma, dtype),
        "recurrent_ei": w_ei / jnp.sum(w_ei, axis=1, keepdims=True),
        "input_ee": u_ee,
        # The feed-forward interneurons start as copies of the mean excitatory input row.
        "input_ie": jnp.broadcast_to(jnp.mean(u_ee, axis=0, keepdims=True), (mi, d)),
        "input_ei": u_ei / jnp.sum(u_ei, axis=1, keepdims=True),
    }


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def default_interneurons(n_excitatory: int) -> int:
    """The default number of inhibitory interneurons of a :class:`DANNCell`: about 10% of the
    excitatory units (Li et al., 2023), at least one: ``max(1, round(n / 10))``."""
    return max(1, round(n_excitatory / 10))


class ColEICell(Cell):
    r"""Simple RNN whose units are split into excitatory and inhibitory populations, every
    unit's outgoing weights having its sign ("ColEI", Li et al., NeurIPS 2023):

    .. math::

        h' = \phi(W h + U x + b), \qquad
        W = |V| \, \mathrm{diag}(s), \quad s_j = +1 \ (j < n_E), \ -1 \ (j \ge n_E), \qquad
        U = |A|

    W is indexed [postsynaptic, presynaptic], so column j of W has the sign s_j of unit j
    (Dale's law), and the carry h holds all n = n_E + n_I units. The inputs are treated as
    excitatory afferents (U >= 0), as in Li et al.'s first ColEI layer. The carry is h and the
    output is h'. :meth:`recurrent_matrix` returns W, :meth:`input_matrix` U.

    Parameters: ``input_weight`` A (n, d), ``recurrent_weight`` V (n, n), ``bias`` b (n,):
    nd + n² + n. n_E = clip(round(f n), 1, n - 1) for ``excitatory_fraction`` f.

    Initialisation (Li et al.): |V| has i.i.d. exponential entries, mean σ_E in excitatory
    columns and σ_I = (n_E / n_I) σ_E in inhibitory ones, so that every unit's expected
    recurrent input is zero (E / I balance); σ_E² = 2π / ((2π - 1)(n_E + n_E² / n_I)), the
    variance that gives the ReLU preactivations unit scale; the diagonal is set to zero (no
    self-connections at initialisation; they may grow in training); then W is rescaled to
    spectral radius ``spectral_radius`` (``None``: no rescaling). |A| is exponential with
    mean 1/sqrt(d); b is zero (Li et al. centre the first layer with b = -d x̄ / sqrt(d) for
    inputs of mean x̄: pass ``bias_init`` to do so).

    Carry Jacobian: dense, and not affine in h (φ is nonlinear).

    Args:
        in_features: d, the input size.
        hidden_features: n >= 2, the number of units (excitatory and inhibitory).
        excitatory_fraction: f in (0, 1), the fraction of excitatory units (default 0.8,
            an E:I ratio of 4:1 as in cortex and in Li et al.).
        spectral_radius: the spectral radius of W at initialisation (default 1.5; Li et al.
            tune it per task; our default is a choice, not a value from the paper), or
            ``None`` to keep the unscaled draw.
        zero_diagonal: whether W starts without self-connections.
        activation_fn: φ (default ReLU).
        bias_init: initialiser of b.
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
        excitatory_fraction: float = 0.8,
        spectral_radius: float | None = 1.5,
        zero_diagonal: bool = True,
        activation_fn: Callable[[jax.Array], jax.Array] = nnx.relu,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        d = _positive_int("in_features", in_features)
        n = _positive_int("hidden_features", hidden_features)
        if n < 2:
            raise ValueError(
                f"ColEICell: hidden_features must be >= 2 (one E and one I unit), got {n}"
            )
        if not 0.0 < float(excitatory_fraction) < 1.0:
            raise ValueError(
                f"ColEICell: excitatory_fraction must be in (0, 1), got {excitatory_fraction!r}"
            )
        if spectral_radius is not None and not float(spectral_radius) > 0.0:
            raise ValueError(
                f"ColEICell: spectral_radius must be positive or None, got {spectral_radius!r}"
            )
        self.in_features = d
        self.hidden_features = n
        self.excitatory_fraction = float(excitatory_fraction)
        self.n_excitatory = min(max(round(self.excitatory_fraction * n), 1), n - 1)
        self.n_inhibitory = n - self.n_excitatory
        self.spectral_radius = None if spectral_radius is None else float(spectral_radius)
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)

        magnitude, input_weight = _col_ei_init(
            rngs.params(),
            n=n,
            d=d,
            ne=self.n_excitatory,
            zero_diagonal=bool(zero_diagonal),
            spectral_radius=self.spectral_radius,
            dtype=jnp.dtype(param_dtype),
        )
        self.recurrent_weight = nnx.Param(magnitude)
        self.input_weight = nnx.Param(input_weight)
        self.bias = nnx.Param(bias_init(rngs.params(), (n,), param_dtype))

    @property
    def sign(self) -> jax.Array:
        """s: +1 for the excitatory units (the first n_E), -1 for the inhibitory ones."""
        return _sign(self.hidden_features, self.n_excitatory)

    def _weights(self):
        return promote_dtype(
            (self.recurrent_weight[...], self.input_weight[...], self.bias[...]), dtype=self.dtype
        )

    def recurrent_matrix(self) -> jax.Array:
        """The effective W (n, n), [post, pre]: column j has unit j's sign."""
        V, _, _ = self._weights()
        return jnp.abs(V) * self.sign.astype(V.dtype)[None, :]

    def input_matrix(self) -> jax.Array:
        """The effective U (n, d) >= 0."""
        _, A, _ = self._weights()
        return jnp.abs(A)

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, V, A, b = promote_dtype(
            (carry, inputs, self.recurrent_weight[...], self.input_weight[...], self.bias[...]),
            dtype=self.dtype,
        )
        W = jnp.abs(V) * self.sign.astype(V.dtype)[None, :]
        new_h = self.activation_fn(h @ W.T + x @ jnp.abs(A).T + lift(b, h.ndim))
        return new_h, new_h


class DANNCell(Cell):
    r"""Recurrent Dale's ANN (Cornford et al., ICLR 2021; recurrent form of Li et al.,
    NeurIPS 2023): excitatory units whose input, recurrent and feed-forward, is inhibited
    within the step by interneurons that are driven by the same signal:

    .. math::

        h' = \phi\big((W_{EE} - W_{EI} W_{IE})\, h + (U_{EE} - U_{EI} U_{IE})\, x + b\big)

    with all six matrices non-negative (the cell uses the absolute values of its parameters).
    The interneurons' activity W_IE h (and U_IE x) is linear and instantaneous, so it is not
    part of the carry: the carry is the n excitatory units h only, and
    W = W_EE - W_EI W_IE (:meth:`recurrent_matrix`) is the effective signed n x n matrix. Only
    the excitatory units project onward (the output is h'). Dale's law holds for every neuron:
    E units act through W_EE, W_IE >= 0 (excitatory), interneurons through -W_EI (inhibitory).

    Parameters: ``recurrent_ee`` (n, n), ``recurrent_ei`` (n, n_I), ``recurrent_ie`` (n_I, n),
    ``input_ee`` (n, d), ``input_ei`` (n, m_I), ``input_ie`` (m_I, d), ``bias`` (n,):
    n² + 2 n n_I + n d + n m_I + m_I d + n, with n_I = ``interneurons`` and
    m_I = ``input_interneurons`` (default for both: ``max(1, round(n / 10))``, about 10%).

    Initialisation (after Li et al.'s recurrent DANNs and Cornford et al.'s layers): W_EE and
    W_IE i.i.d. exponential with mean σ = sqrt(1 / (3 (n - 1))) (the variance of PyTorch's
    default RNN initialisation, corrected for the subtracted mean); W_EI exponential with rows
    normalised to sum 1, so that E[W_EI W_IE] = E[W_EE] and every unit's expected recurrent
    input is zero (balance). U_EE exponential with mean 1 / sqrt(3 d); U_IE = n_I copies of
    U_EE's mean row and U_EI rows summing to 1, so that at initialisation the inhibition
    exactly subtracts the mean over units of the feed-forward excitation (Cornford et al.'s
    centring); b = 0.

    Carry Jacobian: dense, and not affine in h (φ is nonlinear).

    Args:
        in_features: d, the input size.
        hidden_features: n, the number of excitatory (carry) units.
        interneurons: n_I, the recurrent inhibitory interneurons.
        input_interneurons: m_I, the feed-forward inhibitory interneurons.
        activation_fn: φ (default ReLU).
        bias_init: initialiser of b.
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
        interneurons: int | None = None,
        input_interneurons: int | None = None,
        activation_fn: Callable[[jax.Array], jax.Array] = nnx.relu,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        d = _positive_int("in_features", in_features)
        n = _positive_int("hidden_features", hidden_features)
        ni = default_interneurons(n) if interneurons is None else interneurons
        mi = default_interneurons(n) if input_interneurons is None else input_interneurons
        ni = _positive_int("interneurons", ni)
        mi = _positive_int("input_interneurons", mi)
        self.in_features = d
        self.hidden_features = n
        self.interneurons = ni
        self.input_interneurons = mi
        self.activation_fn = activation_fn
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)

        init = _dann_init(rngs.params(), n=n, d=d, ni=ni, mi=mi, dtype=jnp.dtype(param_dtype))
        self.recurrent_ee = nnx.Param(init["recurrent_ee"])
        self.recurrent_ei = nnx.Param(init["recurrent_ei"])
        self.recurrent_ie = nnx.Param(init["recurrent_ie"])
        self.input_ee = nnx.Param(init["input_ee"])
        self.input_ei = nnx.Param(init["input_ei"])
        self.input_ie = nnx.Param(init["input_ie"])
        self.bias = nnx.Param(bias_init(rngs.params(), (n,), param_dtype))

    def _matrices(self):
        parts = promote_dtype(
            (
                self.recurrent_ee[...],
                self.recurrent_ei[...],
                self.recurrent_ie[...],
                self.input_ee[...],
                self.input_ei[...],
                self.input_ie[...],
            ),
            dtype=self.dtype,
        )
        w_ee, w_ei, w_ie, u_ee, u_ei, u_ie = (jnp.abs(p) for p in parts)
        return w_ee - w_ei @ w_ie, u_ee - u_ei @ u_ie

    def recurrent_matrix(self) -> jax.Array:
        """The effective W = W_EE - W_EI W_IE (n, n), [post, pre]."""
        return self._matrices()[0]

    def input_matrix(self) -> jax.Array:
        """The effective U = U_EE - U_EI U_IE (n, d)."""
        return self._matrices()[1]

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, x, b, *parts = promote_dtype(
            (
                carry,
                inputs,
                self.bias[...],
                self.recurrent_ee[...],
                self.recurrent_ei[...],
                self.recurrent_ie[...],
                self.input_ee[...],
                self.input_ei[...],
                self.input_ie[...],
            ),
            dtype=self.dtype,
        )
        w_ee, w_ei, w_ie, u_ee, u_ei, u_ie = (jnp.abs(p) for p in parts)
        # Interneuron activity (W_IE h, U_IE x) is computed and subtracted within the step.
        excitation = h @ w_ee.T + x @ u_ee.T
        inhibition = (h @ w_ie.T) @ w_ei.T + (x @ u_ie.T) @ u_ei.T
        new_h = self.activation_fn(excitation - inhibition + lift(b, h.ndim))
        return new_h, new_h
