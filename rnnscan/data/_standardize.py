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
"""

from __future__ import annotations

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
    ) -> Standardizer:
        """Estimate the statistics of ``X`` with shape ``(N, T, C)`` (or ``(M, C)``).

        Statistics are computed in float64 over every axis but the last.
        """
        X = np.asarray(X)
        if X.ndim < 2 or X.shape[0] == 0:
            raise ValueError(f"Need a non-empty array shaped (..., C), got {X.shape}.")
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}.")
        flat = X.reshape(-1, X.shape[-1])
        if method == "standard":
            center = flat.mean(axis=0, dtype=np.float64)
            scale = flat.std(axis=0, dtype=np.float64)
        elif method == "robust":
            q25, center, q75 = np.quantile(flat, [0.25, 0.5, 0.75], axis=0)
            scale = (q75 - q25) / IQR_TO_STD
        else:
            raise ValueError(f"method must be 'standard' or 'robust', got {method!r}.")
        scale = np.where(scale > eps, scale, 1.0)
        return cls(
            center=center.astype(np.float64),
            scale=scale.astype(np.float64),
            method=method,
            clip=None if clip is None else float(clip),
        )

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Apply the statistics to ``X`` (last axis = channels); returns float32."""
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
        return out

    __call__ = transform

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """Map standardised values back to the original units (clipping is not undone)."""
        Z = np.asarray(Z, dtype=np.float64)
        return (Z * self.scale + self.center).astype(np.float32)

    def __repr__(self) -> str:
        clip = "" if self.clip is None else f", clip={self.clip}"
        return f"Standardizer(method={self.method!r}, channels={self.center.shape[0]}{clip})"
