"""Where data and caches live: environment variables and default directories.

* ``RNNSCAN_DATA_DIR``: a directory holding UEA/UCR ``.ts`` files, either as
  ``<dir>/<Name>_TRAIN.ts`` or ``<dir>/<Name>/<Name>_TRAIN.ts`` (aeon's layout).
* ``RNNSCAN_CACHE_DIR``: where downloads and prepared arrays go; defaults to
  ``$XDG_CACHE_HOME/rnnscan`` or ``~/.cache/rnnscan``.
* ``RNNSCAN_WORM_SAMPLE``: path of ``worm_sample.npz`` (or of its directory).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "CACHE_DIR_ENV",
    "DATA_DIR_ENV",
    "WORM_SAMPLE_ENV",
    "find_problem_files",
    "resolve_cache_dir",
    "resolve_data_dir",
]

DATA_DIR_ENV = "RNNSCAN_DATA_DIR"
CACHE_DIR_ENV = "RNNSCAN_CACHE_DIR"
WORM_SAMPLE_ENV = "RNNSCAN_WORM_SAMPLE"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$RNNSCAN_CACHE_DIR``, else the user cache directory."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rnnscan"


def resolve_data_dir(
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Path, str]:
    """The one directory searched for ``.ts`` files, and where that choice came from.

    ``data_dir`` if given, else ``$RNNSCAN_DATA_DIR``, else ``<cache dir>/uea``.
    The second value (``"argument"``, ``"environment"`` or ``"cache"``) is used
    in error messages.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser(), "argument"
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser(), "environment"
    return resolve_cache_dir(cache_dir) / "uea", "cache"


def find_problem_files(name: str, root: Path) -> tuple[Path, Path] | None:
    """``(<Name>_TRAIN.ts, <Name>_TEST.ts)`` in ``root`` or ``root/<Name>``, if both exist."""
    for folder in (root, root / name):
        train, test = folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"
        if train.is_file() and test.is_file():
            return train, test
    return None
