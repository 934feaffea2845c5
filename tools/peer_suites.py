"""Run other projects' own test files against rnnscan, with only the call swapped.

Two peer suites, neither of them copied into this repository (fetch them yourself; see
docs/switching.md, "Differences from jax.lax.scan"):

- ``jax``: JAX's ``tests/lax_control_flow_test.py`` (at the tag of the installed jax, e.g.
  ``jax-v0.10.2``). Wherever the test module says ``lax.scan`` or ``jax.lax.scan`` it gets
  ``functools.partial(rnnscan.scan, method=METHOD)``; everything else is JAX's.
- ``flax``: flax's ``tests/nnx/nn/recurrent_test.py`` (at the installed flax's version).
  Wherever it says ``nnx.RNN`` it gets ``functools.partial(rnnscan.nn.RNN, method=METHOD)``.

The swap is made in the test module's own view of its imports (its ``import jax`` /
``from jax import lax`` / ``from flax import nnx`` return views of those modules with the one
name replaced): rnnscan, flax, jax's internals and everything else keep the real
``jax.lax.scan`` and ``nnx.RNN``.

Usage (from the repository root; arguments after ``--`` go to pytest; without ``-k`` the
suite's ``SELECTIONS`` entry selects the tests)::

    python tools/peer_suites.py jax /tmp/peers/lax_control_flow_test.py --method newton \
        --per-family 6 -- -n 2
    python tools/peer_suites.py flax /tmp/peers/recurrent_test.py --method sequential

The exit status is pytest's.
"""

from __future__ import annotations

import argparse
import builtins
import functools
import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

_ENV_SUITE, _ENV_FILE, _ENV_METHOD, _ENV_PER_FAMILY = (
    "RNNSCAN_PEER_SUITE",
    "RNNSCAN_PEER_FILE",
    "RNNSCAN_PEER_METHOD",
    "RNNSCAN_PEER_PER_FAMILY",
)
REPO = Path(__file__).resolve().parents[1]

# The tests each suite runs unless -k is given. JAX: every test that calls lax.scan (by name,
# plus those whose name does not say so; not lax.associative_scan's). flax: the RNN tests.
SELECTIONS = {
    "jax": " or ".join(
        [
            "(scan and not Associative)",
            *"""Callable ForiLoopIssue8152 Issue711 Issue744 Issue757 Issue804 axis_env
            Issue1316 Issue1361 Issue810 loop_cond_bug platform_dependent_grad
            platform_dependent_with_primitive_with_lowering_error""".split(),
        ]
    ),
    "flax": "TestRNN",
}


def _view(module: types.ModuleType, replaced: dict) -> types.ModuleType:
    """A module that is ``module`` except for the names in ``replaced``."""
    view = types.ModuleType(module.__name__, module.__doc__)
    view.__dict__.update(replaced)
    view.__getattr__ = lambda name: getattr(module, name)  # PEP 562: every other name
    view.__peer_view_of__ = module
    return view


def swaps(suite: str, method: str) -> dict[str, dict]:
    """{module name: {attribute: replacement}} that the test module sees."""
    import jax
    from flax import nnx

    import rnnscan

    if suite == "jax":
        lax = _view(jax.lax, {"scan": functools.partial(rnnscan.scan, method=method)})
        return {"jax": {"lax": lax}, "jax.lax": {"scan": lax.scan}}
    if suite == "flax":
        nnx_view = _view(nnx, {"RNN": functools.partial(rnnscan.nn.RNN, method=method)})
        return {"flax": {"nnx": nnx_view}, "flax.nnx": {"RNN": nnx_view.RNN}}
    raise ValueError(f"suite must be 'jax' or 'flax', got {suite!r}")


def load_swapped(path: Path, suite: str, method: str, name: str) -> types.ModuleType:
    """Import the test file at ``path`` with its imports of jax / flax seen through
    :func:`swaps`."""
    table = swaps(suite, method)
    views: dict[str, types.ModuleType] = {}

    def view_of(module):
        key = getattr(module, "__name__", None)
        if key not in table:
            return module
        if key not in views:
            views[key] = _view(module, table[key])
        return views[key]

    def swapped_import(name, globals=None, locals=None, fromlist=(), level=0):
        return view_of(builtins.__import__(name, globals, locals, fromlist, level))

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__builtins__"] = {**builtins.__dict__, "__import__": swapped_import}
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# --- the pytest plugin (loaded with -p peer_suites in the pytest process and its workers) ---


def pytest_pycollect_makemodule(module_path, parent):
    import pytest

    target = os.environ.get(_ENV_FILE)
    if target is None or Path(module_path).resolve() != Path(target).resolve():
        return None

    class SwappedModule(pytest.Module):
        def _getobj(self):
            return load_swapped(
                Path(target),
                os.environ[_ENV_SUITE],
                os.environ[_ENV_METHOD],
                f"peer_{Path(target).stem}",
            )

    return SwappedModule.from_parent(parent, path=Path(module_path))


def _family(name: str, defs: list[str]) -> str:
    """The test method a (parameterized) test case was generated from."""
    return next((d for d in defs if name.startswith(d)), name)


def pytest_collection_modifyitems(config, items):
    """With --per-family N: at most N cases of each parameterized test, evenly spread over
    its cases in collection order (deterministic; the same on every xdist worker)."""
    cap = os.environ.get(_ENV_PER_FAMILY)
    target = os.environ.get(_ENV_FILE)
    if not cap or target is None:
        return
    defs = sorted(set(re.findall(r"def (test\w+)", Path(target).read_text())), key=len)[::-1]
    families: dict[str, list] = {}
    for item in items:
        families.setdefault(_family(item.name, defs), []).append(item)
    keep = set()
    for cases in families.values():
        step = max(1, -(-len(cases) // int(cap)))  # ceil
        keep.update(id(item) for item in cases[::step])
    deselected = [item for item in items if id(item) not in keep]
    items[:] = [item for item in items if id(item) in keep]
    config.hook.pytest_deselected(items=deselected)


def pytest_report_header(config):
    if os.environ.get(_ENV_FILE):
        return (
            f"rnnscan peer suite {os.environ[_ENV_SUITE]!r} ({os.environ[_ENV_FILE]}), "
            f"method={os.environ[_ENV_METHOD]!r}"
        )
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=["jax", "flax"])
    parser.add_argument("file", type=Path, help="the peer test file (outside this repository)")
    parser.add_argument("--method", default="newton")
    parser.add_argument(
        "--per-family",
        type=int,
        default=None,
        help="run at most this many cases of each parameterized test (evenly spread)",
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    ours, pytest_args = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    args = parser.parse_args(ours)
    file = args.file.resolve()
    env = dict(os.environ)
    env.update({_ENV_SUITE: args.suite, _ENV_FILE: str(file), _ENV_METHOD: args.method})
    env.pop(_ENV_PER_FAMILY, None)
    if args.per_family is not None:
        env[_ENV_PER_FAMILY] = str(args.per_family)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "tools"), str(REPO), *filter(None, [env.get("PYTHONPATH")])]
    )
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "peer_suites",
        "-c",
        os.devnull,  # not this repository's pytest settings (nor its conftest)
        "--rootdir",
        str(file.parent),
        "-p",
        "no:cacheprovider",
        # the whole file, unless test ids (FILE::Class::test) were given
        *([] if any("::" in arg for arg in pytest_args) else [str(file)]),
        *pytest_args,
        *([] if "-k" in pytest_args else ["-k", SELECTIONS[args.suite]]),
    ]
    return subprocess.call(command, env=env, cwd=file.parent)


if __name__ == "__main__":
    sys.exit(main())
