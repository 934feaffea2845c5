"""Packaging: the version in one place, tested lower bounds, docstrings, the CLI without
matplotlib. Fast (one tiny training run); also part of ``make test-oldest``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import rnnscan
from rnnscan.train.__main__ import main

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = REPO / ".ci" / "oldest-constraints.txt"
# Extras whose dependencies `make test-oldest` installs at their lower bounds.
TESTED_EXTRAS = ("data", "plot", "train", "test", "ode")
PUBLIC_MODULES = ("rnnscan", "rnnscan.nn", "rnnscan.rtrl", "rnnscan.train", "rnnscan.data")
OPTIONAL_MODULES = ("rnnscan.diagnostics", "rnnscan.ode")


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", requirement).lower()


def _pins() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_name(name)] = Version(version)
    return pins


def _bounded_requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    texts = list(project["dependencies"])
    for extra in TESTED_EXTRAS:
        texts += project.get("optional-dependencies", {}).get(extra, [])
    requirements = [Requirement(text) for text in texts]
    return [r for r in requirements if r.name != "rnnscan"]


def test_version_is_written_once():
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert "version" not in PYPROJECT["project"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "rnnscan.__version__"
    Version(rnnscan.__version__)  # a valid version string
    try:
        installed = metadata.version("rnnscan")
    except metadata.PackageNotFoundError:
        pytest.skip("rnnscan is not installed (running from a plain checkout)")
    # An editable install keeps the metadata of its install: reinstall after a version bump.
    assert installed == rnnscan.__version__


def test_changelog_has_this_version_or_unreleased():
    changelog = (REPO / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## (\S+)", changelog, flags=re.MULTILINE)
    assert "Unreleased" in headings or rnnscan.__version__ in headings, headings


def test_package_is_typed():
    assert (Path(rnnscan.__file__).parent / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["rnnscan"]


def test_every_lower_bound_is_pinned_in_the_oldest_constraints():
    """Each `name>=X` of the core and tested extras has `name==X` in the constraints file,
    and every pin there is such a bound: the versions `make test-oldest` runs are exactly
    the lowest that pyproject.toml allows."""
    pins = _pins()
    bounds = {}
    for requirement in _bounded_requirements():
        lows = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        if lows:
            bounds[_name(requirement.name)] = max(lows)
    problems = [
        f"{name}>={low}: add `{name}=={low}` to {CONSTRAINTS.name}"
        for name, low in sorted(bounds.items())
        if pins.get(name) != low
    ]
    problems += [
        f"{name}=={v}: not a lower bound in pyproject.toml"
        for name, v in pins.items()
        if name not in bounds
    ]
    assert not problems, "\n".join(problems)


def _public_objects(module_name: str):
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield f"{module_name}.{name}", obj


@pytest.mark.parametrize("module_name", PUBLIC_MODULES + OPTIONAL_MODULES)
def test_public_names_have_docstrings(module_name):
    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} does not exist here")
    module = importlib.import_module(module_name)
    missing = [] if (module.__doc__ or "").strip() else [module_name]
    for qualified, obj in _public_objects(module_name):
        own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
        if not (own or "").strip():
            missing.append(qualified)
    assert not missing, f"public names without a docstring: {missing}"


# --- python -m rnnscan.train without the plotting extra --------------------------------------

TINY = """\
name: tiny
data:
  source: synthetic
  synthetic: {num_series: 26, seq_len: 64, num_channels: 6, num_classes: 5, marker_len: 4}
model: {cell: gru, hidden_features: 4, num_blocks: 1}
optim: {lr: 1.0e-2}
train: {batch_size: 4, eval_batch_size: 4, epochs: 1, progress: false}
checkpoint: {every_steps: 100}
"""


@contextlib.contextmanager
def _without_matplotlib():
    """`import matplotlib` raises ImportError, as where the plot extra is not installed; on
    exit every matplotlib module is as before (none imported inside is left behind)."""

    def ours(name):
        return name == "matplotlib" or name.startswith("matplotlib.")

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules["matplotlib"] = None
    try:
        yield
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_train_cli_finishes_without_matplotlib_and_says_how_to_plot(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    run_dir = tmp_path / "run"
    with _without_matplotlib():
        assert main(["--config", str(config), "--out-dir", str(run_dir)]) == 0
        out, err = capsys.readouterr()
        assert (run_dir / "summary.json").is_file() and (run_dir / "metrics.jsonl").is_file()
        assert not (run_dir / "curves.png").exists()
        assert "test accuracy" in out
        assert 'pip install "rnnscan[plot]"' in out and f"--plot {run_dir}" in out
        assert "matplotlib is not installed" in err

        # --plot without matplotlib: an error that names the extra, no traceback.
        assert main(["--plot", str(run_dir)]) == 2
        assert 'pip install "rnnscan[plot]"' in capsys.readouterr().err

    # With matplotlib (the test extra has it), --plot draws the figure afterwards.
    pytest.importorskip("matplotlib")
    assert main(["--plot", str(run_dir)]) == 0
    assert (run_dir / "curves.png").stat().st_size > 0
    assert "curves:" in capsys.readouterr().out


def test_plot_rejects_a_directory_without_metrics(tmp_path, capsys):
    assert main(["--plot", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err
