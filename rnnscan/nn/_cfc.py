"""Closed-form continuous-time (CfC) cells, with low-rank and sparse recurrent connectivity.

Hasani et al. (Nature Machine Intelligence, 2022), "Closed-form continuous-time neural
networks", replace the ODE solver of a liquid time-constant network by an approximate closed
form of its solution: the new state is a time-gated blend of two learned heads, the gate
decaying with the elapsed time Δt, so irregularly sampled sequences are handled by feeding Δt.
Tumma, Lechner, Loo, Hasani & Rus (ICLR 2024), "Leveraging low-rank and sparse recurrent
connectivity for robust closed-loop control", parameterise the recurrent weights as
W_rec = (W₁ W₂) ⊙ M: a rank-r product times a fixed random binary mask of sparsity s.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype, Initializer

from .._structure import Dense
from ._base import Cell, carry_dtype, default_bias_init, lift, promote_dtype

MODES = ("default", "no_gate", "pure")

default_cfc_kernel_init = nnx.initializers.xavier_uniform()


def lecun_tanh(x: jax.Array) -> jax.Array:
    """LeCun's scaled tanh, 1.7159 tanh(0.666 x) (LeCun et al., 1998, "Efficient backprop"),
    the CfC backbone's default activation."""
    return 1.7159 * jnp.tanh(0.666 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "lecun_tanh": lecun_tanh,
    "tanh": jnp.tanh,
    "relu": nnx.relu,
    "silu": nnx.silu,
    "gelu": nnx.gelu,
}


class SparsityMask(nnx.Variable):
    """A fixed binary (0/1) mask: model state that is not trained (not an ``nnx.Param``, so
    ``nnx.state(model, nnx.Param)`` and optimisers over ``nnx.Param`` leave it alone). Stored
    in the parameters' floating dtype so that gradients of a whole ``nnx.split`` state exist."""


class CfCCell(Cell):
    r"""Closed-form continuous-time cell (CfC; Hasani et al., 2022) with optionally low-rank and
    sparse recurrent weights (Tumma et al., ICLR 2024).

    A backbone reads the input and the carry,

    .. math::

        z = \phi\big(x W_x + h W_{rec} + b_1\big), \qquad
        z \leftarrow \phi(z W_\ell + b_\ell) \quad (\ell = 2, \dots, L)

    (``backbone_layers`` = L layers of width m = ``backbone_features``, activation φ), and
    linear heads of z give the update, with Δt the time elapsed since the previous step:

    .. math::

        g = \tanh(z W_g + c_g), \quad \eta = \tanh(z W_h + c_h), \quad
        f = z W_f + c_f, \quad \beta = z W_\beta + c_\beta \\
        \lambda = \sigma(-f \, \Delta t + \beta) \\
        \text{default:}\quad h' = \lambda \odot g + (1 - \lambda) \odot \eta \\
        \text{no\_gate:}\quad h' = \eta + \lambda \odot g \\
        \text{pure:}\quad h' = A - A \odot e^{-\Delta t\,(|w_\tau| + |f|)} \odot f

    The default mode is the paper's CfC, x(t) = σ(−f t) ⊙ g + (1 − σ(−f t)) ⊙ h, with the
    time-bias head β of the authors' reference implementation (``ncps``; ``time_bias=False``
    drops it, β = 0, the paper's exact gate). ``"no_gate"`` is the paper's CfC without the
    (1 − λ) gate; ``"pure"`` is its direct closed-form solution of the liquid time-constant
    ODE (the "minimal" CfC, with |·| as in ``ncps`` to keep the decay rate positive), one head
    f and per-unit parameters w_τ, A. With ``backbone_layers=0`` there is no backbone: z = [x,
    h] and the heads read it directly. The carry is h and the output is h'.

    Elapsed time: with ``time_input=False`` every step has Δt = ``default_timespan``. With
    ``time_input=True`` the LAST input feature is Δt_t, the time since the previous observation
    (irregular sampling), and the cell's inputs are the other ``in_features - 1`` features, so
    a sequence of observations o_t at times τ_t is fed as x_t = [o_t, τ_t − τ_{t−1}].

    Recurrent connectivity: W_rec is the block of the first layer that reads h, (n, m) with m =
    ``backbone_features`` (or m = H n, all H heads stacked, without a backbone). With
    ``rank=R`` it is U Vᵀ, U (n, R), V (m, R): the carry reaches the rest of the cell only
    through R numbers. With ``sparsity=s`` it is multiplied elementwise by a fixed binary mask
    M (``mask``, a :class:`SparsityMask`, not a parameter) in which exactly round(s n m)
    entries, drawn at random at initialisation, are zero: W_rec = (U Vᵀ) ⊙ M (Tumma et al.'s
    W_rec(r, s) = W₁(r) W₂(r) ⊙ M(s)); gradients never revive the masked entries.

    Parameters, with d = ``in_features`` minus 1 if ``time_input``, n = ``hidden_features``,
    H heads (4: g, η, f, β; 3 without ``time_bias``; 1 in ``"pure"`` mode) and
    rec = n m (dense) or R (n + m) (``rank=R``):

    - L ≥ 1: ``input_kernel`` W_x (d, m), ``recurrent_kernel`` (n, m) or ``recurrent_u``
      (n, R) and ``recurrent_v`` (m, R), ``backbone_bias`` (m,), ``hidden_kernels`` /
      ``hidden_biases`` (L − 1 of (m, m) and (m,)), ``head_kernel`` (m, H n), ``head_bias``
      (H n,): d m + rec + m + (L − 1)(m² + m) + H n (m + 1).
    - L = 0: ``input_kernel`` (d, H n), the recurrent block with m = H n, ``head_bias``
      (H n,): d H n + rec + H n.
    - ``"pure"`` adds ``w_tau`` and ``A`` (n,): + 2n. The mask is not counted.

    Initialisation (as ``ncps``): Glorot-uniform kernels, each layer's [x, h] kernel drawn as
    one (d + n, m) matrix and split; zero biases; w_τ = 0, A = 1. With ``rank=R``, U and V
    come from the rank-R truncated SVD of that dense draw, U = U_R Σ_R^{1/2},
    V = V_R Σ_R^{1/2} (Tumma et al.), so U Vᵀ is its best rank-R approximation. The mask is
    drawn from the ``mask`` stream of ``rngs`` (``default`` if there is none).

    Carry Jacobian: dense, for every mode and option; never diagonal. h reaches every unit
    through W_rec and the backbone (in ``"pure"`` mode h' depends on h only that way). A
    low-rank W_rec makes ∂h'/∂h a product through R dimensions (rank ≤ R) with no zero
    pattern; with a backbone the mask zeros entries of W_rec, not of the Jacobian. Without a
    backbone, entry (k, j) is structurally zero where the mask zeros all H weights from h_j to
    unit k's heads (probability s^H): a random pattern, so still declared ``Dense()``. Not
    affine in the carry.

    Args:
        in_features: the input size (including the Δt column if ``time_input``).
        hidden_features: n, the carry and output size.
        rank: R, the rank of W_rec (None: dense); 1 ≤ R ≤ min(n, m).
        sparsity: s, the fraction of W_rec's entries fixed at zero; 0 ≤ s < 1.
        mode: ``"default"``, ``"no_gate"`` or ``"pure"``.
        backbone_features: m, the backbone width (``ncps`` default 128).
        backbone_layers: L, the number of backbone layers (0: none; default 1).
        activation: φ, a callable or one of ``"lecun_tanh"`` (default), ``"tanh"``,
            ``"relu"``, ``"silu"``, ``"gelu"``.
        time_bias: include the time-bias head β (default, as ``ncps``).
        time_input: read Δt from the last input feature.
        default_timespan: Δt when ``time_input`` is False (default 1.0).
        kernel_init, bias_init: initialisers.
        dtype: the computation dtype (default: inferred from inputs and parameters).
        param_dtype: the parameters' dtype.
        rngs: the random streams that initialise the parameters and draw the mask.
    """

    jacobian_structure = Dense()
    carry_linear = False

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        rank: int | None = None,
        sparsity: float = 0.0,
        mode: str = "default",
        backbone_features: int = 128,
        backbone_layers: int = 1,
        activation: str | Callable[[jax.Array], jax.Array] = "lecun_tanh",
        time_bias: bool = True,
        time_input: bool = False,
        default_timespan: float = 1.0,
        kernel_init: Initializer = default_cfc_kernel_init,
        bias_init: Initializer = default_bias_init,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_int("in_features", in_features, 1 + int(bool(time_input)))
        _check_int("hidden_features", hidden_features, 1)
        _check_int("backbone_layers", backbone_layers, 0)
        if backbone_layers > 0:
            _check_int("backbone_features", backbone_features, 1)
        if mode not in MODES:
            raise ValueError(f"CfCCell: mode must be one of {MODES}, got {mode!r}")
        if isinstance(activation, str):
            if activation not in ACTIVATIONS:
                raise ValueError(
                    f"CfCCell: activation must be a callable or one of {sorted(ACTIVATIONS)}, "
                    f"got {activation!r}"
                )
            activation = ACTIVATIONS[activation]
        elif not callable(activation):
            raise ValueError(f"CfCCell: activation must be callable, got {activation!r}")
        if not (isinstance(sparsity, (int, float)) and 0.0 <= sparsity < 1.0):
            raise ValueError(f"CfCCell: sparsity must satisfy 0 <= sparsity < 1, got {sparsity!r}")
        if not (isinstance(default_timespan, (int, float)) and default_timespan > 0):
            raise ValueError(
                f"CfCCell: default_timespan must be a positive number, got {default_timespan!r}"
            )

        self.in_features = in_features
        self.hidden_features = hidden_features
        self.mode = mode
        self.backbone_layers = backbone_layers
        self.activation = activation
        self.time_bias = bool(time_bias)
        self.time_input = bool(time_input)
        self.default_timespan = float(default_timespan)
        self.sparsity = float(sparsity)
        self.dtype = dtype
        self.carry_dtype = carry_dtype(dtype, param_dtype)

        n = hidden_features
        d = in_features - int(self.time_input)
        self.num_heads = num_heads(mode, self.time_bias)
        H = self.num_heads
        m = backbone_features if backbone_layers > 0 else H * n
        self.backbone_features = m if backbone_layers > 0 else None
        self.recurrent_width = m
        if rank is not None:
            _check_int("rank", rank, 1)
            if rank > min(n, m):
                raise ValueError(
                    f"CfCCell: rank must satisfy 1 <= rank <= min(hidden_features, width of "
                    f"W_rec) = min({n}, {m}) = {min(n, m)}, got rank={rank}"
                )
        self.rank = rank

        # The first layer: one Glorot draw over the [x, h] fan-in, split into W_x and W_rec.
        first = kernel_init(rngs.params(), (d + n, m), param_dtype)
        self.input_kernel = nnx.Param(first[:d])
        dense_rec = first[d:]
        if rank is None:
            self.recurrent_kernel = nnx.Param(dense_rec)
        else:
            u, sv, vt = jnp.linalg.svd(dense_rec, full_matrices=False)
            root = jnp.sqrt(sv[:rank])
            self.recurrent_u = nnx.Param(u[:, :rank] * root[None, :])
            self.recurrent_v = nnx.Param(vt[:rank].T * root[None, :])
        if self.sparsity > 0.0:
            self.mask = SparsityMask(sparsity_mask(rngs.mask(), (n, m), self.sparsity, param_dtype))
        if backbone_layers > 0:
            self.backbone_bias = nnx.Param(bias_init(rngs.params(), (m,), param_dtype))
            self.hidden_kernels = nnx.List(
                [
                    nnx.Param(kernel_init(rngs.params(), (m, m), param_dtype))
                    for _ in range(backbone_layers - 1)
                ]
            )
            self.hidden_biases = nnx.List(
                [
                    nnx.Param(bias_init(rngs.params(), (m,), param_dtype))
                    for _ in range(backbone_layers - 1)
                ]
            )
            # One Glorot draw per head, so each head's scale does not depend on H.
            self.head_kernel = nnx.Param(
                jnp.concatenate(
                    [kernel_init(rngs.params(), (m, n), param_dtype) for _ in range(H)], axis=-1
                )
            )
        self.head_bias = nnx.Param(bias_init(rngs.params(), (H * n,), param_dtype))
        if mode == "pure":
            self.w_tau = nnx.Param(jnp.zeros((n,), param_dtype))
            self.A = nnx.Param(jnp.ones((n,), param_dtype))

    def recurrent_matrix(self) -> jax.Array:
        """The effective W_rec (n, m): U Vᵀ or the dense kernel, times the mask if sparse."""
        if self.rank is None:
            W = self.recurrent_kernel[...]
        else:
            W = self.recurrent_u[...] @ self.recurrent_v[...].T
        if self.sparsity > 0.0:
            W = W * self.mask[...]
        return W

    def __call__(self, carry: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        arrays = {"h": carry, "x": inputs, "W_x": self.input_kernel[...], "c": self.head_bias[...]}
        if self.rank is None:
            arrays["W_rec"] = self.recurrent_kernel[...]
        else:
            arrays["U"], arrays["V"] = self.recurrent_u[...], self.recurrent_v[...]
        if self.sparsity > 0.0:
            arrays["M"] = self.mask[...]
        if self.backbone_layers > 0:
            arrays["b1"] = self.backbone_bias[...]
            arrays["W_heads"] = self.head_kernel[...]
            arrays["hidden"] = [
                (W[...], b[...]) for W, b in zip(self.hidden_kernels, self.hidden_biases)
            ]
        if self.mode == "pure":
            arrays["w_tau"], arrays["A"] = self.w_tau[...], self.A[...]
        leaves, treedef = jax.tree_util.tree_flatten(arrays)
        a = jax.tree_util.tree_unflatten(treedef, promote_dtype(tuple(leaves), dtype=self.dtype))
        h, x = a["h"], a["x"]
        if self.time_input:
            x, dt = x[..., :-1], x[..., -1:]
        else:
            dt = self.default_timespan

        if self.rank is None:
            W_rec = a["W_rec"]
        else:
            W_rec = a["U"] @ a["V"].T
        if self.sparsity > 0.0:
            W_rec = W_rec * a["M"]
        pre = x @ a["W_x"] + h @ W_rec
        c = lift(a["c"], pre.ndim)
        if self.backbone_layers > 0:
            z = self.activation(pre + lift(a["b1"], pre.ndim))
            for W, b in a["hidden"]:
                z = self.activation(z @ W + lift(b, z.ndim))
            heads = z @ a["W_heads"] + c
        else:
            heads = pre + c

        if self.mode == "pure":
            f = heads
            A, w_tau = lift(a["A"], f.ndim), lift(a["w_tau"], f.ndim)
            new_h = A - A * jnp.exp(-dt * (jnp.abs(w_tau) + jnp.abs(f))) * f
            return new_h, new_h
        parts = jnp.split(heads, self.num_heads, axis=-1)
        g, eta, f = jnp.tanh(parts[0]), jnp.tanh(parts[1]), parts[2]
        gate_pre = -f * dt
        if self.time_bias:
            gate_pre = gate_pre + parts[3]
        lam = nnx.sigmoid(gate_pre)
        if self.mode == "no_gate":
            new_h = eta + lam * g
        else:
            new_h = lam * g + (1.0 - lam) * eta
        return new_h, new_h


def num_heads(mode: str, time_bias: bool = True) -> int:
    """H, the number of linear heads: g, η, f (and β with the time bias); f alone for pure."""
    if mode == "pure":
        return 1
    return 4 if time_bias else 3


def num_params(
    in_features: int,
    hidden_features: int,
    *,
    rank: int | None = None,
    mode: str = "default",
    backbone_features: int = 128,
    backbone_layers: int = 1,
    time_bias: bool = True,
    time_input: bool = False,
) -> int:
    """The trainable parameter count of a :class:`CfCCell` (the mask is not counted)."""
    n, d = hidden_features, in_features - int(time_input)
    H = num_heads(mode, time_bias)
    m = backbone_features if backbone_layers > 0 else H * n
    rec = n * m if rank is None else rank * (n + m)
    if backbone_layers > 0:
        count = d * m + rec + m + (backbone_layers - 1) * (m * m + m) + H * n * (m + 1)
    else:
        count = d * m + rec + m
    return count + (2 * n if mode == "pure" else 0)


def sparsity_mask(key: jax.Array, shape: tuple[int, ...], sparsity: float, dtype) -> jax.Array:
    """A 0/1 array of ``shape`` with exactly round(sparsity * size) zeros at random places."""
    size = 1
    for extent in shape:
        size *= extent
    zeros = int(round(sparsity * size))
    order = jax.random.permutation(key, size)
    return (order >= zeros).astype(dtype).reshape(shape)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"CfCCell: {name} must be an integer >= {minimum}, got {value!r}")
