"""Evaluating parameters on a whole part of the data set, and early stopping on the
validation accuracy (the best parameters are those of the highest accuracy, ties broken by
the lower loss)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from rnnscan.data import Dataset

from ._buckets import BatchPlan
from ._checkpoint import LoopState
from ._config import TrainConfig
from ._data import batch_arrays
from ._devices import DeviceLayout

__all__ = ["Evaluator", "update_best"]


class Evaluator:
    """Loss, accuracy and solver statistics of parameters on a part of ``ds``, batch by
    batch in the plan's evaluation order. With ``train.warm_start_eval``, each validation
    batch starts its solves from the carries of its last evaluation (kept on the device):
    the same up to the solver tolerance, in fewer iterations."""

    def __init__(self, config: TrainConfig, plan: BatchPlan, layout: DeviceLayout):
        self.config = config
        self.plan = plan
        self.layout = layout
        self.blocks = config.model.num_blocks
        self._guesses: dict[tuple[int, ...], Any] = {}

    def __call__(
        self, eval_step: Callable, ds: Dataset, part: str, params: Any, rest: Any
    ) -> dict[str, Any] | None:
        """The summary of ``part`` (``None`` when it is empty), with ``predictions``."""
        X, y = ds.part(part)
        n = y.shape[0]
        if n == 0:
            return None
        size = min(self.config.train.eval_batch_size, n)
        lengths = getattr(ds, f"lengths_{part}")
        start_time = time.perf_counter()
        totals: dict[str, Any] = {}
        predictions = np.zeros(n, np.int64)
        warm = self.config.train.warm_start_eval and part == "val"
        for eval_batch in self.plan.eval_batches(lengths, n, size):
            real = int(eval_batch.weights.sum())
            arrays = batch_arrays(X, y, lengths, eval_batch)
            key = tuple(eval_batch.indices.tolist())
            guesses = self._guesses.get(key) if warm else None
            out, pred, *carries = eval_step(
                params, rest, *self.layout.batch(*arrays), guesses=guesses
            )
            if warm:
                self._guesses[key] = carries[0]
            out = jax.device_get(out)
            predictions[eval_batch.indices[:real]] = self.layout.fetch(pred)[:real]
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


def update_best(loop: LoopState, result: dict, params: Any, best: Any, patience: int | None) -> Any:
    """The best parameters after a validation ``result`` of ``params``; records the best
    accuracy and loss in ``loop`` and stops the run early after ``patience`` evaluations
    without improvement."""
    acc, loss = result["accuracy"], result["loss"]
    improved = (
        loop.best_val_accuracy is None
        or acc > loop.best_val_accuracy
        or (acc == loop.best_val_accuracy and loss < loop.best_val_loss)
    )
    if improved:
        loop.best_val_accuracy, loop.best_val_loss = acc, loss
        loop.best_step, loop.best_epoch = loop.step, loop.epoch
        loop.evals_since_improvement = 0
        return params
    loop.evals_since_improvement += 1
    if patience is not None and loop.evals_since_improvement >= patience:
        loop.stopped_early = True
    return best
