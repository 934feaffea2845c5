"""Metrics as JSON lines, and the facts about the machine that a result needs.

``metrics.jsonl`` has one JSON object per line: ``{"kind": "train", ...}`` after every
step, ``{"kind": "eval", "split": "val", ...}`` after every evaluation and ``{"kind":
"test", ...}`` once at the end. Every line has ``step`` (training steps completed)
and ``epoch``. When a run resumes from the checkpoint of step ``s``, lines with
``step > s`` (written after that checkpoint by the killed process) are dropped, so
the file reads as if the run had never been interrupted.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MetricsLog", "environment", "read_metrics", "step_time_stats"]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line, from a kill, is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricsLog:
    """Appends records to ``metrics.jsonl``, flushing each line, and keeps them in
    :attr:`records` (the kept ones first).

    Args:
        path: the file.
        keep_until_step: on opening, keep only the existing records with ``step <=
            keep_until_step`` (``None``: start a new file) and drop test records.
        write: whether to write the file (``False``: the processes of a multi-process run
            other than process 0 only read it and keep the records in memory).
    """

    def __init__(self, path: str | Path, keep_until_step: int | None = None, *, write: bool = True):
        self.path = Path(path)
        kept = []
        if keep_until_step is not None:
            kept = [
                r
                for r in read_metrics(self.path)
                if r.get("kind") in ("train", "eval") and r.get("step", 0) <= keep_until_step
            ]
        self.records: list[dict[str, Any]] = [json.loads(_dumps(r)) for r in kept]
        self._file = None
        if write:
            tmp = self.path.with_suffix(".jsonl.tmp")
            with tmp.open("w") as f:
                for record in kept:
                    f.write(_dumps(record) + "\n")
            os.replace(tmp, self.path)
            self._file = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        line = _dumps(record)
        self.records.append(json.loads(line))
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(_jsonable(record), allow_nan=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def step_time_stats(records: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """Median / mean / p90 of the training step times, leaving out steps that compiled."""
    times = [
        r["step_time_s"]
        for r in records
        if r.get("kind") == "train" and not r.get("includes_compile") and "step_time_s" in r
    ]
    if not times:
        return {"median_s": None, "mean_s": None, "p90_s": None, "count": 0}
    arr = np.asarray(times)
    return {
        "median_s": float(np.median(arr)),
        "mean_s": float(arr.mean()),
        "p90_s": float(np.percentile(arr, 90)),
        "count": int(arr.size),
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Device and library versions, for summaries."""
    import jax

    device = jax.devices()[0]
    return {
        "device": {
            "platform": device.platform,
            "kind": getattr(device, "device_kind", str(device)),
            "count": jax.device_count(),
            "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(),
        },
        "versions": {
            "python": sys.version.split()[0],
            **{
                name: _version(name)
                for name in (
                    "rnnscan",
                    "jax",
                    "jaxlib",
                    "flax",
                    "optax",
                    "orbax-checkpoint",
                    "numpy",
                )
            },
        },
        "x64": bool(jax.config.jax_enable_x64),
    }


def finite_or_none(x: float) -> float | None:
    """``x`` as a float, or ``None`` if it is not finite (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None
