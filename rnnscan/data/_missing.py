"""Missing values (``?`` in a ``.ts`` file, NaN in the arrays): refuse, zero or carry forward.

Policies (``missing=`` of the loaders, ``data.missing`` of a training config):

``"error"`` (the default)
    refuse the data, naming the file and the number of missing values.
``"zero"``
    replace every missing value by 0 *after* standardisation, i.e. by the training
    mean of its channel (a literal 0 when the data is not standardised).
``"ffill"``
    carry the last observed value of the channel forward; values missing at the
    start of a series take the first observed one (backfill); a channel with no
    observation at all in a series becomes 0 (as for ``"zero"``).

With ``mask=True`` one channel per input channel is appended, 1 where the value
was observed and 0 where it was filled in (and at the padding after a series'
end), so a model can tell the two apart.

Filling happens after standardisation, whose statistics are computed over the
observed values only; forward filling commutes with the per-channel affine map,
so filling before or after gives the same values.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ._ragged import valid_mask

__all__ = ["MISSING_POLICIES", "MissingPolicy", "count_missing", "fill_missing"]

MissingPolicy = Literal["error", "zero", "ffill"]
MISSING_POLICIES: tuple[str, ...] = ("error", "zero", "ffill")


def count_missing(X: np.ndarray, lengths: np.ndarray | None = None) -> int:
    """Number of NaN values inside the valid steps of ``X`` ``(N, T, C)``."""
    valid = valid_mask(lengths, X.shape)
    return int(np.count_nonzero(np.isnan(X) & valid[..., None]))


def _forward_fill(X: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Carry the last observed value forward along axis 1, backfill the start; entries
    with no observation in their (series, channel) stay NaN."""
    n, t, _ = X.shape
    steps = np.arange(t)[None, :, None]
    last = np.maximum.accumulate(np.where(observed, steps, -1), axis=1)
    # The first observation of each (series, channel), for the steps before it.
    first = np.argmax(observed, axis=1)[:, None, :]
    source = np.where(last >= 0, last, first)
    filled = np.take_along_axis(X, np.broadcast_to(source, X.shape), axis=1)
    return np.where(observed.any(axis=1, keepdims=True), filled, np.nan)


def fill_missing(
    X: np.ndarray,
    lengths: np.ndarray | None,
    policy: MissingPolicy,
    *,
    mask: bool = False,
) -> np.ndarray:
    """``X`` ``(N, T, C)`` with its NaN values filled by ``policy`` (``"zero"`` or
    ``"ffill"``), the padding set to 0, and with ``mask`` the ``C`` observed-mask
    channels appended (shape ``(N, T, 2C)``). ``"error"`` leaves ``X`` unchanged
    except for the mask (the caller has checked that nothing is missing)."""
    if policy not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {', '.join(MISSING_POLICIES)}, got {policy!r}.")
    X = np.asarray(X, dtype=np.float32)
    valid = valid_mask(lengths, X.shape)[..., None]
    observed = ~np.isnan(X) & valid
    if policy == "ffill" and not observed.all(where=valid):
        X = _forward_fill(np.where(valid, X, np.nan), observed)
    out = np.where(valid & ~np.isnan(X), X, 0.0).astype(np.float32)
    if mask:
        out = np.concatenate([out, observed.astype(np.float32)], axis=-1)
    return out
