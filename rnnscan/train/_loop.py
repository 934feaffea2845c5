"""The training loop: :func:`train` (one run) and :func:`cross_validate` (k folds).

A run lives in one directory::

    <out_dir>/
      config.yaml      the configuration (a rerun with the same directory resumes)
      metrics.jsonl    one JSON line per step / evaluation (see rnnscan.train._metrics)
      checkpoints/     orbax checkpoints: training state, best parameters, loop position
      curves.png       loss, accuracy, solver iterations and step time
      summary.json     best validation accuracy, test accuracy of the best parameters,
                       times, device, versions

Determinism: the parameters come from ``train.seed``; epoch ``e`` visits the training
series in the order ``default_rng([seed, e]).permutation``; nothing else is random.
A checkpoint stores the parameters, the model's other state (its random streams), the
optimiser state, the loop position (step, epoch, batch within the epoch) and the
early-stopping state, so a run killed at any moment and restarted continues from its
last checkpoint exactly as if it had not been interrupted (on the same device and
software; XLA is deterministic on CPU).

Several processes (``jax.distributed``, see :mod:`rnnscan.train._hosts`): every process
runs the same loop on the same data and batches, over one mesh of all their devices; the
run directory must be one directory that every process sees (a shared file system).
Process 0 writes ``config.yaml``, ``metrics.jsonl``, ``summary.json`` and ``curves.png``;
every process takes part in writing and reading the orbax checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

import rnnscan.train._hosts as _hosts
from rnnscan.data import Dataset

from ._buckets import BatchPlan
from ._checkpoint import Checkpointer, LoopState, prepare_run_dir, resolve_out_dir
from ._config import ConfigError, TrainConfig, apply_overrides
from ._data import batch_arrays, describe, load_dataset
from ._devices import device_layout
from ._evaluation import Evaluator, update_best
from ._method_choice import MethodChoice
from ._metrics import MetricsLog, environment, read_metrics, step_time_stats
from ._plot import plot_curves
from ._progress import ProgressBar
from ._steps import TrainState, build_model, count_params
from ._warmup import warmup_record

__all__ = ["CrossValidationResult", "TrainResult", "cross_validate", "train"]

Callback = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        out_dir: the run directory.
        summary: the contents of ``summary.json``.
        model: the classifier with the best parameters (by validation accuracy).
        best_params, final_params: the parameter states (``nnx.State``).
    """

    out_dir: Path
    summary: dict[str, Any]
    model: nnx.Module
    best_params: Any
    final_params: Any

    @property
    def test_accuracy(self) -> float | None:
        return self.summary["test"]["accuracy"] if self.summary.get("test") else None

    @property
    def best_val_accuracy(self) -> float | None:
        return self.summary["best"]["val_accuracy"]

    @property
    def records(self) -> list[dict[str, Any]]:
        """The lines of ``metrics.jsonl``."""
        return read_metrics(self.out_dir / "metrics.jsonl")


# ----------------------------------------------------------------------------- public


def train(config: TrainConfig, *, callback: Callback | None = None) -> TrainResult:
    """Train the classifier of ``config``, resuming from ``config.out_dir`` if it holds
    checkpoints of the same configuration.

    Args:
        config: the run (see :class:`TrainConfig`).
        callback: called with every record written to ``metrics.jsonl`` (after it is
            written); an exception it raises stops the run like a crash would.

    Returns:
        A :class:`TrainResult`; its ``summary`` is also written to ``summary.json``.
    """
    config.validate()
    if config.model.method == "auto" and _hosts.process_count() > 1:
        raise ConfigError(
            "model.method: auto chooses methods by timing steps, which each process would "
            "do differently; a run over several processes needs a fixed model.method "
            "(e.g. newton or sequential)."
        )
    if config.data.cv_folds > 2 and config.data.cv_fold is None:
        raise ConfigError(
            "data.cv_folds is set but data.cv_fold is not: use cross_validate(config) to run "
            "every fold, or set data.cv_fold to train one."
        )
    precision = _enable_x64() if config.model.dtype == "float64" else contextlib.nullcontext()
    with precision:
        return _Run(config, callback).run()


@dataclasses.dataclass
class CrossValidationResult:
    """What :func:`cross_validate` returns: one :class:`TrainResult` per fold and the
    pooled summary (also written to ``cv_summary.json``)."""

    out_dir: Path
    folds: list[TrainResult]
    summary: dict[str, Any]


def cross_validate(
    config: TrainConfig, *, callback: Callback | None = None
) -> CrossValidationResult:
    """Stratified k-fold cross-validation (``data.cv_folds`` folds): one run per fold, in
    ``<out_dir>/fold<k>``. Each series is in exactly one test fold, so the pooled test
    accuracy counts every series once. Interrupted folds resume like single runs."""
    k = config.data.cv_folds
    if k < 3:
        raise ConfigError(f"cross_validate needs data.cv_folds >= 3, got {k}.")
    base = resolve_out_dir(config, suffix="-cv")
    folds = []
    for fold in range(k):
        fold_config = apply_overrides(
            config, {"data.cv_fold": fold, "out_dir": str(base / f"fold{fold}")}
        )
        folds.append(train(fold_config, callback=callback))
    tests = [f.summary["test"] for f in folds]
    accuracies = np.array([t["accuracy"] for t in tests])
    summary = {
        "name": config.name,
        "folds": k,
        "test_accuracy_pooled": sum(t["correct"] for t in tests) / sum(t["count"] for t in tests),
        "test_correct": int(sum(t["correct"] for t in tests)),
        "test_count": int(sum(t["count"] for t in tests)),
        "test_accuracy_per_fold": accuracies.tolist(),
        "test_accuracy_mean": float(accuracies.mean()),
        "test_accuracy_std": float(accuracies.std(ddof=1)),
        "best_val_accuracy_per_fold": [f.best_val_accuracy for f in folds],
        "wall_time_s": float(sum(f.summary["time"]["wall_s"] for f in folds)),
        **environment(),
    }
    if _hosts.is_primary():
        (base / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    return CrossValidationResult(base, folds, summary)


# ----------------------------------------------------------------------------- the run


def _enable_x64():
    """``jax.enable_x64(True)``; before jax 0.8 it was ``jax.experimental.enable_x64()``."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # jax < 0.8 (the supported lower bound is 0.7.2)
        from jax.experimental import enable_x64 as enable
    return enable(True)


class _Run:
    """One training run: set up, loop, evaluate, report."""

    def __init__(self, config: TrainConfig, callback: Callback | None):
        self.config = config
        self.callback = callback
        self.out_dir = resolve_out_dir(config)
        self.primary = _hosts.is_primary()  # process 0 writes the files and prints
        self.progress_bar = ProgressBar(config.name, config.train.progress and self.primary)
        self.log: MetricsLog | None = None

    def _say(self, message: str) -> None:
        self.progress_bar.say(message)

    def _emit(self, record: dict[str, Any]) -> None:
        self.log.write(record)
        if self.callback is not None:
            self.callback(record)

    def _eval_due(self, step: int, end_of_epoch: bool) -> bool:
        every = self.config.train.eval_every
        due = end_of_epoch if every is None else step % every == 0
        return due or step >= self.total_steps

    def _done(self, loop: LoopState) -> bool:
        return loop.stopped_early or loop.step >= self.total_steps

    def _evaluate(self, ds: Dataset, part: str, params: Any, rest: Any) -> dict[str, Any] | None:
        return self.evaluate(self.methods.eval_step, ds, part, params, rest)

    # -- the run ---------------------------------------------------------------------

    def run(self) -> TrainResult:
        config, t = self.config, self.config.train
        session_start = time.perf_counter()
        prepare_run_dir(self.out_dir, config)
        ds = load_dataset(config.data)
        n_train = ds.y_train.shape[0]
        self.plan = BatchPlan(
            ds.lengths_train,
            ds.seq_len,
            t.batch_size,
            t.drop_last,
            t.seed,
            config.data.length_buckets,
            multiple=t.sequence_devices,
        )
        self.steps_per_epoch = self.plan.steps_per_epoch(n_train)
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train.batch_size={t.batch_size} exceeds the {n_train} training series "
                "and train.drop_last is set: no batch would remain."
            )
        self.total_steps = self.steps_per_epoch * t.epochs
        if t.max_steps is not None:
            self.total_steps = min(self.total_steps, t.max_steps)

        self.layout = device_layout(t)
        model = build_model(
            config.model, ds.num_channels, ds.num_classes, t.seed, **self.layout.model_kwargs()
        )
        # train.warmup: pre-train the recurrent layers for multistability (a resumed run
        # restores its checkpointed parameters over the warmed-up ones below).
        warmed = warmup_record(model, t.warmup, t.seed, t.progress) if t.warmup else None
        self.methods = MethodChoice(
            config, model, self.total_steps, self.steps_per_epoch, self._emit, self._say
        )
        self.evaluate = Evaluator(config, self.plan, self.layout)
        params, rest = nnx.split(model, nnx.Param, ...)[1:]
        optimizer, schedule = self.methods.optimizer, self.methods.schedule
        state = self.layout.replicate(TrainState(params, rest, optimizer.init(params)))
        params = state.params
        best = params
        loop = LoopState(seed=t.seed)

        checkpointer = None
        resumed_from = None
        if config.checkpoint.enabled:
            checkpointer = Checkpointer(
                self.out_dir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep
            )
            resumed_from = checkpointer.latest_step()
            if resumed_from is not None:
                state, best, meta = checkpointer.restore(resumed_from, state, best)
                loop = LoopState.from_meta(meta)
        # The model's flags follow the selector's start, or a resumed selector's state.
        self.methods.start(state, loop)
        self.log = MetricsLog(
            self.out_dir / "metrics.jsonl", keep_until_step=resumed_from, write=self.primary
        )
        if warmed is not None and resumed_from is None:
            self._emit(warmed)

        env = environment()
        self._say(
            f"{config.name}: {ds!r}\n  model: {config.model.cell} x{config.model.num_blocks} "
            f"width {config.model.hidden_features}, method {config.model.method}, "
            f"{count_params(params):,} parameters, {config.model.dtype}; device "
            f"{env['device']['kind']} x {self.layout.devices} (mesh "
            f"{dict(self.layout.mesh.shape)})\n  {self.total_steps} steps "
            f"({self.steps_per_epoch} per epoch); run directory {self.out_dir}"
            + (f"\n  resumed from the checkpoint of step {resumed_from}" if resumed_from else "")
        )
        try:
            state, best, loop = self._train_steps(
                ds, state, best, loop, schedule, checkpointer, session_start
            )
            if checkpointer is not None:
                checkpointer.wait()
            if ds.y_val.shape[0] == 0:  # no validation part: the final parameters are "best"
                best, loop.best_step, loop.best_epoch = state.params, loop.step, loop.epoch
            summary = self._finish(ds, state, best, loop, env, count_params(params))
        finally:
            self.log.close()
            if checkpointer is not None:
                checkpointer.close()
        return TrainResult(
            out_dir=self.out_dir,
            summary=summary,
            model=nnx.merge(self.methods.graphdef, best, state.rest),
            best_params=best,
            final_params=state.params,
        )

    def _train_steps(self, ds, state, best, loop, schedule, checkpointer, session_start):
        config, t = self.config, self.config.train
        wall_before = loop.wall_time_s
        self.progress_bar.open(self.total_steps, loop.step)
        evaluated: set[tuple[str, ...]] = set()  # the first evaluation of each assignment compiles
        last_val = None
        try:
            while not self._done(loop):
                batch = self.plan.batch(ds.y_train.shape[0], loop.epoch, loop.position)
                arrays = batch_arrays(ds.X_train, ds.y_train, ds.lengths_train, batch)
                args = self.layout.batch(*arrays)
                state, out, timing = self.methods.train_step(state, args, arrays[0].shape)
                lr = float(schedule(loop.step))  # the step's rate, after it: not on its way
                loop.step += 1
                loop.position += 1
                count = float(out["count"])
                iterations = np.asarray(out["iterations_sum"]) / count
                record = {
                    "kind": "train",
                    "step": loop.step,
                    "epoch": loop.epoch,
                    "loss": float(out["loss"]),
                    "accuracy": float(out["correct"]) / count,
                    "lr": lr,
                    "grad_norm": float(out["grad_norm"]),
                    "step_time_s": timing.seconds,
                    "includes_compile": timing.includes_compile,
                    "during_background_compile": timing.during_background_compile,
                    "iterations_mean": float(iterations.mean()),
                    "iterations_max": int(out["iterations_max"]),
                    "iterations_per_block": iterations.round(3).tolist(),
                    "not_converged": int(out["not_converged"]),
                    "fell_back": int(out["fell_back"]),
                    "methods": self.methods.names(),
                }
                self._emit(record)
                first_eval_pending = bool(ds.y_val.shape[0]) and not evaluated
                self.methods.after_step(state, args, record, out, loop, first_eval_pending)
                self.progress_bar.update(record, last_val)

                end_of_epoch = loop.position == self.steps_per_epoch
                if ds.y_val.shape[0] and self._eval_due(loop.step, end_of_epoch):
                    result = self._evaluate(ds, "val", state.params, state.rest)
                    best = update_best(loop, result, state.params, best, t.patience)
                    result.pop("predictions")
                    last_val = f"{result['accuracy']:.3f}"
                    settled = tuple(self.methods.names(settled=True))
                    self._emit(
                        {
                            "kind": "eval",
                            "split": "val",
                            "step": loop.step,
                            "epoch": loop.epoch,
                            **result,
                            "includes_compile": settled not in evaluated,
                            "methods": list(settled),
                            "best_accuracy": loop.best_val_accuracy,
                            "improved": loop.best_step == loop.step,
                        },
                    )
                    evaluated.add(settled)
                if end_of_epoch:
                    loop.epoch += 1
                    loop.position = 0
                loop.wall_time_s = wall_before + time.perf_counter() - session_start
                loop.selector = self.methods.state_dict()
                if checkpointer is not None and (
                    loop.step % config.checkpoint.every_steps == 0 or self._done(loop)
                ):
                    checkpointer.save(loop.step, state, best, loop.to_meta())
        finally:
            self.progress_bar.close()
            self.methods.close()
        if loop.stopped_early:
            self._say(
                f"  early stop at step {loop.step}: no better validation accuracy in "
                f"{t.patience} evaluations"
            )
        return state, best, loop

    def _finish(self, ds, state, best, loop, env, num_params):
        """Evaluate the best parameters on the test part; write summary.json and curves.png."""
        config = self.config
        test = self._evaluate(ds, "test", best, state.rest)
        test_summary = None
        if test is not None:
            predictions = test.pop("predictions")
            confusion = np.zeros((ds.num_classes, ds.num_classes), np.int64)
            np.add.at(confusion, (ds.y_test, predictions), 1)
            test_summary = {**test, "confusion_matrix": confusion.tolist()}
            self._emit(
                {
                    "kind": "test",
                    "split": "test",
                    "step": loop.step,
                    "epoch": loop.epoch,
                    "best_step": loop.best_step,
                    **test,
                },
            )
        records = self.log.records
        train_records = [r for r in records if r.get("kind") == "train"]
        wall = loop.wall_time_s + (test["time_s"] if test else 0.0)
        summary = {
            "name": config.name,
            "out_dir": str(self.out_dir),
            "data": describe(ds),
            "model": {
                "cell": config.model.cell,
                "hidden_features": config.model.hidden_features,
                "num_blocks": config.model.num_blocks,
                "method": config.model.method,
                "dtype": config.model.dtype,
                "num_params": num_params,
            },
            "steps": loop.step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs_completed": loop.step / self.steps_per_epoch,
            "stopped_early": loop.stopped_early,
            "best": {
                "val_accuracy": loop.best_val_accuracy,
                "val_loss": loop.best_val_loss,
                "step": loop.best_step,
                "epoch": loop.best_epoch,
            },
            "test": test_summary,
            **self.layout.describe(),
            "processes": _hosts.process_count(),
            "time": {
                "wall_s": wall,
                "step_time": step_time_stats(records),
                "train_steps_s": float(sum(r["step_time_s"] for r in train_records)),
            },
            "solver": {
                "iterations_mean": float(np.mean([r["iterations_mean"] for r in train_records]))
                if train_records
                else None,
                "iterations_max": max((r["iterations_max"] for r in train_records), default=None),
                "not_converged_total": int(sum(r["not_converged"] for r in train_records)),
                "fell_back_total": int(sum(r["fell_back"] for r in train_records)),
                **self.methods.summary(records),
            },
            **env,
            "finished_at": datetime.now().isoformat(timespec="seconds"),
        }
        if self.primary:
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            title = (
                f"{config.name}: {config.model.cell} x{config.model.num_blocks} "
                f"(width {config.model.hidden_features}), {config.model.method}"
            )
            plot_curves(records, self.out_dir / "curves.png", title)
        if test_summary is not None:
            self._say(
                f"  best validation accuracy {loop.best_val_accuracy} (step "
                f"{loop.best_step}); test accuracy {test_summary['accuracy']:.4f} "
                f"({test_summary['correct']}/{test_summary['count']}); summary in "
                f"{self.out_dir / 'summary.json'}"
            )
        return summary
