"""Markdown report of a results file: medians and speed-ups per method, where the parallel
methods lose, and the comparison with the published DEER speed-ups."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from ._config import METHODS
from ._results import with_speedups

METHOD_ORDER = METHODS  # the order of the columns: the config's list
MODE_TITLES = {
    "forward": "Forward pass",
    "train": "Training step (value_and_grad w.r.t. parameters)",
}

# Lim et al., "Parallelizing non-linear sequential models over the sequence length"
# (ICLR 2024): DEER vs sequential speed-ups of a GRU with hidden size 1, batch 16, on a V100.
DEER_SETTING = {"cell": "gru", "hidden": 1, "batch": 16, "dtype": "float32"}
DEER_PUBLISHED = {
    "forward": {1_000: 18, 10_000: 138, 100_000: 1122, 300_000: 2029},
    "train": {1_000: 41, 10_000: 289, 100_000: 816, 300_000: 800},
}
DEER_SOURCE = "Lim et al., ICLR 2024 (V100, GRU, hidden size 1, batch 16)"

STATUS_MARKS = {"oom": "OOM", "skipped": "skipped", "error": "error"}


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def format_speedup(speedup: float | None) -> str:
    if speedup is None:
        return "–"
    if speedup >= 100:
        return f"{speedup:.0f}×"
    if speedup >= 10:
        return f"{speedup:.1f}×"
    return f"{speedup:.2f}×"


def format_bytes(size: float | None) -> str:
    if size is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size:.0f} B"


def cell_text(row: dict[str, Any] | None) -> str:
    """A table entry: median and speed-up, or why there is none (``†``: fell back)."""
    if row is None:
        return ""
    if row["status"] != "ok":
        return STATUS_MARKS.get(row["status"], row["status"])
    text = format_seconds(row["timing"]["median_s"])
    if row["case"]["method"] != "sequential":
        text += f" ({format_speedup(row['speedup'])}"
        text += f", {row['solver']['iterations_max']} it)"
        if row["solver"]["fell_back"]:
            text += " †"
    return text


def provenance_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per distinct (device, versions, commit) among the records."""
    seen: dict[tuple, tuple[str, set[str]]] = {}
    for row in rows:
        p = row.get("provenance") or {}
        device, versions, git = p.get("device", {}), p.get("versions", {}), p.get("git", {})
        commit = (git.get("commit") or "unknown")[:10] + (" (dirty)" if git.get("dirty") else "")
        key = (
            f"{device.get('device_kind')} ×{device.get('device_count')} ({device.get('platform')})",
            f"jax {versions.get('jax')}, jaxlib {versions.get('jaxlib')}, "
            f"flax {versions.get('flax')}, rnnscan {versions.get('rnnscan')}, "
            f"python {versions.get('python')}",
            f"commit {commit}",
            f"{p.get('system', {}).get('cpu_count')} CPU cores",
        )
        dates = seen.setdefault(key, (row.get("config_name"), set()))[1]
        dates.add((p.get("date_utc") or "")[:10])
    lines = []
    for (device, versions, commit, cores), (config, dates) in seen.items():
        lines.append(
            f"- **{device}**, {cores}; {versions}; {commit}; config `{config}`; "
            f"{', '.join(sorted(dates))}"
        )
    return lines


def speedup_tables(rows: list[dict[str, Any]]) -> list[str]:
    """Per mode: one row per problem, one column per method."""
    lines: list[str] = []
    methods = [m for m in METHOD_ORDER if any(r["case"]["method"] == m for r in rows)]
    for mode, title in MODE_TITLES.items():
        mine = [r for r in rows if r["case"]["mode"] == mode]
        if not mine:
            continue
        table: dict[tuple, dict[str, dict]] = defaultdict(dict)
        for row in mine:
            c = row["case"]
            problem = (cell_label(c), c["hidden"], c["length"], c["batch"], c["dtype"])
            table[problem][c["method"]] = row
        lines += [f"### {title}", ""]
        lines.append("| cell | n | T | batch | dtype | " + " | ".join(methods) + " |")
        lines.append("|---|---:|---:|---:|---|" + "---:|" * len(methods))
        for problem in sorted(table):
            cell, n, T, batch, dtype = problem
            entries = [cell_text(table[problem].get(m)) for m in methods]
            lines.append(
                f"| {cell} | {n} | {T:,} | {batch} | {dtype} | " + " | ".join(entries) + " |"
            )
        lines.append("")
    return lines


def compile_tables(rows: list[dict[str, Any]]) -> list[str]:
    """Per mode: seconds to compile each case's program (``jit(...).lower().compile()``)."""
    lines: list[str] = []
    timed = [r for r in rows if (r.get("timing") or {}).get("compile_s") is not None]
    methods = [m for m in METHOD_ORDER if any(r["case"]["method"] == m for r in timed)]
    cached = any(r.get("provenance", {}).get("compilation_cache") for r in timed)
    for mode, title in MODE_TITLES.items():
        table: dict[tuple, dict[str, float]] = defaultdict(dict)
        for row in timed:
            c = row["case"]
            if c["mode"] == mode:
                problem = (cell_label(c), c["hidden"], c["length"], c["batch"], c["dtype"])
                table[problem][c["method"]] = row["timing"]["compile_s"]
        if not table:
            continue
        note = " (a run with the persistent cache: a repeated program is a load)" if cached else ""
        lines += [f"### Compile seconds, {title.lower()}{note}", ""]
        lines.append("| cell | n | T | batch | dtype | " + " | ".join(methods) + " |")
        lines.append("|---|---:|---:|---:|---|" + "---:|" * len(methods))
        for problem in sorted(table):
            cell, n, T, batch, dtype = problem
            entries = [f"{table[problem][m]:.2f}" if m in table[problem] else "–" for m in methods]
            lines.append(
                f"| {cell} | {n} | {T:,} | {batch} | {dtype} | " + " | ".join(entries) + " |"
            )
        lines.append("")
    return lines


def losses_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per method and mode: how often it beats the sequential scan, best and worst."""
    lines = ["### Where the parallel methods win and lose", ""]
    lines.append("| method | mode | faster / measured | best | worst | fell back |")
    lines.append("|---|---|---:|---|---|---:|")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        c = row["case"]
        if c["method"] != "sequential" and row["status"] == "ok" and row["speedup"] is not None:
            groups[(c["method"], c["mode"])].append(row)
    for (method, mode), group in sorted(
        groups.items(), key=lambda kv: (METHOD_ORDER.index(kv[0][0]), kv[0][1])
    ):
        best = max(group, key=lambda r: r["speedup"])
        worst = min(group, key=lambda r: r["speedup"])
        wins = sum(r["speedup"] > 1 for r in group)
        fell_back = sum(r["solver"]["fell_back"] for r in group)
        best_text = f"{format_speedup(best['speedup'])} at {problem_text(best)}"
        worst_text = f"{format_speedup(worst['speedup'])} at {problem_text(worst)}"
        lines.append(
            f"| {method} | {mode} | {wins} / {len(group)} | {best_text} | {worst_text} "
            f"| {fell_back} |"
        )
    lines.append("")
    return lines


def cell_label(case: dict[str, Any]) -> str:
    """The cell's name, with the device count when the time axis was split."""
    devices = case.get("devices", 1)
    return case["cell"] if devices == 1 else f"{case['cell']} ({devices} devices)"


def problem_text(row: dict[str, Any]) -> str:
    c = row["case"]
    return f"{cell_label(c)} n={c['hidden']} T={c['length']:,} B={c['batch']}"


def deer_comparison(rows: list[dict[str, Any]]) -> list[str]:
    """Measured Newton speed-ups in DEER's setting beside the published ones."""
    matching = {}
    for row in rows:
        c = row["case"]
        if all(c[k] == v for k, v in DEER_SETTING.items()) and c["method"] in (
            "sequential",
            "newton",
        ):
            matching[(c["method"], c["mode"], c["length"])] = row
    if not any(method == "newton" for method, _, _ in matching):
        return []
    lines = [
        "### Comparison with the published DEER speed-ups",
        "",
        f"Published: {DEER_SOURCE}. Measured: rnnscan Newton (DEER) against `jax.lax.scan`, "
        "GRU hidden size 1, batch 16, float32, on the device above: Newton's median "
        "(speed-up, iterations), and the sequential median.",
        "",
        "| T | DEER forward | measured forward | sequential | "
        "DEER forward+gradient | measured training step | sequential |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lengths = sorted({T for _, _, T in matching} | set(DEER_PUBLISHED["forward"]))
    for T in lengths:
        entries = []
        for mode in ("forward", "train"):
            published = DEER_PUBLISHED[mode].get(T)
            newton = matching.get(("newton", mode, T))
            sequential = matching.get(("sequential", mode, T))
            entries += [
                f"{published}×" if published else "–",
                cell_text(newton) if newton else "not run",
                cell_text(sequential) if sequential else "not run",
            ]
        lines.append(f"| {T:,} | " + " | ".join(entries) + " |")
    lines.append("")
    return lines


def report(records: list[dict[str, Any]]) -> str:
    """The markdown report of a list of records (the latest record of each case counts)."""
    rows = with_speedups(records)
    if not rows:
        return "No results."
    lines = ["## Benchmark results", ""]
    lines += provenance_lines(rows)
    lines += [
        "",
        "Entries: median wall time of one call (jit-compiled, after warm-up, "
        "`block_until_ready`), then the speed-up over `jax.lax.scan` (sequential median / "
        "method median, same cell, sizes, batch, dtype and mode) and the Newton iterations "
        "(max over the batch). † = the parallel solve did not converge and fell back to the "
        "sequential scan (not a fair parallel timing). OOM / skipped (memory budget) / error "
        "are recorded as such.",
        "",
    ]
    lines += speedup_tables(rows)
    lines += compile_tables(rows)
    lines += losses_summary(rows)
    lines += deer_comparison(rows)
    return "\n".join(lines).rstrip() + "\n"
