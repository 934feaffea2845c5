"""Timescales of recurrent units: from the leak of a leaky unit, and from its activity.

Khajehabdollahi et al., "Emergent mechanisms for long timescales depend on training curriculum
and affect performance in memory tasks" (arXiv:2309.12927, 2023) separate two sources of
a unit's memory: its single-neuron time constant τ (a parameter of a leaky unit, see
:class:`rnnscan.nn.LeakyRNNCell`) and the network-mediated timescale τ_net, the decay time of
the autocorrelation of the unit's activity inside the running network, which the recurrent
interactions can make much longer (or shorter) than τ. The paper fits an exponential decay to
each unit's autocorrelation; :func:`network_timescales` does so by a weighted log-linear fit.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import ArrayLike

__all__ = ["NetworkTimescales", "autocorrelation", "leak_timescale", "network_timescales"]


def leak_timescale(tau: ArrayLike) -> np.ndarray:
    r"""The decay timescale, in steps, of an isolated leaky unit with time constant τ >= 1.

    Alone and linear (h_t = (1 - 1/τ) h_{t-1}), a leaky unit's activity, and its
    autocorrelation, decay as (1 - 1/τ)^k = exp(-k / τ_leak) with

    .. math:: \tau_{\text{leak}} = -1 / \log(1 - 1/\tau) = \tau - \tfrac12 + O(1/\tau),

    the value the network timescale τ_net of :func:`network_timescales` takes for a unit
    that the network does not drive. τ = 1 (no leak) gives 0.
    """
    tau = np.asarray(tau, np.float64)
    if np.any(~(tau >= 1.0)):
        raise ValueError(f"tau: every time constant must be >= 1, got min {np.min(tau)}")
    with np.errstate(divide="ignore"):
        return np.where(tau == 1.0, 0.0, -1.0 / np.log1p(-1.0 / tau))


def autocorrelation(activity: ArrayLike, max_lag: int) -> np.ndarray:
    """The autocorrelation of every unit's activity at lags 0 .. ``max_lag``.

    ``activity`` is ``(T, n)`` (one run of n units) or ``(B, T, n)`` (B independent runs,
    pooled). Each run's mean over time is removed per unit; AC(k) is the mean of
    a_t a_{t+k} over all available pairs (all runs), divided by the mean of a_t² (so
    AC(0) = 1). A unit whose activity is constant in every run has no autocorrelation:
    its column is NaN.

    Returns:
        float64 ``(max_lag + 1, n)``.
    """
    a = np.asarray(activity, np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"activity must be (T, n) or (B, T, n), got shape {np.shape(activity)}")
    T = a.shape[1]
    if not (isinstance(max_lag, (int, np.integer)) and 1 <= max_lag < T):
        raise ValueError(f"max_lag must be an int in 1 .. T-1 = {T - 1}, got {max_lag!r}")
    # A constant unit's variance is rounding error: relative to its scale, it is not variance.
    scale = np.max(np.abs(a), axis=(0, 1))
    a = a - a.mean(axis=1, keepdims=True)
    variance = np.mean(a * a, axis=(0, 1))
    constant = variance <= (1e-12 * scale) ** 2
    lagged = np.stack([np.mean(a[:, : T - k] * a[:, k:], axis=(0, 1)) for k in range(max_lag + 1)])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(constant, np.nan, lagged / variance)


@dataclasses.dataclass(frozen=True)
class NetworkTimescales:
    """The fitted network-mediated timescales of n units (:func:`network_timescales`).

    Attributes:
        tau: τ_net per unit, in steps ``(n,)``: NaN for a unit with constant activity, 0 for
            one whose autocorrelation is not positive at lag 1.
        amplitude: the fitted A of AC(k) ≈ A exp(-k / τ_net) ``(n,)`` (A < 1: part of the
            variance decorrelates within a step, e.g. the input's own white noise).
        fitted_lags: the number K of lags 1 .. K the fit used ``(n,)``.
        reached_max_lag: whether the autocorrelation was still above ``cutoff`` at
            ``max_lag`` ``(n,)``: τ_net is then fitted on the start of the decay only (a
            lower confidence; raise ``max_lag`` and the length of the runs).
        autocorrelation: AC at lags 0 .. max_lag ``(max_lag + 1, n)``.
    """

    tau: np.ndarray
    amplitude: np.ndarray
    fitted_lags: np.ndarray
    reached_max_lag: np.ndarray
    autocorrelation: np.ndarray


def network_timescales(
    activity: ArrayLike, *, max_lag: int = 100, cutoff: float = 0.05
) -> NetworkTimescales:
    r"""Fit an exponential decay AC(k) ≈ A exp(-k / τ_net) to every unit's autocorrelation.

    The autocorrelation (:func:`autocorrelation`) is fitted at lags k = 1 .. K, K the last
    lag before it first falls to ``cutoff`` or below (at most ``max_lag``), by weighted least
    squares on its logarithm, log AC(k) = log A - k / τ_net, with weights AC(k)² (the
    logarithm of a noisy small value is noisy: var(log AC) ≈ var(AC) / AC²). Lag 0 is left
    out, so that a jump between lag 0 and lag 1 (a white component of the activity, such as
    the random input passed straight through) changes A, not τ_net. With K = 1 (AC decays
    below ``cutoff`` after one lag) τ_net = -1 / log AC(1), through A = 1; with AC(1) <= 0,
    τ_net = 0.

    For an AR(1) process a_t = φ a_{t-1} + ε_t, AC(k) = φ^k and τ_net = -1 / log φ.

    Args:
        activity: ``(T, n)`` or ``(B, T, n)``: the units' activity in one or B runs (for
            the paper's measurement: the trained network driven by a long random input,
            after a burn-in).
        max_lag: the longest lag computed and fitted (< T).
        cutoff: where the fit stops, in (0, 1).
    """
    if not 0.0 < cutoff < 1.0:
        raise ValueError(f"cutoff must be in (0, 1), got {cutoff!r}")
    ac = autocorrelation(activity, max_lag)
    n = ac.shape[1]
    tau = np.full(n, np.nan)
    amplitude = np.full(n, np.nan)
    fitted = np.zeros(n, np.int64)
    reached = np.zeros(n, bool)
    lags = np.arange(1, max_lag + 1, dtype=np.float64)
    for j in range(n):
        values = ac[1:, j]
        if np.isnan(values[0]):
            continue
        below = np.flatnonzero(values <= cutoff)
        K = int(below[0]) if below.size else max_lag
        reached[j] = not below.size
        fitted[j] = K
        if K >= 2:
            w = values[:K] ** 2
            x, y = lags[:K], np.log(values[:K])
            xm, ym = np.average(x, weights=w), np.average(y, weights=w)
            slope = np.sum(w * (x - xm) * (y - ym)) / np.sum(w * (x - xm) ** 2)
            tau[j] = -1.0 / slope if slope < 0 else np.inf
            amplitude[j] = np.exp(ym - slope * xm)
        elif values[0] >= 1:  # no decay at all within one lag
            tau[j], amplitude[j] = np.inf, 1.0
        elif values[0] > 0:
            tau[j], amplitude[j] = -1.0 / np.log(values[0]), 1.0
        else:
            tau[j], amplitude[j] = 0.0, 0.0
    return NetworkTimescales(
        tau=tau,
        amplitude=amplitude,
        fitted_lags=fitted,
        reached_max_lag=reached,
        autocorrelation=ac,
    )
