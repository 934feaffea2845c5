"""Containers: a pool of labelled series, and a prepared train / val / test dataset.

Two small frozen dataclasses carry data between the loaders and training code:

:class:`LabelledSeries`
    every series of a problem in one array (for UEA problems: the official
    training file followed by the official test file), before any split or
    preprocessing. Loaders of raw data return it.
:class:`Dataset`
    the split, standardised arrays ready for training, with the class names, the
    split indices and the fitted statistics kept alongside. :func:`prepare` turns
    the former into the latter.

Arrays are always time-major per sample: ``X`` has shape ``(N, T, C)`` (series,
time steps, channels), float32; labels ``y`` are int64 in ``0 .. K-1`` and
``class_names[k]`` names class ``k``.

Series of unequal length are zero-padded to the longest one and come with
``lengths`` (int64, ``(N,)``: the valid steps of each series); ``lengths`` is
``None`` when every series has all ``T`` steps. Missing values are NaN in a
:class:`LabelledSeries`; :func:`prepare` refuses or fills them (see
:mod:`rnnscan.data._missing`), so a :class:`Dataset` holds finite values only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from ._errors import DataFormatError
from ._missing import MissingPolicy, count_missing, fill_missing
from ._splits import Split
from ._standardize import StandardizeMethod, Standardizer

__all__ = ["PARTS", "Dataset", "LabelledSeries", "prepare"]

#: Names of the three parts of a :class:`Dataset`, in order.
PARTS: tuple[str, str, str] = ("train", "val", "test")


def _check_xy(X: np.ndarray, y: np.ndarray, num_classes: int, where: str) -> None:
    if X.ndim != 3:
        raise ValueError(f"{where}: X must have shape (N, T, C), got {X.shape}.")
    if y.shape != (X.shape[0],):
        raise ValueError(f"{where}: y has shape {y.shape}, expected ({X.shape[0]},).")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{where}: labels must lie in 0..{num_classes - 1}.")


def _check_lengths(lengths: np.ndarray | None, X: np.ndarray, where: str) -> np.ndarray | None:
    """``lengths`` as int64 ``(N,)`` in ``1 .. T`` (``None`` stays ``None``)."""
    if lengths is None:
        return None
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.shape != (X.shape[0],):
        raise ValueError(f"{where}: lengths has shape {lengths.shape}, expected ({X.shape[0]},).")
    if lengths.size and (lengths.min() < 1 or lengths.max() > X.shape[1]):
        raise ValueError(
            f"{where}: lengths must lie in 1..{X.shape[1]} (the padded length), got "
            f"{lengths.min()}..{lengths.max()}."
        )
    return lengths


@dataclass(frozen=True, eq=False)
class LabelledSeries:
    """All series of a classification problem, unsplit and unprocessed.

    Attributes:
        name: problem name (e.g. ``"EigenWorms"``).
        X: float32 array ``(N, T, C)``.
        y: int64 labels ``(N,)`` in ``0 .. K-1``.
        class_names: ``K`` names; ``class_names[k]`` is the original label of class ``k``.
        n_official_train: for problems with an official split, the number of
            leading series that came from the training file (the rest came from
            the test file); ``None`` when there is no official split.
        meta: optional per-series extras (arrays of length ``N``), e.g. strain names.
        lengths: int64 ``(N,)`` valid steps of each series when they differ (``X`` is
            zero-padded after them); ``None`` when all series have ``T`` steps.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    n_official_train: int | None = None
    meta: Mapping[str, np.ndarray] = field(default_factory=dict)
    lengths: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "X", np.ascontiguousarray(self.X, dtype=np.float32))
        object.__setattr__(self, "y", np.asarray(self.y, dtype=np.int64))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        _check_xy(self.X, self.y, len(self.class_names), self.name)
        object.__setattr__(self, "lengths", _check_lengths(self.lengths, self.X, self.name))
        if self.n_official_train is not None and not 0 <= self.n_official_train <= len(self):
            raise ValueError(f"n_official_train={self.n_official_train} is out of range.")

    def __len__(self) -> int:
        return self.X.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seq_len(self) -> int:
        return self.X.shape[1]

    @property
    def num_channels(self) -> int:
        return self.X.shape[2]

    def class_counts(self) -> np.ndarray:
        """Number of series per class, shape ``(K,)``."""
        return np.bincount(self.y, minlength=self.num_classes)

    def __repr__(self) -> str:
        n, t, c = self.X.shape
        if self.lengths is not None and n:
            t = f"{self.lengths.min()}..{t}"
        return (
            f"LabelledSeries({self.name!r}, N={n}, T={t}, C={c}, classes={list(self.class_names)})"
        )


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train / validation / test arrays of one problem, ready for training.

    Attributes:
        name: problem name.
        X_train, y_train, X_val, y_val, X_test, y_test: float32 ``(N_part, T, C)``
            inputs and int64 ``(N_part,)`` labels; the validation part may be empty.
        class_names: ``class_names[k]`` is the original label of class ``k``.
        split: indices of each part in the pooled series (see :class:`Split`).
        standardizer: statistics fitted on the training part and applied to all
            parts, or ``None`` when the data was not standardised.
        split_kind: how the split was made (``"pooled"``, ``"official"``,
            ``"stratified"``, ``"custom"``, ...).
        seed: the seed of the split, if any.
        lengths_train, lengths_val, lengths_test: int64 ``(N_part,)`` valid steps of
            each series when the series have unequal lengths (the inputs are
            zero-padded to ``T``); ``None`` when every series has ``T`` steps.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    split: Split
    standardizer: Standardizer | None = None
    split_kind: str = "custom"
    seed: int | None = None
    lengths_train: np.ndarray | None = None
    lengths_val: np.ndarray | None = None
    lengths_test: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        shapes = set()
        for part in PARTS:
            X = np.ascontiguousarray(getattr(self, f"X_{part}"), dtype=np.float32)
            y = np.asarray(getattr(self, f"y_{part}"), dtype=np.int64)
            if X.size == 0 and X.ndim != 3:
                X = X.reshape(0, *self.X_train.shape[1:])
            object.__setattr__(self, f"X_{part}", X)
            object.__setattr__(self, f"y_{part}", y)
            _check_xy(X, y, len(self.class_names), f"{self.name} {part}")
            shapes.add(X.shape[1:])
            lengths = _check_lengths(getattr(self, f"lengths_{part}"), X, f"{self.name} {part}")
            object.__setattr__(self, f"lengths_{part}", lengths)
        if len(shapes) != 1:
            raise ValueError(f"Parts disagree on (T, C): {sorted(shapes)}.")
        given = [getattr(self, f"lengths_{p}") is None for p in PARTS]
        if any(given) and not all(given):
            raise ValueError(f"{self.name}: lengths must be given for every part or for none.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seq_len(self) -> int:
        return self.X_train.shape[1]

    @property
    def num_channels(self) -> int:
        return self.X_train.shape[2]

    @property
    def variable_length(self) -> bool:
        """Whether the series have unequal lengths (and ``lengths_*`` are set)."""
        return self.lengths_train is not None

    def lengths(self, name: str) -> np.ndarray:
        """The valid steps of every series of part ``name`` (``T`` for all when the
        series have equal lengths)."""
        X, _ = self.part(name)
        given = getattr(self, f"lengths_{name}")
        return np.full(X.shape[0], X.shape[1], np.int64) if given is None else given

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)`` of the part ``"train"``, ``"val"`` or ``"test"``."""
        if name not in PARTS:
            raise KeyError(f"Unknown part {name!r}; expected one of {PARTS}.")
        return getattr(self, f"X_{name}"), getattr(self, f"y_{name}")

    def class_counts(self) -> dict[str, np.ndarray]:
        """Number of series per class in each part."""
        return {p: np.bincount(self.part(p)[1], minlength=self.num_classes) for p in PARTS}

    def __repr__(self) -> str:
        sizes = "/".join(str(self.part(p)[0].shape[0]) for p in PARTS)
        std = "none" if self.standardizer is None else self.standardizer.method
        t = self.seq_len
        if self.variable_length:
            shortest = min(int(self.lengths(p).min(initial=t)) for p in PARTS)
            t = f"{shortest}..{t}"
        return (
            f"Dataset({self.name!r}, train/val/test={sizes}, T={t}, "
            f"C={self.num_channels}, K={self.num_classes}, split={self.split_kind!r}, "
            f"seed={self.seed}, standardize={std!r})"
        )


def prepare(
    series: LabelledSeries,
    split: Split,
    *,
    standardize: StandardizeMethod | None = "standard",
    clip: float | None = None,
    split_kind: str = "custom",
    seed: int | None = None,
    missing: MissingPolicy = "error",
    missing_mask: bool = False,
) -> Dataset:
    """Cut ``series`` along ``split`` and standardise every part with training statistics.

    Args:
        series: the pooled series.
        split: indices into ``series`` (must lie in ``0 .. len(series)-1``).
        standardize: ``"standard"`` (mean / std), ``"robust"`` (median / normalised
            IQR) or ``None`` (leave the values as they are). Statistics are
            per channel, fitted on the training part only; see :class:`Standardizer`.
        clip: clip the standardised values to ``[-clip, clip]`` (needs ``standardize``).
        split_kind, seed: recorded in the returned :class:`Dataset`.
        missing: what to do with missing values (NaN): ``"error"`` (raise
            :class:`DataFormatError`), ``"zero"`` (0 after standardisation: the
            channel's training mean) or ``"ffill"`` (carry the last observation
            forward, backfill the start). See :mod:`rnnscan.data._missing`.
        missing_mask: append one observed-mask channel per channel (1 = observed).

    Series of unequal length (``series.lengths``) keep their lengths in the
    ``lengths_*`` arrays; statistics are computed over valid, observed steps only,
    and the padding is 0 in every part.
    """
    n = len(series)
    for part in PARTS:
        idx = getattr(split, part)
        if idx.size and idx.max() >= n:
            raise ValueError(f"split.{part} has indices >= {n} (the number of series).")
    if split.train.size == 0:
        raise ValueError("The training part is empty.")
    if clip is not None and standardize is None:
        raise ValueError("clip needs standardize='standard' or 'robust'.")
    lengths = series.lengths
    n_missing = count_missing(series.X, lengths)
    if n_missing and missing == "error":
        raise DataFormatError(
            f"{series.name}: {n_missing} missing values (NaN); pass missing='ffill' or "
            "'zero' to fill them."
        )
    part_lengths = {p: None if lengths is None else lengths[getattr(split, p)] for p in PARTS}
    X_train = series.X[split.train]
    standardizer = None
    if standardize is not None:
        standardizer = Standardizer.fit(
            X_train, standardize, clip=clip, lengths=part_lengths["train"]
        )
    arrays: dict[str, Any] = {}
    for part in PARTS:
        idx = getattr(split, part)
        X = X_train if part == "train" else series.X[idx]
        if standardizer is not None:
            X = standardizer.transform(X, part_lengths[part])
        if n_missing or missing_mask or lengths is not None:
            X = fill_missing(X, part_lengths[part], missing, mask=missing_mask)
        arrays[f"X_{part}"] = X
        arrays[f"y_{part}"] = series.y[idx]
        arrays[f"lengths_{part}"] = part_lengths[part]
    return Dataset(
        name=series.name,
        class_names=series.class_names,
        split=split,
        standardizer=standardizer,
        split_kind=split_kind,
        seed=seed,
        **arrays,
    )
