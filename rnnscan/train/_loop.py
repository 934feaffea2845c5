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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rnnscan.data import Dataset
from rnnscan.nn import auto_layers, set_methods

from ._buckets import BatchPlan
from ._checkpoint import Checkpointer
from ._config import ConfigError, TrainConfig, apply_overrides, config_diff, load_config
from ._data import batch_arrays, describe, load_dataset
from ._devices import device_layout
from ._metrics import MetricsLog, environment, read_metrics, step_time_stats
from ._plot import method_letters, plot_curves
from ._precompile import BackgroundCompiler, StepTimings, abstract
from ._selector import MethodSelector
from ._steps import TrainState, build_model, compiled_steps, count_params
from ._warmup import warmup_record

__all__ = ["CrossValidationResult", "TrainResult", "cross_validate", "train"]

Callback = Callable[[dict[str, Any]], None]

#: Keys that may change when a run is resumed (they do not change what is computed,
#: except that a longer run with a decaying schedule decays more slowly).
RESUMABLE_CHANGES = frozenset(
    {
        "name",
        "out_dir",
        "train.epochs",
        "train.max_steps",
        "train.patience",
        "train.progress",
        "train.eval_batch_size",
        "checkpoint.enabled",
        "checkpoint.every_steps",
        "checkpoint.max_to_keep",
        "data.data_dir",
        "data.cache_dir",
        "data.download",
    }
)


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


@dataclasses.dataclass
class _Progress:
    """Loop position and early-stopping state: the ``meta`` item of a checkpoint."""

    seed: int
    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of the current epoch already done
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    evals_since_improvement: int = 0
    stopped_early: bool = False
    wall_time_s: float = 0.0
    selector: dict[str, Any] | None = None  # MethodSelector.state_dict() (method: auto)
    warned_parallel: bool = False  # the once-per-run warning that parallel stopped paying

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> _Progress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})


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
    base = _resolve_out_dir(config, suffix="-cv")
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
    (base / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    return CrossValidationResult(base, folds, summary)


# ----------------------------------------------------------------------------- the run


def _enable_x64():
    """``jax.enable_x64(True)``; before jax 0.8 it was ``jax.experimental.enable_x64()``."""
    enable = getattr(jax, "enable_x64", None)
    if enable is None:  # jax < 0.8 (the supported lower bound is 0.7.2)
        from jax.experimental import enable_x64 as enable
    return enable(True)


def _selector(model: Any, num_auto: int) -> MethodSelector | None:
    """The method selector of ``model.method: auto`` (``None`` for a fixed method)."""
    if model.method != "auto":
        return None
    options = {k: v for k, v in model.auto.items() if k != "parallel"}
    # Start sequential: its program compiles fast, and the parallel one, whose compile can
    # outlast a short run, then compiles on the worker thread while training goes on.
    options.setdefault("start", "sequential")
    return MethodSelector(num_auto, parallel_name=model.auto.get("parallel", "newton"), **options)


def _name(selector: MethodSelector, decision: Any) -> str:
    return selector.parallel_name if decision.parallel else "sequential"


def _method_summary(records: list[dict[str, Any]], final: list[str]) -> dict[str, Any]:
    """Which method each block ran, for how many steps and how much time, and why it changed
    (the ``method`` records of ``metrics.jsonl``)."""
    steps: list[dict[str, int]] = [{} for _ in final]
    seconds: list[dict[str, float]] = [{} for _ in final]
    for r in records:
        if r.get("kind") == "train" and r.get("methods"):
            for block, name in enumerate(r["methods"]):
                steps[block][name] = steps[block].get(name, 0) + 1
                seconds[block][name] = seconds[block].get(name, 0.0) + r["step_time_s"]
    changes = [
        {k: r[k] for k in ("step", "layer", "method", "decision", "reason")}
        for r in records
        if r.get("kind") == "method" and r.get("decision") in ("kept", "fallback")
    ]
    return {"methods": final, "method_steps": steps, "method_changes": changes}


def _resolve_out_dir(config: TrainConfig, suffix: str = "") -> Path:
    if config.out_dir is not None:
        return Path(config.out_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.name}{suffix}-{stamp}"


def _prepare_run_dir(out_dir: Path, config: TrainConfig) -> None:
    """Create the run directory; refuse to resume a run of another configuration."""
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_path = out_dir / "config.yaml"
    checkpoints = out_dir / "checkpoints"
    has_checkpoints = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    if saved_path.exists() and has_checkpoints:
        saved = load_config(saved_path)
        changed = [k for k in config_diff(saved, config) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"{out_dir} holds checkpoints of a run with another configuration "
                f"(differences: {', '.join(changed)}). Resume it with the same settings "
                "or choose another out_dir."
            )
    saved_path.write_text(config.to_yaml())


class _Run:
    """One training run: set up, loop, evaluate, report."""

    def __init__(self, config: TrainConfig, callback: Callback | None):
        self.config = config
        self.callback = callback
        self.verbose = config.train.progress
        self.out_dir = _resolve_out_dir(config)
        self.dtype = jnp.dtype(config.model.dtype)

    # -- helpers ---------------------------------------------------------------------

    def _say(self, message: str) -> None:
        if self.verbose:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    def _emit(self, log: MetricsLog, record: dict[str, Any]) -> None:
        log.write(record)
        if self.callback is not None:
            self.callback(record)

    def _evaluate(self, ds: Dataset, part: str, params: Any, rest: Any) -> dict[str, Any] | None:
        """Loss, accuracy and solver statistics of ``params`` on a whole part."""
        X, y = ds.part(part)
        n = y.shape[0]
        if n == 0:
            return None
        size = min(self.config.train.eval_batch_size, n)
        lengths = getattr(ds, f"lengths_{part}")
        start_time = time.perf_counter()
        totals: dict[str, Any] = {}
        predictions = np.zeros(n, np.int64)
        # train.warm_start_eval: each validation batch starts its solves from the carries of
        # its last evaluation (kept on the device), the same up to the solver tolerance.
        warm = self.config.train.warm_start_eval and part == "val"
        for eval_batch in self.plan.eval_batches(lengths, n, size):
            real = int(eval_batch.weights.sum())
            arrays = batch_arrays(X, y, lengths, eval_batch)
            key = tuple(eval_batch.indices.tolist())
            guesses = self._eval_guesses.get(key) if warm else None
            out, pred, *carries = self.eval_step(
                params, rest, *self.layout.batch(*arrays), guesses=guesses
            )
            if warm:
                self._eval_guesses[key] = carries[0]
            out = jax.device_get(out)
            predictions[eval_batch.indices[:real]] = np.asarray(pred)[:real]
            for key, value in out.items():
                if key == "iterations_max":
                    totals[key] = max(totals.get(key, 0), int(value))
                else:
                    totals[key] = totals.get(key, 0) + np.asarray(value)
        count = float(totals["count"])
        lyapunov = {}
        if "lyapunov_sum" in totals:
            per_block = np.asarray(totals["lyapunov_sum"]) / count
            lyapunov["lyapunov_per_block"] = per_block.round(5).tolist()
        return {
            **lyapunov,
            "loss": float(totals["loss_sum"]) / count,
            "accuracy": float(totals["correct"]) / count,
            "correct": int(round(float(totals["correct"]))),
            "count": int(count),
            "iterations_mean": float(np.sum(totals["iterations_sum"])) / (count * self.blocks),
            "iterations_max": int(totals["iterations_max"]),
            "not_converged": int(totals["not_converged"]),
            "fell_back": int(totals["fell_back"]),
            "time_s": time.perf_counter() - start_time,
            "predictions": predictions,
        }

    def _eval_due(self, step: int, end_of_epoch: bool) -> bool:
        every = self.config.train.eval_every
        due = end_of_epoch if every is None else step % every == 0
        return due or step >= self.total_steps

    def _done(self, progress: _Progress) -> bool:
        return progress.stopped_early or progress.step >= self.total_steps

    # -- the run ---------------------------------------------------------------------

    def run(self) -> TrainResult:
        config, t = self.config, self.config.train
        session_start = time.perf_counter()
        _prepare_run_dir(self.out_dir, config)
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
        self.blocks = config.model.num_blocks

        self.layout = device_layout(t)
        model = build_model(
            config.model, ds.num_channels, ds.num_classes, t.seed, **self.layout.model_kwargs()
        )
        # train.warmup: pre-train the recurrent layers for multistability (a resumed run
        # restores its checkpointed parameters over the warmed-up ones below).
        warmed = warmup_record(model, t.warmup, t.seed, self.verbose) if t.warmup else None
        self.selector = _selector(config.model, len(auto_layers(model)))
        self.compiler = BackgroundCompiler()
        self._step_timings = StepTimings()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.graphdef = graphdef
        steps = compiled_steps(
            graphdef,
            config.optim,
            self.total_steps,
            self.dtype,
            config.train.lyapunov,
            config.train.warm_start_eval,
        )
        self._eval_guesses: dict[tuple[int, ...], Any] = {}
        optimizer, schedule = steps.optimizer, steps.schedule
        self.train_step, self.eval_step = steps.train_step, steps.eval_step
        state = self.layout.replicate(TrainState(params, rest, optimizer.init(params)))
        params = state.params
        best = params
        progress = _Progress(seed=t.seed)
        if self.selector is not None:  # the model's flags follow the selector's start
            self._use_assignment(state)

        checkpointer = None
        resumed_from = None
        if config.checkpoint.enabled:
            checkpointer = Checkpointer(
                self.out_dir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep
            )
            resumed_from = checkpointer.latest_step()
            if resumed_from is not None:
                state, best, meta = checkpointer.restore(resumed_from, state, best)
                progress = _Progress.from_meta(meta)
                if self.selector is not None and progress.selector is not None:
                    self.selector.load_state_dict(progress.selector)
                    self._use_assignment(state)
        log = MetricsLog(self.out_dir / "metrics.jsonl", keep_until_step=resumed_from)
        if warmed is not None and resumed_from is None:
            self._emit(log, warmed)

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
            state, best, progress = self._loop(
                ds, state, best, progress, schedule, log, checkpointer, session_start
            )
            if checkpointer is not None:
                checkpointer.wait()
            if ds.y_val.shape[0] == 0:  # no validation part: the final parameters are "best"
                best, progress.best_step, progress.best_epoch = (
                    state.params,
                    progress.step,
                    progress.epoch,
                )
            summary = self._finish(ds, state, best, progress, log, env, count_params(params))
        finally:
            log.close()
            if checkpointer is not None:
                checkpointer.close()
        return TrainResult(
            out_dir=self.out_dir,
            summary=summary,
            model=nnx.merge(self.graphdef, best, state.rest),
            best_params=best,
            final_params=state.params,
        )

    def _loop(self, ds, state, best, progress, schedule, log, checkpointer, session_start):
        config, t = self.config, self.config.train
        from tqdm import tqdm

        wall_before = progress.wall_time_s
        bar = tqdm(
            total=self.total_steps,
            initial=progress.step,
            desc=config.name,
            unit="step",
            disable=not self.verbose,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        evaluated: set[tuple[str, ...]] = set()  # the first evaluation of each assignment compiles
        compiled: set[tuple] = set()  # a new batch shape, or assignment of methods, compiles
        last_val = None
        try:
            while not self._done(progress):
                batch = self.plan.batch(ds.y_train.shape[0], progress.epoch, progress.position)
                arrays = batch_arrays(ds.X_train, ds.y_train, ds.lengths_train, batch)
                lr = float(schedule(progress.step))
                args = self.layout.batch(*arrays)
                variant = (arrays[0].shape, tuple(self._methods()))
                shared = self.compiler.busy()  # this step shares the machine with a compile
                started = time.perf_counter()
                state, out, ahead = self._train_step(variant, state, args)
                out = jax.device_get(out)
                step_time = time.perf_counter() - started
                first_step = variant not in compiled and not ahead
                compiled.add(variant)
                self._step_timings.add(step_time, compiled=first_step, shared=shared)
                progress.step += 1
                progress.position += 1
                count = float(out["count"])
                iterations = np.asarray(out["iterations_sum"]) / count
                record = {
                    "kind": "train",
                    "step": progress.step,
                    "epoch": progress.epoch,
                    "loss": float(out["loss"]),
                    "accuracy": float(out["correct"]) / count,
                    "lr": lr,
                    "grad_norm": float(out["grad_norm"]),
                    "step_time_s": step_time,
                    "includes_compile": first_step,
                    "during_background_compile": shared,
                    "iterations_mean": float(iterations.mean()),
                    "iterations_max": int(out["iterations_max"]),
                    "iterations_per_block": iterations.round(3).tolist(),
                    "not_converged": int(out["not_converged"]),
                    "fell_back": int(out["fell_back"]),
                    "methods": self._methods(),
                }
                self._emit(log, record)
                state = self._choose_methods(
                    state, record, out, arrays[0].shape, progress, log, compiled
                )
                if not (ds.y_val.shape[0] and not evaluated and self._first_eval_soon()):
                    self._compile_upcoming(state, args, arrays[0].shape, compiled, progress, log)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record['loss']:.3f}",
                    acc=f"{record['accuracy']:.2f}",
                    it=f"{record['iterations_mean']:.1f}",
                    m=method_letters(record["methods"]),
                    val=last_val if last_val is not None else "-",
                    refresh=False,
                )

                end_of_epoch = progress.position == self.steps_per_epoch
                if ds.y_val.shape[0] and self._eval_due(progress.step, end_of_epoch):
                    result = self._evaluate(ds, "val", state.params, state.rest)
                    best = self._update_best(progress, result, state.params, best)
                    result.pop("predictions")
                    last_val = f"{result['accuracy']:.3f}"
                    self._emit(
                        log,
                        {
                            "kind": "eval",
                            "split": "val",
                            "step": progress.step,
                            "epoch": progress.epoch,
                            **result,
                            "includes_compile": tuple(self._methods(settled=True)) not in evaluated,
                            "methods": self._methods(settled=True),
                            "best_accuracy": progress.best_val_accuracy,
                            "improved": progress.best_step == progress.step,
                        },
                    )
                    evaluated.add(tuple(self._methods(settled=True)))
                if end_of_epoch:
                    progress.epoch += 1
                    progress.position = 0
                progress.wall_time_s = wall_before + time.perf_counter() - session_start
                if self.selector is not None:
                    progress.selector = self.selector.state_dict()
                if checkpointer is not None and (
                    progress.step % config.checkpoint.every_steps == 0 or self._done(progress)
                ):
                    checkpointer.save(progress.step, state, best, progress.to_meta())
        finally:
            bar.close()
            self.compiler.close()
        if progress.stopped_early:
            self._say(
                f"  early stop at step {progress.step}: no better validation accuracy in "
                f"{t.patience} evaluations"
            )
        return state, best, progress

    # -- method: auto ------------------------------------------------------------------

    def _methods(self, settled: bool = False) -> list[str]:
        """The method each block's RNN runs now in training (``settled``: in evaluations)."""
        if self.selector is None:
            return [self.config.model.method] * self.blocks
        if not settled:
            return list(self.selector.methods)
        name = self.selector.parallel_name
        return [name if p else "sequential" for p in self.selector.settled]

    def _choose_methods(self, state, record, out, batch_shape, progress, log, compiled):
        """Feed the step to the selector and apply its decisions (``method: auto``); for a
        fixed parallel method, warn once when its solves start falling back."""
        if self.selector is None:
            if (
                not progress.warned_parallel
                and self.config.model.method != "sequential"
                and (record["fell_back"] or record["not_converged"])
            ):
                progress.warned_parallel = True
                message = (
                    f"at step {record['step']} the {self.config.model.method} solves of "
                    f"{record['not_converged']} sequence-blocks did not converge "
                    f"({record['fell_back']} fell back to lax.scan, which then runs as well): "
                    "the parallel method no longer pays for itself. model.method: auto "
                    "switches such blocks to sequential by measurement."
                )
                self._emit(log, {"kind": "warning", "step": record["step"], "message": message})
                self._say(f"  warning: {message}")
            return state
        # Steps of different lengths (buckets) are compared per time step.
        length = batch_shape[1] if len(batch_shape) > 1 else 1
        decisions = self.selector.observe(
            record["step"],
            record["step_time_s"] / length,
            record["iterations_per_block"],
            np.asarray(out["fell_back_per_block"]) / float(out["count"]),
            includes_compile=record["includes_compile"]
            or record["during_background_compile"]
            or self._upcoming_variant(batch_shape, compiled, waiting_only=True) is not None,
        )
        self._log_decisions(decisions, log)
        if decisions:  # a probe that is kept changes no flag but settles the assignment
            self._use_assignment(state)
        return state

    def _log_decisions(self, decisions, log) -> None:
        for decision in decisions:
            name = _name(self.selector, decision)
            self._emit(
                log,
                {**decision.to_dict(), "kind": "method", "decision": decision.kind, "method": name},
            )
            if decision.kind in ("kept", "fallback", "deferred"):
                verb = "stays on" if decision.kind == "deferred" else "now runs"
                self._say(
                    f"  step {decision.step}: block {decision.layer} {verb} {name}: "
                    f"{decision.reason}"
                )

    def _train_step(self, variant, state, args):
        """One training step: by the executable compiled ahead for this assignment and batch
        shape when there is one (``method: auto``), else by the jitted step. Returns
        ``(state, summaries, whether it ran ahead-compiled)``."""
        executable = self.compiler.get(variant)
        if executable is not None:
            try:
                return (*executable(state, *args), True)
            except (TypeError, ValueError):  # arguments it was not compiled for
                self.compiler.discard(variant)
        return (*self.train_step(state, *args), False)

    def _first_eval_soon(self) -> bool:
        """Whether the first evaluation comes within a re-check interval: compiling its
        program beside a background compilation took 8x longer (9.7 s against 1.2 s, LSTM
        16 x 2 on 2 CPU cores), so the background compilation waits for it."""
        every = self.config.train.eval_every or self.steps_per_epoch
        return self.selector is not None and min(every, self.total_steps) <= (
            self.selector.recheck_every
        )

    def _compile_upcoming(self, state, args, batch_shape, compiled, progress, log) -> None:
        """Start compiling the train step of the selector's next probe on the worker thread,
        unless it is compiled already or the run is too short for it to pay (then the
        selector defers the probe, once a plain step has been timed to judge by)."""
        variant = self._upcoming_variant(batch_shape, compiled)
        if variant is not None and not self.compiler.submitted(variant):
            estimate = self._step_timings.estimate()
            if estimate is None:
                return
            step_seconds, compile_seconds = estimate
            decisions = self.selector.defer_unaffordable(
                progress.step,
                remaining_seconds=step_seconds * (self.total_steps - progress.step),
                compile_seconds=compile_seconds,
            )
            if decisions:
                self._log_decisions(decisions, log)
                return
            _, steps = self._steps_for(state, self.selector.upcoming)
            self.compiler.submit(variant, steps.train_step, *abstract((state, *args)))

    def _upcoming_variant(self, batch_shape, compiled, waiting_only=False):
        """``(batch shape, methods)`` of the selector's next probe when its train step is
        not compiled yet (``waiting_only``: nor has its background compilation finished,
        successfully or not); else ``None``. While the probe waits for its program, steps
        are not timed for decisions, so that the probe never compiles in the loop."""
        upcoming = None if self.selector is None else self.selector.upcoming
        if upcoming is None:
            return None
        name = self.selector.parallel_name
        variant = (batch_shape, tuple(name if p else "sequential" for p in upcoming))
        if variant in compiled or (waiting_only and self.compiler.finished(variant)):
            return None
        return variant

    def _use_assignment(self, state: TrainState) -> None:
        """Switch the jitted steps to the selector's assignment of methods: another graph
        definition (the flags are static), the same parameter and state pytrees; each
        assignment compiles the first time it runs and is cached after. Evaluations use the
        settled assignment, not one that is only being timed (no compilation for it)."""
        self.graphdef, steps = self._steps_for(state, self.selector.parallel)
        self.train_step = steps.train_step
        self.eval_step = self._steps_for(state, self.selector.settled)[1].eval_step

    def _steps_for(self, state: TrainState, parallel: tuple[bool, ...]):
        model = nnx.merge(self.graphdef, state.params, state.rest)
        set_methods(model, parallel)
        graphdef = nnx.split(model, nnx.Param, ...)[0]
        train = self.config.train
        return graphdef, compiled_steps(
            graphdef,
            self.config.optim,
            self.total_steps,
            self.dtype,
            train.lyapunov,
            train.warm_start_eval,
        )

    def _update_best(self, progress: _Progress, result: dict, params: Any, best: Any) -> Any:
        acc, loss = result["accuracy"], result["loss"]
        improved = (
            progress.best_val_accuracy is None
            or acc > progress.best_val_accuracy
            or (acc == progress.best_val_accuracy and loss < progress.best_val_loss)
        )
        if improved:
            progress.best_val_accuracy, progress.best_val_loss = acc, loss
            progress.best_step, progress.best_epoch = progress.step, progress.epoch
            progress.evals_since_improvement = 0
            return params
        progress.evals_since_improvement += 1
        patience = self.config.train.patience
        if patience is not None and progress.evals_since_improvement >= patience:
            progress.stopped_early = True
        return best

    def _finish(self, ds, state, best, progress, log, env, num_params):
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
                log,
                {
                    "kind": "test",
                    "split": "test",
                    "step": progress.step,
                    "epoch": progress.epoch,
                    "best_step": progress.best_step,
                    **test,
                },
            )
        records = read_metrics(self.out_dir / "metrics.jsonl")
        train_records = [r for r in records if r.get("kind") == "train"]
        wall = progress.wall_time_s + (test["time_s"] if test else 0.0)
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
            "steps": progress.step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs_completed": progress.step / self.steps_per_epoch,
            "stopped_early": progress.stopped_early,
            "best": {
                "val_accuracy": progress.best_val_accuracy,
                "val_loss": progress.best_val_loss,
                "step": progress.best_step,
                "epoch": progress.best_epoch,
            },
            "test": test_summary,
            **self.layout.describe(),
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
                **_method_summary(records, self._methods()),
            },
            **env,
            "finished_at": datetime.now().isoformat(timespec="seconds"),
        }
        (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        title = (
            f"{config.name}: {config.model.cell} x{config.model.num_blocks} "
            f"(width {config.model.hidden_features}), {config.model.method}"
        )
        plot_curves(records, self.out_dir / "curves.png", title)
        if test_summary is not None:
            self._say(
                f"  best validation accuracy {progress.best_val_accuracy} (step "
                f"{progress.best_step}); test accuracy {test_summary['accuracy']:.4f} "
                f"({test_summary['correct']}/{test_summary['count']}); summary in "
                f"{self.out_dir / 'summary.json'}"
            )
        return summary
