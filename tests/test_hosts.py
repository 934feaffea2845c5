"""Training over several real processes on localhost (``jax.distributed``, CPU collectives
over Gloo), as a user runs it: ``python -m rnnscan.train ... --coordinator 127.0.0.1:PORT
--num-processes 2 --process-id I``, each process with 2 forced CPU devices, against the
same command in one process with 4 devices.

* two processes x 2 devices, killed (``kill -9`` of process 1 after a checkpoint) and
  resumed with ``--resume``, give the step losses and the final checkpoint of one process
  x 4 devices (float64, 1e-10); the surviving process ends with one ``error:`` line within
  its ``--peer-timeout``;
* time split over both processes (``train.sequence_devices=4``, float32): the same step
  losses as one process x 4 devices to 1e-6;
* a process whose peer never starts exits with one ``error:`` line within its
  ``--init-timeout``.

Every subprocess has a deadline (the harness's, not the library's: the library must end on
its own, which the tests check by the time it took).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import OPTIMIZATION_FLAG

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 240  # seconds, per command (a hang shows as a failure, not as CI's timeout)

CONFIG = {
    "name": "hosts",
    "data": {
        "source": "synthetic",
        "synthetic": {"num_series": 24, "seq_len": 32, "num_channels": 2, "num_classes": 2},
        "fractions": [0.5, 0.25, 0.25],
    },
    "model": {"cell": "gru", "hidden_features": 4, "num_blocks": 1, "dtype": "float64"},
    "optim": {"lr": 1e-2, "schedule": "constant"},
    "train": {
        "batch_size": 6,  # 2 steps per epoch, one padded to 8 rows (the zero-weight padding)
        "eval_batch_size": 8,
        "eval_every": 2,
        "progress": False,
    },
    "checkpoint": {"every_steps": 1, "max_to_keep": 2},
}
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{OPTIMIZATION_FLAG} --xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("JAX_ENABLE_X64", None)  # model.dtype decides
    return env


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "rnnscan.train", *args]


def _start(args: list[str], log: Path, devices: int) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen(
            _command(args), env=_env(devices), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT
        )


def _hosts(port: int, i: int, *extra: str) -> list[str]:
    return [
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
        "--process-id",
        str(i),
        *extra,
    ]


def _wait(procs: list[subprocess.Popen], logs: list[Path]) -> list[int]:
    deadline = time.monotonic() + DEADLINE
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        pytest.fail("a process ran past the deadline:\n" + _logs(logs))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _logs(logs: list[Path]) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in logs if log.exists())


def two_processes(args: list[str], tmp: Path, tag: str) -> None:
    port = _free_port()
    logs = [tmp / f"{tag}.p{i}.log" for i in range(2)]
    procs = [_start([*args, *_hosts(port, i)], logs[i], 2) for i in range(2)]
    codes = _wait(procs, logs)
    assert codes == [0, 0], _logs(logs)


def one_process(args: list[str], tmp: Path, tag: str) -> None:
    log = tmp / f"{tag}.log"
    codes = _wait([_start(args, log, 4)], [log])
    assert codes == [0], _logs([log])


def train_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, len(steps) + 1)), steps
    return [r["loss"] for r in records if r["kind"] == "train"]


def checkpoint_leaves(run: Path, step: int) -> list[np.ndarray]:
    """The training state of a checkpoint (parameters, random streams, optimiser state),
    restored on this process's one device, as NumPy arrays."""
    import jax
    import orbax.checkpoint as ocp

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    path = (run / "checkpoints" / str(step) / "state").absolute()
    with ocp.StandardCheckpointer() as ckpt:
        meta = ckpt.metadata(path)
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            getattr(meta, "item_metadata", meta),
        )
        restored = ckpt.restore(path, target)
    leaves = []
    for x in jax.tree_util.tree_leaves(restored):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        leaves.append(np.asarray(x))
    return leaves


@pytest.fixture
def config_file(tmp_path) -> Path:
    import yaml

    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def test_two_processes_killed_and_resumed_match_one_process(tmp_path, config_file):
    base = ["--config", str(config_file)]
    # One process, 4 devices, STEPS steps: the reference.
    one = tmp_path / "one"
    one_process(
        [*base, "--out-dir", str(one), "--set", f"train.max_steps={STEPS}"], tmp_path, "one"
    )

    # Two processes x 2 devices, a long run: kill -9 process 1 once a checkpoint of step
    # >= 2 exists; process 0 must notice within its --peer-timeout and say so in one line.
    run = tmp_path / "two"
    port = _free_port()
    args = [*base, "--out-dir", str(run), "--set", "train.epochs=1000", "--peer-timeout", "5"]
    logs = [tmp_path / f"killed.p{i}.log" for i in range(2)]
    procs = [_start([*args, *_hosts(port, i)], logs[i], 2) for i in range(2)]
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            done = [int(p.name) for p in run.glob("checkpoints/*") if p.name.isdigit()]
            if done and max(done) >= 2:
                break
            assert all(p.poll() is None for p in procs), _logs(logs)
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint in time:\n" + _logs(logs))
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = _wait([procs[0]], logs)[0]
        took = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    lines = logs[0].read_text().strip().splitlines()
    assert code == 1, _logs(logs)
    assert lines[-1].startswith("error: process 0: stopping, process 1 of 2 sent no heartbeat"), (
        _logs(logs)
    )
    assert took < 60, took

    # Both resume from the last checkpoint and run to STEPS.
    two_processes(["--resume", str(run), "--set", f"train.max_steps={STEPS}"], tmp_path, "resumed")
    a, b = train_losses(run), train_losses(one)
    assert len(a) == len(b) == STEPS
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=0)
    summary_two = json.loads((run / "summary.json").read_text())
    summary_one = json.loads((one / "summary.json").read_text())
    assert (summary_two["processes"], summary_two["devices"]) == (2, 4)
    assert summary_two["test"]["count"] == summary_one["test"]["count"]
    np.testing.assert_allclose(summary_two["test"]["loss"], summary_one["test"]["loss"], rtol=1e-10)
    two_state, one_state = checkpoint_leaves(run, STEPS), checkpoint_leaves(one, STEPS)
    assert len(two_state) == len(one_state)
    for x, y in zip(two_state, one_state):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)


def test_time_split_over_two_processes_matches_one_process(tmp_path, config_file):
    args = [
        "--config",
        str(config_file),
        "--set",
        "train.max_steps=2",
        "--set",
        "train.sequence_devices=4",  # every series split in time over both processes
        "--set",
        "model.dtype=float32",
        "--set",
        "checkpoint.enabled=false",
        "--set",
        "data.fractions=[1.0, 0.0, 0.0]",  # training steps only: two programs fewer
    ]
    two, one = tmp_path / "two", tmp_path / "one"
    two_processes([*args, "--out-dir", str(two)], tmp_path, "two")
    one_process([*args, "--out-dir", str(one)], tmp_path, "one")
    np.testing.assert_allclose(train_losses(two), train_losses(one), rtol=1e-6, atol=0)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["mesh"] == {"data": 1, "time": 4}


def test_a_process_that_never_joins(tmp_path, config_file):
    """Process 1 never starts: process 0 ends with one error line after --init-timeout."""
    log = tmp_path / "alone.log"
    args = ["--config", str(config_file), "--out-dir", str(tmp_path / "run")]
    started = time.monotonic()
    proc = _start([*args, *_hosts(_free_port(), 0, "--init-timeout", "3")], log, 2)
    code = _wait([proc], [log])[0]
    took = time.monotonic() - started
    lines = log.read_text().strip().splitlines()
    assert code == 1, log.read_text()
    assert lines[-1].startswith("error: process 0 of 2: not every process joined"), lines
    assert took < 60, took
