"""Per-channel standardisation fitted on the training part only.

Statistics are computed per channel over all samples and all time steps of the
*training* series and then applied unchanged to validation and test series, so
no information from the held-out parts leaks into the preprocessing.

Two estimators are offered:

``"standard"``
    mean and standard deviation.
``"robust"``
    median and the *normalised* interquartile range ``(q75 - q25) / 1.349``.
    The factor 1.349 (the IQR of a standard normal) makes the scale equal to the
    standard deviation on clean Gaussian data, so the two options give values on
    the same footing. Use it when the data has heavy outliers: in UEA EigenWorms
    one channel ranges from about -180 to 1042 while its quartiles are near +-1.7,
    so the standard deviation is inflated by a handful of extreme frames and
    squashes the typical signal towards zero.

Optionally the standardised values can be clipped to ``[-clip, clip]`` to tame
the outliers that remain after a robust scaling.

Series of unequal length (padded, with ``lengths``) and missing values (NaN):
the statistics are computed over the valid, observed values only, so neither the
padding nor the gaps shift them; :meth:`Standardizer.transform` keeps NaN as NaN
and leaves the padding at 0.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["IQR_TO_STD", "StandardizeMethod", "Standardizer"]

StandardizeMethod = Literal["standard", "robust"]

#: Interquartile range of a standard normal distribution (2 * 0.6744897...).
IQR_TO_STD = 1.3489795003921634


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Fitted per-channel statistics: ``(x - center) / scale``, optionally clipped.

    Attributes:
        center: per-channel location, shape ``(C,)`` (mean or median).
        scale: per-channel scale, shape ``(C,)`` (std or normalised IQR); channels
            whose scale is (nearly) zero get scale 1, so constant channels map to 0.
        method: ``"standard"`` or ``"robust"``.
        clip: if not ``None``, standardised values are clipped to ``[-clip, clip]``.
    """

    center: np.ndarray
    scale: np.ndarray
    method: str = "standard"
    clip: float | None = None

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        method: StandardizeMethod = "standard",
        *,
        clip: float | None = None,
        eps: float = 1e-8,
        lengths: np.ndarray | None = None,
    ) -> Standardizer:
        """Estimate the statistics of ``X`` with shape ``(N, T, C)`` (or ``(M, C)``).

        Statistics are computed in float64 over every axis but the last, over the
        first ``lengths[i]`` steps of series ``i`` only (all steps when ``None``),
        ignoring NaN (missing values). A channel with no value at all gets center 0
        and scale 1.
        """
        X = np.asarray(X)
        if X.ndim < 2 or X.shape[0] == 0:
            raise ValueError(f"Need a non-empty array shaped (..., C), got {X.shape}.")
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}.")
        if lengths is not None:
            if X.ndim != 3 or np.shape(lengths) != (X.shape[0],):
                raise ValueError(
                    f"lengths must have shape ({X.shape[0]},) for X of shape (N, T, C) = "
                    f"{X.shape}, got {np.shape(lengths)}."
                )
            X = X[np.arange(X.shape[1])[None, :] < np.asarray(lengths)[:, None]]
        flat = X.reshape(-1, X.shape[-1])
        has_nan = bool(np.isnan(flat).any())
        if method == "standard":
            # The nan-aware versions only when needed: they give the same numbers, slower.
            mean, std = (np.nanmean, np.nanstd) if has_nan else (np.mean, np.std)
            with np.errstate(invalid="ignore", divide="ignore"), _quiet_all_nan():
                center = mean(flat, axis=0, dtype=np.float64)
                scale = std(flat, axis=0, dtype=np.float64)
        elif method == "robust":
            quantile = np.nanquantile if has_nan else np.quantile
            with _quiet_all_nan():
                q25, center, q75 = quantile(flat, [0.25, 0.5, 0.75], axis=0)
            scale = (q75 - q25) / IQR_TO_STD
        else:
            raise ValueError(f"method must be 'standard' or 'robust', got {method!r}.")
        center = np.where(np.isnan(center), 0.0, center)
        scale = np.where(scale > eps, scale, 1.0)  # also replaces NaN
        return cls(
            center=center.astype(np.float64),
            scale=scale.astype(np.float64),
            method=method,
            clip=None if clip is None else float(clip),
        )

    def transform(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Apply the statistics to ``X`` (last axis = channels); returns float32.

        With ``lengths`` (for ``X`` of shape ``(N, T, C)``), the steps after each
        series' end are set to 0. NaN stays NaN.
        """
        X = np.asarray(X)
        if X.shape[-1] != self.center.shape[0]:
            raise ValueError(
                f"X has {X.shape[-1]} channels, the statistics have {self.center.shape[0]}."
            )
        center = self.center.astype(np.float32)
        inv_scale = (1.0 / self.scale).astype(np.float32)
        out = np.asarray(X, dtype=np.float32) - center
        out *= inv_scale
        if self.clip is not None:
            np.clip(out, -self.clip, self.clip, out=out)
        if lengths is not None:
            out[np.arange(out.shape[1])[None, :] >= np.asarray(lengths)[:, None]] = 0.0
        return out

    __call__ = transform

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """Map standardised values back to the original units (clipping is not undone)."""
        Z = np.asarray(Z, dtype=np.float64)
        return (Z * self.scale + self.center).astype(np.float32)

    def __repr__(self) -> str:
        clip = "" if self.clip is None else f", clip={self.clip}"
        return f"Standardizer(method={self.method!r}, channels={self.center.shape[0]}{clip})"


@contextlib.contextmanager
def _quiet_all_nan():
    """Silence numpy's warnings about all-NaN channels (they are handled explicitly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
