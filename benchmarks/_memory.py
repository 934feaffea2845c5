"""Memory: a rough estimate to skip impossible cases before building them, XLA's memory
analysis of each compiled program, the device allocator's statistics, and out-of-memory
detection."""

from __future__ import annotations

import os
from typing import Any

# Rough multipliers of the estimate, in elements per sequence and step (times the batch and
# the item size), fitted to XLA's memory analysis on CPU: the sequential forward pass keeps
# the inputs and outputs; a training step or a parallel solve keeps about 16 carry-sized
# vectors per step (carries, residuals, iterates, saved activations) and about 3 copies of
# the stacked Jacobians (the Jacobians, and the associative scan's levels). Errs on the high
# side; the compiled program's XLA memory analysis is then checked against the same budget.
SEQUENTIAL_FORWARD_VECTORS = 3
VECTORS = 16
JACOBIAN_COPIES = 3


def jacobian_entries(structure: Any, carry_size: int) -> int:
    """Stored entries of one step's carry Jacobian in ``structure``."""
    import rnnscan

    if isinstance(structure, rnnscan.Diagonal):
        return carry_size
    if isinstance(structure, rnnscan.BlockDiagonal):
        return carry_size * structure.block_size
    return carry_size * carry_size


def estimate_bytes(problem: Any, method: str, mode: str) -> int:
    """A rough upper estimate of the device memory a case needs.

    Per sequence and step: the input and a few carry-sized vectors (carries, outputs,
    residuals), plus, for a parallel method, the stacked Jacobians the solve builds: the
    declared structure for Newton, the diagonal for quasi-Newton's forward pass, none for
    the fixed point; a training step's backward pass always uses the declared structure.
    """
    n = problem.carry_size
    vectors = SEQUENTIAL_FORWARD_VECTORS if (method, mode) == ("sequential", "forward") else VECTORS
    per_step = problem.in_features + vectors * n
    declared = jacobian_entries(problem.structure, n)
    if method == "sequential":
        jacobian = 0
    elif mode == "train":
        jacobian = declared
    else:
        jacobian = {"newton": declared, "quasi_newton": n, "fixed_point": 0}[
            method.removesuffix("_pallas")
        ]
    per_step += JACOBIAN_COPIES * jacobian
    return problem.batch * problem.length * per_step * problem.itemsize


def budget_bytes(setting: Any, device: Any) -> int:
    """The memory budget: ``setting`` GB, or for ``"auto"`` 90% of the device allocator's
    limit where the backend reports it (GPU), else half the host's physical memory."""
    if setting != "auto":
        return int(float(setting) * 1e9)
    stats = device_memory_stats(device)
    if stats and stats.get("bytes_limit"):
        return int(0.9 * stats["bytes_limit"])
    try:
        return int(0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 10**9


def xla_memory_analysis(compiled: Any) -> dict[str, int] | None:
    """XLA's memory analysis of a compiled program (bytes), with ``total_bytes`` = arguments +
    outputs + temporaries - aliased, the device memory the program needs while it runs.
    ``None`` where the backend does not provide it."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not all backends implement it
        return None
    if stats is None:
        return None
    fields = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    )
    analysis = {name: int(getattr(stats, name, 0) or 0) for name in fields}
    analysis["total_bytes"] = (
        analysis["argument_size_in_bytes"]
        + analysis["output_size_in_bytes"]
        + analysis["temp_size_in_bytes"]
        - analysis["alias_size_in_bytes"]
    )
    return analysis


def device_memory_stats(device: Any) -> dict[str, int] | None:
    """The allocator's statistics (``peak_bytes_in_use``, ``bytes_in_use``, ``bytes_limit``),
    or ``None`` where the backend reports none (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without statistics raise or return None
        return None
    if not stats:
        return None
    keys = ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
    return {key: int(stats[key]) for key in keys if key in stats}


OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM", "bad_alloc")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is XLA (or the host) running out of memory."""
    if isinstance(error, MemoryError):
        return True
    text = f"{type(error).__name__}: {error}"
    return any(marker in text for marker in OOM_MARKERS)
