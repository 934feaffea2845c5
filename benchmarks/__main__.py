"""Command line: run a sweep, render figures, print a report.

python -m benchmarks --config configs/benchmarks/quick.yaml [--out PATH] [--set key=value ...]
                     [--only axis=v1,v2 ...] [--resume] [--max-minutes M] [--dry-run]
python -m benchmarks plot RESULTS.jsonl [MORE.jsonl ...] --out-dir DIR
python -m benchmarks report RESULTS.jsonl [MORE.jsonl ...] [--out REPORT.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMANDS = ("run", "plot", "report")


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Time rnnscan's parallel methods against jax.lax.scan over a sweep of cells, "
            "sizes, lengths, batches and dtypes (forward pass and training step). "
            "Other commands: 'plot RESULTS.jsonl --out-dir DIR', 'report RESULTS.jsonl'."
        ),
    )
    parser.add_argument(
        "--config", required=True, help="YAML file, e.g. configs/benchmarks/quick.yaml"
    )
    parser.add_argument(
        "--out",
        help="results file to append to (default: results/<config>-<device>-<date>.jsonl)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config entry (YAML value); a grid axis such as length=[8,16] "
        "applies to every grid",
    )
    parser.add_argument(
        "--only",
        dest="filters",
        action="append",
        default=[],
        metavar="AXIS=V1,V2",
        help="run only matching cases; axes: cell, hidden, length, batch, dtype, method, mode",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip cases already in the output file (status ok, oom or skipped)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="start no new case after this many minutes; rerun with --resume to continue",
    )
    parser.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help="JAX's persistent compilation cache (default: ~/.cache/rnnscan/jax; 'off': "
        "compile every program afresh, for compile times that are compiles)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the selected cases and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", action="store_true", help="no line per case")
    return parser


def plot_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks plot",
        description="Speed-up heatmaps (T x hidden size per method), time and memory curves.",
    )
    parser.add_argument("results", nargs="+", help="results JSON-lines file(s)")
    parser.add_argument("--out-dir", required=True, help="folder for the PNG files")
    return parser


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks report",
        description="A markdown table of medians and speed-ups (and the DEER comparison).",
    )
    parser.add_argument("results", nargs="+", help="results JSON-lines file(s)")
    parser.add_argument("--out", help="write the markdown here as well as to stdout")
    return parser


def run_command(argv: list[str]) -> int:
    args = run_parser().parse_args(argv)
    from ._config import ConfigError, expand_cases, load_config, parse_filter, select

    try:
        config = load_config(args.config, args.overrides)
        filters = [parse_filter(text) for text in args.filters]
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        cases = select(expand_cases(config), filters)
        for case in cases:
            print(case.key)
        print(f"{len(cases)} cases", file=sys.stderr)
        return 0

    from rnnscan.train import use_compilation_cache

    from ._run import run_sweep

    cache = use_compilation_cache(args.compilation_cache)
    summary = run_sweep(
        config,
        compilation_cache=None if cache is None else str(cache),
        config_path=args.config,
        overrides=args.overrides,
        filters=filters,
        out=args.out,
        resume=args.resume,
        max_minutes=args.max_minutes,
        progress=not args.no_progress,
        verbose=not args.quiet,
    )
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["counts"].items()))
    print(
        f"{summary['out']}: {counts or 'nothing run'} ({summary['already_done']} already done)",
        file=sys.stderr,
    )
    if summary["left"]:
        print(
            f"Stopped at --max-minutes with {summary['left']} cases left: "
            "run the same command with --resume to continue.",
            file=sys.stderr,
        )
        return 3
    return 0


def plot_command(argv: list[str]) -> int:
    args = plot_parser().parse_args(argv)
    from ._plot import plot_all
    from ._results import read_records

    written = plot_all(read_records(args.results), Path(args.out_dir))
    for path in written:
        print(path)
    return 0 if written else 1


def report_command(argv: list[str]) -> int:
    args = report_parser().parse_args(argv)
    from ._report import report
    from ._results import read_records

    text = report(read_records(args.results))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else "run"
    return {"run": run_command, "plot": plot_command, "report": report_command}[command](argv)


if __name__ == "__main__":
    sys.exit(main())
