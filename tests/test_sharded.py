"""Time-split solves end to end on 1, 2, 4 and 8 devices: ``axis_name`` inside
``shard_map``, ``rnnscan.sharded_solve`` / ``sharded_scan``, ``rnnscan.nn.RNN`` with a mesh
and data- and sequence-parallel training, each against the one-device answer.

JAX fixes its device count when it initialises, and this process (conftest imports jax) has
one device, so the checks run in subprocesses with 8 fake CPU devices:
``tests/_sharded_worker.py``, which asserts everything itself and exits nonzero with the list
of what differs. Two groups per subprocess, so that ``pytest -n 2`` runs them side by side.
"""

import os
import subprocess
import sys

import pytest
from conftest import OPTIMIZATION_FLAG

WORKER = os.path.join(os.path.dirname(__file__), "_sharded_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("groups", [("core", "extras"), ("nn", "train")])
def test_sharded_worker(groups):
    env = dict(os.environ)
    # The worker adds the 8-device flag itself; an inherited device count would clash.
    env["XLA_FLAGS"] = OPTIMIZATION_FLAG
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, WORKER, *groups], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (
        f"worker exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr}"
    )
    assert proc.stdout.splitlines()[-1] == "0 failures", proc.stdout
