"""Command line of the memory curricula: ``python -m rnnscan.train.curriculum``.

``python -m rnnscan.train.curriculum [--config configs/train/parity_curriculum.yaml]
[--set curriculum=multi] [--set task=dms] [--out RESULT.json]``

Trains a leaky RNN with trained time constants on N-parity or N-DMS with the single- or
multi-head curriculum (:func:`rnnscan.train.train_curriculum`, after Khajehabdollahi et
al., arXiv:2309.12927), prints one line per learned N (steps, mean τ, mean network timescale
τ_net) and the final network's accuracy on every learned N, and writes everything but the
model to ``--out`` as JSON. Config keys are the fields of
:class:`rnnscan.train.CurriculumConfig`; a bad key or value ends with one ``error:`` line and
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ._config import ConfigError, parse_override

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rnnscan.train.curriculum",
        description="Single- / multi-head curricula of N-parity or N-DMS on a leaky RNN "
        "with trained time constants (Khajehabdollahi et al., arXiv:2309.12927).",
    )
    parser.add_argument("--config", type=Path, help="YAML of CurriculumConfig keys")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key (repeatable), e.g. --set curriculum=multi",
    )
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    return parser


def load_curriculum_config(path: Path | None, overrides: list[str]):
    """The :class:`CurriculumConfig` of a YAML file (or the defaults) and overrides."""
    from ._curriculum import CurriculumConfig

    values = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"--config {path}: expected a mapping of keys")
    for text in overrides:
        key, value = parse_override(text)
        values[key] = value
    return CurriculumConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_curriculum_config(args.config, args.overrides)
    except (ConfigError, yaml.YAMLError, TypeError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    from ._curriculum import train_curriculum

    result = train_curriculum(config)
    for stage in result.stages:
        print(
            f"N={stage['n']:3d}  step {stage['step']:6d}  ({stage['steps']:5d} on this N)  "
            f"mean tau {stage['tau_mean']:.2f}  mean tau_net {stage['tau_net_mean']:.2f}"
        )
    print(
        f"largest N learned: {result.largest_n}"
        + (f" ({result.gave_up})" if result.gave_up else "")
    )
    print(
        "final accuracy per learned N: "
        + ", ".join(f"{n}: {a:.3f}" for n, a in result.retained.items())
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result.to_json(), indent=1))
        print(f"result: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
