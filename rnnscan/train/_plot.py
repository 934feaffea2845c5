"""Training curves from ``metrics.jsonl``: loss, accuracy, solver iterations, step time."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_curves"]

#: What to do when matplotlib (the ``plot`` extra) is missing.
INSTALL_HINT = 'pip install "rnnscan[plot]"'


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or ``None`` when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if values.size == 0 or window <= 1:
        return values
    window = min(window, values.size)
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def _series(records: list[dict[str, Any]], kind: str, key: str, split: str | None = None):
    rows = [
        r
        for r in records
        if r.get("kind") == kind
        and (split is None or r.get("split") == split)
        and r.get(key) is not None
    ]
    return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows], dtype=float)


def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Draw a 2 x 2 figure of the run's curves into ``path`` (PNG) and return the path.

    Panels: cross-entropy (training steps, smoothed, and validation), accuracy
    (training batches, smoothed, and validation), solver iterations per training
    step (mean and max over blocks and series), and training step time (steps that
    compiled are left out).

    Without matplotlib (``pip install "rnnscan[plot]"``) nothing is drawn: a note goes to
    stderr and ``None`` is returned, so that a training run still finishes. The figure can
    be drawn later from the run directory: ``python -m rnnscan.train --plot RUN_DIR``.
    """
    plt = _pyplot()
    if plt is None:
        print(
            f"note: {Path(path).name} not drawn: matplotlib is not installed ({INSTALL_HINT})",
            file=sys.stderr,
        )
        return None

    steps, loss = _series(records, "train", "loss")
    window = max(1, steps.size // 50)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (ax_loss, ax_acc), (ax_it, ax_time) = axes

    ax_loss.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8)
    ax_loss.plot(steps, _moving_average(loss, window), color="tab:blue", label="train")
    val_steps, val_loss = _series(records, "eval", "loss", "val")
    if val_steps.size:
        ax_loss.plot(val_steps, val_loss, "o-", color="tab:orange", ms=3, label="validation")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss")
    ax_loss.legend()

    _, acc = _series(records, "train", "accuracy")
    if acc.size:
        smooth = _moving_average(acc, max(window, 5))
        ax_acc.plot(steps[: smooth.size], smooth, color="tab:blue", label="train (smoothed)")
    val_steps, val_acc = _series(records, "eval", "accuracy", "val")
    if val_steps.size:
        ax_acc.plot(val_steps, val_acc, "o-", color="tab:orange", ms=3, label="validation")
        improved = [r["step"] for r in records if r.get("kind") == "eval" and r.get("improved")]
        if improved:  # the step of the best parameters (ties broken by validation loss)
            ax_acc.axvline(improved[-1], color="tab:orange", ls=":", lw=1, label="best")
    test = [r for r in records if r.get("kind") == "test" and r.get("accuracy") is not None]
    if test:
        ax_acc.axhline(test[-1]["accuracy"], color="tab:green", ls="--", lw=1, label="test (best)")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(-0.02, 1.02))
    ax_acc.legend(loc="lower right")

    it_steps, it_mean = _series(records, "train", "iterations_mean")
    _, it_max = _series(records, "train", "iterations_max")
    if it_steps.size:
        ax_it.plot(it_steps, it_mean, color="tab:purple", label="mean")
        ax_it.plot(it_steps, it_max, color="tab:purple", alpha=0.4, lw=0.8, label="max")
        ax_it.legend()
    ax_it.set(xlabel="step", ylabel="iterations", title="solver iterations per RNN (training)")

    rows = [r for r in records if r.get("kind") == "train" and not r.get("includes_compile")]
    if rows:
        ax_time.plot([r["step"] for r in rows], [r["step_time_s"] for r in rows], ".", ms=2)
        median = float(np.median([r["step_time_s"] for r in rows]))
        ax_time.axhline(median, color="k", ls="--", lw=1, label=f"median {median:.3g} s")
        ax_time.legend()
    ax_time.set(xlabel="step", ylabel="seconds", title="training step time")

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
