"""Never compile the same program twice: JAX's persistent compilation cache, on by default for
the training CLI and the benchmark runner.

A Newton solve's program takes seconds to compile on a CPU (tens of seconds for a whole
training step); the second run of the same configuration, and every resumed run, loads it
from disk instead. The directory is, in order: the one asked for (``--compilation-cache
DIR``), ``$RNNSCAN_COMPILATION_CACHE``, JAX's own ``$JAX_COMPILATION_CACHE_DIR``, else
``$XDG_CACHE_HOME/rnnscan/jax`` (``~/.cache/rnnscan/jax``). ``--no-compilation-cache`` (or
the value ``off``) leaves JAX's setting as it is. Entries are keyed by the program, the
backend and the versions, so a cache is never served to a different program; delete the
directory to reclaim the space.

The same directory's ``programs/`` folder keeps the traced training and evaluation steps
(``_program_store.py``), so that a second run skips tracing them too.
"""

from __future__ import annotations

import os
from pathlib import Path

OFF = ("off", "none", "false", "0")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rnnscan" / "jax"


def use_compilation_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at ``directory`` (see the module docstring
    for the default) and cache every compile, however short; keep the traced training and
    evaluation steps in its ``programs/`` folder (``_program_store.py``). Returns the
    directory, or None when the cache was turned off (``directory="off"``)."""
    import jax

    from ._program_store import set_program_directory

    chosen = (
        directory
        or os.environ.get("RNNSCAN_COMPILATION_CACHE")
        or os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or default_cache_dir()
    )
    if str(chosen).lower() in OFF:
        set_program_directory(None)
        return None
    path = Path(chosen).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    set_program_directory(path / "programs")
    # Every program: besides the solver's (seconds), a run compiles dozens of small ones
    # (parameter initialisers, optimiser set-up) in 0.05-0.25 s each, together about a
    # second of a cached run's start on a CPU.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path
