"""The hot loop alone: the diagonal linear recurrence x_t = a_t * x_{t-1} + b_t by
``jax.lax.associative_scan`` against the chunked Pallas kernel, side by side in one run.

``python -m benchmarks.linear_recurrence --config configs/benchmarks/linear_recurrence_gpu.yaml
--out results/linear-recurrence-<device>-<date> [--set lengths=[65536]]``

For every (length T, width n, dtype): a batch of ``batch`` independent recurrences (jitted,
``jax.vmap``), both backends, calls interleaved round by round so that drifts in the
machine's load hit both alike; median seconds, the bandwidth achieved against the ideal
traffic (one read of a and b and one write of x: 3 T n batch values), and the largest
deviation of the kernel's result from the associative scan's, relative to max |x|. Writes
PREFIX.json (records with provenance) and PREFIX.md (the table).

Off a GPU the kernel runs in Pallas interpret mode: that checks the script, not the speed.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import rnnscan
from rnnscan._linear_recurrence import linear_recurrence

from . import provenance as _provenance
from . import settings
from ._timing import interleaved_times

DEFAULTS = {
    "name": "linear_recurrence",
    "lengths": [16_384, 65_536, 262_144, 1_048_576],
    "hidden": [64],
    "batch": 16,
    "dtypes": ["float32"],
    "backends": ["associative", "pallas"],
    "repeats": 20,
}


def _program(backend: str):
    def solve(a, b):
        return linear_recurrence(a, b, rnnscan.Diagonal(), backend=backend)

    return jax.jit(jax.vmap(solve))


def _case(T: int, n: int, batch: int, dtype, backends, repeats: int) -> dict:
    key_a, key_b = jax.random.split(jax.random.PRNGKey(T + n))
    # |a| < 1: a contracting recurrence, so x stays of order one at every T.
    a = jax.random.uniform(key_a, (batch, T, n), dtype, -0.99, 0.99)
    b = jax.random.normal(key_b, (batch, T, n), dtype)
    programs = {name: _program(name) for name in backends}
    compile_s, outputs = {}, {}
    for name, fn in programs.items():
        start = time.perf_counter()
        outputs[name] = jax.block_until_ready(fn(a, b))
        compile_s[name] = time.perf_counter() - start
    times = interleaved_times(programs, (a, b), repeats)
    reference = outputs[backends[0]]
    scale = float(jnp.max(jnp.abs(reference)))
    ideal_bytes = 3 * batch * T * n * jnp.dtype(dtype).itemsize
    record = {"length": T, "hidden": n, "batch": batch, "dtype": jnp.dtype(dtype).name}
    for name in programs:
        median = statistics.median(times[name])
        record[name] = {
            "median_s": median,
            "times_s": times[name],
            "first_call_s": compile_s[name],
            "ideal_gb_per_s": ideal_bytes / median / 1e9,
            "max_relative_deviation": float(jnp.max(jnp.abs(outputs[name] - reference))) / scale,
        }
    return record


def _table(records: list[dict], backends: list[str]) -> str:
    head = "| T | n | batch | dtype | " + " | ".join(f"{name} ms (GB/s)" for name in backends)
    lines = [
        head + " | speed-up | max deviation |",
        "|" + "---:|" * (4 + len(backends) + 2),
    ]
    for r in records:
        cells = [f"{1e3 * r[b]['median_s']:.3f} ({r[b]['ideal_gb_per_s']:.1f})" for b in backends]
        speedup = r[backends[0]]["median_s"] / r[backends[-1]]["median_s"]
        deviation = max(r[b]["max_relative_deviation"] for b in backends)
        lines.append(
            f"| {r['length']:,} | {r['hidden']} | {r['batch']} | {r['dtype']} | "
            + " | ".join(cells)
            + f" | {speedup:.2f}× | {deviation:.1e} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = settings.parse_args("python -m benchmarks.linear_recurrence", __doc__, argv)
    config = settings.load_config(DEFAULTS, args.config, args.set)
    if "float64" in config["dtypes"]:
        jax.config.update("jax_enable_x64", True)
    backends = list(config["backends"])
    cases = [
        (T, n, dtype)
        for dtype in config["dtypes"]
        for n in config["hidden"]
        for T in config["lengths"]
    ]
    records = [
        _case(T, n, config["batch"], jnp.dtype(dtype), backends, config["repeats"])
        for T, n, dtype in tqdm(cases, desc="linear recurrence")
    ]
    provenance = _provenance.collect(config, args.config or "defaults", args.set)
    table = _table(records, backends)
    title = (
        f"Diagonal linear recurrence, {' vs '.join(backends)}: "
        f"{provenance['device']['device_kind']}, jax {provenance['versions']['jax']}; "
        "median of interleaved calls; GB/s counts the ideal traffic (read a, b; write x)."
    )
    print(title, table, sep="\n\n")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(
            json.dumps({"provenance": provenance, "records": records}, indent=1, default=float)
        )
        out.with_suffix(".md").write_text(f"{title}\n\n{table}\n")
    np.testing.assert_array_less(  # a kernel that is fast but wrong must not pass silently
        [max(r[b]["max_relative_deviation"] for b in backends) for r in records],
        1e-4 if "float32" in config["dtypes"] else 1e-10,
        err_msg="the Pallas kernel's result deviates from the associative scan's",
    )


if __name__ == "__main__":
    main()
