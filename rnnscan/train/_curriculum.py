"""Memory curricula on N-parity / N-DMS: a leaky RNN with trained time constants, N growing.

After Khajehabdollahi, Zeraati, Giannakakis, Schäfer, Martius & Levina, "Emergent mechanisms
for long timescales depend on training curriculum and affect performance in memory tasks"
(arXiv:2309.12927, 2023). A :class:`rnnscan.nn.LeakyRNNCell` reads a stream of random
bits and linear read-out heads answer at every step; N starts at ``n_start`` and grows by one
whenever the network has learned the current objective:

* ``"single"`` (single-head): one head, trained on the current N only. When its accuracy
  reaches ``threshold`` the network moves to N + 1 with a freshly initialised head.
* ``"multi"`` (multi-head): one head per N = n_start .. N_current, all trained together (the
  mean of their losses). When every head reaches ``threshold``, a head for N + 1 is added.

At every advance (and at the start) the run records the single-neuron time constants τ
(``cell.tau``) and the network-mediated timescales τ_net (the fitted autocorrelation decay of
every unit's activity while the network reads a long random bit stream,
:func:`rnnscan.diagnostics.network_timescales`). Optimiser state (Adam) is reset at every
advance, so that every stage starts alike. At the end, the final network is evaluated on every
N it learned: the multi-head network with its own heads, the single-head network with the head
each N had when it was learned (what the network still holds of an earlier N: forgetting).

The loss at a step is the cross-entropy of the two-class logits, averaged over the scored steps
(t >= N - 1 for parity, t >= N for DMS) and the batch, then over the active heads. Each
training step draws a fresh batch; accuracy is measured every ``eval_every`` steps on a fresh
batch of ``eval_batch_size`` streams.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rnnscan.data import TIMESCALE_TASKS, make_timescale_task
from rnnscan.diagnostics import leak_timescale, network_timescales
from rnnscan.nn import RNN, LeakyRNNCell

from ._config import ConfigError

__all__ = [
    "CURRICULA",
    "CurriculumConfig",
    "CurriculumResult",
    "TimescaleModel",
    "train_curriculum",
]

CURRICULA = ("single", "multi")


@dataclass
class CurriculumConfig:
    """A curriculum run (:func:`train_curriculum`; ``python -m rnnscan.train.curriculum``).

    Attributes:
        task: ``"parity"`` or ``"dms"``.
        curriculum: ``"single"`` (one head, one N at a time) or ``"multi"`` (one head per N,
            all trained together).
        n_start: the first N (the paper starts at 2).
        n_max: the last N; the run ends when it is learned.
        hidden_features: the number of neurons.
        activation: ``"relu"`` (the paper's) or ``"tanh"``.
        tau_init: the initial τ of every neuron (> 1).
        train_tau: whether τ is trained (``False``: fixed at ``tau_init``).
        seq_len: the length of the training streams (and of the evaluation streams).
        batch_size: streams per training step (fresh every step).
        eval_batch_size: streams of each accuracy measurement.
        learning_rate: Adam's step size.
        clip_norm: global gradient-norm clipping (``None``: none).
        threshold: the accuracy (on the scored steps) that counts as learned.
        eval_every: training steps between accuracy measurements.
        max_steps_per_n: give up when an N is not learned within this many steps.
        max_steps: the total step budget.
        method: how :class:`rnnscan.nn.RNN` evaluates the recurrence during training
            (``"sequential"``, the default: fastest on a CPU at these lengths; ``"newton"``
            and the other parallel methods give the same values up to the solver tolerance).
        check_method: after training, the final accuracies on the first
            ``check_batch_size`` evaluation streams are recomputed with this method too
            (``None``: no check) and the largest difference is recorded.
        check_batch_size: the streams of that check (a parallel solve of a dense n x n
            recurrence costs O(n³ T) per iteration: keep it small on a CPU).
        timescale_runs, timescale_len, burn_in, max_lag, cutoff: the τ_net measurement:
            ``timescale_runs`` random bit streams of ``burn_in + timescale_len`` steps, the
            activity after ``burn_in`` steps, autocorrelation fitted up to ``max_lag`` lags,
            until it falls below ``cutoff``.
        seed: seeds the parameters (and new heads) and, through its own stream, the data.
        verbose: show a progress bar.
    """

    task: str = "parity"
    curriculum: str = "single"
    n_start: int = 2
    n_max: int = 10
    hidden_features: int = 64
    activation: str = "relu"
    tau_init: float = 2.0
    train_tau: bool = True
    seq_len: int = 100
    batch_size: int = 64
    eval_batch_size: int = 256
    learning_rate: float = 1.0e-3
    clip_norm: float | None = 1.0
    threshold: float = 0.98
    eval_every: int = 50
    max_steps_per_n: int = 3000
    max_steps: int = 20000
    method: str = "sequential"
    check_method: str | None = "newton"
    check_batch_size: int = 32
    timescale_runs: int = 8
    timescale_len: int = 2000
    burn_in: int = 200
    max_lag: int = 100
    cutoff: float = 0.05
    seed: int = 0
    verbose: bool = True

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CurriculumConfig:
        """A config from a mapping; an unknown key is a :class:`ConfigError` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"unknown curriculum key {key!r}; known keys: {', '.join(sorted(known))}"
                )
        return cls(**dict(values))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad value."""

        def check(ok, name, expected):
            if not ok:
                raise ConfigError(f"{name}: expected {expected}, got {getattr(self, name)!r}")

        def positive_int(name):
            value = getattr(self, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                name,
                "a positive int",
            )

        check(self.task in TIMESCALE_TASKS, "task", " | ".join(TIMESCALE_TASKS))
        check(self.curriculum in CURRICULA, "curriculum", " | ".join(CURRICULA))
        for name in (
            "n_start",
            "n_max",
            "hidden_features",
            "seq_len",
            "batch_size",
            "eval_batch_size",
            "eval_every",
            "max_steps_per_n",
            "max_steps",
            "timescale_runs",
            "timescale_len",
            "max_lag",
            "check_batch_size",
        ):
            positive_int(name)
        check(self.n_max >= self.n_start, "n_max", f">= n_start = {self.n_start}")
        need = self.n_max + (self.task == "dms") + 1
        check(self.seq_len >= need, "seq_len", f">= {need} (n_max and a scored step or more)")
        check(self.activation in ("relu", "tanh"), "activation", "relu | tanh")
        check(float(self.tau_init) > 1.0, "tau_init", "> 1")
        check(0.5 < float(self.threshold) <= 1.0, "threshold", "in (0.5, 1]")
        check(float(self.learning_rate) > 0, "learning_rate", "> 0")
        check(self.clip_norm is None or float(self.clip_norm) > 0, "clip_norm", "> 0 or null")
        check(self.max_lag < self.timescale_len, "max_lag", "< timescale_len")
        check(0.0 < float(self.cutoff) < 1.0, "cutoff", "in (0, 1)")
        check(isinstance(self.burn_in, int) and self.burn_in >= 0, "burn_in", "an int >= 0")


class TimescaleModel(nnx.Module):
    """A leaky RNN (:class:`rnnscan.nn.LeakyRNNCell` in :class:`rnnscan.nn.RNN`) and ``heads``
    linear two-class read-outs of its state at every step: logits ``(B, T, heads, 2)``."""

    def __init__(self, config: CurriculumConfig, heads: int, *, rngs: nnx.Rngs):
        cell = LeakyRNNCell(
            1,
            config.hidden_features,
            activation=config.activation,
            tau_init=config.tau_init,
            train_tau=config.train_tau,
            rngs=rngs,
        )
        self.rnn = RNN(cell, method=config.method, rngs=False)
        self.heads = nnx.Linear(config.hidden_features, 2 * heads, rngs=rngs)
        self.num_heads = heads

    @property
    def cell(self) -> LeakyRNNCell:
        return self.rnn.cell

    def activity(self, inputs: jax.Array) -> jax.Array:
        """The neurons' activity ``(B, T, n)`` for inputs ``(B, T, 1)``, from rest."""
        return self.rnn(inputs)

    def __call__(self, inputs: jax.Array) -> jax.Array:
        h = self.activity(inputs)
        return self.heads(h).reshape(*h.shape[:-1], self.num_heads, 2)


@dataclass
class CurriculumResult:
    """What :func:`train_curriculum` found.

    Attributes:
        config: the run's :class:`CurriculumConfig`, as a dict.
        largest_n: the largest N learned (``n_start - 1``: none).
        stages: one record per learned N (and a first one, ``n = n_start - 1``, of the
            untrained network): ``n``, ``step`` (total steps when learned), ``steps`` (steps
            spent on this N), ``accuracy`` (per active head), ``tau`` (per neuron),
            ``tau_mean``, ``tau_leak_mean`` (:func:`rnnscan.diagnostics.leak_timescale`),
            ``tau_net`` (per neuron; NaN for a silent one), ``tau_net_mean`` /
            ``tau_net_median`` over the active neurons, ``silent`` (neurons with constant
            activity), ``seconds``.
        gave_up: why the run ended before ``n_max`` (``None`` if it learned every N).
        retained: the final network's accuracy on every learned N (see the module).
        check: ``{"method", "streams", "max_abs_difference"}``: the final accuracies on
            ``streams`` streams recomputed with ``check_method`` (``None`` without a check).
        history: every accuracy measurement: ``step``, ``n``, ``loss``, ``accuracy``.
        seconds: the wall time of the run.
        model: the trained :class:`TimescaleModel`.
    """

    config: dict[str, Any]
    largest_n: int
    stages: list[dict[str, Any]]
    gave_up: str | None
    retained: dict[int, float]
    check: dict[str, Any] | None
    history: list[dict[str, Any]] = field(repr=False)
    seconds: float
    model: TimescaleModel = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """Everything but the model, as JSON-compatible values (NaN as ``None``)."""
        out = dataclasses.asdict(dataclasses.replace(self, model=None))
        out.pop("model")
        out["retained"] = {str(k): v for k, v in self.retained.items()}
        return _finite(out)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


# ----------------------------------------------------------------------------- the steps


def _head_ns(config: CurriculumConfig) -> tuple[int, ...]:
    """The N of every head: one (re-used) for single-head, n_start .. n_max for multi-head."""
    if config.curriculum == "single":
        return (config.n_start,)
    return tuple(range(config.n_start, config.n_max + 1))


def _losses(logits, targets, valid):
    """Per head: mean cross-entropy and accuracy over the scored steps ``(K,)``."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # (B, T, K)
    hits = (jnp.argmax(logits, axis=-1) == targets).astype(logits.dtype)
    w = valid.astype(logits.dtype)
    count = jnp.maximum(jnp.sum(w, axis=(0, 1)), 1.0)
    return jnp.sum(ce * w, axis=(0, 1)) / count, jnp.sum(hits * w, axis=(0, 1)) / count


def _programs(graphdef, optimiser):
    """The jitted training step and evaluation of a split :class:`TimescaleModel`."""

    def loss_fn(params, rest, inputs, targets, valid, active):
        model = nnx.merge(graphdef, params, rest)
        loss, accuracy = _losses(model(inputs), targets, valid)
        return jnp.sum(loss * active) / jnp.sum(active), (loss, accuracy)

    @jax.jit
    def train_step(params, rest, opt_state, inputs, targets, valid, active):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rest, inputs, targets, valid, active
        )
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def evaluate(params, rest, inputs, targets, valid):
        model = nnx.merge(graphdef, params, rest)
        return _losses(model(inputs), targets, valid)

    @jax.jit
    def activity(params, rest, inputs):
        model = nnx.merge(graphdef, params, rest)
        return model.activity(inputs), model.cell.tau

    return train_step, evaluate, activity


def _optimiser(config: CurriculumConfig):
    adam = optax.adam(config.learning_rate)
    if config.clip_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.clip_norm), adam)


def _batch(config, rng, n_values, size):
    streams = make_timescale_task(config.task, size, config.seq_len, n_values, seed=rng)
    return jnp.asarray(streams.inputs), jnp.asarray(streams.targets), jnp.asarray(streams.valid)


def _timescales(config, activity_fn, params, rest, rng) -> dict[str, Any]:
    """τ and τ_net of the current network (see :class:`CurriculumResult`)."""
    length = config.burn_in + config.timescale_len
    bits = rng.integers(0, 2, size=(config.timescale_runs, length, 1)).astype(np.float32)
    h, tau = activity_fn(params, rest, jnp.asarray(bits))
    h, tau = np.asarray(h)[:, config.burn_in :], np.asarray(tau, np.float64)
    fit = network_timescales(h, max_lag=config.max_lag, cutoff=config.cutoff)
    active = ~np.isnan(fit.tau)
    finite = fit.tau[active & np.isfinite(fit.tau)]
    return {
        "tau": tau.tolist(),
        "tau_mean": float(tau.mean()),
        "tau_median": float(np.median(tau)),
        "tau_leak_mean": float(leak_timescale(tau).mean()),
        "tau_net": fit.tau.tolist(),
        "tau_net_mean": float(finite.mean()) if finite.size else float("nan"),
        "tau_net_median": float(np.median(finite)) if finite.size else float("nan"),
        "tau_net_at_max_lag": int(np.sum(fit.reached_max_lag)),
        "silent": int(np.sum(~active)),
    }


def train_curriculum(config: CurriculumConfig | Mapping[str, Any]) -> CurriculumResult:
    """Run the curriculum of ``config`` (see the module docstring) and return what it found."""
    if not isinstance(config, CurriculumConfig):
        config = CurriculumConfig.from_dict(config)
    start = time.perf_counter()
    head_ns = _head_ns(config)
    K = len(head_ns)
    rngs = nnx.Rngs(config.seed)
    model = TimescaleModel(config, K, rngs=rngs)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimiser = _optimiser(config)
    train_step, evaluate, activity = _programs(graphdef, optimiser)
    data_rng = np.random.default_rng([config.seed, 1])
    scale_rng = np.random.default_rng([config.seed, 2])

    def fresh_head(params, index):
        """``params`` with head ``index`` re-drawn (single-head: the new head of a new N)."""
        new = nnx.Linear(config.hidden_features, 2 * K, rngs=rngs)
        columns = slice(2 * index, 2 * index + 2)
        heads = nnx.State(dict(params["heads"]))
        for name in ("kernel", "bias"):
            old = heads[name]
            heads[name] = old.replace(
                old[...].at[..., columns].set(getattr(new, name)[...][..., columns])
            )
        params = nnx.State(dict(params))
        params["heads"] = heads
        return params

    def targets_for(n):
        """The N of each head when the network is learning ``n``, and the active heads."""
        if config.curriculum == "single":
            return (n,), np.ones(1, np.float32)
        return head_ns, (np.asarray(head_ns) <= n).astype(np.float32)

    n = config.n_start
    step = 0
    history: list[dict[str, Any]] = []
    stages = [
        {
            "n": n - 1,
            "step": 0,
            "steps": 0,
            "accuracy": [],
            **_timescales(config, activity, params, rest, scale_rng),
        }
    ]
    learned_heads: dict[int, Any] = {}
    gave_up = None
    opt_state = optimiser.init(params)
    steps_on_n = 0
    bar = None
    if config.verbose:
        from tqdm import tqdm

        bar = tqdm(
            total=config.max_steps,
            desc=f"{config.task} {config.curriculum}-head",
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )
    while True:
        ns, active = targets_for(n)
        inputs, targets, valid = _batch(config, data_rng, ns, config.batch_size)
        params, opt_state, loss = train_step(
            params, rest, opt_state, inputs, targets, valid, jnp.asarray(active)
        )
        step += 1
        steps_on_n += 1
        if bar is not None:
            bar.update(1)
        if (
            step % config.eval_every
            and steps_on_n < config.max_steps_per_n
            and step < config.max_steps
        ):
            continue
        e_inputs, e_targets, e_valid = _batch(config, data_rng, ns, config.eval_batch_size)
        e_loss, accuracy = (
            np.asarray(v) for v in evaluate(params, rest, e_inputs, e_targets, e_valid)
        )
        accuracy = accuracy[active > 0]
        history.append(
            {
                "step": step,
                "n": n,
                "loss": float(np.mean(e_loss[active > 0])),
                "accuracy": accuracy.tolist(),
            }
        )
        if bar is not None:
            bar.set_postfix(N=n, acc=f"{accuracy.min():.3f}", refresh=False)
        if accuracy.min() >= config.threshold:
            record = {"n": n, "step": step, "steps": steps_on_n, "accuracy": accuracy.tolist()}
            record.update(_timescales(config, activity, params, rest, scale_rng))
            record["seconds"] = time.perf_counter() - start
            stages.append(record)
            if config.curriculum == "single":
                learned_heads[n] = params["heads"]
            if bar is not None:
                bar.write(
                    f"N={n} learned at step {step} ({steps_on_n} steps): mean tau "
                    f"{record['tau_mean']:.2f}, mean tau_net {record['tau_net_mean']:.2f}",
                    file=sys.stderr,
                )
            if n == config.n_max:
                break
            n += 1
            steps_on_n = 0
            if config.curriculum == "single":
                params = fresh_head(params, 0)
            opt_state = optimiser.init(params)
            continue
        if steps_on_n >= config.max_steps_per_n:
            gave_up = f"N={n} not learned within max_steps_per_n={config.max_steps_per_n} steps"
            break
        if step >= config.max_steps:
            gave_up = f"the step budget max_steps={config.max_steps} ran out at N={n}"
            break
    if bar is not None:
        bar.close()

    learned = [s["n"] for s in stages[1:]]
    retained, check = _retained(config, evaluate, params, rest, learned, learned_heads, graphdef)
    model = nnx.merge(graphdef, params, rest)
    return CurriculumResult(
        config=dataclasses.asdict(config),
        largest_n=learned[-1] if learned else config.n_start - 1,
        stages=stages,
        gave_up=gave_up,
        retained=retained,
        check=check,
        history=history,
        seconds=time.perf_counter() - start,
        model=model,
    )


def _retained(config, evaluate, params, rest, learned, learned_heads, graphdef):
    """The final network's accuracy on every learned N, and the check with another method."""
    if not learned:
        return {}, None
    rng = np.random.default_rng([config.seed, 3])
    streams = make_timescale_task(
        config.task, config.eval_batch_size, config.seq_len, learned, seed=rng
    )
    inputs = jnp.asarray(streams.inputs)
    retained = {}
    per_n_params = []
    for k, n in enumerate(learned):
        if config.curriculum == "single":
            p = nnx.State(dict(params))
            p["heads"] = learned_heads[n]
            head = 0
        else:
            p, head = params, n - config.n_start
        targets = jnp.asarray(streams.targets[..., k : k + 1])
        valid = jnp.asarray(streams.valid[..., k : k + 1])
        # Every head gets the target of N; only head ``head`` is read.
        targets = jnp.broadcast_to(targets, targets.shape[:-1] + (len(_head_ns(config)),))
        valid = jnp.broadcast_to(valid, targets.shape)
        _, accuracy = evaluate(p, rest, inputs, targets, valid)
        retained[n] = float(accuracy[head])
        per_n_params.append((p, head, targets, valid))
    check = None
    if config.check_method is not None and config.check_method != config.method:
        other = dataclasses.replace(config, method=config.check_method, verbose=False)
        other_graphdef = nnx.split(
            TimescaleModel(other, len(_head_ns(config)), rngs=nnx.Rngs(0)), nnx.Param, ...
        )[0]
        _, other_evaluate, _ = _programs(other_graphdef, _optimiser(config))
        differences = []
        few = slice(0, config.check_batch_size)
        for p, head, targets, valid in per_n_params:
            args = (p, rest, inputs[few], targets[few], valid[few])
            ours, theirs = evaluate(*args)[1][head], other_evaluate(*args)[1][head]
            differences.append(abs(float(theirs) - float(ours)))
        check = {
            "method": config.check_method,
            "streams": min(config.check_batch_size, config.eval_batch_size),
            "max_abs_difference": max(differences),
        }
    return retained, check
