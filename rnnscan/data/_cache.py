"""On-disk cache of prepared :class:`Dataset` objects (one ``.npz`` per configuration).

Parsing the UEA ``.ts`` text files is slow (EigenWorms is about 300 MB of text),
so the split and standardised arrays are saved under ``<cache dir>/prepared/``
and loaded from there by the next call with the same configuration.

The file name is readable (problem name, split kind, seed, standardisation) and
ends with a digest of everything else that determines the content: the cache
format version, the remaining options (fractions, validation fraction, ...) and
the size and modification time of the source files, so that replacing the data
files or changing an option never returns stale arrays. Files are written to a
temporary name and renamed, so a crash never leaves a half-written cache entry,
and they are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._container import PARTS, Dataset
from ._splits import Split
from ._standardize import Standardizer

__all__ = ["CACHE_VERSION", "cache_file", "file_fingerprint", "load_cached", "save_cached"]

#: Bump when the layout or the content of cache files changes (2: series lengths,
#: missing-value options).
CACHE_VERSION = 2


def file_fingerprint(paths: Sequence[Path]) -> list[list[Any]]:
    """``[name, size, mtime_ns]`` of each file: cheap evidence that the source is unchanged."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([Path(p).name, st.st_size, st.st_mtime_ns])
    return out


def cache_file(
    cache_dir: Path,
    name: str,
    split_kind: str,
    seed: int | None,
    standardize: str | None,
    options: Mapping[str, Any],
) -> Path:
    """Path of the cache entry for one configuration (the file may not exist)."""
    key = json.dumps({"version": CACHE_VERSION, **options}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    label = f"{safe}-{split_kind}-seed{seed}-{standardize or 'raw'}-{digest}.npz"
    return cache_dir / "prepared" / label


def save_cached(path: Path, ds: Dataset) -> None:
    """Write ``ds`` to ``path`` atomically; on failure, warn and carry on."""
    arrays: dict[str, np.ndarray] = {
        "version": np.array(CACHE_VERSION),
        "name": np.array(ds.name),
        "class_names": np.array(ds.class_names, dtype=str),
        "split_kind": np.array(ds.split_kind),
        "seed": np.array(-1 if ds.seed is None else ds.seed),
        "has_seed": np.array(ds.seed is not None),
    }
    for part in PARTS:
        X, y = ds.part(part)
        arrays[f"X_{part}"], arrays[f"y_{part}"] = X, y
        arrays[f"idx_{part}"] = getattr(ds.split, part)
        if ds.variable_length:
            arrays[f"lengths_{part}"] = ds.lengths(part)
    if ds.standardizer is not None:
        st = ds.standardizer
        arrays["std_center"], arrays["std_scale"] = st.center, st.scale
        arrays["std_method"] = np.array(st.method)
        arrays["std_clip"] = np.array(np.nan if st.clip is None else st.clip)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        warnings.warn(f"Could not write the data cache {path}: {err}", stacklevel=3)


def load_cached(path: Path) -> Dataset | None:
    """The :class:`Dataset` stored at ``path``, or ``None`` if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != CACHE_VERSION:
                return None
            standardizer = None
            if "std_center" in z.files:
                clip = float(z["std_clip"])
                standardizer = Standardizer(
                    center=z["std_center"],
                    scale=z["std_scale"],
                    method=str(z["std_method"]),
                    clip=None if np.isnan(clip) else clip,
                )
            return Dataset(
                name=str(z["name"]),
                class_names=tuple(str(c) for c in z["class_names"]),
                split=Split(z["idx_train"], z["idx_val"], z["idx_test"]),
                standardizer=standardizer,
                split_kind=str(z["split_kind"]),
                seed=int(z["seed"]) if bool(z["has_seed"]) else None,
                **{f"{a}_{p}": z[f"{a}_{p}"] for p in PARTS for a in ("X", "y")},
                **{f"lengths_{p}": z[f"lengths_{p}"] for p in PARTS if "lengths_train" in z.files},
            )
    except (OSError, KeyError, ValueError) as err:
        warnings.warn(f"Ignoring unreadable data cache {path}: {err}", stacklevel=3)
        return None
