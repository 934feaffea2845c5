"""Where a result comes from: device, library versions, code version, date and settings.

No host names or file-system paths are recorded.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

# Environment variables that change how XLA runs or allocates; recorded when set.
XLA_ENVIRONMENT = (
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "XLA_PYTHON_CLIENT_MEM_FRACTION",
    "XLA_PYTHON_CLIENT_ALLOCATOR",
    "JAX_PLATFORMS",
    "JAX_ENABLE_X64",
)


def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding the
    benchmarks (read-only git commands; ``None`` outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def device_description() -> dict[str, Any]:
    """The default backend's platform, device kind and device count."""
    import jax

    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
    }


def device_tag(device: dict[str, Any]) -> str:
    """A short file-name-safe device name: ``cpu``, ``gpu-nvidia-h100-80gb-hbm3``, ..."""
    kind = device["device_kind"].lower()
    if kind == device["platform"]:
        return kind
    slug = re.sub(r"[^a-z0-9]+", "-", kind).strip("-")
    return f"{device['platform']}-{slug}"


def library_versions() -> dict[str, str | None]:
    import importlib.metadata

    import flax
    import jax
    import jaxlib
    import numpy

    import rnnscan

    def version_of(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "rnnscan": rnnscan.__version__,
        "numpy": numpy.__version__,
        "optax": version_of("optax"),
        "jax_cuda_plugin": version_of("jax-cuda12-plugin") or version_of("jax-cuda13-plugin"),
        "python": platform.python_version(),
    }


def config_source(path: str | Path) -> str:
    """The configuration file as given if relative, else its name (no absolute paths)."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return path.name


def collect(config: dict[str, Any], config_path: str | Path, overrides: list[str]) -> dict:
    """The provenance shared by every record of a run."""
    import jax

    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_description(),
        "versions": library_versions(),
        "git": git_state(),
        "system": {
            "os": platform.system(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        # None: the backend's default (on NVIDIA GPUs float32 matmuls may use TF32).
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "environment": {name: os.environ[name] for name in XLA_ENVIRONMENT if name in os.environ},
        "config_file": config_source(config_path),
        "overrides": list(overrides),
        "config": config,
    }
