"""Figures from results files (matplotlib, Agg backend, PNG).

Per (cell, batch, dtype):

- ``speedup-<cell>-B<batch>-<dtype>.png``: heatmaps of the speed-up over ``jax.lax.scan``,
  sequence length T (columns) × hidden size n (rows), one panel per parallel method, forward
  pass (top row) and training step (bottom row). Log colour scale centred at 1×: blue is
  faster than the sequential scan, red slower, grey not run. Entries: the speed-up, or
  OOM / skip / err; ``†`` marks a solve that fell back to the sequential scan.
- ``time-<cell>-B<batch>-<dtype>.png``: median time per call against T, one panel per
  hidden size and mode, one line per method (sequential in black).
- ``memory-<cell>-B<batch>-<dtype>.png``: XLA's memory analysis of each compiled program
  (arguments + outputs + temporaries) against T, same layout.

And ``deer-comparison.png`` when the results hold DEER's setting (GRU, n = 1, batch 16).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from ._report import DEER_PUBLISHED, DEER_SETTING, METHOD_ORDER, cell_label  # noqa: E402
from ._results import with_speedups  # noqa: E402

MODES = ("forward", "train")
MODE_LABELS = {"forward": "forward pass", "train": "training step"}
METHOD_STYLES = {
    "sequential": dict(ls="-", marker="o"),
    "newton": dict(ls="-", marker="o"),
    "quasi_newton": dict(ls="--", marker="s"),
    "fixed_point": dict(ls=":", marker="^"),
    "elk": dict(ls=":", marker="P"),
    "quasi_elk": dict(ls=":", marker="X"),
    "newton_pallas": dict(ls="-.", marker="D"),
    "quasi_newton_pallas": dict(ls="-.", marker="v"),
}
METHOD_COLOURS = {
    "sequential": "black",
    "newton": "tab:blue",
    "quasi_newton": "tab:orange",
    "fixed_point": "tab:green",
    "elk": "tab:brown",
    "quasi_elk": "tab:pink",
    "newton_pallas": "tab:purple",
    "quasi_newton_pallas": "tab:red",
}
STATUS_LABELS = {"oom": "OOM", "skipped": "skip", "error": "err"}


def _length_label(T: int) -> str:
    if T >= 1_000_000 and T % 1_000_000 == 0:
        return f"{T // 1_000_000}M"
    if T >= 1_000 and T % 1_000 == 0:
        return f"{T // 1_000}k"
    return str(T)


def _speedup_label(speedup: float) -> str:
    if speedup >= 100:
        return f"{speedup:.0f}×"
    if speedup >= 10:
        return f"{speedup:.1f}×"
    if speedup >= 0.1:
        return f"{speedup:.2f}×"
    return f"{speedup:.2g}×"


def _group(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        c = row["case"]
        groups[(cell_label(c), c["batch"], c["dtype"])].append(row)
    return groups


def _subtitle(rows: list[dict[str, Any]]) -> str:
    provenance = rows[0].get("provenance") or {}
    device = provenance.get("device", {})
    versions = provenance.get("versions", {})
    return f"{device.get('device_kind')} ({device.get('platform')}), jax {versions.get('jax')}"


def plot_speedup_heatmaps(rows: list[dict[str, Any]], title: str, path: Path) -> Path | None:
    """One panel per (mode, parallel method): speed-up over T × n."""
    methods = [m for m in METHOD_ORDER[1:] if any(r["case"]["method"] == m for r in rows)]
    modes = [m for m in MODES if any(r["case"]["mode"] == m for r in rows)]
    if not methods or not modes:
        return None
    lengths = sorted({r["case"]["length"] for r in rows})
    hiddens = sorted({r["case"]["hidden"] for r in rows})
    by_key = {
        (r["case"]["mode"], r["case"]["method"], r["case"]["hidden"], r["case"]["length"]): r
        for r in rows
    }

    speedups = [r["speedup"] for r in rows if r["status"] == "ok" and r.get("speedup")]
    limit = max([1.0] + [abs(math.log10(s)) for s in speedups])
    norm = Normalize(vmin=-limit, vmax=limit)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="0.85")

    panel_width = max(2.4, 0.7 * len(lengths) + 0.6)
    panel_height = max(1.6, 0.42 * len(hiddens) + 0.8)
    fig, axes = plt.subplots(
        len(modes),
        len(methods),
        figsize=(max(panel_width * len(methods) + 1.2, 4.8), panel_height * len(modes) + 1.1),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for i, mode in enumerate(modes):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            values = np.full((len(hiddens), len(lengths)), np.nan)
            labels = [["" for _ in lengths] for _ in hiddens]
            for a, n in enumerate(hiddens):
                for b, T in enumerate(lengths):
                    row = by_key.get((mode, method, n, T))
                    if row is None:
                        continue
                    if row["status"] != "ok":
                        labels[a][b] = STATUS_LABELS.get(row["status"], row["status"])
                    elif row.get("speedup"):
                        values[a, b] = math.log10(row["speedup"])
                        labels[a][b] = _speedup_label(row["speedup"])
                        if row["solver"]["fell_back"]:
                            labels[a][b] += "†"
            image = ax.imshow(
                np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", origin="lower"
            )
            for a in range(len(hiddens)):
                for b in range(len(lengths)):
                    strong = not math.isnan(values[a, b]) and abs(values[a, b]) > 0.6 * limit
                    ax.text(
                        b,
                        a,
                        labels[a][b],
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if strong else "black",
                    )
            ax.set_xticks(range(len(lengths)), [_length_label(T) for T in lengths])
            ax.set_yticks(range(len(hiddens)), [str(n) for n in hiddens])
            ax.set_title(f"{method}: {MODE_LABELS[mode]}", fontsize=9)
            if i == len(modes) - 1:
                ax.set_xlabel("sequence length T")
            if j == 0:
                ax.set_ylabel("hidden size n")
    colorbar = fig.colorbar(image, ax=axes, shrink=0.9)
    ticks = [t for t in range(-math.ceil(limit), math.ceil(limit) + 1) if abs(t) <= limit]
    colorbar.set_ticks(ticks, labels=[f"{10.0**t:g}×" for t in ticks])
    colorbar.set_label("speed-up over jax.lax.scan (log scale)")
    fig.suptitle(f"{title}\n{_subtitle(rows)}", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves(
    rows: list[dict[str, Any]], title: str, path: Path, *, value, ylabel: str, extra=None
) -> Path | None:
    """One panel per (mode, hidden size): ``value(row)`` against T, one line per method;
    ``extra(row)``, if given, as unconnected crosses (the device's measured peak)."""
    modes = [m for m in MODES if any(r["case"]["mode"] == m for r in rows)]
    hiddens = sorted({r["case"]["hidden"] for r in rows})
    points: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    crosses: dict[tuple, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        c = row["case"]
        v = value(row)
        if v:
            points[(c["mode"], c["hidden"], c["method"])].append((c["length"], v))
        x = extra(row) if extra else None
        if x:
            crosses[(c["mode"], c["hidden"], c["method"])].append((c["length"], x))
    if not points:
        return None
    fig, axes = plt.subplots(
        len(modes),
        len(hiddens),
        figsize=(3.0 * len(hiddens) + 1.6, 2.6 * len(modes) + 0.8),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    for i, mode in enumerate(modes):
        for j, n in enumerate(hiddens):
            ax = axes[i][j]
            for method in METHOD_ORDER:
                line = sorted(points.get((mode, n, method), []))
                colour = METHOD_COLOURS.get(method, "tab:gray")
                if line:
                    xs, ys = zip(*line)
                    ax.plot(
                        xs,
                        ys,
                        ms=3,
                        color=colour,
                        label=method,
                        **METHOD_STYLES.get(method, {"marker": "."}),
                    )
                marks = crosses.get((mode, n, method))
                if marks:
                    xs, ys = zip(*marks)
                    ax.plot(xs, ys, "x", ms=6, color=colour, label=f"{method}, device peak")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"n={n}, {MODE_LABELS[mode]}", fontsize=10)
            if i == len(modes) - 1:
                ax.set_xlabel("sequence length T")
            if j == 0:
                ax.set_ylabel(ylabel)
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
    fig.suptitle(f"{title}\n{_subtitle(rows)}", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _median(row: dict[str, Any]) -> float | None:
    return row["timing"]["median_s"] if row["status"] == "ok" else None


def _xla_bytes(row: dict[str, Any]) -> float | None:
    analysis = (row.get("memory") or {}).get("xla")
    return analysis["total_bytes"] if analysis and row["status"] == "ok" else None


def _device_peak(row: dict[str, Any]) -> float | None:
    """The allocator's peak, where the backend reports one and this case set it."""
    memory = row.get("memory") or {}
    if row["status"] == "ok" and memory.get("device_peak_set_by_case"):
        return memory.get("device_peak_bytes")
    return None


def plot_deer_comparison(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Measured Newton speed-ups in DEER's setting against the published ones."""
    measured: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        c = row["case"]
        if all(c[k] == v for k, v in DEER_SETTING.items()) and c["method"] == "newton":
            if row["status"] == "ok" and row.get("speedup"):
                measured[c["mode"]].append((c["length"], row["speedup"]))
    if not measured:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    colours = {"forward": "tab:blue", "train": "tab:red"}
    for mode in MODES:
        published = sorted(DEER_PUBLISHED[mode].items())
        ax.plot(
            *zip(*published),
            ls="--",
            marker="s",
            color=colours[mode],
            alpha=0.6,
            label=f"DEER paper (V100), {MODE_LABELS[mode]}",
        )
        if measured.get(mode):
            ax.plot(
                *zip(*sorted(measured[mode])),
                marker="o",
                color=colours[mode],
                label=f"rnnscan Newton, {MODE_LABELS[mode]}",
            )
    ax.axhline(1.0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("speed-up over sequential scan")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"GRU, n=1, batch 16, float32\n{_subtitle(rows)}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write every figure for ``records`` into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = with_speedups(records)
    written = []
    for (cell, batch, dtype), group in sorted(_group(rows).items()):
        stem = f"{cell}-B{batch}-{dtype}".replace(" (", "-").replace(" devices)", "dev")
        title = f"{cell}, batch {batch}, {dtype}"
        written.append(
            plot_speedup_heatmaps(
                group, f"Speed-up over jax.lax.scan\n{title}", out_dir / f"speedup-{stem}.png"
            )
        )
        written.append(
            _curves(
                group,
                f"Median time per call: {title}",
                out_dir / f"time-{stem}.png",
                value=_median,
                ylabel="seconds",
            )
        )
        written.append(
            _curves(
                group,
                f"Memory (XLA analysis: arguments + outputs + temporaries): {title}",
                out_dir / f"memory-{stem}.png",
                value=_xla_bytes,
                ylabel="bytes",
                extra=_device_peak,
            )
        )
    written.append(plot_deer_comparison(rows, out_dir / "deer-comparison.png"))
    return [path for path in written if path is not None]
