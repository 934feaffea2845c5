"""Is ``method: auto`` ever slower than the better fixed method? The same training run with
``sequential``, a parallel method and ``auto``: wall time, step-time curves, accuracy.

``python -m experiments.auto_method --config configs/experiments/auto_cpu.yaml --out DIR
[--methods ...] [--max-steps N]``

The config is a :mod:`rnnscan.train` configuration plus a top-level ``methods:`` list (the
values of ``model.method`` to compare; default ``[sequential, newton, auto]``). Each run goes
to ``DIR/<method>``, with its own ``metrics.jsonl``, ``curves.png`` and ``summary.json``;
``DIR/auto-method.json`` (provenance, and per method: wall time, time in training steps,
compilation, accuracy, iterations, fallbacks, the final assignment and the changes auto made),
``DIR/auto-method.md`` (the table) and ``DIR/auto-method.png`` (step time and cumulative
time per method) summarise them. Runs are sequential in one process; every run starts with
an empty compilation cache so that each pays its own compilation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from . import harness

DEFAULT_METHODS = ("sequential", "newton", "auto")


def _run(config: dict[str, Any], method: str, out_dir: Path) -> dict[str, Any]:
    import jax

    from rnnscan.train import TrainConfig, read_metrics, train

    jax.clear_caches()
    config = {**config, "out_dir": str(out_dir / method), "name": f"{config['name']}-{method}"}
    config["model"] = {**config.get("model", {}), "method": method}
    result = train(TrainConfig.from_dict(config))
    records = read_metrics(out_dir / method / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "train"]
    compiling = sum(r["step_time_s"] for r in steps if r["includes_compile"])
    summary = result.summary
    return {
        "method": method,
        "wall_s": summary["time"]["wall_s"],
        "train_steps_s": summary["time"]["train_steps_s"],
        "compile_steps_s": compiling,
        "median_step_s": summary["time"]["step_time"].get("median_s"),
        "steps": summary["steps"],
        "test_accuracy": result.test_accuracy,
        "best_val_accuracy": result.best_val_accuracy,
        "solver": summary["solver"],
        "step_times": [r["step_time_s"] for r in steps],
        "iterations": [r["iterations_per_block"] for r in steps],
        "methods": [r["methods"] for r in steps],
    }


def _table(runs: list[dict[str, Any]]) -> str:
    fixed = [r for r in runs if r["method"] != "auto"]
    best = min(fixed, key=lambda r: r["wall_s"]) if fixed else None
    lines = [
        "| method | wall s | in steps s | compiling s | median step s | test acc | "
        "mean iterations | fallbacks | final methods | vs best fixed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        ratio = f"{r['wall_s'] / best['wall_s']:.2f}x {best['method']}" if best else "-"
        median = r["median_step_s"]
        lines.append(
            f"| {r['method']} | {r['wall_s']:.1f} | {r['train_steps_s']:.1f} | "
            f"{r['compile_steps_s']:.1f} | {median:.4f} | {r['test_accuracy']:.3f} | "
            f"{r['solver']['iterations_mean']:.2f} | {r['solver']['fell_back_total']} | "
            f"{' '.join(r['solver']['methods'])} | {ratio} |"
            if median is not None
            else f"| {r['method']} | {r['wall_s']:.1f} | - | - | - | - | - | - | - | {ratio} |"
        )
    return "\n".join(lines)


def _plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: no figure: matplotlib is not installed")
        return
    import numpy as np

    fig, (ax_step, ax_total) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        times = np.asarray(r["step_times"])
        steps = np.arange(1, times.size + 1)
        ax_step.plot(steps[1:], times[1:], ".", ms=2, label=r["method"])
        ax_total.plot(steps, np.cumsum(times), label=f"{r['method']} ({r['wall_s']:.0f} s wall)")
    for r in runs:
        if r["method"] == "auto":
            for change in r["solver"]["method_changes"]:
                ax_step.axvline(change["step"], color="grey", lw=0.6, alpha=0.6)
    ax_step.set(xlabel="step", ylabel="seconds", yscale="log", title="training step time")
    ax_total.set(xlabel="step", ylabel="seconds", title="cumulative time in training steps")
    for ax in (ax_step, ax_total):
        ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.auto_method", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the output directory")
    parser.add_argument("--methods", nargs="*", help="override the config's methods list")
    parser.add_argument("--max-steps", type=int, help="override train.max_steps")
    args = parser.parse_args(argv)

    config = yaml.safe_load(args.config.read_text())
    methods = args.methods or config.pop("methods", list(DEFAULT_METHODS))
    config.pop("methods", None)
    config.setdefault("name", args.config.stem)
    config.setdefault("checkpoint", {})["enabled"] = False
    if args.max_steps is not None:
        config.setdefault("train", {})["max_steps"] = args.max_steps
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for method in methods:
        print(f"== {method}", flush=True)
        runs.append(_run(config, method, args.out))
    provenance = harness.provenance(config, str(args.config))
    (args.out / "auto-method.json").write_text(
        json.dumps({"provenance": provenance, "runs": runs}, indent=1)
    )
    title = harness.training_run_title(config, provenance)
    table = _table(runs)
    (args.out / "auto-method.md").write_text(f"{title}\n\n{table}\n")
    _plot(runs, args.out / "auto-method.png", title)
    print(table)


if __name__ == "__main__":
    main()
