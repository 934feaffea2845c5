"""Command line: ``python -m rnnscan.train --config configs/train/eigenworms_gru.yaml [overrides]``.

Overrides, applied in order after the config file:

* ``--set KEY=VALUE`` (repeatable), e.g. ``--set optim.lr=3e-4``;
* ``--SECTION.KEY=VALUE`` or ``--SECTION.KEY VALUE``, e.g. ``--model.cell lstm``;
* shortcuts ``--method`` (model.method), ``--data-dir`` (data.data_dir),
  ``--out-dir`` (out_dir), ``--seed`` (train.seed).

``--resume RUN_DIR`` continues an interrupted run from its last checkpoint, with the
configuration saved in ``RUN_DIR/config.yaml`` (rerunning the original command with
``--out-dir RUN_DIR`` does the same). Values are parsed as YAML: ``null``, ``true``,
``3e-4``, ``[0.7, 0.15, 0.15]``.

``--plot RUN_DIR`` draws (or redraws) ``RUN_DIR/curves.png`` from ``RUN_DIR/metrics.jsonl``;
the figure needs matplotlib (``pip install "rnnscan[plot]"``). Without it a training run
still finishes and says so.

Several hosts: run the same command on every host with ``--coordinator HOST:PORT
--num-processes N --process-id I`` (``I`` = 0 .. N-1; host 0 runs the coordinator), or
``--distributed`` alone where ``jax.distributed.initialize()`` finds them itself (SLURM,
Cloud TPU, ...). The devices of every host then form one mesh (``train.devices``,
``train.sequence_devices``); the run directory must be shared by every host. Process 0
writes the run's files and prints; a process that does not join within ``--init-timeout``
seconds, or stops sending heartbeats for ``--peer-timeout`` seconds, or fails, ends every
process with one ``error:`` line (status 1; see ``docs/devices.md``).

Compiled programs are kept in JAX's persistent compilation cache (``~/.cache/rnnscan/jax``,
or ``--compilation-cache DIR``; ``--no-compilation-cache`` to compile afresh), so a second
run of the same configuration, or a resumed one, starts without recompiling.

User errors (an unknown or invalid config key, a missing config file or run directory,
data files that are absent, truncated or hold missing / infinite values) end with one
line on stderr, ``error: ...``, naming the file or key and the fix, and exit status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

import yaml

import rnnscan.train._hosts as _hosts
from rnnscan.data import ChecksumError, DataFormatError, DatasetNotFoundError

from ._config import ConfigError, apply_overrides, load_config, parse_override

#: Errors that come from what the user asked for or gave, not from a bug: reported in one
#: line (with --debug, as a traceback).
USER_ERRORS = (
    ConfigError,
    DataFormatError,
    DatasetNotFoundError,
    ChecksumError,
    ImportError,  # an optional extra is missing; the message says which to install
    yaml.YAMLError,
)

SHORTCUTS = {
    "method": "model.method",
    "data_dir": "data.data_dir",
    "out_dir": "out_dir",
    "seed": "train.seed",
}


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes as one ``error:`` line and exit status 2, like the others."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def one_line(err: BaseException) -> str:
    """An exception's message on one line (some messages list searched paths)."""
    text = " ".join(str(err).split())
    if isinstance(err, yaml.YAMLError):
        text = f"the YAML does not parse: {text}"
    return text or type(err).__name__


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m rnnscan.train",
        description="Train an rnnscan sequence classifier (RNNs evaluated in parallel over time).",
        epilog="Any config key can be overridden: --set optim.lr=3e-4 or --optim.lr=3e-4.",
    )
    parser.add_argument("--config", type=Path, help="YAML config file (default: built-in defaults)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="resume a run directory")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="RUN_DIR",
        help="draw RUN_DIR/curves.png from its metrics.jsonl (needs matplotlib) and exit",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable)",
    )
    parser.add_argument("--method", help="model.method: sequential | newton | quasi_newton | ...")
    parser.add_argument("--data-dir", help="data.data_dir")
    parser.add_argument("--out-dir", help="out_dir (the run directory)")
    parser.add_argument("--seed", type=int, help="train.seed")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of errors (for bug reports)"
    )
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument(
        "--compilation-cache",
        metavar="DIR",
        help="JAX's persistent compilation cache (default: ~/.cache/rnnscan/jax; 'off' for none)",
    )
    cache.add_argument(
        "--no-compilation-cache",
        action="store_const",
        dest="compilation_cache",
        const="off",
        help="compile every program afresh",
    )
    hosts = parser.add_argument_group("several hosts (jax.distributed.initialize)")
    hosts.add_argument("--distributed", action="store_true", help="initialise multi-host JAX")
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    hosts.add_argument("--num-processes", type=int, help="number of processes (hosts)")
    hosts.add_argument("--process-id", type=int, help="this process's index, 0 .. N-1")
    hosts.add_argument(
        "--init-timeout",
        type=float,
        default=_hosts.DEFAULT_INIT_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for every process to join (default %(default)g)",
    )
    hosts.add_argument(
        "--peer-timeout",
        type=float,
        default=_hosts.DEFAULT_PEER_TIMEOUT,
        metavar="SECONDS",
        help="stop when a process sends no heartbeat for this long (default %(default)g)",
    )
    return parser


def _is_runtime_error(err: BaseException) -> bool:
    """A failure of JAX's runtime (XLA, a collective), not of rnnscan's Python."""
    import jax

    runtime = getattr(jax.errors, "JaxRuntimeError", None)
    return runtime is not None and isinstance(err, runtime)


def _multi_process(args: argparse.Namespace) -> bool:
    given = (args.coordinator, args.num_processes, args.process_id)
    return args.distributed or any(value is not None for value in given)


def _initialize_hosts(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` when asked for, before JAX touches a device."""
    if not _multi_process(args):
        return
    _hosts.initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        init_timeout=args.init_timeout,
        peer_timeout=args.peer_timeout,
    )


def _curves_title(run_dir: Path) -> str:
    """The title the training loop gives ``curves.png``, from the run's ``config.yaml``."""
    try:
        config = load_config(run_dir / "config.yaml")
    except (ConfigError, FileNotFoundError):
        return run_dir.name
    model = config.model
    return (
        f"{config.name}: {model.cell} x{model.num_blocks} "
        f"(width {model.hidden_features}), {model.method}"
    )


def _plot_run(run_dir: Path) -> int:
    """``--plot RUN_DIR``: draw the run's training curves from its ``metrics.jsonl``."""
    from ._metrics import read_metrics
    from ._plot import INSTALL_HINT, _pyplot, plot_curves

    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        print(f"error: {metrics} not found (is {run_dir} a run directory?)", file=sys.stderr)
        return 2
    if _pyplot() is None:
        print(f"error: drawing curves needs matplotlib: {INSTALL_HINT}", file=sys.stderr)
        return 2
    path = plot_curves(read_metrics(metrics), run_dir / "curves.png", _curves_title(run_dir))
    print(f"curves: {path}")
    return 0


def _plot_hint(out_dir: Path) -> None:
    """Tell how to get the figure when matplotlib was missing and none was drawn."""
    from ._plot import INSTALL_HINT, _pyplot

    if _pyplot() is None:
        print(
            f"training curves not drawn (matplotlib is not installed): {INSTALL_HINT}, "
            f"then python -m rnnscan.train --plot {out_dir}"
            + (" (one fold directory at a time)" if (out_dir / "fold0").is_dir() else "")
        )


def _dotted_overrides(parser: argparse.ArgumentParser, extra: list[str]) -> list[str]:
    """``--section.key=value`` / ``--section.key value`` tokens as ``key=value`` strings."""
    overrides = []
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            parser.error(f"unrecognized argument {token!r} (config keys look like --optim.lr=1e-3)")
        if "=" in token:
            overrides.append(token[2:])
            i += 1
        elif i + 1 < len(extra):
            overrides.append(f"{token[2:]}={extra[i + 1]}")
            i += 2
        else:
            parser.error(f"{token} needs a value")
    return overrides


def _load(args: argparse.Namespace, overrides: list[str], parser: argparse.ArgumentParser):
    """The configuration of a new run (``--config``) or of the run to resume."""
    for text in overrides:
        parse_override(text)  # report malformed overrides before loading anything
    if args.resume is not None:
        if args.config is not None:
            parser.error("give either --config or --resume, not both")
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            what = "does not exist" if not args.resume.exists() else "holds no config.yaml"
            raise ConfigError(
                f"--resume {args.resume}: the directory {what}; give a run directory made by "
                "python -m rnnscan.train (it holds config.yaml and checkpoints/)."
            )
        config = load_config(saved, overrides)
        return apply_overrides(config, {"out_dir": str(args.resume)})
    if args.config is not None and not args.config.is_file():
        raise ConfigError(
            f"--config {args.config}: no such file; give a YAML config such as "
            "configs/train/uea.yaml, or leave --config out for the defaults."
        )
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    try:
        code = _main(parser, args, extra)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        _hosts.fail(one_line(err), 2)  # several processes: tell the others, exit
        return 2
    except BaseException as err:
        several = _hosts.process_count_if_initialized() > 1
        if several and not args.debug and _is_runtime_error(err):
            _hosts.runtime_failure(err)  # another process is most likely gone: one line
        if several and not isinstance(err, SystemExit):
            import traceback

            traceback.print_exc()
            _hosts.fail(f"{type(err).__name__}: {one_line(err)}", 1)
        raise
    if code:
        _hosts.fail(f"exit status {code}", code)
    _hosts.finish()
    return code


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> int:
    if args.plot is not None:
        if args.config is not None or args.resume is not None or extra or args.overrides:
            parser.error("--plot RUN_DIR takes no other arguments")
        return _plot_run(args.plot)
    overrides = list(args.overrides) + _dotted_overrides(parser, extra)
    for name, key in SHORTCUTS.items():
        value = getattr(args, name)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = _load(args, overrides, parser)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0

    _initialize_hosts(args)
    from ._checkpoint import resolve_out_dir
    from ._compilation_cache import use_compilation_cache

    use_compilation_cache(args.compilation_cache)
    from ._loop import cross_validate, train

    cv = config.data.cv_folds > 2 and config.data.cv_fold is None
    out_dir = resolve_out_dir(config, suffix="-cv" if cv else "")
    config = apply_overrides(config, {"out_dir": str(out_dir)})
    try:
        if cv:
            result = cross_validate(config)
            if not _hosts.is_primary():
                return 0
            s = result.summary
            print(
                f"{s['folds']}-fold CV test accuracy: {s['test_accuracy_pooled']:.4f} "
                f"({s['test_correct']}/{s['test_count']} series; per fold "
                f"{', '.join(f'{a:.3f}' for a in s['test_accuracy_per_fold'])}); "
                f"{out_dir / 'cv_summary.json'}"
            )
        else:
            result = train(config)
            if not _hosts.is_primary():
                return 0
            test = result.summary["test"]
            best = result.summary["best"]
            print(f"run directory: {result.out_dir}")
            print(f"best validation accuracy: {best['val_accuracy']} (step {best['step']})")
            if test is not None:
                print(
                    f"test accuracy (best checkpoint): {test['accuracy']:.4f} "
                    f"({test['correct']}/{test['count']})"
                )
    except KeyboardInterrupt:
        print(
            f"\ninterrupted; resume with: python -m rnnscan.train --resume {out_dir}",
            file=sys.stderr,
        )
        _hosts.fail("interrupted", 130)
        return 130
    _plot_hint(out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
