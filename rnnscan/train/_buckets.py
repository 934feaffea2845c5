"""Batches of series of similar length: buckets with one fixed padded length each.

Series of unequal length are stored padded to the longest one. Padding every batch
to that length makes a batch of short series pay for the longest series of the
problem; instead the training lengths are cut at quantiles into ``length_buckets``
buckets, and every batch is drawn from one bucket and padded only to that bucket's
longest length. Each bucket has one fixed shape ``(batch_size, bucket_length, C)``,
so the jitted steps compile once per bucket, never per batch.

The order is still a pure function of ``(seed, epoch)``: within each bucket the
members are permuted by ``default_rng([seed, epoch])``, cut into batches (the last
one padded with zero-weight series, or dropped with ``drop_last``), and the batches
of all buckets are then shuffled together by the same generator. With one bucket,
or series of equal length, the batches are exactly those of
:func:`rnnscan.train._data.batches` over :func:`~rnnscan.train._data.epoch_order`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ._data import Batch, batches, epoch_order

__all__ = ["BatchPlan", "bucket_lengths"]


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def bucket_lengths(
    train_lengths: np.ndarray, num_buckets: int, max_length: int, multiple: int = 1
) -> tuple[int, ...]:
    """The padded length of each bucket, ascending; the last is ``max_length`` (so every
    series of every part fits one). The others are quantiles of ``train_lengths``,
    rounded up to a multiple of ``multiple`` (the devices splitting time); duplicates
    merge, so there may be fewer buckets than asked for."""
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be positive, got {num_buckets}.")
    cuts = np.quantile(train_lengths, np.arange(1, num_buckets) / num_buckets, method="higher")
    lengths = {min(_round_up(c, multiple), max_length) for c in cuts} | {max_length}
    return tuple(sorted(int(n) for n in lengths))


class BatchPlan:
    """Which series every training and evaluation batch holds, and its padded length.

    Args:
        train_lengths: valid steps of each training series, or ``None`` when every
            series has ``max_length`` steps (then batches are never sliced).
        max_length: the padded length ``T`` of the stored arrays.
        batch_size, drop_last, seed: as in :class:`rnnscan.train.LoopConfig`.
        num_buckets: ``data.length_buckets``.
        multiple: bucket lengths are rounded up to a multiple of this.
    """

    def __init__(
        self,
        train_lengths: np.ndarray | None,
        max_length: int,
        batch_size: int,
        drop_last: bool,
        seed: int,
        num_buckets: int = 1,
        multiple: int = 1,
    ):
        self.num_series = None if train_lengths is None else int(np.asarray(train_lengths).shape[0])
        self.batch_size, self.drop_last, self.seed = batch_size, drop_last, seed
        self.max_length = max_length
        self.lengths: tuple[int, ...] = (max_length,)
        self.train_bucket: np.ndarray | None = None
        if train_lengths is not None and num_buckets > 1:
            self.lengths = bucket_lengths(train_lengths, num_buckets, max_length, multiple)
            self.train_bucket = self.bucket_of(train_lengths)
        self._train_lengths = train_lengths
        self._epoch = lru_cache(maxsize=2)(self._epoch_batches)

    @property
    def bucketed(self) -> bool:
        return self.train_bucket is not None

    def bucket_of(self, lengths: np.ndarray) -> np.ndarray:
        """The bucket of each series: the first whose padded length holds it."""
        return np.searchsorted(np.asarray(self.lengths), np.asarray(lengths), side="left")

    def steps_per_epoch(self, num_series: int) -> int:
        """Batches in one epoch over the ``num_series`` training series."""
        if not self.bucketed:
            count, rest = divmod(num_series, self.batch_size)
            return count + (0 if self.drop_last or rest == 0 else 1)
        sizes = np.bincount(self.train_bucket, minlength=len(self.lengths))
        if self.drop_last:
            return int(np.sum(sizes // self.batch_size))
        return int(np.sum(-(-sizes // self.batch_size)))

    def _epoch_batches(self, num_series: int, epoch: int) -> tuple[Batch, ...]:
        if not self.bucketed:
            order = epoch_order(num_series, self.seed, epoch)
            return tuple(batches(order, self.batch_size, self.drop_last))
        rng = np.random.default_rng([self.seed, epoch])
        out = []
        for b, length in enumerate(self.lengths):
            members = rng.permutation(np.flatnonzero(self.train_bucket == b))
            for batch in batches(members, self.batch_size, self.drop_last):
                out.append(Batch(batch.indices, batch.weights, length))
        return tuple(out[i] for i in rng.permutation(len(out)))

    def batch(self, num_series: int, epoch: int, position: int) -> Batch:
        """Training batch number ``position`` of epoch ``epoch`` (for resuming mid-epoch)."""
        epoch_batches = self._epoch(num_series, epoch)
        if not 0 <= position < len(epoch_batches):
            raise IndexError(f"Batch {position} is past the end of the epoch.")
        return epoch_batches[position]

    def eval_batches(self, lengths: np.ndarray | None, num_series: int, size: int) -> list[Batch]:
        """Evaluation batches of ``size`` series covering every series once: by bucket
        when bucketed, in index order otherwise; each padded with zero-weight copies."""
        groups = [np.arange(num_series)]
        if self.bucketed and lengths is not None:
            bucket = self.bucket_of(lengths)
            groups = [np.flatnonzero(bucket == b) for b in range(len(self.lengths))]
        out = []
        for b, members in enumerate(groups):
            length = self.lengths[b] if self.bucketed else None
            for start in range(0, members.size, size):
                idx = members[start : start + size]
                weights = np.zeros(size, np.float32)
                weights[: idx.size] = 1.0
                padded = np.concatenate([idx, np.full(size - idx.size, members[0], np.int64)])
                out.append(Batch(padded, weights, length))
        return out

    def padded_steps(self, num_series: int) -> tuple[int, int]:
        """``(steps computed, valid steps)`` over one training epoch (epoch 0): what the
        padding costs. Equal-length data: both are ``series x T``."""
        epoch_batches = self._epoch(num_series, 0)
        computed = sum(self.batch_size * (b.length or self.max_length) for b in epoch_batches)
        if self._train_lengths is None:
            return computed, computed
        valid = sum(int(np.sum(self._train_lengths[b.indices] * b.weights)) for b in epoch_batches)
        return computed, valid
