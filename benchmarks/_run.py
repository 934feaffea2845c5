"""Running a sweep: every case of a configuration, one JSON line each.

For each problem (cell, hidden size, length, batch, dtype) the inputs are drawn once; the
sequential case of each mode runs first and its outputs are kept as the reference the
parallel methods are compared with. A case that runs out of memory, fails, or would exceed
the memory budget is recorded as such and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import gc
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from . import _memory, _programs, _results, _timing
from . import provenance as _provenance
from ._config import Case, expand_cases, select

# Marks a reference that could not be computed (its case was skipped, ran out of memory or
# failed), so that it is not tried again for every method.
UNAVAILABLE = object()


class OutOfTime(Exception):
    """The sweep reached ``--max-minutes``."""


def default_output(config: dict[str, Any], tag: str) -> Path:
    """``results/<config>-<device>-<date>.jsonl`` in the repository root (outside the package)."""
    date = time.strftime("%Y-%m-%d", time.gmtime())
    return _provenance.REPO_ROOT / "results" / f"{config['name']}-{tag}-{date}.jsonl"


@dataclasses.dataclass
class Sweep:
    """The state shared by all cases of one run."""

    config: dict[str, Any]
    provenance: dict[str, Any]
    handle: Any
    budget_bytes: int
    device: Any
    deadline: float | None
    progress: Any
    verbose: bool
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    sequential_medians: dict[str, float] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise OutOfTime

    def emit(self, record: dict[str, Any]) -> None:
        _results.write_record(self.handle, record)
        self.counts[record["status"]] = self.counts.get(record["status"], 0) + 1
        if record["case"]["method"] == "sequential" and record["status"] == "ok":
            self.sequential_medians[record["key"]] = record["timing"]["median_s"]
        if self.verbose:
            self.progress.write(describe(record))
        self.progress.update(1)


def describe(record: dict[str, Any]) -> str:
    """One line per case for the log."""
    c = record["case"]
    name = f"{c['cell']} n={c['hidden']} T={c['length']} B={c['batch']} {c['dtype']} "
    name += f"{c['method']} {c['mode']}"
    if c.get("devices", 1) != 1:
        name += f" on {c['devices']} devices"
    if record["status"] != "ok":
        return f"{name}: {record['status'].upper()} ({record['reason']})"
    timing, solver, accuracy = record["timing"], record["solver"], record["accuracy"] or {}
    text = f"{name}: {timing['median_s'] * 1e3:.3f} ms (compile {timing['compile_s']:.1f} s)"
    if record["speedup_vs_sequential"] is not None:
        text += f" {record['speedup_vs_sequential']:.2f}x"
    if c["method"] != "sequential":
        text += f" it={solver['iterations_max']}"
        deviation = accuracy.get("max_abs_dev", accuracy.get("grad_rel_dev"))
        if deviation is not None:
            text += f" dev={deviation:.1e}"
    if solver["fell_back"]:
        text += " FELL BACK (not a fair timing)"
    return text


def empty_record(sweep: Sweep, case: Case, problem: _programs.Problem | None) -> dict[str, Any]:
    """A record with every field present, to be filled in."""
    return {
        "schema_version": _results.SCHEMA_VERSION,
        "run_id": sweep.run_id,
        "key": case.key,
        "reference_key": case.reference_key,
        "config_name": sweep.config["name"],
        "case": case.as_dict(),
        "status": None,
        "reason": None,
        "method_resolved": None,
        "problem": None if problem is None else describe_problem(problem, sweep.config),
        "timing": None,
        "solver": None,
        "accuracy": None,
        "memory": {"budget_bytes": sweep.budget_bytes},
        "speedup_vs_sequential": None,
        "fair": False,
        "provenance": sweep.provenance,
    }


def describe_problem(problem: _programs.Problem, config: dict[str, Any]) -> dict[str, Any]:
    from ._cells import cell_options

    return {
        "in_features": problem.in_features,
        "carry_size": problem.carry_size,
        "jacobian_structure": repr(problem.structure),
        "carry_linear": problem.carry_linear,
        "cell_options": cell_options(problem.cell, config["cell_options"]),
        "parameters": int(sum(x.size for x in jax.tree_util.tree_leaves(problem.state))),
        "loss": "mean(ys**2)",
        "seed": config["seed"],
    }


@jax.jit
def _max_abs_difference(a, b):
    leaves = [
        jnp.max(jnp.abs(x.astype(jnp.promote_types(x.dtype, jnp.float32)) - y))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    ]
    return jnp.max(jnp.stack(leaves))


@jax.jit
def _relative_difference(a, b):
    def sum_squares(tree):
        return sum(
            jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32))))
            for x in jax.tree_util.tree_leaves(tree)
        )

    difference = jax.tree_util.tree_map(lambda x, y: x - y, a, b)
    return jnp.sqrt(sum_squares(difference)) / jnp.sqrt(sum_squares(b))


def deviations(mode: str, compared, reference) -> dict[str, float]:
    """How far a method's outputs are from the sequential reference."""
    if mode == "forward":
        return {"max_abs_dev": float(_max_abs_difference(compared, reference))}
    (loss, grads), (reference_loss, reference_grads) = compared, reference
    return {
        "loss_abs_dev": float(jnp.abs(loss - reference_loss)),
        "grad_rel_dev": float(_relative_difference(grads, reference_grads)),
        "grad_max_abs_dev": float(_max_abs_difference(grads, reference_grads)),
    }


def solver_summary(stats: dict[str, jax.Array]) -> dict[str, Any]:
    """Iterations (per sequence, mean, max) and fallback use over the batch."""
    iterations = np.asarray(stats["iterations"]).reshape(-1)
    fell_back = np.asarray(stats["fell_back"]).reshape(-1)
    converged = np.asarray(stats["converged"]).reshape(-1)
    return {
        "iterations": iterations.tolist(),
        "iterations_mean": float(iterations.mean()),
        "iterations_max": int(iterations.max()),
        "fell_back": bool(fell_back.any()),
        "fell_back_count": int(fell_back.sum()),
        "converged_all": bool(converged.all()),
    }


def short_error(error: BaseException, limit: int = 500) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compute_reference(sweep: Sweep, problem: _programs.Problem, mode: str):
    """The sequential outputs for ``mode``, computed untimed (when the sequential case itself
    is not part of this run, e.g. with ``--resume`` or ``--only method=newton``)."""
    if _memory.estimate_bytes(problem, "sequential", mode) > sweep.budget_bytes:
        return UNAVAILABLE
    try:
        method = _programs.resolve(problem, "sequential")
        program = _programs.make_program(problem, method, mode)
        outputs = jax.jit(program)(problem.state, problem.xs)
        return _programs.split_outputs(mode, outputs)[0]
    except Exception:  # noqa: BLE001 - the cases will record that there is no reference
        return UNAVAILABLE


def run_case(
    sweep: Sweep, case: Case, problem: _programs.Problem, references: dict[str, Any]
) -> dict[str, Any]:
    """Compile, check and time one case; never raises: failures become the record's status."""
    record = empty_record(sweep, case, problem)
    config = sweep.config
    available = jax.local_device_count()
    if case.devices > available:
        record["status"] = "skipped"
        record["reason"] = f"needs {case.devices} devices; this machine has {available}"
        if case.method == "sequential":
            references[case.mode] = UNAVAILABLE
        return record
    # Per device: the time axis (and what grows with it) is split over the devices.
    estimate = _memory.estimate_bytes(problem, case.method, case.mode) // case.devices
    record["memory"]["estimate_bytes"] = estimate
    if estimate > sweep.budget_bytes:
        record["status"] = "skipped"
        record["reason"] = (
            f"estimated memory {estimate / 1e9:.2f} GB exceeds the budget "
            f"{sweep.budget_bytes / 1e9:.2f} GB"
        )
        if case.method == "sequential":
            references[case.mode] = UNAVAILABLE
        return record

    sequential = case.method == "sequential"
    if not sequential and case.mode not in references:
        references[case.mode] = compute_reference(sweep, problem, case.mode)
    reference = references.get(case.mode)

    try:
        method = _programs.resolve(problem, case.method)
        record["method_resolved"] = repr(method)
        program = _programs.make_program(problem, method, case.mode, case.devices)
        args = (problem.state, problem.xs)
        compiled, lower_s, compile_s = _timing.compile_ahead_of_time(program, *args)
        analysis = _memory.xla_memory_analysis(compiled)
        record["memory"]["xla"] = analysis
        if analysis and analysis["total_bytes"] > sweep.budget_bytes:
            record["status"] = "skipped"
            record["reason"] = (
                f"XLA memory analysis {analysis['total_bytes'] / 1e9:.2f} GB exceeds the budget "
                f"{sweep.budget_bytes / 1e9:.2f} GB"
            )
            record["timing"] = {"lower_s": lower_s, "compile_s": compile_s}
            if sequential:
                references[case.mode] = UNAVAILABLE
            return record

        before = _memory.device_memory_stats(sweep.device)

        def inspect_first(outputs):
            compared, stats = _programs.split_outputs(case.mode, outputs)
            record["solver"] = solver_summary(stats)
            if sequential:
                references[case.mode] = compared
                record["accuracy"] = {"reference": "self"}
            elif reference is UNAVAILABLE or reference is None:
                record["accuracy"] = {"reference": "unavailable"}
            else:
                record["accuracy"] = {
                    "reference": "sequential",
                    **deviations(case.mode, compared, reference),
                }

        timing = _timing.measure(
            compiled,
            args,
            timing=_timing.Timing(lower_s, compile_s),
            warmup=config["warmup"],
            repeats=config["repeats"],
            min_repeats=config["min_repeats"],
            budget_s=config["case_time_budget_s"],
            inspect_first=inspect_first,
        )
        after = _memory.device_memory_stats(sweep.device)
        record["timing"] = timing.summary()
        record["memory"].update(device_memory_record(before, after))
        record["status"] = "ok"
        record["fair"] = not record["solver"]["fell_back"]
        median = record["timing"]["median_s"]
        reference_median = sweep.sequential_medians.get(case.reference_key)
        if sequential:
            record["speedup_vs_sequential"] = 1.0
        elif reference_median and median:
            record["speedup_vs_sequential"] = reference_median / median
    except Exception as error:  # noqa: BLE001 - recorded, and the sweep goes on
        record["status"] = "oom" if _memory.is_out_of_memory(error) else "error"
        record["reason"] = short_error(error)
        if record["status"] == "error":
            record["traceback"] = traceback.format_exc(limit=8)[-4000:]
        if sequential:
            references[case.mode] = UNAVAILABLE
    finally:
        gc.collect()
    return record


def device_memory_record(before: dict | None, after: dict | None) -> dict[str, Any]:
    """The allocator's statistics around a case. The peak is the process's high-water mark,
    so it belongs to this case only when the case raised it (``device_peak_set_by_case``)."""
    if not after:
        return {"device_peak_bytes": None, "device_peak_set_by_case": None, "device": None}
    peak_before = (before or {}).get("peak_bytes_in_use", 0)
    peak_after = after.get("peak_bytes_in_use")
    return {
        "device_peak_bytes": peak_after,
        "device_peak_set_by_case": None if peak_after is None else peak_after > peak_before,
        "device": {"before": before, "after": after},
    }


def run_problem(sweep: Sweep, problem_key: tuple, cases: list[Case]) -> None:
    """Every pending case of one problem, sequential first per mode."""
    sweep.check_time()
    try:
        problem = _programs.build_problem(problem_key, sweep.config, with_inputs=False)
    except Exception as error:  # noqa: BLE001
        for case in cases:
            record = empty_record(sweep, case, None)
            record["status"], record["reason"] = "error", short_error(error)
            sweep.emit(record)
        return

    needs_inputs = any(
        _memory.estimate_bytes(problem, c.method, c.mode) <= sweep.budget_bytes for c in cases
    )
    if needs_inputs:
        try:
            key = jax.random.key(sweep.config["seed"] + 1)
            shape = (problem.batch, problem.length, problem.in_features)
            problem.xs = jax.random.normal(key, shape, jnp.dtype(problem.dtype))
            problem.xs.block_until_ready()
        except Exception as error:  # noqa: BLE001
            status = "oom" if _memory.is_out_of_memory(error) else "error"
            for case in cases:
                record = empty_record(sweep, case, problem)
                record["status"], record["reason"] = status, "inputs: " + short_error(error)
                sweep.emit(record)
            return

    references: dict[str, Any] = {}
    try:
        for case in cases:
            sweep.check_time()
            sweep.emit(run_case(sweep, case, problem, references))
    finally:
        references.clear()
        problem.xs = None
        gc.collect()


def group_by_problem(cases: list[Case]) -> dict[tuple, list[Case]]:
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        groups.setdefault(case.problem, []).append(case)
    return groups


def run_sweep(
    config: dict[str, Any],
    *,
    config_path: str | Path,
    overrides: list[str],
    filters: list[tuple[str, set[str]]],
    out: str | Path | None,
    resume: bool,
    max_minutes: float | None,
    progress: bool = True,
    verbose: bool = True,
    compilation_cache: str | None = None,
) -> dict[str, Any]:
    """Run every selected case not already done and append its record to ``out``
    (``compilation_cache``: the persistent cache's directory, recorded with the results).

    Returns a summary: the output path, counts by status, and the cases left undone.
    """
    cases = select(expand_cases(config), filters)
    if any(case.dtype == "float64" for case in cases):
        jax.config.update("jax_enable_x64", True)
    provenance = _provenance.collect(config, config_path, overrides)
    provenance["compilation_cache"] = compilation_cache
    out = Path(out) if out else default_output(config, _provenance.device_tag(provenance["device"]))
    out.parent.mkdir(parents=True, exist_ok=True)

    existing = _results.read_records(out) if resume else []
    done = _results.done_keys(existing)
    pending = [case for case in cases if case.key not in done]
    device = jax.devices()[0]
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    bar = tqdm(total=len(pending), unit="case", disable=not progress, dynamic_ncols=True)
    with out.open("a") as handle:
        sweep = Sweep(
            config=config,
            provenance=provenance,
            handle=handle,
            budget_bytes=_memory.budget_bytes(config["memory_budget_gb"], device),
            device=device,
            deadline=deadline,
            progress=bar,
            verbose=verbose,
        )
        for record in _results.latest_by_key(existing).values():
            if record["case"]["method"] == "sequential" and record["status"] == "ok":
                sweep.sequential_medians[record["key"]] = record["timing"]["median_s"]
        out_of_time = False
        try:
            for problem_key, group in group_by_problem(pending).items():
                run_problem(sweep, problem_key, group)
        except OutOfTime:
            out_of_time = True
        finally:
            bar.close()
    left = len(pending) - sum(sweep.counts.values())
    return {
        "out": out,
        "selected": len(cases),
        "already_done": len(cases) - len(pending),
        "counts": dict(sweep.counts),
        "left": left,
        "out_of_time": out_of_time,
    }
