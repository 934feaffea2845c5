"""Time to the first training step, with an empty and then a warm compilation cache.

``python -m benchmarks.first_step --config configs/train/worm_sample_small.yaml [--runs 2]
[--out PREFIX]``

Launches ``python -m rnnscan.train --config CONFIG --set train.max_steps=2`` ``--runs``
times against one fresh cache directory (the first run fills it, the others read it: XLA's
compiled programs and the traced steps) and reports, per run, the seconds from launching the
process until its first training record is in ``metrics.jsonl`` (imports, data, tracing,
compiling or loading, and the step itself); the seconds until it *reached* its first step,
that less the step's own computing (taken as the second step's ``step_time_s``); and the
whole command; with ``--out``, also ``PREFIX.jsonl`` (provenance, then one record per run).
Everything else lives in a temporary directory, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def first_step(config: str, cache: Path, out: Path) -> dict:
    """One training run of two steps: the seconds until its first step was written, and
    until it started (less the second step's time)."""
    command = [sys.executable, "-m", "rnnscan.train", "--config", config]
    command += ["--set", "train.max_steps=2", "--compilation-cache", str(cache)]
    command += ["--out-dir", str(out)]
    metrics = out / "metrics.jsonl"
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    written = None
    while process.poll() is None:
        if written is None and metrics.exists() and '"kind": "train"' in metrics.read_text():
            written = time.perf_counter() - start
        time.sleep(0.05)
    total = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"error: the training run failed:\n{process.stderr.read().decode()}")
    steps = [
        json.loads(line) for line in metrics.read_text().splitlines() if '"kind": "train"' in line
    ]
    one_step = steps[1]["step_time_s"]
    return {
        "first_step_written_s": written,
        "first_step_reached_s": written - one_step,
        "step_time_s": one_step,
        "total_s": total,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_step", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", help="write PREFIX.jsonl: provenance, then one line per run")
    args = parser.parse_args(argv)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        reached = []
        for run in range(1, args.runs + 1):
            result = first_step(args.config, cache, Path(tmp) / f"run{run}")
            reached.append(result["first_step_reached_s"])
            records.append({"run": run, "cache": "empty" if run == 1 else "warm", **result})
            state = "empty cache" if run == 1 else "warm cache"
            print(
                f"run {run} ({state}): first step reached after "
                f"{result['first_step_reached_s']:.2f} s, written after "
                f"{result['first_step_written_s']:.2f} s (a step computes in "
                f"{result['step_time_s']:.2f} s); whole command {result['total_s']:.1f} s"
                + (f"; {reached[0] / reached[-1]:.1f}x sooner than run 1" if run > 1 else ""),
                flush=True,
            )
    if args.out:
        from . import provenance

        meta = provenance.collect({"runs": args.runs}, args.config, [])
        lines = [{"provenance": meta}, *records]
        Path(args.out + ".jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


if __name__ == "__main__":
    main()
