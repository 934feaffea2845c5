"""Benchmark configurations: YAML files in ``configs/benchmarks/``, command-line overrides,
and the list of cases a configuration expands to.

A configuration holds run settings (repeats, budgets, ...) and a list of ``grids``. Each grid
is a Cartesian product over the axes in :data:`GRID_AXES`; the cases of all grids are
concatenated in order (duplicates dropped), so the first grid runs first. Example::

    name: quick
    repeats: 3
    grids:
      - cells: [gru, diag_gru]
        hidden: [4, 32]
        length: [1k, 4k]          # ints, or strings with a k / M suffix
        batch: [1]
        dtype: [float32]
        methods: [sequential, newton, quasi_newton]
        modes: [forward, train]

A grid may also have ``exclude``: a list of partial cases (e.g. ``{method: quasi_newton,
hidden: 256}``); a case matching every entry of one of them is left out, and ``devices``
(default ``[1]``): over how many local devices the time axis of every sequence is split
(``rnnscan.sharded_solve``), so that the same configuration runs unchanged on a machine with
several accelerators; cases asking for more devices than the machine has are recorded as
``skipped``.

Overrides (``--set key=value``, the value parsed as YAML) use dotted keys; a grid axis name
without a prefix (``--set length=[8,16]``) replaces that axis in every grid.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import yaml

import rnnscan

from ._cells import CELL_NAMES

GRID_AXES = ("cells", "hidden", "length", "batch", "dtype", "methods", "modes", "devices")
# Grid axes a grid may leave out, with their default values.
OPTIONAL_AXES = {"devices": [1]}
SIZE_AXES = ("hidden", "length", "batch", "devices")
# The library's method names (rnnscan.METHOD_NAMES, from the method classes), then
# "<method>_pallas": the method with linear_recurrence="pallas" (diagonal and block-diagonal
# Jacobians).
PALLAS_METHODS = ("newton", "quasi_newton")
METHODS = (*rnnscan.METHOD_NAMES, *(f"{name}_pallas" for name in PALLAS_METHODS))
MODES = ("forward", "train")
DTYPES = ("float32", "float64", "bfloat16", "float16")

DEFAULTS: dict[str, Any] = {
    "name": None,
    "description": "",
    "seed": 0,
    # Calls before timing; the first call's output is checked against the sequential one.
    "warmup": 1,
    # Timed calls per case: `repeats`, fewer (not below `min_repeats`) when one call is so
    # slow that `repeats` of them would exceed `case_time_budget_s`.
    "repeats": 5,
    "min_repeats": 1,
    "case_time_budget_s": 10.0,
    # Cases whose estimated or XLA-reported memory exceeds this are skipped. "auto": 90% of
    # the device's allocator limit where the backend reports one, else half the host RAM.
    "memory_budget_gb": "auto",
    # Input features per step: "same" (= hidden size, as in DEER's benchmark) or an int.
    "in_features": "same",
    # Extra constructor arguments per cell, e.g. {cprnn: {rank: 8}}.
    "cell_options": {},
    "grids": [],
}

# Singular names accepted by --only, mapped to the grid axes.
FILTER_AXES = {
    "cell": "cells",
    "hidden": "hidden",
    "length": "length",
    "batch": "batch",
    "dtype": "dtype",
    "method": "methods",
    "mode": "modes",
    "devices": "devices",
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark measurement: a method on a problem, forward pass or training step."""

    cell: str
    hidden: int
    length: int
    batch: int
    dtype: str
    method: str
    mode: str
    devices: int = 1

    @property
    def problem(self) -> tuple:
        """The problem the case runs on (shared by all methods and modes)."""
        return (self.cell, self.hidden, self.length, self.batch, self.dtype)

    @property
    def reference_key(self) -> str:
        """The key of the sequential case this case is compared with."""
        return dataclasses.replace(self, method="sequential").key

    @property
    def key(self) -> str:
        """A stable string identifying the case in results files (used by ``--resume``)."""
        key = (
            f"{self.cell}|n={self.hidden}|T={self.length}|B={self.batch}|{self.dtype}"
            f"|{self.method}|{self.mode}"
        )
        # One device keeps the keys of results files written before the devices axis.
        return key if self.devices == 1 else f"{key}|D={self.devices}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """An invalid configuration file or override."""


def parse_size(value: Any) -> int:
    """``1000``, ``"1k"``, ``"1M"``, ``"300k"`` -> int."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a size, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        multiplier = {"k": 1_000, "K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
        if multiplier != 1:
            text = text[:-1]
        try:
            return int(float(text) * multiplier)
        except ValueError:
            pass
    raise ConfigError(f"expected a size such as 1000, '10k' or '1M', got {value!r}")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a YAML configuration, apply ``key=value`` overrides, fill defaults and validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {path}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    config = copy.deepcopy(DEFAULTS)
    config.update(raw)
    if config["name"] is None:
        config["name"] = path.stem
    for override in overrides:
        apply_override(config, override)
    return validate(config)


def apply_override(config: dict[str, Any], override: str) -> None:
    """Apply one ``key=value`` override in place (dotted keys; grid axes apply to every grid)."""
    if "=" not in override:
        raise ConfigError(f"--set expects key=value, got {override!r}")
    key, text = override.split("=", 1)
    value = yaml.safe_load(text)
    parts = key.strip().split(".")
    if parts[0] in GRID_AXES and len(parts) == 1:
        if not config["grids"]:
            raise ConfigError(f"--set {key}: the configuration has no grids")
        for grid in config["grids"]:
            grid[parts[0]] = value
        return
    target: Any = config
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
    last = parts[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Check names and values; normalise sizes to ints and axes to lists. Returns ``config``."""
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown configuration keys: {sorted(unknown)}")
    for key in ("warmup", "repeats", "min_repeats"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ConfigError(f"{key} must be a positive int, got {config[key]!r}")
    if config["min_repeats"] > config["repeats"]:
        raise ConfigError("min_repeats must not exceed repeats")
    budget = config["memory_budget_gb"]
    if budget != "auto" and not (isinstance(budget, (int, float)) and budget > 0):
        raise ConfigError(f"memory_budget_gb must be 'auto' or a positive number, got {budget!r}")
    if config["in_features"] != "same":
        config["in_features"] = parse_size(config["in_features"])
    if not config["grids"]:
        raise ConfigError("the configuration needs at least one entry under 'grids'")
    allowed = {"cells": CELL_NAMES, "dtype": DTYPES, "methods": METHODS, "modes": MODES}
    for index, grid in enumerate(config["grids"]):
        for axis, default in OPTIONAL_AXES.items():
            grid.setdefault(axis, list(default))
        missing = set(GRID_AXES) - set(grid)
        extra = set(grid) - set(GRID_AXES) - {"exclude"}
        if missing or extra:
            raise ConfigError(
                f"grids[{index}]: needs the keys {list(GRID_AXES)} and optionally 'exclude' "
                f"(missing {sorted(missing)}, unknown {sorted(extra)})"
            )
        grid["exclude"] = [_partial_case(entry, index) for entry in grid.get("exclude") or []]
        for axis in GRID_AXES:
            values = _as_list(grid[axis])
            if axis in SIZE_AXES:
                values = [parse_size(v) for v in values]
                if any(v < 1 for v in values):
                    raise ConfigError(f"grids[{index}].{axis}: sizes must be >= 1")
            elif any(v not in allowed[axis] for v in values):
                raise ConfigError(
                    f"grids[{index}].{axis}: {values} not all in {sorted(allowed[axis])}"
                )
            grid[axis] = values
    return config


def _partial_case(entry: Any, index: int) -> dict[str, Any]:
    """An ``exclude`` entry with singular axis names and sizes as ints."""
    if not isinstance(entry, dict) or not set(entry) <= set(FILTER_AXES):
        raise ConfigError(
            f"grids[{index}].exclude: entries are mappings over {sorted(FILTER_AXES)}, "
            f"got {entry!r}"
        )
    return {
        axis: parse_size(value) if axis in SIZE_AXES else value for axis, value in entry.items()
    }


def _excluded(case: Case, exclude: list[dict[str, Any]]) -> bool:
    return any(
        all(getattr(case, axis) == value for axis, value in entry.items()) for entry in exclude
    )


def expand_cases(config: dict[str, Any]) -> list[Case]:
    """All cases of all grids, in run order: problem by problem (cell, batch, dtype, hidden,
    length), then mode, then device count, then method with ``sequential`` first (it is the
    reference)."""
    cases: dict[str, Case] = {}
    for grid in config["grids"]:
        methods = sorted(grid["methods"], key=lambda m: m != "sequential")
        for cell in grid["cells"]:
            for batch in grid["batch"]:
                for dtype in grid["dtype"]:
                    for hidden in sorted(grid["hidden"]):
                        for length in sorted(grid["length"]):
                            for mode in grid["modes"]:
                                for devices in sorted(grid["devices"]):
                                    for method in methods:
                                        case = Case(
                                            cell,
                                            hidden,
                                            length,
                                            batch,
                                            dtype,
                                            method,
                                            mode,
                                            devices,
                                        )
                                        if not _excluded(case, grid["exclude"]):
                                            cases.setdefault(case.key, case)
    return list(cases.values())


def parse_filter(text: str) -> tuple[str, set[str]]:
    """``"cell=gru,lstm"`` -> ``("cell", {"gru", "lstm"})``; sizes accept k / M suffixes."""
    if "=" not in text:
        raise ConfigError(f"--only expects axis=value[,value...], got {text!r}")
    axis, values = text.split("=", 1)
    axis = axis.strip()
    if axis not in FILTER_AXES:
        raise ConfigError(f"--only: unknown axis {axis!r}; use one of {sorted(FILTER_AXES)}")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if axis in SIZE_AXES:
        items = [str(parse_size(v)) for v in items]
    return axis, set(items)


def select(cases: list[Case], filters: list[tuple[str, set[str]]]) -> list[Case]:
    """The cases matching every filter (an axis matches if its value is one of the listed)."""
    return [c for c in cases if all(str(getattr(c, axis)) in values for axis, values in filters)]
