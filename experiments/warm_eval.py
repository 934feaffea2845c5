"""What ``train.warm_start_eval`` saves: the same training run with cold and warm-started
validation passes; per evaluation the mean Newton iterations, the time and the loss.

``python -m experiments.warm_eval --config configs/experiments/warm_eval_cpu.yaml --out DIR``

The config is a :mod:`rnnscan.train` configuration (``train.warm_start_eval`` is set by the
script). ``DIR/cold`` and ``DIR/warm`` hold the runs; ``DIR/warm-eval.json`` (provenance and
every evaluation record) and ``DIR/warm-eval.md`` (the table) summarise them. The first
evaluation has nothing to start from, and the warm one's second evaluation compiles the
warm-started step: both are shown, and left out of the medians.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import harness

KEYS = ("step", "iterations_mean", "iterations_max", "time_s", "loss", "accuracy")


def _run(config: dict[str, Any], warm: bool, out_dir: Path) -> list[dict[str, Any]]:
    import jax

    from rnnscan.train import TrainConfig, train

    jax.clear_caches()
    name = "warm" if warm else "cold"
    config = {**config, "out_dir": str(out_dir / name), "name": f"{config['name']}-{name}"}
    config["train"] = {**config.get("train", {}), "warm_start_eval": warm}
    records = train(TrainConfig.from_dict(config)).records
    return [
        {key: r[key] for key in KEYS}
        for r in records
        if r["kind"] == "eval" and r.get("split") == "val"
    ]


def _table(cold: list[dict[str, Any]], warm: list[dict[str, Any]]) -> str:
    rows = [
        "| step | iterations cold | iterations warm | time cold (s) | time warm (s) "
        "| loss cold | loss warm |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in zip(cold, warm):
        rows.append(
            f"| {a['step']} | {a['iterations_mean']:.2f} | {b['iterations_mean']:.2f} "
            f"| {a['time_s']:.2f} | {b['time_s']:.2f} | {a['loss']:.6f} | {b['loss']:.6f} |"
        )
    settled = slice(2, None)  # past the first evaluation and the warm step's compilation
    median = lambda runs, key: float(np.median([r[key] for r in runs[settled]]))
    rows.append(
        f"\nMedians from the third evaluation on: iterations {median(cold, 'iterations_mean'):.2f}"
        f" cold, {median(warm, 'iterations_mean'):.2f} warm; time "
        f"{median(cold, 'time_s'):.2f} s cold, {median(warm, 'time_s'):.2f} s warm; largest "
        "relative loss difference "
        f"{max(abs(a['loss'] - b['loss']) / abs(a['loss']) for a, b in zip(cold, warm)):.1e}."
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.warm_eval", description=__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the output directory")
    args = parser.parse_args(argv)

    config = yaml.safe_load(args.config.read_text())
    config.setdefault("name", args.config.stem)
    config.setdefault("checkpoint", {})["enabled"] = False
    args.out.mkdir(parents=True, exist_ok=True)
    cold, warm = (_run(config, warm, args.out) for warm in (False, True))
    provenance = harness.provenance(config, str(args.config))
    (args.out / "warm-eval.json").write_text(
        json.dumps({"provenance": provenance, "cold": cold, "warm": warm}, indent=1)
    )
    title = harness.training_run_title(config, provenance)
    table = _table(cold, warm)
    (args.out / "warm-eval.md").write_text(f"{title}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
