"""Several processes (hosts) in one training run, and what keeps the failure of one from
hanging the others.

Every process runs the same command with ``--coordinator HOST:PORT --num-processes N
--process-id I``; :func:`initialize` joins them with ``jax.distributed.initialize`` (CPU
collectives over Gloo where JAX has none chosen), after which ``jax.devices()`` lists the
devices of every process and one mesh spans them all.

A multi-process JAX program that loses a process hangs in its next collective until the
distributed runtime notices the missing heartbeats, and then aborts with a C++ stack
trace. Here instead:

* **a process that never joins**: every process waits at most ``init_timeout`` seconds
  for all ``N`` to connect, then exits with one ``error:`` line (status 1);
* **a process that dies, hangs or loses the network** while training: each process
  publishes a heartbeat counter in the coordinator's key-value store every second and
  watches the others'; when one stays still for ``peer_timeout`` seconds, the others exit
  with one ``error:`` line naming it (status 1);
* **a process that fails with an error** (:func:`fail`) publishes its one-line message
  before it exits; the others exit at once with that message.

JAX's own heartbeat timeout is set ``BACKSTOP`` seconds later than ``peer_timeout``, as a
backstop. One case still ends with JAX's abort (several lines, within a second): the loss
of the coordinator itself (process 0), whose key-value store goes with it.

The key-value store is the distributed client's (``jax._src.distributed.global_state``,
which ``jax.experimental.multihost_utils`` uses too); without it (another JAX) the
watch is off and the backstop alone bounds a hang.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

__all__ = [
    "DEFAULT_INIT_TIMEOUT",
    "DEFAULT_PEER_TIMEOUT",
    "all_processes",
    "barrier",
    "broadcast_int",
    "fail",
    "finish",
    "initialize",
    "is_primary",
    "process_count",
    "process_index",
    "runtime_failure",
]

#: Seconds every process waits for all of them to join.
DEFAULT_INIT_TIMEOUT = 45.0
#: Seconds without a heartbeat after which a process counts as lost.
DEFAULT_PEER_TIMEOUT = 20.0
#: How much later JAX's own heartbeat and shutdown timeouts come.
BACKSTOP = 30
#: Seconds between heartbeats.
PERIOD = 1.0
#: Exit status when the run fails because of another process, or a runtime failure.
EXIT_FAILED = 1

_PREFIX = "rnnscan/hosts"
_watch: _Watch | None = None


def process_count() -> int:
    import jax

    return jax.process_count()


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count_if_initialized() -> int:
    """The number of processes when this module joined them, else 1 (without touching
    JAX's backends)."""
    return _watch.count if _watch is not None else 1


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (a no-op in a one-process run)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_int(value: int) -> int:
    """Process 0's ``value``, on every process."""
    if process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def all_processes(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (each gives its own)."""
    if process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.array([bool(flag)]))))


def _error(message: str, code: int = EXIT_FAILED) -> None:
    """One ``error:`` line on stderr and an immediate exit (no JAX shutdown barrier,
    which would wait for the lost process)."""
    sys.stdout.flush()
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()
    os._exit(code)


def initialize(
    coordinator: str | None,
    num_processes: int | None,
    process_id: int | None,
    *,
    init_timeout: float = DEFAULT_INIT_TIMEOUT,
    peer_timeout: float = DEFAULT_PEER_TIMEOUT,
) -> None:
    """``jax.distributed.initialize`` with a bounded wait for the other processes, then
    the heartbeat watch (see the module docstring). ``None`` arguments are left to JAX's
    cluster detection (SLURM, Cloud TPU, ...)."""
    import jax

    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a JAX without the option
        pass
    where = f"process {process_id}" if process_id is not None else "this process"
    of = f" of {num_processes}" if num_processes is not None else ""
    timer = threading.Timer(
        init_timeout,
        _error,
        [
            f"{where}{of}: not every process joined the coordinator "
            f"{coordinator or '(auto-detected)'} within {init_timeout:g} s (--init-timeout); "
            "start the same command on every host with --process-id 0 .. N-1, the same "
            "--coordinator (process 0's host and a free port) and --num-processes N"
        ],
    )
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=int(init_timeout) + BACKSTOP,
            heartbeat_timeout_seconds=int(peer_timeout) + BACKSTOP,
            shutdown_timeout_seconds=int(peer_timeout) + BACKSTOP,
        )
    except Exception as err:  # noqa: BLE001 - any failure to join is reported in one line
        timer.cancel()
        _error(f"{where}{of}: could not join the coordinator {coordinator}: {err}")
    timer.cancel()
    if jax.process_count() > 1:
        _start_watch(peer_timeout)


def _client() -> Any:
    try:
        from jax._src import distributed

        return distributed.global_state.client
    except (ImportError, AttributeError):
        return None


class _Watch(threading.Thread):
    """Publishes this process's heartbeat and watches the others' (see the module
    docstring)."""

    def __init__(self, client: Any, peer_timeout: float):
        super().__init__(name="rnnscan-hosts-watch", daemon=True)
        self.client = client
        self.peer_timeout = peer_timeout
        self.index, self.count = process_index(), process_count()
        self.stopped = threading.Event()

    def key(self, kind: str, index: int | None = None) -> str:
        return f"{_PREFIX}/{kind}/{self.index if index is None else index}"

    def publish(self, kind: str, value: str) -> None:
        self.client.key_value_set(self.key(kind), value, allow_overwrite=True)

    def entries(self) -> dict[str, str]:
        return dict(self.client.key_value_dir_get(_PREFIX))

    def run(self) -> None:
        beat = 0
        last: dict[int, tuple[str | None, float]] = {}
        peers = [i for i in range(self.count) if i != self.index]
        while not self.stopped.is_set():
            beat += 1
            try:
                self.publish("beat", str(beat))
                entries = self.entries()
            except Exception as err:  # noqa: BLE001
                if self.stopped.is_set():
                    return
                _error(
                    f"process {self.index} of {self.count}: lost the coordinator (process 0): "
                    f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                )
            now = time.monotonic()
            for peer in peers:
                failed = entries.get(self.key("failed", peer))
                if failed is not None:
                    self._stop_after(f"process {peer} of {self.count} failed: {failed}")
                if self.key("done", peer) in entries:
                    continue
                value = entries.get(self.key("beat", peer))
                seen, since = last.get(peer, (None, now))
                if value != seen:
                    last[peer] = (value, now)
                elif now - since > self.peer_timeout:
                    self._stop_after(
                        f"process {peer} of {self.count} sent no heartbeat for "
                        f"{self.peer_timeout:g} s (--peer-timeout): it died, hangs or lost "
                        "the network; resume the run from its last checkpoint with --resume"
                    )
            self.stopped.wait(PERIOD)

    def _stop_after(self, message: str) -> None:
        if self.stopped.is_set():
            return
        try:
            self.publish("stopping", "1")
        except Exception:  # noqa: BLE001, S110 - exiting anyway
            pass
        _linger(self)
        _error(f"process {self.index}: stopping, {message}")


def _linger(watch: _Watch, limit: float = 5.0) -> None:
    """Process 0 holds the key-value store: before it exits on an error, give the others
    a moment to read why (else they only see the coordinator vanish)."""
    if watch.index != 0:
        return
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            entries = watch.entries()
        except Exception:  # noqa: BLE001
            return
        gone = {
            i
            for i in range(watch.count)
            if any(watch.key(k, i) in entries for k in ("failed", "stopping", "done"))
        }
        if len(gone | {0}) == watch.count:
            return
        time.sleep(PERIOD / 4)


def _start_watch(peer_timeout: float) -> None:
    global _watch
    client = _client()
    if client is None or not hasattr(client, "key_value_dir_get"):
        return
    _watch = _Watch(client, peer_timeout)
    _watch.start()


def fail(message: str, code: int) -> None:
    """Tell the other processes this one failed (``message``, one line), and exit with
    ``code`` without JAX's shutdown barrier. A no-op without a multi-process watch."""
    watch = _watch
    if watch is None:
        return
    watch.stopped.set()
    try:
        watch.publish("failed", " ".join(message.split()))
    except Exception:  # noqa: BLE001, S110 - exiting anyway
        pass
    _linger(watch)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def runtime_failure(err: BaseException) -> None:
    """A collective failed (``err``, a JAX runtime error such as Gloo's "Connection reset
    by peer"): most likely another process is gone. Give the watch the time to name it
    (it then ends this process), else end with ``err`` in one line. A no-op without a
    multi-process watch."""
    watch = _watch
    if watch is None:
        return
    if watch.is_alive():
        watch.join(timeout=watch.peer_timeout + 3 * PERIOD)
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    message = f"process {watch.index} of {watch.count}: a collective failed: {first}"
    sys.stderr.write(f"error: {message}\n")
    fail(message, EXIT_FAILED)


def finish() -> None:
    """This process is done: the others stop watching it, and it stops watching them
    (JAX's shutdown barrier then waits for every process)."""
    watch = _watch
    if watch is None:
        return
    try:
        watch.publish("done", "1")
    except Exception:  # noqa: BLE001, S110
        pass
    watch.stopped.set()
    watch.join(timeout=2 * PERIOD)
