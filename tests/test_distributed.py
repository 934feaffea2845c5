"""The time-split building blocks (rnnscan._distributed) on 1, 2, 4 and 8 devices.

JAX fixes its device count when it initialises, and this process (conftest imports jax) has
one device, so the checks run in a subprocess with 8 fake CPU devices:
``tests/_distributed_worker.py``, which asserts everything itself and exits nonzero with
the list of what differs.
"""

import os
import subprocess
import sys

from conftest import OPTIMIZATION_FLAG

WORKER = os.path.join(os.path.dirname(__file__), "_distributed_worker.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_distributed_worker():
    env = dict(os.environ)
    # The worker adds the 8-device flag itself; an inherited device count would clash.
    env["XLA_FLAGS"] = OPTIMIZATION_FLAG
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, WORKER], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (
        f"worker exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n"
        f"--- stderr\n{proc.stderr}"
    )
    assert proc.stdout.splitlines()[-1] == "0 failures", proc.stdout
