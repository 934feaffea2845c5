"""Series of unequal length as one padded array and a vector of lengths.

A problem whose series have different lengths is stored as ``X`` of shape
``(N, T_max, C)`` (time-major per sample), zero after each series' end, with
``lengths[i]`` the number of valid steps of series ``i``. Nothing is ever
truncated: ``T_max`` is the length of the longest series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["pad_series", "valid_mask"]


def pad_series(series: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``(T_i, C)`` arrays into a zero-padded float32 ``(N, T_max, C)`` and int64
    ``lengths``."""
    lengths = np.array([s.shape[0] for s in series], dtype=np.int64)
    channels = series[0].shape[1] if len(series) else 0
    X = np.zeros((len(series), int(lengths.max(initial=0)), channels), np.float32)
    for i, s in enumerate(series):
        X[i, : s.shape[0]] = s
    return X, lengths


def valid_mask(lengths: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean ``(N, T)``: step ``t`` of series ``i`` is a real step (``t < lengths[i]``).

    ``shape`` is the ``(N, T, ...)`` shape of the padded array; ``lengths=None``
    means every step is valid.
    """
    n, t = shape[0], shape[1]
    if lengths is None:
        return np.ones((n, t), bool)
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]
