"""Never trace the same training step twice: the traced program kept on disk with
``jax.export``, beside the persistent compilation cache.

JAX's persistent compilation cache stores what XLA compiles, keyed by the lowered program, so
a second run of the same configuration still traces and lowers its steps in Python before it
can look them up: 1-5 s for a model of a few Newton-solved blocks on a CPU, most of a warm
start. Here the lowered step itself is stored (``jax.export``: StableHLO, serialised) under a
key of everything that determines it, and a later process that asks for the same program
calls the stored one (``jax.jit(exported.call)``; its compiled code then comes from the
compilation cache) without running the model's Python at all.

The key: the caller's ``identity`` (the model's graph definition with its static fields, the
optimiser's configuration, the dtype, ...), the arguments' tree structure, shapes and dtypes,
the source of rnnscan and of any module outside rnnscan, flax, jax and optax that defines a
class of the model, the versions of jax, jaxlib, flax and optax, the JAX settings that change
tracing (x64, matmul precision, rank and dtype promotion) and the backend. Kept to one
process on one device (a sharded step is traced as before), and optional: without the
``flatbuffers`` package (``pip install rnnscan[train]``), or where a program cannot be
exported (a custom call without a stability guarantee, such as a GPU kernel), the step is
traced and compiled as usual, with one warning.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import os
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import export as jax_export  # jax < 0.8 has no jax.export attribute until imported

_directory: Path | None = None
_FORMAT = 1  # bump when the stored file's layout changes
_OWN_PACKAGES = ("rnnscan", "flax", "jax", "optax", "builtins", "collections")


def set_program_directory(directory: str | os.PathLike | None) -> None:
    """Keep traced steps under ``directory`` (``None``: do not keep them)."""
    global _directory
    _directory = None if directory is None else Path(directory)


def program_directory() -> Path | None:
    return _directory


def stable_repr(obj: Any) -> str:
    """``repr(obj)`` without memory addresses (``<function gelu at 0x7f...>``), so that it is
    the same in every process."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))


@functools.cache
def _package_source_digest() -> str:
    """One hash of every Python file of the installed rnnscan package."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _outside_sources(graphdef: Any) -> str | None:
    """The source of every module outside rnnscan / flax / jax / optax that defines a node
    type of ``graphdef`` (a user's own cell): their code shapes the program too. ``None``
    when one has no source to read (then nothing is stored)."""
    modules = set()
    for node in getattr(graphdef, "nodes", ()):
        node_type = getattr(node, "type", None)
        module = getattr(node_type, "__module__", None)
        if module and module.split(".")[0] not in _OWN_PACKAGES:
            modules.add(module)
    parts = []
    for name in sorted(modules):
        try:
            parts.append(inspect.getsource(sys.modules[name]))
        except (KeyError, OSError, TypeError):
            return None
    return "\n".join(parts)


def _versions() -> str:
    names = ("jax", "jaxlib", "flax", "optax")
    found = []
    for name in names:
        try:
            found.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name}=none")
    return ",".join(found)


def _settings() -> str:
    keys = (
        "jax_enable_x64",
        "jax_default_matmul_precision",
        "jax_numpy_rank_promotion",
        "jax_numpy_dtype_promotion",
    )
    device = jax.devices()[0]
    return ",".join(f"{k}={getattr(jax.config, k)}" for k in keys) + (
        f",{device.platform},{device.device_kind}"
    )


def _weak(leaf: Any) -> bool:
    return bool(getattr(leaf, "weak_type", False))


def _signature(leaves: list[Any], treedef: Any) -> str:
    avals = [(tuple(leaf.shape), str(leaf.dtype), _weak(leaf)) for leaf in leaves]
    return f"{treedef}|{avals}"


@functools.cache
def _usable() -> bool:
    """Whether programs can be kept in this process (one device, ``flatbuffers`` there)."""
    if jax.process_count() > 1 or jax.device_count() > 1:
        return False
    try:
        import flatbuffers  # noqa: F401, PLC0415 - jax.export's serialisation needs it
    except ImportError:
        warnings.warn(
            "rnnscan: traced training steps are not kept between runs without the flatbuffers "
            "package (pip install rnnscan[train]); every run traces them again",
            stacklevel=4,
        )
        return False
    return True


class StoredProgram:
    """``jax.jit(fn)`` whose lowered programs are kept on disk under the key described in the
    module docstring, one per argument signature. ``lower`` is ``jax.jit(fn).lower`` (the
    ahead-of-time compilations of ``method: auto`` use it unchanged)."""

    def __init__(self, fn, name: str, identity: str, graphdef: Any = None):
        self._jitted = jax.jit(fn)
        self._fn = fn
        self._name = name
        self._identity = identity
        self._outside = _outside_sources(graphdef) if graphdef is not None else ""
        self._runners: dict[str, Any] = {}  # signature -> callable on the flat leaves
        self.loaded: dict[str, bool] = {}  # signature -> whether it came from disk

    def lower(self, *args, **kwargs):
        return self._jitted.lower(*args, **kwargs)

    def __call__(self, *args, **kwargs):
        directory = program_directory()
        if directory is None or self._outside is None:
            return self._jitted(*args, **kwargs)
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        # Python scalars as jit sees them: weakly typed arrays.
        leaves = [leaf if hasattr(leaf, "dtype") else jnp.asarray(leaf) for leaf in leaves]
        signature = _signature(leaves, treedef)
        runner = self._runners.get(signature)
        if runner is None:
            runner = self._runners[signature] = self._prepare(directory, leaves, treedef)
        if runner is self._jitted:
            return self._jitted(*args, **kwargs)
        flat_call, out_tree = runner
        return jax.tree_util.tree_unflatten(out_tree, flat_call(*leaves))

    def _key(self, leaves, treedef) -> str:
        parts = (
            str(_FORMAT),
            self._name,
            self._identity,
            _signature(leaves, treedef),
            _package_source_digest(),
            self._outside,
            _versions(),
            _settings(),
        )
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def _prepare(self, directory: Path, leaves, treedef):
        if not _usable():
            return self._jitted
        path = directory / f"{self._name}-{self._key(leaves, treedef)[:32]}.jaxprogram"
        signature = _signature(leaves, treedef)
        if path.exists():
            try:
                serialized, out_tree = pickle.loads(path.read_bytes())
                exported = jax_export.deserialize(bytearray(serialized))
                self.loaded[signature] = True
                return jax.jit(exported.call), out_tree
            except Exception as error:  # noqa: BLE001 - a damaged file is traced anew
                warnings.warn(
                    f"rnnscan: the stored {self._name} program {path} could not be read "
                    f"({type(error).__name__}: {error}); tracing it again",
                    stacklevel=3,
                )
        out_trees = []

        def flat(*flat_args):
            args, kwargs = jax.tree_util.tree_unflatten(treedef, flat_args)
            out = self._fn(*args, **kwargs)
            out_leaves, out_tree = jax.tree_util.tree_flatten(out)
            out_trees.append(out_tree)
            return out_leaves

        avals = [
            jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, weak_type=_weak(leaf)) for leaf in leaves
        ]
        try:
            exported = jax_export.export(jax.jit(flat))(*avals)
            serialized = exported.serialize()
        except Exception as error:  # noqa: BLE001 - e.g. a custom call jax will not export
            warnings.warn(
                f"rnnscan: the {self._name} program cannot be stored for later runs "
                f"({type(error).__name__}: {str(error)[:200]}); it is traced on every run",
                stacklevel=3,
            )
            return self._jitted
        self.loaded[signature] = False
        try:
            directory.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.partial")
            partial.write_bytes(pickle.dumps((bytes(serialized), out_trees[-1])))
            os.replace(partial, path)
        except OSError as error:
            warnings.warn(
                f"rnnscan: could not store the {self._name} program in {directory} "
                f"({error}); it is traced on every run",
                stacklevel=3,
            )
        return jax.jit(exported.call), out_trees[-1]
