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

Series of unequal length (``@equalLength false``: JapaneseVowels, the gesture
problems, ...) are zero-padded to the longest series of the problem and come with
their ``lengths``; nothing is truncated. Missing values (``?``, ``@missing true``)
are refused unless ``missing="zero"`` or ``"ffill"`` says how to fill them;
infinite values are always refused. A file aeon cannot parse (truncated, a stray
character) raises :class:`DataFormatError` naming the file.
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
from ._errors import DataFormatError
from ._missing import MISSING_POLICIES, MissingPolicy
from ._paths import DATA_DIR_ENV, find_problem_files, resolve_cache_dir, resolve_data_dir
from ._ragged import pad_series
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
    try:
        X, y, meta = load_from_ts_file(str(path), return_meta_data=True)
    except (OSError, ValueError, IndexError, KeyError, TypeError) as err:
        # aeon's messages name no file (or an io wrapper): say which one, and what to do.
        reason = " ".join(str(err).split()) or type(err).__name__
        raise DataFormatError(
            f"{path}: not a readable .ts file ({reason}); the file may be truncated or "
            "edited: download it again."
        ) from err
    if len(X) == 0:
        raise DataFormatError(
            f"{path}: no series after the header (an empty or truncated file?); download it again."
        )
    return X, np.asarray(y), meta


def _series_list(X: Any, path: Path) -> list[np.ndarray]:
    """aeon's ``(N, C, T)`` array or list of ``(C, T_i)`` arrays as ``(T_i, C)`` float32."""
    series = [np.asarray(x, dtype=np.float64).T.astype(np.float32) for x in X]
    channels = {s.shape[1] for s in series}
    if len(channels) != 1:
        raise DataFormatError(f"{path}: series have different numbers of channels {channels}.")
    infinite = sum(int(np.isinf(s).sum()) for s in series)
    if infinite:
        raise DataFormatError(
            f"{path}: {infinite} infinite values; replace them in the file (by ? if they are "
            "missing values)."
        )
    return series


def _check_missing(series: list[np.ndarray], path: Path, missing: MissingPolicy) -> None:
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}.")
    count = sum(int(np.isnan(s).sum()) for s in series)
    if count and missing == "error":
        affected = sum(bool(np.isnan(s).any()) for s in series)
        raise DataFormatError(
            f"{path}: {count} missing values (? or NaN) in {affected} of {len(series)} "
            "series; fill them with data.missing=ffill or data.missing=zero "
            "(missing='ffill' in rnnscan.data)."
        )


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


def _read_pair(
    name: str, train_path: Path, test_path: Path, missing: MissingPolicy = "error"
) -> LabelledSeries:
    """Parse the two ``.ts`` files of ``name`` into one pooled :class:`LabelledSeries`
    (padded with ``lengths`` when the series have unequal lengths; NaN where values are
    missing, unless ``missing="error"`` refuses them)."""
    parts = []
    for path in (train_path, test_path):
        X, y, meta = _load_ts(path)
        if meta.get("targetlabel") or not meta.get("classlabel", True):
            raise DataFormatError(f"{path} is not a classification problem (no class labels).")
        series = _series_list(X, path)
        _check_missing(series, path, missing)
        parts.append((series, y, meta))
    (X_tr, y_tr, meta_tr), (X_te, y_te, _) = parts
    if X_tr[0].shape[1] != X_te[0].shape[1]:
        raise DataFormatError(
            f"{name}: the series of {train_path.name} have {X_tr[0].shape[1]} channels, those "
            f"of {test_path.name} {X_te[0].shape[1]}."
        )
    # aeon gives (C, T) per series; rnnscan works time-major per sample: (N, T, C).
    X, lengths = pad_series(X_tr + X_te)
    labels = np.concatenate([y_tr, y_te]).astype(str)
    names = _class_order(labels, meta_tr.get("class_values") or [])
    index = {c: k for k, c in enumerate(names)}
    y = np.array([index[c] for c in labels], dtype=np.int64)
    equal = bool(np.all(lengths == X.shape[1]))
    return LabelledSeries(
        name,
        X,
        y,
        tuple(names),
        n_official_train=len(X_tr),
        lengths=None if equal else lengths,
    )


def _locate(
    name: str,
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
) -> tuple[Path, Path]:
    root, origin = resolve_data_dir(data_dir, cache_dir)
    found = find_problem_files(name, root)
    if found is None:
        where = {"argument": "data_dir", "environment": f"${DATA_DIR_ENV}"}.get(origin, "")
        absent = ""
        if not root.is_dir():
            absent = f" (the directory {root}{', from ' + where if where else ''} does not exist)"
        raise DatasetNotFoundError(
            f"{name}: no {name}_TRAIN.ts and {name}_TEST.ts in {root} or {root / name}"
            f"{absent}. Put them there, pass data_dir=DIR (data.data_dir or --data-dir DIR "
            f"in rnnscan.train), or set the environment variable {DATA_DIR_ENV}=DIR."
        )
    return found


def read_uea(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    missing: MissingPolicy = "error",
) -> LabelledSeries:
    """Read a UEA/UCR problem from ``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts``.

    Files are looked for in ``data_dir`` (else ``$RNNSCAN_DATA_DIR``, else
    ``<cache dir>/uea``), directly or in a ``<Name>/`` subfolder. The result pools
    both files (training series first, ``n_official_train`` of them), with ``X``
    float32 ``(N, T, C)`` and ``y`` in ``0 .. K-1``. Series of unequal length are
    zero-padded to the longest (``T``) and their ``lengths`` kept. Missing values
    are NaN when ``missing`` is ``"zero"`` or ``"ffill"`` (they are filled by
    :func:`prepare`); with ``"error"`` they are refused. Nothing is cached.

    Raises:
        DatasetNotFoundError: the files are not there.
        DataFormatError: a file is malformed or truncated, holds infinite values, or
            missing values with ``missing="error"``, or is a regression problem.
        ImportError: aeon is not installed.
    """
    train_path, test_path = _locate(name, data_dir, cache_dir)
    return _read_pair(name, train_path, test_path, missing)


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
    missing: MissingPolicy = "error",
    missing_mask: bool = False,
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
            "missing": missing,
            "missing_mask": bool(missing_mask),
        }
        if split == "pooled":
            options.update(fractions=[float(f) for f in fractions], stratify=bool(stratify))
        else:
            options.update(val_fraction=float(val_fraction))
        path = cache_file(resolve_cache_dir(cache_dir), name, split, seed, standardize, options)
        cached = load_cached(path)
        if cached is not None:
            return cached
    series = _read_pair(name, *files, missing)
    idx = make_split(
        series, split, seed=seed, fractions=fractions, val_fraction=val_fraction, stratify=stratify
    )
    ds = prepare(
        series,
        idx,
        standardize=standardize,
        clip=clip,
        split_kind=split,
        seed=seed,
        missing=missing,
        missing_mask=missing_mask,
    )
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
    missing: MissingPolicy = "error",
    missing_mask: bool = False,
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
        missing: ``"error"`` (refuse missing values, naming the file), ``"zero"``
            or ``"ffill"`` (see :func:`prepare`).
        missing_mask: append an observed-mask channel per channel.

    Series of unequal length are zero-padded to the longest one; the
    :class:`Dataset` then carries ``lengths_train`` / ``lengths_val`` /
    ``lengths_test``, and the statistics are those of the valid steps.

    Raises:
        DatasetNotFoundError: the ``.ts`` files are not in the data directory.
        DataFormatError: a malformed or truncated file, infinite values, or missing
            values with ``missing="error"``.
        ValueError: bad options.
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
        missing=missing,
        missing_mask=missing_mask,
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
