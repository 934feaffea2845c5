"""The model, the optimiser, and the jitted training and evaluation steps.

The model is split once with ``nnx.split`` into its graph definition, its trainable
parameters (``nnx.Param``) and the rest of its state (the RNNs' random streams);
the steps are pure functions of those arrays, compiled with ``jax.jit``. Everything
the training state consists of is a pytree of arrays, which is what the orbax
checkpoints store.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import rnnscan
from rnnscan.nn import CELLS, Auto, SequenceClassifier

from ._config import ModelConfig, OptimConfig
from ._program_store import StoredProgram, stable_repr

__all__ = [
    "TrainState",
    "Steps",
    "build_method",
    "build_model",
    "build_optimizer",
    "compiled_steps",
    "count_params",
    "make_eval_step",
    "make_train_step",
]

_METHOD_CLASSES = {
    "newton": rnnscan.Newton,
    "quasi_newton": rnnscan.QuasiNewton,
    "fixed_point": rnnscan.FixedPoint,
}


class TrainState(NamedTuple):
    """Everything a training step updates: parameters, other model state, optimiser state."""

    params: Any
    rest: Any
    opt_state: Any


def build_method(config: ModelConfig) -> str | rnnscan.Method | Auto:
    """The solver of every RNN: a method name, or a method object when tolerances or an
    iteration cap are configured (built with the cell's declared Jacobian structure);
    for ``"auto"``, an :class:`rnnscan.nn.Auto` around the parallel method."""
    if config.method == "auto":
        parallel = dataclasses.replace(config, method=config.auto.get("parallel", "newton"))
        return Auto(parallel=build_method(parallel), start=config.auto.get("start", "parallel"))
    options = {
        "rtol": config.rtol,
        "atol": config.atol,
        "max_steps": config.max_iterations,
    }
    options = {k: v for k, v in options.items() if v is not None}
    if config.method == "sequential" or not options:
        return config.method
    cell = CELLS[config.cell]
    structure = getattr(cell, "jacobian_structure", rnnscan.Dense())
    if config.method == "newton":
        carry_linear = bool(getattr(cell, "carry_linear", False))
        return rnnscan.Newton(jacobian=structure, carry_linear=carry_linear, **options)
    return _METHOD_CLASSES[config.method](jacobian=structure, **options)


def build_model(
    config: ModelConfig, in_features: int, num_classes: int, seed: int, **devices
) -> SequenceClassifier:
    """The :class:`rnnscan.nn.SequenceClassifier` of ``config``, initialised from ``seed``;
    ``devices``: ``mesh``, ``time_axis`` and ``batch_axis`` to split time over a mesh."""
    dtype = jnp.dtype(config.dtype)

    def build():
        return SequenceClassifier(
            in_features,
            num_classes,
            hidden_features=config.hidden_features,
            num_blocks=config.num_blocks,
            cell=config.cell,
            cell_kwargs=config.cell_kwargs,
            method=build_method(config),
            on_failure=config.on_failure,
            dtype=dtype,
            param_dtype=dtype,
            rngs=nnx.Rngs(seed),
            **devices,
        )

    # Every initialiser in one program (the same values as run op by op): one compile, or
    # one read of the compilation cache, instead of one per parameter (0.4 against 0.2 s of
    # a warm start for a 2-block model on a CPU).
    return nnx.jit(build)()


def build_optimizer(
    config: OptimConfig, total_steps: int
) -> tuple[optax.GradientTransformation, Callable[[int], Any]]:
    """The optax transformation and its learning-rate schedule (a function of the step)."""
    decay_steps = max(1, config.decay_steps or total_steps)
    end_value = config.lr * config.end_lr_factor
    if config.schedule == "constant":
        schedule = optax.constant_schedule(config.lr)
    elif config.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(config.lr, decay_steps, alpha=config.end_lr_factor)
    else:  # warmup_cosine
        schedule = optax.warmup_cosine_decay_schedule(
            0.0,
            config.lr,
            config.warmup_steps,
            max(decay_steps, config.warmup_steps + 1),
            end_value=end_value,
        )
    if config.name == "adamw":
        optimizer = optax.adamw(
            schedule,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=_matrices_only,
        )
    else:
        optimizer = optax.adam(schedule, b1=config.b1, b2=config.b2, eps=config.eps)
    if config.clip_norm is not None:
        optimizer = optax.chain(optax.clip_by_global_norm(config.clip_norm), optimizer)
    return optimizer, schedule


def _matrices_only(params: Any) -> Any:
    """Weight-decay mask: kernels yes, biases and LayerNorm scales no."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def count_params(params: Any) -> int:
    return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------- steps


def _forward(
    graphdef,
    params,
    rest,
    x,
    y,
    w,
    dtype,
    seq_lengths=None,
    diagnostics=False,
    guesses=None,
    return_carries=False,
):
    """Weighted mean cross-entropy, and the per-series numbers the logs need
    (``seq_lengths``: valid steps of each padded series, ``None``: all steps)."""
    model = nnx.merge(graphdef, params, rest)
    logits, stats = model(
        x.astype(dtype),
        seq_lengths,
        return_stats=True,
        diagnostics=diagnostics,
        guesses=guesses,
        return_carries=return_carries,
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    loss = jnp.sum(w * ce) / jnp.maximum(jnp.sum(w), 1.0)
    predictions = jnp.argmax(logits, axis=-1)
    return loss, (ce, predictions, stats)


def _summaries(ce, predictions, stats, y, w) -> dict[str, jax.Array]:
    """Sums over the real (non-padding) series of a batch; averages are taken on the host."""
    valid = (w > 0)[None, :]  # (1, batch), against the (blocks, batch) stacks below
    iterations = jnp.stack([s.iterations for s in stats])  # (blocks, batch)
    failed = jnp.stack([~s.converged for s in stats])
    fell_back = jnp.stack([s.fell_back for s in stats])
    valid_fell_back = fell_back & valid
    lyapunov = {}
    if stats and stats[0].lyapunov is not None:
        exponents = jnp.stack([s.lyapunov for s in stats])
        lyapunov["lyapunov_sum"] = jnp.sum(jnp.where(valid, exponents, 0), axis=1)  # per block
    return {
        **lyapunov,
        "count": jnp.sum(w),
        "loss_sum": jnp.sum(w * ce),
        "correct": jnp.sum(w * (predictions == y)),
        "iterations_sum": jnp.sum(jnp.where(valid, iterations, 0), axis=1),  # per block
        "iterations_max": jnp.max(jnp.where(valid, iterations, 0)),
        "not_converged": jnp.sum(failed & valid),
        "fell_back": jnp.sum(valid_fell_back),
        "fell_back_per_block": jnp.sum(valid_fell_back, axis=1),
    }


def make_train_step(graphdef, optimizer: optax.GradientTransformation, dtype) -> Callable:
    """``train_step(state, x, y, w, seq_lengths=None) -> (state, summaries)``, to jit."""

    def train_step(state: TrainState, x, y, w, seq_lengths=None):
        def loss_fn(params):
            return _forward(graphdef, params, state.rest, x, y, w, dtype, seq_lengths)

        (loss, (ce, predictions, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = _summaries(ce, predictions, stats, y, w)
        out["loss"] = loss
        out["grad_norm"] = optax.tree.norm(grads)
        return TrainState(params, state.rest, opt_state), out

    return train_step


def make_eval_step(
    graphdef, dtype, diagnostics: bool = False, warm_start: bool = False
) -> Callable:
    """``eval_step(params, rest, x, y, w, seq_lengths=None) -> (summaries, predictions)``,
    to jit; with ``diagnostics`` the summaries hold every block's summed Lyapunov estimates.
    With ``warm_start``: ``eval_step(..., guesses=None) -> (summaries, predictions,
    carries)``, every block's carries, which the next evaluation of the same batch passes
    back as ``guesses``."""

    def eval_step(params, rest, x, y, w, seq_lengths=None, guesses=None):
        _, (ce, predictions, stats) = _forward(
            graphdef,
            params,
            rest,
            x,
            y,
            w,
            dtype,
            seq_lengths,
            diagnostics,
            guesses,
            return_carries=warm_start,
        )
        summaries = _summaries(ce, predictions, stats, y, w)
        if warm_start:
            return summaries, predictions, tuple(s.carries for s in stats)
        return summaries, predictions

    return eval_step


class Steps(NamedTuple):
    """The optimiser, its schedule and the jitted steps of one model / optimiser setup
    (:class:`StoredProgram`: ``jax.jit`` whose traced program is also kept on disk when
    the compilation cache is on)."""

    optimizer: optax.GradientTransformation
    schedule: Callable[[int], Any]
    train_step: Callable
    eval_step: Callable


_STEPS_CACHE: dict[tuple, Steps] = {}
_STEPS_CACHE_SIZE = 32  # method: auto compiles one pair of steps per assignment it tries


def compiled_steps(
    graphdef,
    optim: OptimConfig,
    total_steps: int,
    dtype,
    diagnostics: bool = False,
    warm_start: bool = False,
) -> Steps:
    """:class:`Steps` for a model structure and optimiser, reused across runs in a process.

    Graph definitions compare by structure, so runs of the same configuration (folds of
    a cross-validation, a resumed run, tests) share one set of jitted functions and
    compile once per input shape instead of once per run.
    """
    decays = optim.schedule != "constant" and optim.decay_steps is None
    key = (
        graphdef,
        json.dumps(dataclasses.asdict(optim), sort_keys=True),
        total_steps if decays else None,
        str(jnp.dtype(dtype)),
        diagnostics,
        warm_start,
    )
    if key not in _STEPS_CACHE:
        if len(_STEPS_CACHE) >= _STEPS_CACHE_SIZE:
            _STEPS_CACHE.pop(next(iter(_STEPS_CACHE)))
        optimizer, schedule = build_optimizer(optim, total_steps)
        # What the steps close over, the same in every process: kept on disk under it.
        identity = stable_repr((key[1:], graphdef))
        _STEPS_CACHE[key] = Steps(
            optimizer,
            schedule,
            StoredProgram(
                make_train_step(graphdef, optimizer, dtype), "train_step", identity, graphdef
            ),
            StoredProgram(
                make_eval_step(graphdef, dtype, diagnostics, warm_start),
                "eval_step",
                identity,
                graphdef,
            ),
        )
    return _STEPS_CACHE[key]
