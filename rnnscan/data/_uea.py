"""UEA / UCR classification problems from ``.ts`` files (through aeon), and EigenWorms.

:func:`read_uea` parses ``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts`` with aeon's
``load_from_ts_file`` into one :class:`LabelledSeries` (training series first).
:func:`load_uea` adds a split, per-channel standardisation and an on-disk cache;
:func:`load_eigenworms` does the same for EigenWorms and downloads it if needed.

aeon is an optional dependency (``pip install "rnnscan[data]"``) and is imported
only when a ``.ts`` file is actually parsed.

Labels: aeon reads the class labels as (lower-cased) strings. They are mapped to
``0 .. K-1``; when every label is a number (EigenWorms: ``"1" .. "5"``) classes
are ordered numerically, otherwise in the order the file header declares them
(``@classLabel true ...``), with any undeclared label appended in sorted order.
``class_names[k]`` is the original label of class ``k``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._cache import cache_file, file_fingerprint, load_cached, save_cached
from ._container import Dataset, LabelledSeries, prepare
from ._download import (
    EIGENWORMS_ARCHIVE,
    DatasetNotFoundError,
    RemoteArchive,
    fetch_problem,
)
from ._paths import DATA_DIR_ENV, find_problem_files, resolve_cache_dir, resolve_data_dir
from ._splits import DEFAULT_FRACTIONS, Split, official_split, random_split, stratified_split
from ._standardize import StandardizeMethod

__all__ = ["SplitKind", "load_eigenworms", "load_uea", "make_split", "read_uea"]

SplitKind = Literal["pooled", "official"]

_INSTALL_HINT = 'Reading UEA/UCR .ts files needs aeon: pip install "rnnscan[data]"'


def _load_ts(path: Path) -> tuple[Any, np.ndarray, dict[str, Any]]:
    try:
        from aeon.datasets import load_from_ts_file
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    X, y, meta = load_from_ts_file(str(path), return_meta_data=True)
    return X, np.asarray(y), meta


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _class_order(labels: np.ndarray, declared: Sequence[str]) -> list[str]:
    observed = sorted({str(v) for v in labels})
    declared = [str(c) for c in declared]
    names = list(dict.fromkeys([*declared, *observed]))
    if names and all(_is_number(c) for c in names):
        return sorted(names, key=float)
    known = set(declared)
    return [*declared, *(c for c in observed if c not in known)]


def _read_pair(name: str, train_path: Path, test_path: Path) -> LabelledSeries:
    """Parse the two ``.ts`` files of ``name`` into one pooled :class:`LabelledSeries`."""
    parts = []
    for path in (train_path, test_path):
        X, y, meta = _load_ts(path)
        if meta.get("targetlabel") or not meta.get("classlabel", True):
            raise ValueError(f"{path} is not a classification problem (no class labels).")
        if not meta.get("equallength", True) or not isinstance(X, np.ndarray) or X.ndim != 3:
            raise ValueError(
                f"{path} holds series of unequal length, which rnnscan.data does not "
                "support: pad or truncate them to a common length first."
            )
        parts.append((X, y, meta))
    (X_tr, y_tr, meta_tr), (X_te, y_te, _) = parts
    if X_tr.shape[1:] != X_te.shape[1:]:
        raise ValueError(
            f"{name}: train series are (C, T) = {X_tr.shape[1:]}, test series are "
            f"{X_te.shape[1:]}; series of unequal length are not supported."
        )
    # aeon gives (N, C, T); rnnscan works time-major per sample: (N, T, C).
    X = np.concatenate([X_tr, X_te]).transpose(0, 2, 1).astype(np.float32)
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} has missing or non-finite values, which are not supported.")
    labels = np.concatenate([y_tr, y_te]).astype(str)
    names = _class_order(labels, meta_tr.get("class_values") or [])
    index = {c: k for k, c in enumerate(names)}
    y = np.array([index[c] for c in labels], dtype=np.int64)
    return LabelledSeries(name, X, y, tuple(names), n_official_train=X_tr.shape[0])


def _locate(
    name: str,
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[Path, Path]:
    root, _ = resolve_data_dir(data_dir, cache_dir)
    found = find_problem_files(name, root)
    if found is None:
        raise DatasetNotFoundError(
            f"{name}: no {name}_TRAIN.ts and {name}_TEST.ts in {root} or {root / name}. "
            f"Put them there, pass data_dir=DIR, or set the environment variable "
            f"{DATA_DIR_ENV}=DIR."
        )
    return found


def read_uea(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> LabelledSeries:
    """Read a UEA/UCR problem from ``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts``.

    Files are looked for in ``data_dir`` (else ``$RNNSCAN_DATA_DIR``, else
    ``<cache dir>/uea``), directly or in a ``<Name>/`` subfolder. The result pools
    both files (training series first, ``n_official_train`` of them), with ``X``
    float32 ``(N, T, C)`` and ``y`` in ``0 .. K-1``. Nothing is cached.

    Raises:
        DatasetNotFoundError: the files are not there.
        ValueError: unequal-length series, missing values, or a regression problem.
        ImportError: aeon is not installed.
    """
    train_path, test_path = _locate(name, data_dir, cache_dir)
    return _read_pair(name, train_path, test_path)


def make_split(
    series: LabelledSeries,
    split: SplitKind = "pooled",
    *,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    val_fraction: float = 0.0,
    stratify: bool = False,
) -> Split:
    """The :class:`Split` of kind ``split`` for ``series``.

    ``"pooled"``: pool everything and split by ``fractions`` (train, val, test)
    with :func:`random_split`, or :func:`stratified_split` if ``stratify``.
    ``"official"``: the official train / test files, with a stratified
    validation part of ``val_fraction`` of the training file (see
    :func:`official_split`).
    """
    if split == "pooled":
        if stratify:
            return stratified_split(series.y, fractions, seed)
        return random_split(len(series), fractions, seed)
    if split == "official":
        if series.n_official_train is None:
            raise ValueError(f"{series.name} has no official train/test split.")
        return official_split(series.y, series.n_official_train, val_fraction, seed)
    raise ValueError(f"split must be 'pooled' or 'official', got {split!r}.")


def _load_prepared(
    name: str,
    files: tuple[Path, Path],
    *,
    split: SplitKind,
    seed: int,
    fractions: Sequence[float],
    val_fraction: float,
    stratify: bool,
    standardize: StandardizeMethod | None,
    clip: float | None,
    cache: bool,
    cache_dir: str | os.PathLike[str] | None,
) -> Dataset:
    path = None
    if cache:
        options = {
            "name": name,
            "sources": file_fingerprint(files),
            "split": split,
            "seed": seed,
            "standardize": standardize,
            "clip": clip,
        }
        if split == "pooled":
            options.update(fractions=[float(f) for f in fractions], stratify=bool(stratify))
        else:
            options.update(val_fraction=float(val_fraction))
        path = cache_file(resolve_cache_dir(cache_dir), name, split, seed, standardize, options)
        cached = load_cached(path)
        if cached is not None:
            return cached
    series = _read_pair(name, *files)
    idx = make_split(
        series, split, seed=seed, fractions=fractions, val_fraction=val_fraction, stratify=stratify
    )
    ds = prepare(series, idx, standardize=standardize, clip=clip, split_kind=split, seed=seed)
    if path is not None:
        save_cached(path, ds)
    return ds


def load_uea(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    split: SplitKind = "official",
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    val_fraction: float = 0.0,
    stratify: bool = False,
    standardize: StandardizeMethod | None = "standard",
    clip: float | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load a UEA/UCR classification problem, split and standardised, ready to train.

    Args:
        name: problem name, as in the file names (``"BasicMotions"``, ``"EigenWorms"``).
        data_dir: directory with ``<Name>_TRAIN.ts`` / ``<Name>_TEST.ts`` (directly
            or in ``<Name>/``); default ``$RNNSCAN_DATA_DIR``, else ``<cache dir>/uea``.
        split: ``"official"`` (the archive's train / test files; a validation part
            of ``val_fraction`` is carved from the training file, stratified) or
            ``"pooled"`` (train + test pooled, then split by ``fractions``,
            optionally ``stratify``-ed). See :func:`make_split`.
        seed: seed of the split (``numpy.random.default_rng``).
        standardize: ``"standard"``, ``"robust"`` or ``None``; statistics per
            channel, fitted on the training part only (see :class:`Standardizer`).
        clip: clip standardised values to ``[-clip, clip]``.
        cache: save the prepared arrays under ``<cache dir>/prepared/`` and reuse
            them on the next call with the same arguments and unchanged files.
        cache_dir: cache directory; default ``$RNNSCAN_CACHE_DIR``, else
            ``~/.cache/rnnscan``.

    Raises:
        DatasetNotFoundError: the ``.ts`` files are not in the data directory.
        ValueError: unequal-length series, missing values, bad options.
        ImportError: aeon is not installed.
    """
    files = _locate(name, data_dir, cache_dir)
    return _load_prepared(
        name,
        files,
        split=split,
        seed=seed,
        fractions=fractions,
        val_fraction=val_fraction,
        stratify=stratify,
        standardize=standardize,
        clip=clip,
        cache=cache,
        cache_dir=cache_dir,
    )


def load_eigenworms(
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    split: SplitKind = "pooled",
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    val_fraction: float = 0.0,
    stratify: bool = False,
    standardize: StandardizeMethod | None = "standard",
    clip: float | None = None,
    cache: bool = True,
    progress: bool = True,
    url: str = EIGENWORMS_ARCHIVE.url,
) -> Dataset:
    """UEA EigenWorms (259 series, 17,984 steps, 6 channels, 5 classes), ready to train.

    The default split is the one of Neural RDE, LEM and DEER: the official train
    (128) and test (131) series are pooled and split 70 / 15 / 15 with a fixed
    seed into 181 / 39 / 39 (see :func:`random_split`); ``split="official"``
    keeps the archive's 128 / 131 split instead. Classes ``0 .. 4`` are the
    archive labels ``"1" .. "5"`` (N2, goa-1, unc-1, unc-38, unc-63).

    The ``.ts`` files are looked for in ``data_dir``, else ``$RNNSCAN_DATA_DIR``,
    else ``<cache_dir>/uea`` (``cache_dir`` defaults to ``$RNNSCAN_CACHE_DIR``,
    else ``~/.cache/rnnscan``). If absent and ``download`` is true, the official
    archive (328 MB) is downloaded from ``url``, verified against its published
    size and SHA-256, and the two ``.ts`` files are extracted there.

    The values have heavy outliers (one channel spans about -180 .. 1042 with
    quartiles near +-1.7); ``standardize="robust"``, possibly with ``clip``,
    is worth trying. Other arguments are those of :func:`load_uea`.

    Raises:
        DatasetNotFoundError: the files are absent and could not be downloaded;
            the message says what to download and where to put it.
        ChecksumError: the downloaded archive is corrupt (it was deleted).
    """
    archive = RemoteArchive(
        EIGENWORMS_ARCHIVE.name, url, EIGENWORMS_ARCHIVE.size, EIGENWORMS_ARCHIVE.sha256
    )
    files = fetch_problem(archive, data_dir, cache_dir, download, progress=progress)
    return _load_prepared(
        archive.name,
        files,
        split=split,
        seed=seed,
        fractions=fractions,
        val_fraction=val_fraction,
        stratify=stratify,
        standardize=standardize,
        clip=clip,
        cache=cache,
        cache_dir=cache_dir,
    )
