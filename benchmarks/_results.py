"""Results files: one JSON object per line, one line per case run (appended).

Reading back takes the latest line of each case key, so re-running a case supersedes it,
and computes speed-ups against the sequential line of the same problem and mode.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# Every record has all of these keys (``None`` where a field does not apply, e.g. the
# timing of a skipped case).
RECORD_FIELDS = (
    "schema_version",
    "run_id",
    "key",
    "reference_key",
    "config_name",
    "case",
    "status",
    "reason",
    "method_resolved",
    "problem",
    "timing",
    "solver",
    "accuracy",
    "memory",
    "speedup_vs_sequential",
    "fair",
    "provenance",
)

STATUSES = ("ok", "oom", "skipped", "error")
# Statuses that --resume treats as done; errors are retried.
DONE_STATUSES = ("ok", "oom", "skipped")


def read_records(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """All records of one or more JSON-lines files, in file order (bad lines are warned about
    and skipped, e.g. a line cut short by a killed run)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: not a JSON line, skipped", stacklevel=2)
    return records


def done_keys(records: Iterable[dict[str, Any]]) -> set[str]:
    """Keys of the cases that ``--resume`` skips."""
    return {r["key"] for r in records if r.get("status") in DONE_STATUSES}


def latest_by_key(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each case key."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[record["key"]] = record
    return latest


def median_seconds(record: dict[str, Any] | None) -> float | None:
    if not record or record.get("status") != "ok" or not record.get("timing"):
        return None
    return record["timing"].get("median_s")


def with_speedups(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest record of each case, each with ``speedup`` = sequential median / median for
    the same problem and mode (``None`` when either is missing)."""
    latest = latest_by_key(records)
    rows = []
    for record in latest.values():
        row = dict(record)
        mine = median_seconds(record)
        reference = median_seconds(latest.get(record.get("reference_key")))
        row["speedup"] = reference / mine if mine and reference else None
        rows.append(row)
    return rows


def write_record(handle, record: dict[str, Any]) -> None:
    """Append one record as a JSON line and flush, so a killed run loses at most one case."""
    missing = [field for field in RECORD_FIELDS if field not in record]
    if missing:
        raise ValueError(f"record {record.get('key')} lacks fields {missing}")
    handle.write(json.dumps(record) + "\n")
    handle.flush()
