"""A synthetic long-memory classification task, generated on the fly.

Each series is ``T`` steps of Gaussian noise in ``C`` channels. Somewhere in
the first ``marker_region`` fraction of the series a short *marker* (``L``
steps) is added: one fixed pattern per class, with entries ``+-amplitude``.
The class is identifiable only from the marker; everything after it is noise.

Why this tests memory: a recurrent classifier that reads its prediction at the
last step has to detect the marker early and carry that information across the
remaining ``(1 - marker_region) * T`` steps of distracting noise, just like the
classic "copy" and "marker" long-memory tasks. Because the marker position is
random, the model cannot simply look at a fixed time step either. Making ``T``
larger makes the task harder for the memory while leaving the detection
problem unchanged, so the same task scales from quick tests to EigenWorms
lengths (17,984) and beyond.

The task is solvable in principle: correlating the marker region with each of
the ``K`` class patterns (a matched filter) recovers the class almost always
for the default amplitude. Class patterns are drawn as random sign patterns
that differ in at least a quarter of their entries.

Everything is drawn from ``numpy.random.default_rng(seed)`` in a fixed order,
so the data is a deterministic function of the arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._container import Dataset, LabelledSeries, prepare
from ._splits import DEFAULT_FRACTIONS, stratified_split
from ._standardize import StandardizeMethod

__all__ = ["make_synthetic", "make_synthetic_series"]


def _class_patterns(
    rng: np.random.Generator, num_classes: int, marker_len: int, num_channels: int
) -> np.ndarray:
    """``num_classes`` sign patterns ``(L, C)`` that differ pairwise in >= 1/4 of entries."""
    size = marker_len * num_channels
    min_dist = max(1, size // 4)
    for _ in range(1000):
        signs = rng.choice(np.array([-1.0, 1.0], np.float32), size=(num_classes, size))
        diff = (signs[:, None, :] != signs[None, :, :]).sum(-1)
        np.fill_diagonal(diff, size)
        if diff.min() >= min_dist:
            return signs.reshape(num_classes, marker_len, num_channels)
    raise ValueError(
        f"Cannot draw {num_classes} well-separated markers of {marker_len} steps x "
        f"{num_channels} channels; increase marker_len."
    )


def make_synthetic_series(
    num_series: int = 512,
    seq_len: int = 1024,
    num_channels: int = 2,
    num_classes: int = 4,
    *,
    marker_len: int = 16,
    marker_region: float = 0.1,
    amplitude: float = 1.5,
    noise_std: float = 1.0,
    seed: int = 0,
) -> LabelledSeries:
    """Generate the marker task as an unsplit :class:`LabelledSeries`.

    Args:
        num_series: number of series ``N``; classes are balanced (counts differ by
            at most one).
        seq_len: length ``T`` (at least ``marker_len``).
        num_channels: channels ``C``; the marker spans all channels.
        num_classes: classes ``K``.
        marker_len: marker length ``L`` in steps.
        marker_region: the marker lies entirely within the first
            ``max(L, round(marker_region * T))`` steps, at a uniformly random start.
        amplitude: marker entries are ``+-amplitude`` (added to the noise).
        noise_std: standard deviation of the white Gaussian noise.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``X`` float32 ``(N, T, C)``, ``y`` in ``0 .. K-1``, class names
        ``"class0" ..``, and in ``meta``: ``marker_start`` ``(N,)`` and ``marker``
        ``(N, L, C)`` (the pattern added to each series), for inspection and tests.
    """
    if num_series < 1 or num_classes < 2 or num_channels < 1 or marker_len < 1:
        raise ValueError(
            "Need num_series >= 1, num_classes >= 2, num_channels >= 1 and marker_len >= 1."
        )
    if seq_len < marker_len:
        raise ValueError(f"seq_len={seq_len} is shorter than marker_len={marker_len}.")
    if not 0.0 < marker_region <= 1.0:
        raise ValueError(f"marker_region must be in (0, 1], got {marker_region}.")
    rng = np.random.default_rng(seed)
    patterns = amplitude * _class_patterns(rng, num_classes, marker_len, num_channels)
    y = rng.permutation(np.arange(num_series) % num_classes).astype(np.int64)
    region = min(seq_len, max(marker_len, round(marker_region * seq_len)))
    starts = rng.integers(0, region - marker_len + 1, size=num_series)
    X = rng.standard_normal((num_series, seq_len, num_channels), dtype=np.float32)
    if noise_std != 1.0:
        X *= np.float32(noise_std)
    window = starts[:, None] + np.arange(marker_len)  # (N, L) time indices of the marker
    X[np.arange(num_series)[:, None], window] += patterns[y]
    return LabelledSeries(
        name="synthetic_marker",
        X=X,
        y=y,
        class_names=tuple(f"class{k}" for k in range(num_classes)),
        meta={"marker_start": starts.astype(np.int64), "marker": patterns[y]},
    )


def make_synthetic(
    num_series: int = 512,
    seq_len: int = 1024,
    num_channels: int = 2,
    num_classes: int = 4,
    *,
    marker_len: int = 16,
    marker_region: float = 0.1,
    amplitude: float = 1.5,
    noise_std: float = 1.0,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    standardize: StandardizeMethod | None = None,
) -> Dataset:
    """The synthetic long-memory marker task as a split :class:`Dataset`.

    Generates :func:`make_synthetic_series` (see there for the arguments) and
    splits it with :func:`stratified_split` by ``fractions`` using the same
    ``seed``. The noise is already zero-mean with ``noise_std`` spread, so no
    standardisation is applied unless ``standardize`` asks for it.
    """
    series = make_synthetic_series(
        num_series,
        seq_len,
        num_channels,
        num_classes,
        marker_len=marker_len,
        marker_region=marker_region,
        amplitude=amplitude,
        noise_std=noise_std,
        seed=seed,
    )
    split = stratified_split(series.y, fractions, seed)
    return prepare(series, split, standardize=standardize, split_kind="stratified", seed=seed)
