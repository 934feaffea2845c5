"""Training curves from ``metrics.jsonl``: loss, accuracy, solver iterations, step time."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["method_letters", "plot_curves"]

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


def method_letters(methods: list[str] | None) -> str:
    """``["newton", "sequential"]`` -> ``"NS"``."""
    return "".join(m[0].upper() for m in methods or [])


def plot_curves(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Draw a 2 x 2 figure of the run's curves into ``path`` (PNG) and return the path.

    Panels: cross-entropy (training steps, smoothed, and validation), accuracy
    (training batches, smoothed, and validation), solver iterations per training
    step (mean and max over blocks and series), and training step time (steps that
    compiled are left out), coloured by the method of each block (``"NS"``: block 0
    Newton, block 1 sequential) with a grey line where ``method: auto`` changed one. With
    ``train.lyapunov`` the iterations panel also shows each block's largest Lyapunov exponent
    at every validation (right axis).

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

    it_steps, it_max = _series(records, "train", "iterations_max")
    per_block = [
        (r["step"], r["iterations_per_block"], r.get("methods"))
        for r in records
        if r.get("kind") == "train" and r.get("iterations_per_block")
    ]
    if per_block:
        # Per block, gaps where it ran the sequential scan (no iterations to show).
        for block in range(len(per_block[0][1])):
            values = [
                np.nan if methods and methods[block] == "sequential" else iterations[block]
                for _, iterations, methods in per_block
            ]
            ax_it.plot([s for s, _, _ in per_block], values, lw=1, label=f"block {block}")
        ax_it.plot(it_steps, it_max, color="k", alpha=0.3, lw=0.8, label="max")
        ax_it.legend(fontsize="small", ncol=2)
    ax_it.set(
        xlabel="step",
        ylabel="iterations (mean over series)",
        title="parallel solver iterations per block (gaps: sequential)",
    )
    exponents = [
        (r["step"], r["lyapunov_per_block"])
        for r in records
        if r.get("kind") == "eval" and r.get("split") == "val" and r.get("lyapunov_per_block")
    ]
    if exponents:  # train.lyapunov: the estimate that explains the iteration counts
        ax_lle = ax_it.twinx()
        for block in range(len(exponents[0][1])):
            ax_lle.plot(
                [s for s, _ in exponents],
                [values[block] for _, values in exponents],
                "x--",
                color=f"C{block}",
                lw=0.8,
                ms=4,
            )
        ax_lle.set_ylabel("largest Lyapunov exponent (x--, validation)")

    rows = [r for r in records if r.get("kind") == "train" and not r.get("includes_compile")]
    if rows:
        # One colour per assignment of methods to blocks ("NS": block 0 Newton, block 1
        # sequential), so a run with method: auto shows what each block ran when.
        by_methods: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_methods.setdefault(method_letters(r.get("methods")), []).append(r)
        for letters, group in by_methods.items():
            label = f"methods {letters}" if letters and len(by_methods) > 1 else None
            steps_, times = [r["step"] for r in group], [r["step_time_s"] for r in group]
            ax_time.plot(steps_, times, ".", ms=2 if len(rows) > 200 else 4, label=label)
        for change in (r for r in records if r.get("decision") in ("kept", "fallback")):
            ax_time.axvline(change["step"], color="grey", lw=0.6, alpha=0.6)
        median = float(np.median([r["step_time_s"] for r in rows]))
        ax_time.axhline(median, color="k", ls="--", lw=1, label=f"median {median:.3g} s")
        ax_time.legend(fontsize="small")
    ax_time.set(xlabel="step", ylabel="seconds", title="training step time")

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
