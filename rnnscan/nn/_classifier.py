"""A sequence classifier: the architecture DEER (Lim et al., ICLR 2024) trains on EigenWorms."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Dtype

from .._methods import Method
from ._auto import Auto
from ._base import lift
from ._bistable import BRCCell, NBRCCell
from ._cfc import CfCCell
from ._dale import ColEICell, DANNCell
from ._diagonal import DiagGRUCell, DiagLSTMCell
from ._gru import GRUCell
from ._layers import RNN, SolverStats
from ._leaky import LeakyRNNCell
from ._linear_gated import LRUCell, MinGRUCell, MinLSTMCell, RGLRUCell
from ._lstm import LSTMCell
from ._second_order import CPRNNCell, MIRNNCell, SecondOrderCell
from ._warp import TimeWarpGRUCell, TimeWarpLSTMCell

CellFactory = Callable[..., nnx.RNNCellBase]

CELLS: dict[str, type[nnx.RNNCellBase]] = {
    "gru": GRUCell,
    "lstm": LSTMCell,
    "min_gru": MinGRUCell,
    "min_lstm": MinLSTMCell,
    "lru": LRUCell,
    "rglru": RGLRUCell,
    "diag_gru": DiagGRUCell,
    "diag_lstm": DiagLSTMCell,
    "cp_rnn": CPRNNCell,
    "mirnn": MIRNNCell,
    "second_order": SecondOrderCell,
    "brc": BRCCell,
    "nbrc": NBRCCell,
    "cfc": CfCCell,
    "col_ei": ColEICell,
    "dann": DANNCell,
    "time_warp_lstm": TimeWarpLSTMCell,
    "time_warp_gru": TimeWarpGRUCell,
    "leaky_rnn": LeakyRNNCell,
}
"""The cells :class:`SequenceClassifier` knows by name."""


def _cell_factory(
    cell: str | CellFactory, width: int, dtype, param_dtype, cell_kwargs
) -> CellFactory:
    """``factory(in_features, hidden_features, *, rngs)`` for a cell name or a factory."""
    if callable(cell):
        return functools.partial(cell, **cell_kwargs)
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; known cells: {sorted(CELLS)} (or pass a factory)")
    kwargs = dict(dtype=dtype, param_dtype=param_dtype)
    if cell == "cp_rnn":
        kwargs["rank"] = width  # A full-rank default; choose with cell_kwargs={"rank": R}.
    return functools.partial(CELLS[cell], **{**kwargs, **cell_kwargs})


class MLP(nnx.Module):
    """Linear -> activation -> Linear, applied to each time step."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        *,
        activation_fn: Callable[[jax.Array], jax.Array] = nnx.gelu,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        linear = functools.partial(nnx.Linear, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.hidden = linear(in_features, hidden_features)
        self.out = linear(hidden_features, out_features)
        self.activation_fn = activation_fn

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.activation_fn(self.hidden(x)))


class ResidualBlock(nnx.Module):
    r"""Pre-norm residual block around a recurrence and a per-step MLP:

    .. math::

        u &= x + \mathrm{RNN}(\mathrm{LayerNorm}(x)) \\
        \mathrm{out} &= u + \mathrm{MLP}(\mathrm{LayerNorm}(u))
    """

    def __init__(
        self,
        width: int,
        cell_factory: CellFactory,
        *,
        method: str | Method | Auto,
        on_failure: str,
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
        **devices,
    ):
        norm = functools.partial(
            nnx.LayerNorm, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.rnn_norm = norm()
        self.rnn = RNN(
            cell_factory(width, width, rngs=rngs),
            method=method,
            on_failure=on_failure,
            **devices,
        )
        self.mlp_norm = norm()
        self.mlp = MLP(width, width, width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        seq_lengths: jax.Array | None = None,
        *,
        diagnostics: bool = False,
        guess: Any = None,
        return_carries: bool = False,
    ) -> tuple[jax.Array, SolverStats]:
        y, stats = self.rnn(
            self.rnn_norm(x),
            seq_lengths=seq_lengths,
            return_stats=True,
            diagnostics=diagnostics,
            guess=guess,
            return_carries=return_carries,
        )
        x = x + y
        x = x + self.mlp(self.mlp_norm(x))
        return x, stats


class SequenceClassifier(nnx.Module):
    r"""Classifies whole sequences; the architecture of DEER's EigenWorms experiment.

    .. math::

        h^{(0)}_t &= \mathrm{MLP}(x_t) \\
        h^{(l)} &= \mathrm{ResidualBlock}_l(h^{(l-1)}), \quad l = 1..L \\
        \mathrm{logits} &= \frac{1}{T} \sum_t W h^{(L)}_t + b

    where each :class:`ResidualBlock` is ``u = h + RNN(LayerNorm(h))``,
    ``out = u + MLP(LayerNorm(u))``, and every RNN is an :class:`rnnscan.nn.RNN` evaluated in
    parallel over time. With ``seq_lengths`` the padding is ignored (the RNNs freeze their
    carries there and the time average runs over valid steps only).

    Args:
        in_features: input features per time step.
        num_classes: the number of classes.
        hidden_features: the width of every layer (default 32).
        num_blocks: the number of residual blocks L (default 5).
        cell: a cell name from :data:`CELLS` (``"gru"``, the default, ``"lstm"``,
            ``"min_gru"``, ``"min_lstm"``, ``"lru"``, ``"rglru"``, ``"diag_gru"``,
            ``"diag_lstm"``, ``"cp_rnn"`` (rank = width unless given), ``"mirnn"``,
            ``"second_order"``), or a factory ``factory(in_features, hidden_features, *, rngs)``.
        cell_kwargs: extra keyword arguments for the cell (e.g. ``{"rank": 8}``).
        method: the solver for every RNN (default ``"newton"``; see :class:`rnnscan.nn.RNN`);
            ``"auto"`` lets :class:`rnnscan.train.MethodSelector` choose per block.
        on_failure: what a solve that does not converge does (default ``"fallback"``).
        dtype, param_dtype: computation and parameter dtypes (passed to named cells too).
        rngs: the random streams that initialise the parameters.
        mesh, time_axis, batch_axis: evaluate every RNN over the devices of a
            ``jax.sharding.Mesh``, the time axis split over mesh axis ``time_axis`` and the
            batch over ``batch_axis`` (see :class:`rnnscan.nn.RNN`). The per-step layers
            (encoder, norms, MLPs) follow the data's sharding under ``jax.jit``.

    Call with inputs ``(batch, time, in_features)`` (and optionally ``seq_lengths``,
    ``(batch,)``) to get logits ``(batch, num_classes)``; with ``return_stats=True`` also the
    :class:`SolverStats` of each block's RNN (with ``diagnostics=True``, their ``lyapunov``:
    each series' largest Lyapunov exponent in that block; with ``return_carries=True``, their
    ``carries``, which ``guesses`` (one per block) takes back as warm starts).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden_features: int = 32,
        num_blocks: int = 5,
        cell: str | CellFactory = "gru",
        cell_kwargs: Mapping[str, Any] | None = None,
        method: str | Method | Auto = "newton",
        on_failure: Literal["fallback", "raise", "return"] = "fallback",
        dtype: Dtype | None = None,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
        mesh: jax.sharding.Mesh | None = None,
        time_axis: str | None = None,
        batch_axis: str | None = None,
    ):
        width = hidden_features
        devices = dict(mesh=mesh, time_axis=time_axis, batch_axis=batch_axis)
        factory = _cell_factory(cell, width, dtype, param_dtype, dict(cell_kwargs or {}))
        precision = dict(dtype=dtype, param_dtype=param_dtype)
        self.encoder = MLP(in_features, width, width, **precision, rngs=rngs)
        self.blocks = nnx.List(
            [
                ResidualBlock(
                    width,
                    factory,
                    method=method,
                    on_failure=on_failure,
                    **precision,
                    rngs=rngs,
                    **devices,
                )
                for _ in range(num_blocks)
            ]
        )
        self.classifier = nnx.Linear(width, num_classes, **precision, rngs=rngs)

    def __call__(
        self,
        inputs: jax.Array,
        seq_lengths: jax.Array | None = None,
        *,
        return_stats: bool = False,
        diagnostics: bool = False,
        guesses: Sequence[Any] | None = None,
        return_carries: bool = False,
    ):
        h = self.encoder(inputs)
        all_stats = []
        guesses = (None,) * len(self.blocks) if guesses is None else tuple(guesses)
        if len(guesses) != len(self.blocks):
            raise ValueError(f"guesses: one per block ({len(self.blocks)}), got {len(guesses)}")
        for block, guess in zip(self.blocks, guesses):
            h, stats = block(
                h,
                seq_lengths,
                diagnostics=diagnostics,
                guess=guess,
                return_carries=return_carries,
            )
            all_stats.append(stats)
        step_logits = self.classifier(h)  # (batch, time, classes)
        if seq_lengths is None:
            logits = jnp.mean(step_logits, axis=-2)
        else:
            lengths = jnp.asarray(seq_lengths)[..., None]
            valid = lift(jnp.arange(step_logits.shape[-2]), lengths.ndim) < lengths
            valid = jnp.broadcast_to(valid, step_logits.shape[:-1])
            total = jnp.sum(jnp.where(valid[..., None], step_logits, 0), axis=-2)
            logits = total / jnp.maximum(jnp.sum(valid, axis=-1), 1)[..., None]
        return (logits, tuple(all_stats)) if return_stats else logits
