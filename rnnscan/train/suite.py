"""Archive runner: one configuration over many UEA/UCR problems, beside 1-NN baselines.

``python -m rnnscan.train.suite --data-dir DIR [--config configs/train/uea.yaml]
[--problems A B ...] [--out-dir OUT] [--set KEY=VALUE ...]``

Every problem found in ``DIR`` (``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts``, directly
or in ``<Name>/``), or the ones named with ``--problems``, is trained with the same
configuration (``data.source=uea:<Name>``, a run directory ``OUT/<Name>``), and the
test accuracy of its best checkpoint is written into one table beside aeon's 1-NN
Euclidean and 1-NN DTW classifiers on the same split: the 1-NN classifiers are fitted
on the training and validation parts (for ``data.split=official``: the official
training file) and scored on the test part, on the series as read (not
standardised; missing values carried forward). The table goes to ``OUT/results.md``
and ``OUT/results.json``, a bar chart to ``OUT/results.png`` (needs matplotlib).

Columns: series (train / val / test), length range, channels, classes, test accuracy,
wall time of the run (including compilation), mean solver (Newton) iterations per
block and training step, and the 1-NN accuracies with their times. A problem whose
data cannot be used (say, missing values with ``data.missing=error``) gets a row with
the one-line reason and the runner goes on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rnnscan.data import LabelledSeries, fill_missing, read_uea
from rnnscan.data._paths import find_problem_files

from .__main__ import USER_ERRORS, _Parser, one_line
from ._config import ConfigError, TrainConfig, load_config, parse_override

__all__ = ["BASELINES", "find_problems", "main", "nearest_neighbour_accuracy", "run_suite"]

#: aeon distances of the 1-NN baselines, and their column names.
BASELINES = {"euclidean": "1-NN ED", "dtw": "1-NN DTW"}


def find_problems(root: Path) -> list[str]:
    """Names of the problems with both ``.ts`` files in ``root`` or ``root/<Name>``."""
    names = {p.name[: -len("_TRAIN.ts")] for p in root.glob("*_TRAIN.ts")}
    names |= {p.parent.name for p in root.glob("*/*_TRAIN.ts") if p.name.startswith(p.parent.name)}
    return sorted(n for n in names if find_problem_files(n, root) is not None)


def _aeon_input(series: LabelledSeries, index: np.ndarray) -> Any:
    """aeon's layout: ``(N, C, T)`` for equal lengths, else a list of ``(C, T_i)``."""
    X = series.X[index].transpose(0, 2, 1)
    if series.lengths is None:
        return np.ascontiguousarray(X, dtype=np.float64)
    return [np.asarray(x[:, :n], np.float64) for x, n in zip(X, series.lengths[index])]


def nearest_neighbour_accuracy(
    series: LabelledSeries, train: np.ndarray, test: np.ndarray, distance: str
) -> tuple[float, float]:
    """Test accuracy and seconds of aeon's 1-NN classifier with ``distance``, fitted on
    the series ``train`` and scored on ``test`` (missing values carried forward)."""
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    if np.isnan(series.X).any():
        filled = fill_missing(series.X, series.lengths, "ffill")
        series = LabelledSeries(
            series.name, filled, series.y, series.class_names, lengths=series.lengths
        )
    started = time.perf_counter()
    classifier = KNeighborsTimeSeriesClassifier(distance=distance, n_neighbors=1)
    with warnings.catch_warnings():
        # numba's "unsafe cast from uint64 to int64" inside aeon's distances: harmless.
        warnings.filterwarnings("ignore", message=".*unsafe cast")
        classifier.fit(_aeon_input(series, train), series.y[train])
        predictions = classifier.predict(_aeon_input(series, test))
    accuracy = float(np.mean(predictions == series.y[test]))
    return accuracy, time.perf_counter() - started


def _run_problem(
    name: str, base: TrainConfig, root: Path, out_dir: Path, baselines: list[str]
) -> dict[str, Any]:
    from ._data import load_dataset
    from ._loop import train

    config = base.replace(
        {
            "name": name,
            "data.source": f"uea:{name}",
            "data.data_dir": str(root),
            "out_dir": str(out_dir / name),
        }
    )
    result = train(config)
    summary = result.summary
    data = summary["data"]
    row: dict[str, Any] = {
        "problem": name,
        "sizes": data["sizes"],
        "length_range": data["length_range"],
        "channels": data["channels"],
        "classes": len(data["classes"]),
        "accuracy": summary["test"]["accuracy"] if summary["test"] else None,
        "wall_s": summary["time"]["wall_s"],
        "iterations_mean": summary["solver"]["iterations_mean"],
        "steps": summary["steps"],
        "run_dir": str(result.out_dir),
    }
    if baselines:
        split = load_dataset(config.data).split  # the prepared arrays are cached: cheap
        series = read_uea(name, root, missing="ffill")
        fit_on = np.concatenate([split.train, split.val])
        for distance in baselines:
            accuracy, seconds = nearest_neighbour_accuracy(series, fit_on, split.test, distance)
            row[f"{distance}_accuracy"], row[f"{distance}_s"] = accuracy, seconds
    return row


def _format(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], baselines: list[str], title: str) -> str:
    """The results as a markdown table."""
    head = ["problem", "train/val/test", "T", "C", "K", "accuracy", "wall s", "iterations"]
    for distance in baselines:
        head += [BASELINES[distance], f"{BASELINES[distance]} s"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if "error" in row:
            cells = [row["problem"], f"error: {row['error']}"] + [""] * (len(head) - 2)
        else:
            low, high = row["length_range"]
            cells = [
                row["problem"],
                "/".join(str(row["sizes"][p]) for p in ("train", "val", "test")),
                f"{low}-{high}" if low != high else str(high),
                str(row["channels"]),
                str(row["classes"]),
                _format(row["accuracy"]),
                _format(row["wall_s"], 1),
                _format(row["iterations_mean"], 2),
            ]
            for distance in baselines:
                cells += [
                    _format(row.get(f"{distance}_accuracy")),
                    _format(row.get(f"{distance}_s"), 1),
                ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(rows: list[dict[str, Any]], baselines: list[str], path: Path, title: str):
    """Bar chart of the test accuracies per problem; ``None`` without matplotlib."""
    from ._plot import _pyplot

    plt = _pyplot()
    rows = [r for r in rows if "error" not in r]
    if plt is None or not rows:
        return None
    columns = [("accuracy", "rnnscan")] + [(f"{d}_accuracy", BASELINES[d]) for d in baselines]
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 2), 3.5))
    x = np.arange(len(rows))
    for k, (key, label) in enumerate(columns):
        values = [r.get(key) or 0.0 for r in rows]
        ax.bar(x + (k - (len(columns) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, [r["problem"] for r in rows], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_suite(
    base: TrainConfig,
    root: Path,
    problems: list[str],
    out_dir: Path,
    baselines: list[str] = ("euclidean", "dtw"),
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``base`` on every problem and write ``results.md`` / ``.json`` / ``.png``."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    baselines = list(baselines)
    title = (
        f"{base.name}: {base.model.cell} x{base.model.num_blocks} (width "
        f"{base.model.hidden_features}), {base.model.method}, split {base.data.split}"
    )
    rows = []
    bar = tqdm(problems, desc="problems", unit="problem", disable=not progress, file=sys.stderr)
    for name in bar:
        bar.set_postfix(problem=name)
        try:
            rows.append(_run_problem(name, base, root, out_dir, baselines))
        except USER_ERRORS as err:
            rows.append({"problem": name, "error": one_line(err)})
        (out_dir / "results.json").write_text(json.dumps(rows, indent=2))  # after each problem
        (out_dir / "results.md").write_text(markdown_table(rows, baselines, title))
    plot_results(rows, baselines, out_dir / "results.png", title)
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m rnnscan.train.suite",
        description="Train one configuration on many UEA/UCR problems; compare with 1-NN.",
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="directory of .ts files")
    parser.add_argument("--config", type=Path, help="YAML config (e.g. configs/train/uea.yaml)")
    parser.add_argument("--problems", nargs="+", metavar="NAME", help="default: all found")
    parser.add_argument("--out-dir", type=Path, help="default: runs/suite-<timestamp>")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--baselines",
        nargs="*",
        default=list(BASELINES),
        choices=list(BASELINES),
        help="1-NN distances to compare with (none: --baselines)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if not args.data_dir.is_dir():
            raise ConfigError(f"--data-dir {args.data_dir}: no such directory.")
        if args.config is not None and not args.config.is_file():
            raise ConfigError(f"--config {args.config}: no such file.")
        for text in args.overrides:
            parse_override(text)
        base = load_config(args.config, args.overrides)
        problems = args.problems or find_problems(args.data_dir)
        if not problems:
            raise ConfigError(
                f"--data-dir {args.data_dir}: no <Name>_TRAIN.ts / <Name>_TEST.ts pairs found."
            )
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = args.out_dir or Path("runs") / f"suite-{stamp}"
        rows = run_suite(
            base, args.data_dir, problems, out_dir, args.baselines, progress=base.train.progress
        )
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    print((out_dir / "results.md").read_text(), end="")
    print(f"results: {out_dir / 'results.md'}, {out_dir / 'results.json'}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
