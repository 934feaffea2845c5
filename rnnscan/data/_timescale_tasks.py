"""Binary memory tasks whose memory requirement is one integer N: N-parity and N-DMS.

The tasks of Khajehabdollahi et al., "Emergent mechanisms for long timescales depend on
training curriculum and affect performance in memory tasks" (arXiv:2309.12927, 2023).
The input is a stream of i.i.d. fair bits x_t in {0, 1}; at every step t the target is

* N-parity: the parity (XOR) of the last N bits, y_t = x_{t-N+1} ⊕ ... ⊕ x_t, defined from
  t = N - 1 on (the first N - 1 steps have too few bits and are not scored);
* N-DMS (delayed match-to-sample): whether the bit now matches the bit N steps ago,
  y_t = [x_t = x_{t-N}], defined from t = N on.

Solving either at step t needs the last N bits (parity: all of them, DMS: the oldest one
and the current one), so N sets the memory the network must keep. Both targets are balanced
(each is a fair bit independent of the past targets of the same N).

:func:`make_parity` and :func:`make_dms` give per-step targets for one N or several at once
(one target per N: the heads of the multi-head curriculum), with a mask of the scored steps.
:func:`make_timescale_series` gives the classification form the sequence-classifier CLI
trains on (one label per series: the target at the last step).

Everything is drawn from ``numpy.random.default_rng(seed)``, so the data is a deterministic
function of the arguments.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ._container import LabelledSeries

__all__ = [
    "TIMESCALE_TASKS",
    "BitStreams",
    "dms_targets",
    "make_dms",
    "make_parity",
    "make_timescale_series",
    "make_timescale_task",
    "parity_targets",
]

TIMESCALE_TASKS = ("parity", "dms")
"""The task names :func:`make_timescale_task` knows."""


@dataclasses.dataclass(frozen=True)
class BitStreams:
    """Binary input streams with per-step targets for one or several N.

    Attributes:
        task: ``"parity"`` or ``"dms"``.
        ns: the N of each target, ``(K,)`` in order.
        bits: the input bits, int8 ``(B, T)`` in {0, 1}.
        targets: int64 ``(B, T, K)`` in {0, 1}: target k at step t (0 where not scored).
        valid: bool ``(B, T, K)``: whether step t is scored for target k (the same for every
            series: t >= N - 1 for parity, t >= N for DMS).
    """

    task: str
    ns: tuple[int, ...]
    bits: np.ndarray
    targets: np.ndarray
    valid: np.ndarray

    @property
    def inputs(self) -> np.ndarray:
        """The bits as network inputs, float32 ``(B, T, 1)``."""
        return self.bits[..., None].astype(np.float32)


def _check_n(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def _ns(n: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        return (_check_n(n),)
    ns = tuple(_check_n(v, "every n") for v in n)
    if not ns:
        raise ValueError("n: give at least one N")
    return ns


def parity_targets(bits: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, valid)`` of N-parity for bits ``(..., T)``: the XOR of the last ``n`` bits
    at every step (a running XOR: the prefix parity now XOR the prefix parity n steps ago)."""
    n = _check_n(n)
    bits = np.asarray(bits, np.int64)
    prefix = np.cumsum(bits, axis=-1) % 2  # parity of x_0 .. x_t
    shifted = np.zeros_like(prefix)
    shifted[..., n:] = prefix[..., :-n]  # parity of x_0 .. x_{t-n}; 0 before
    valid = np.arange(bits.shape[-1]) >= n - 1
    targets = np.where(valid, prefix ^ shifted, 0)
    return targets, np.broadcast_to(valid, bits.shape)


def dms_targets(bits: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, valid)`` of N-DMS for bits ``(..., T)``: whether x_t equals x_{t-n}."""
    n = _check_n(n)
    bits = np.asarray(bits, np.int64)
    valid = np.arange(bits.shape[-1]) >= n
    delayed = np.zeros_like(bits)
    delayed[..., n:] = bits[..., :-n]
    targets = np.where(valid, (bits == delayed).astype(np.int64), 0)
    return targets, np.broadcast_to(valid, bits.shape)


_TARGETS = {"parity": parity_targets, "dms": dms_targets}


def make_timescale_task(
    task: str,
    num_sequences: int,
    seq_len: int,
    n: int | Sequence[int],
    *,
    seed: int | np.random.Generator = 0,
) -> BitStreams:
    """``num_sequences`` fair bit streams of ``seq_len`` steps with the per-step targets of
    ``task`` (``"parity"`` or ``"dms"``) for ``n`` (one N, or several: one target each).

    ``seed`` may be a ``numpy.random.Generator`` to draw successive batches from one stream.
    """
    if task not in _TARGETS:
        raise ValueError(f"task must be one of {TIMESCALE_TASKS}, got {task!r}")
    ns = _ns(n)
    num_sequences = _check_n(num_sequences, "num_sequences")
    seq_len = _check_n(seq_len, "seq_len")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    bits = rng.integers(0, 2, size=(num_sequences, seq_len), dtype=np.int8)
    pairs = [_TARGETS[task](bits, k) for k in ns]
    targets = np.stack([p[0] for p in pairs], axis=-1)
    valid = np.stack([p[1] for p in pairs], axis=-1)
    return BitStreams(task=task, ns=ns, bits=bits, targets=targets, valid=valid)


def make_parity(
    num_sequences: int,
    seq_len: int,
    n: int | Sequence[int],
    *,
    seed: int | np.random.Generator = 0,
) -> BitStreams:
    """N-parity streams (see :func:`make_timescale_task`)."""
    return make_timescale_task("parity", num_sequences, seq_len, n, seed=seed)


def make_dms(
    num_sequences: int,
    seq_len: int,
    n: int | Sequence[int],
    *,
    seed: int | np.random.Generator = 0,
) -> BitStreams:
    """N-delayed-match-to-sample streams (see :func:`make_timescale_task`)."""
    return make_timescale_task("dms", num_sequences, seq_len, n, seed=seed)


def make_timescale_series(
    task: str,
    num_series: int = 512,
    seq_len: int = 32,
    n: int = 3,
    *,
    seed: int = 0,
) -> LabelledSeries:
    """N-parity or N-DMS as a classification problem: one label per series, the target at its
    last step (the parity of its last ``n`` bits, or whether its last bit matches the one
    ``n`` steps before).

    This is the form the sequence-classifier CLI trains on (``data.source: parity`` / ``dms``,
    keyword arguments under ``data.synthetic``). The per-step form, and the curricula of the
    paper, are :func:`make_timescale_task` and ``python -m rnnscan.train.curriculum``.

    Returns:
        ``X`` float32 ``(N, T, 1)`` bits, ``y`` int64 in {0, 1}, class names ``("0", "1")``
        (``"even"`` / ``"odd"`` for parity, ``"differ"`` / ``"match"`` for DMS), named
        ``"parity<n>"`` / ``"dms<n>"``.
    """
    n = _check_n(n)
    if seq_len < n + (task == "dms"):
        raise ValueError(
            f"seq_len={seq_len} is too short for {task} with n={n}: the last step needs "
            f"{n + (task == 'dms')} bits"
        )
    streams = make_timescale_task(task, num_series, seq_len, n, seed=seed)
    names = ("even", "odd") if task == "parity" else ("differ", "match")
    return LabelledSeries(
        name=f"{task}{n}",
        X=streams.inputs,
        y=streams.targets[:, -1, 0].astype(np.int64),
        class_names=names,
    )
