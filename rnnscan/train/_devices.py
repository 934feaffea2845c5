"""Where a training run computes: a ``("data", "time")`` mesh over the devices.

Data parallelism: every batch is split over the ``"data"`` axis of the mesh
(``NamedSharding``); the parameters and optimiser state are replicated, and ``jax.jit``
inserts the all-reduce of the gradients. Sequence parallelism (``train.sequence_devices >
1``): every series is also split in time over the ``"time"`` axis, each RNN solving its
block of steps (:func:`rnnscan.sharded_solve`). On one device all of this is the identity.

Multi-host: after ``jax.distributed.initialize()`` (one process per host, each running
the same command), ``jax.devices()`` lists every device of every host. Each process loads
the same data and draws the same batches (the order depends only on the seed);
:meth:`DeviceLayout.batch` and :meth:`DeviceLayout.replicate` place, on each process, only
its own devices' parts of the global arrays, and :meth:`DeviceLayout.fetch` gathers a
split result back from every process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._config import ConfigError, LoopConfig

__all__ = ["DeviceLayout", "device_layout"]

DATA, TIME = "data", "time"


@dataclasses.dataclass(frozen=True)
class DeviceLayout:
    """The mesh of a run and how arrays are placed on it."""

    mesh: Mesh

    @property
    def devices(self) -> int:
        return self.mesh.size

    @property
    def data_devices(self) -> int:
        return self.mesh.shape[DATA]

    @property
    def sequence_devices(self) -> int:
        return self.mesh.shape[TIME]

    def model_kwargs(self) -> dict[str, Any]:
        """What :class:`rnnscan.nn.SequenceClassifier` needs to split time (nothing when
        time is not split: data parallelism needs no help from the model)."""
        if self.sequence_devices == 1:
            return {}
        return dict(mesh=self.mesh, time_axis=TIME, batch_axis=DATA)

    def replicate(self, tree: Any) -> Any:
        """Every leaf on every device of the mesh, over every process (parameters,
        optimiser state). Each process builds its own devices' copies from the value it
        holds (every process computes the same initial tree from the same seed):
        ``jax.device_put`` would need every device of the mesh to be this process's."""
        sharding = NamedSharding(self.mesh, P())
        return jax.tree_util.tree_map(lambda leaf: _replicated(leaf, sharding), tree)

    def fetch(self, array: Any) -> np.ndarray:
        """The whole of a global array on this host: its value when this process holds
        all of it (one process, or a replicated array), else gathered from every process
        (a collective: every process must call it)."""
        if not isinstance(array, jax.Array) or array.is_fully_addressable:
            return np.asarray(array)
        if array.is_fully_replicated:
            return np.asarray(array.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))

    def batch(
        self,
        x: np.ndarray,
        y: np.ndarray,
        weights: np.ndarray,
        seq_lengths: np.ndarray | None = None,
    ):
        """``(x, y, weights)`` split over the data axis, padded to a multiple of its size
        with copies of the first series of weight 0 (they change no loss, gradient or
        count); with ``seq_lengths`` (valid steps per series) ``(x, y, weights,
        seq_lengths)``."""
        arrays = [x, y, weights] + ([] if seq_lengths is None else [seq_lengths])
        pad = -len(y) % self.data_devices
        if pad:
            first = np.zeros(pad, np.int64)
            arrays = [np.concatenate([a, a[first]]) for a in arrays]
            arrays[2][-pad:] = 0.0  # the copies weigh nothing
        sharding = NamedSharding(self.mesh, P(DATA))
        return tuple(_put(a, sharding) for a in arrays)

    def describe(self) -> dict[str, int]:
        return {"devices": self.devices, "mesh": dict(self.mesh.shape)}


def _put(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from the host copy every process holds (one process or many)."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _replicated(leaf: Any, sharding: NamedSharding) -> Any:
    """``leaf`` on every device of ``sharding`` (a replicated global array); typed PRNG
    keys (the model's random streams) go as their raw key data and are wrapped again."""
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        data = _put(np.asarray(jax.random.key_data(leaf)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    if not isinstance(leaf, (jax.Array, np.ndarray)):
        return leaf
    return _put(np.asarray(leaf), sharding)


def device_layout(config: LoopConfig) -> DeviceLayout:
    """The mesh of ``config``: ``train.devices`` devices (default: all, over every host),
    ``train.sequence_devices`` of them along ``"time"`` and the rest along ``"data"``."""
    available = jax.devices()
    count = len(available) if config.devices is None else config.devices
    if count > len(available):
        raise ConfigError(f"train.devices={count}, but only {len(available)} devices are available")
    if count < len(available) and jax.process_count() > 1:
        raise ConfigError(
            f"train.devices={count}: a run over {jax.process_count()} processes uses all "
            f"{len(available)} devices of all of them (leave train.devices unset)"
        )
    if count % config.sequence_devices:
        raise ConfigError(
            f"train.sequence_devices={config.sequence_devices} must divide the "
            f"{count} devices used (train.devices)"
        )
    grid = np.array(available[:count]).reshape(count // config.sequence_devices, -1)
    return DeviceLayout(Mesh(grid, (DATA, TIME)))
