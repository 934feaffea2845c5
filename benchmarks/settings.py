"""Settings of the suite's stand-alone scripts (``python -m benchmarks.linear_recurrence``) and
of the research experiments (``experiments/``): a config of defaults, a YAML file over them
and ``--set key=value`` overrides."""

from __future__ import annotations

import argparse
import copy
from typing import Any

import yaml


def load_config(defaults: dict[str, Any], path: str | None, overrides: list[str]) -> dict[str, Any]:
    """``defaults``, updated by the YAML file at ``path`` (one level of dicts merged; an unknown
    top-level key is an error) and then by ``key.sub=value`` overrides (YAML values)."""
    config = copy.deepcopy(defaults)
    if path is not None:
        with open(path) as file:
            loaded = yaml.safe_load(file) or {}
        unknown = set(loaded) - set(defaults) - {"description"}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(defaults)}")
        for key, value in loaded.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key].update(value)
            else:
                config[key] = value
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"--set expects key=value, got {override!r}")
        key, text = override.split("=", 1)
        *parents, last = key.split(".")
        target = config
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = yaml.safe_load(text)
    return config


def parse_args(prog: str, description: str | None, argv=None) -> argparse.Namespace:
    """``--config FILE``, ``--out PREFIX`` and repeated ``--set key=value``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=None)
    parser.add_argument("--out", default=None, help="output prefix (PREFIX.json, PREFIX.md)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)
