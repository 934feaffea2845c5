"""Datasets for training, cross-validation folds, and deterministic mini-batches.

:func:`load_dataset` turns a :class:`DataConfig` into a :class:`rnnscan.data.Dataset`
(split and standardised). :func:`epoch_order` and :func:`batches` make the data order
a pure function of ``(seed, epoch)``, so a resumed run sees exactly the batches an
uninterrupted one would have seen (:mod:`rnnscan.train._buckets` groups series of
unequal length into batches of similar length).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from rnnscan.data import (
    EIGENWORMS_ARCHIVE,
    Dataset,
    LabelledSeries,
    Split,
    fetch_problem,
    load_eigenworms,
    load_uea,
    load_worm_sample,
    make_synthetic_series,
    make_timescale_series,
    prepare,
    random_split,
    read_uea,
    stratified_split,
)

from ._config import ConfigError, DataConfig

__all__ = [
    "Batch",
    "batches",
    "cv_split",
    "epoch_order",
    "load_dataset",
    "steps_per_epoch",
    "stratified_folds",
]


# ----------------------------------------------------------------------------- datasets


def load_dataset(config: DataConfig) -> Dataset:
    """The train / validation / test :class:`Dataset` described by ``config``."""
    source = config.source
    if config.cv_folds > 2:
        ds = _cross_validation_dataset(_load_series(config), config)
    elif source == "eigenworms":
        ds = load_eigenworms(
            config.data_dir,
            config.cache_dir,
            config.download,
            **_archive_split_options(config),
        )
    elif source.startswith("uea:"):
        ds = load_uea(
            source[4:],
            config.data_dir,
            cache_dir=config.cache_dir,
            **_archive_split_options(config),
            **_missing_options(config),
        )
    else:
        series = _load_series(config)
        ds = prepare(
            series,
            _pooled_split(series, config),
            standardize=config.standardize,
            clip=config.clip,
            split_kind=config.split,
            seed=config.split_seed,
            **_missing_options(config),
        )
    return _truncate(ds, config.max_len)


def _load_series(config: DataConfig) -> LabelledSeries:
    """The unsplit series of ``config.source``."""
    source = config.source
    if source == "worm_sample":
        return load_worm_sample(config.data_dir)
    if source == "synthetic":
        return make_synthetic_series(**config.synthetic, seed=config.split_seed)
    if source in ("parity", "dms"):
        return make_timescale_series(source, **config.synthetic, seed=config.split_seed)
    missing = config.missing
    if source == "eigenworms":  # download if needed, then read like any UEA problem
        fetch_problem(EIGENWORMS_ARCHIVE, config.data_dir, config.cache_dir, config.download)
        return read_uea(
            EIGENWORMS_ARCHIVE.name, config.data_dir, cache_dir=config.cache_dir, missing=missing
        )
    if source.startswith("uea:"):
        return read_uea(source[4:], config.data_dir, cache_dir=config.cache_dir, missing=missing)
    raise ConfigError(f"data.source: unknown source {source!r}.")


def _archive_split_options(config: DataConfig) -> dict:
    """Keyword arguments of ``load_eigenworms`` / ``load_uea`` for ``config.split``."""
    split = "official" if config.split == "official" else "pooled"
    return dict(
        split=split,
        seed=config.split_seed,
        fractions=config.fractions,
        val_fraction=config.val_fraction,
        stratify=config.split == "stratified",
        standardize=config.standardize,
        clip=config.clip,
    )


def _missing_options(config: DataConfig) -> dict:
    """Keyword arguments of the loaders / ``prepare`` for missing values."""
    return dict(missing=config.missing, missing_mask=config.missing_mask)


def _pooled_split(series: LabelledSeries, config: DataConfig) -> Split:
    if config.split == "stratified":
        return stratified_split(series.y, config.fractions, config.split_seed)
    if config.split == "pooled":
        return random_split(len(series), config.fractions, config.split_seed)
    raise ConfigError(
        f"data.split='official' needs a problem with an official train / test split; "
        f"{config.source!r} has none (use 'stratified' or 'pooled')."
    )


def _cross_validation_dataset(series: LabelledSeries, config: DataConfig) -> Dataset:
    if config.cv_fold is None:
        raise ConfigError("data.cv_fold must be set to train one fold (or use cross_validate).")
    split = cv_split(series.y, config.cv_folds, config.cv_fold, config.split_seed)
    return prepare(
        series,
        split,
        standardize=config.standardize,
        clip=config.clip,
        split_kind=f"cv{config.cv_folds}-fold{config.cv_fold}",
        seed=config.split_seed,
        **_missing_options(config),
    )


def _truncate(ds: Dataset, max_len: int | None) -> Dataset:
    """Keep the first ``max_len`` steps of every series (statistics are left as fitted;
    the lengths of longer series become ``max_len``)."""
    if max_len is None or max_len >= ds.seq_len:
        return ds
    parts = {f"X_{p}": getattr(ds, f"X_{p}")[:, :max_len] for p in ("train", "val", "test")}
    if ds.variable_length:
        for p in ("train", "val", "test"):
            parts[f"lengths_{p}"] = np.minimum(ds.lengths(p), max_len)
    return dataclasses.replace(ds, **parts)


def describe(ds: Dataset) -> dict:
    """Sizes, shape and class counts of a dataset, for logs and summaries."""
    counts = ds.class_counts()
    return {
        "name": ds.name,
        "split": ds.split_kind,
        "split_seed": ds.seed,
        "sizes": {p: int(ds.part(p)[0].shape[0]) for p in ("train", "val", "test")},
        "seq_len": ds.seq_len,
        "variable_length": ds.variable_length,
        "length_range": [
            min(int(ds.lengths(p).min(initial=ds.seq_len)) for p in ("train", "val", "test")),
            ds.seq_len,
        ],
        "channels": ds.num_channels,
        "classes": list(ds.class_names),
        "class_counts": {p: counts[p].tolist() for p in counts},
        "standardize": None if ds.standardizer is None else ds.standardizer.method,
    }


# ----------------------------------------------------------------------------- folds


def stratified_folds(y: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Split ``range(len(y))`` into ``k`` folds that keep the class proportions.

    The members of each class are shuffled with ``numpy.random.default_rng(seed)``
    and dealt round-robin into the folds, the deal continuing from class to class,
    so fold sizes differ by at most one and so do the per-class counts.
    """
    y = np.asarray(y)
    if k < 2 or k > y.size:
        raise ValueError(f"Need 2 <= k <= {y.size} folds, got {k}.")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    position = 0
    for c in np.unique(y):
        for i in rng.permutation(np.flatnonzero(y == c)):
            folds[position % k].append(int(i))
            position += 1
    return [np.sort(np.asarray(f, dtype=np.int64)) for f in folds]


def cv_split(y: np.ndarray, k: int, fold: int, seed: int = 0) -> Split:
    """Fold ``fold`` of stratified k-fold CV: test = that fold, validation = the next
    one (cyclically), training = the remaining ``k - 2`` folds."""
    folds = stratified_folds(y, k, seed)
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}.")
    val_fold = (fold + 1) % k
    train = [f for i, f in enumerate(folds) if i not in (fold, val_fold)]
    return Split(np.sort(np.concatenate(train)), folds[val_fold], folds[fold])


# ----------------------------------------------------------------------------- batches


@dataclasses.dataclass(frozen=True)
class Batch:
    """Indices of one batch into a part of the dataset, with per-series weights.

    ``weights`` is 1 for real series and 0 for the padding that fills an incomplete
    batch up to the batch size (so every batch has the same shape and the jitted
    step compiles once). ``length``: the padded length of the batch's bucket (the
    inputs are cut to it), ``None`` for the stored length (no bucketing).
    """

    indices: np.ndarray
    weights: np.ndarray
    length: int | None = None


def steps_per_epoch(num_series: int, batch_size: int, drop_last: bool) -> int:
    """Batches in one epoch over ``num_series`` series."""
    if drop_last:
        return num_series // batch_size
    return -(-num_series // batch_size)


def epoch_order(num_series: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the training series: a permutation
    drawn from ``numpy.random.default_rng([seed, epoch])``, a pure function of its
    arguments."""
    return np.random.default_rng([seed, epoch]).permutation(num_series)


def batches(order: np.ndarray, batch_size: int, drop_last: bool = False) -> Iterator[Batch]:
    """Consecutive batches of ``order``; an incomplete last batch is dropped or padded
    with zero-weight copies of the first series of ``order``."""
    count = steps_per_epoch(order.size, batch_size, drop_last)
    for b in range(count):
        idx = order[b * batch_size : (b + 1) * batch_size]
        weights = np.ones(batch_size, np.float32)
        if idx.size < batch_size:
            missing = batch_size - idx.size
            weights[idx.size :] = 0.0
            idx = np.concatenate([idx, np.resize(order, missing)])
        yield Batch(idx, weights)


def batch_at(order: np.ndarray, batch_size: int, drop_last: bool, position: int) -> Batch:
    """Batch number ``position`` of :func:`batches` (for resuming mid-epoch)."""
    for i, batch in enumerate(batches(order, batch_size, drop_last)):
        if i == position:
            return batch
    raise IndexError(f"Batch {position} is past the end of the epoch.")


def batch_arrays(
    X: np.ndarray, y: np.ndarray, lengths: np.ndarray | None, batch: Batch
) -> tuple[np.ndarray, ...]:
    """``(x, y, weights)`` of ``batch`` from a part's arrays, with ``seq_lengths`` appended
    when the part has ``lengths`` (series of unequal length); ``x`` is cut to the batch's
    padded ``length`` when it has one."""
    x = X[batch.indices]
    if batch.length is not None:
        x = x[:, : batch.length]
    arrays = (x, y[batch.indices], batch.weights)
    return arrays if lengths is None else (*arrays, lengths[batch.indices])
