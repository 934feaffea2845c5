"""Train / validation / test splits as index arrays.

Every split in :mod:`rnnscan.data` is a :class:`Split`: three disjoint arrays of
integer indices into one *pooled* array of series. For a UEA problem the pooled
array is the official training file followed by the official test file, so the
same index arrays describe both the official split and the re-shuffled one.

Part sizes are computed once, by :func:`split_sizes`, and shared by the plain and
the stratified splitter, so both give exactly the same counts for the same ``n``:

* ``n_val  = floor(f_val  * n + 1/2)``  (rounded half up)
* ``n_test = floor(f_test * n + 1/2)``
* ``n_train = n - n_val - n_test``  (the remainder)

For EigenWorms (``n = 259`` and fractions 0.70 / 0.15 / 0.15) this gives
``39 = round(38.85)`` for validation and test and ``181`` for training: the
181 / 39 / 39 split used by Neural RDE, LEM and DEER. (Rounding the two small
parts rather than flooring the large one also avoids floating-point surprises
such as ``ceil(0.15 * 100) == 16``.)

Indices are returned sorted inside each part, so the arrays keep the file order;
training code shuffles its mini-batches itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_FRACTIONS",
    "Split",
    "official_split",
    "random_split",
    "split_sizes",
    "stratified_split",
]

#: Train / validation / test fractions of the Neural RDE / LEM / DEER protocol.
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)


@dataclass(frozen=True, eq=False)
class Split:
    """Disjoint index arrays selecting the training, validation and test parts.

    Indices point into a pooled array of ``n`` series (for UEA problems: the
    official training file followed by the official test file). Any part may be
    empty (e.g. no validation part).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def __post_init__(self) -> None:
        parts = {}
        for name in ("train", "val", "test"):
            idx = np.asarray(getattr(self, name))
            if idx.size == 0:
                idx = idx.reshape(0).astype(np.int64)
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"Split.{name} must be a 1-D integer array, got {idx.dtype}.")
            if idx.size and idx.min() < 0:
                raise ValueError(f"Split.{name} contains negative indices.")
            parts[name] = idx.astype(np.int64, copy=False)
            object.__setattr__(self, name, parts[name])
        everything = np.concatenate(list(parts.values()))
        if np.unique(everything).size != everything.size:
            raise ValueError("Split parts overlap or contain repeated indices.")

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Number of series in the (train, val, test) parts."""
        return (self.train.size, self.val.size, self.test.size)

    def covers(self, n: int) -> bool:
        """Whether the three parts together are exactly ``0 .. n-1``."""
        everything = np.concatenate([self.train, self.val, self.test])
        return everything.size == n and bool(np.all(np.sort(everything) == np.arange(n)))

    def __repr__(self) -> str:
        return "Split(train={}, val={}, test={})".format(*self.sizes)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {fractions!r}.")
    f = tuple(float(x) for x in fractions)
    if any(x < 0 for x in f) or not math.isclose(sum(f), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions!r}.")
    return f  # type: ignore[return-value]


def split_sizes(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[int, int, int]:
    """Part sizes ``(n_train, n_val, n_test)`` for ``n`` series.

    The validation and test sizes are ``fraction * n`` rounded half up; the
    training part takes the rest. ``split_sizes(259) == (181, 39, 39)``.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}.")
    _, f_val, f_test = _check_fractions(fractions)
    n_val = math.floor(f_val * n + 0.5)
    n_test = math.floor(f_test * n + 0.5)
    n_train = n - n_val - n_test
    if n_train < 0:  # only possible through rounding with tiny n
        n_test += n_train
        n_train = 0
    return n_train, n_val, n_test


def _cut(order: np.ndarray, sizes: tuple[int, int, int]) -> Split:
    a, b = sizes[0], sizes[0] + sizes[1]
    return Split(np.sort(order[:a]), np.sort(order[a:b]), np.sort(order[b:]))


def random_split(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> Split:
    """Plain random split of ``range(n)``: a seeded permutation cut into three parts.

    The permutation comes from ``numpy.random.default_rng(seed)``, so the split is
    reproducible across platforms and NumPy versions that keep the PCG64 stream.
    Sizes follow :func:`split_sizes` (181 / 39 / 39 for ``n = 259``).

    This is the protocol of Neural RDE, LEM and DEER for EigenWorms (pool the
    official train and test files, then split 70 / 15 / 15 with a fixed seed). The
    sizes match theirs; the exact membership of each part depends on the seed and
    is not the same as in their code.
    """
    sizes = split_sizes(n, fractions)
    order = np.random.default_rng(seed).permutation(n)
    return _cut(order, sizes)


def _interleaved_parts(sizes: tuple[int, int, int]) -> np.ndarray:
    """Part labels 0/1/2 in a sequence where each part is spread out evenly.

    Part ``p`` with ``c`` members occupies the ranks of the keys ``(j + 1/2) / c``;
    any run of ``m`` consecutive positions then holds ``m * c / n`` members of
    part ``p`` to within less than two, which is what makes the stratified split
    proportional inside every class.
    """
    keys = [(np.arange(c) + 0.5) / c for c in sizes]
    labels = np.concatenate([np.full(c, p) for p, c in enumerate(sizes)])
    order = np.argsort(np.concatenate(keys), kind="stable")
    return labels[order]


def stratified_split(
    y: np.ndarray, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> Split:
    """Split ``range(len(y))`` into three parts that keep the class proportions.

    Meant for small or imbalanced datasets where a plain random split can leave a
    class (almost) absent from the validation or test part.

    The total part sizes are exactly those of :func:`split_sizes` (so they match
    :func:`random_split`); inside every class each part receives its share of
    that class to within two series (usually within one). How: the members of each class are
    shuffled with ``numpy.random.default_rng(seed)`` and laid out class after
    class; the part labels are spread evenly along that sequence (see
    ``_interleaved_parts``), so every class block is cut proportionally.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y.shape}.")
    sizes = split_sizes(y.size, fractions)
    rng = np.random.default_rng(seed)
    blocks = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    ordered = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
    parts = _interleaved_parts(sizes)
    return Split(*(np.sort(ordered[parts == p]) for p in range(3)))


def official_split(y: np.ndarray, n_train: int, val_fraction: float = 0.0, seed: int = 0) -> Split:
    """The official train / test split of a pooled ``train + test`` array.

    Series ``0 .. n_train-1`` came from the official training file and the rest
    from the official test file. With ``val_fraction > 0`` a validation part of
    ``round(val_fraction * n_train)`` series is carved out of the official
    training part, stratified by class (see :func:`stratified_split`); the test
    part is never touched.
    """
    y = np.asarray(y)
    if not 0 <= n_train <= y.size:
        raise ValueError(f"n_train={n_train} is out of range for {y.size} series.")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    test = np.arange(n_train, y.size)
    if val_fraction == 0.0:
        return Split(np.arange(n_train), np.zeros(0, np.int64), test)
    inner = stratified_split(y[:n_train], (1.0 - val_fraction, val_fraction, 0.0), seed)
    return Split(inner.train, inner.val, test)
