"""Hard dynamics: every method on recurrences from contractive to chaotic.

``python -m experiments.hard_dynamics --config configs/experiments/hard_dynamics.yaml --out R.jsonl
[--lengths 1000] [--plot FIGURE.png] [--report R.md]``

A tanh RNN, h' = tanh(W h + U x + b), and a GRU, both with n = ``hidden`` units and recurrent
weights of spectral scale ``gain`` (W ~ gain N(0, 1/n)), for each gain in the config and each
sequence length. For every method: iterations, the RESULTS code, whether the solve fell back
to the sequential scan, the deviation from it, and the median time of one jitted call relative
to ``jax.lax.scan`` (timed in the same process, calls interleaved round by round).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from tqdm import tqdm

import rnnscan

from . import harness

# A strong input suppresses chaos in random tanh networks (Rajan, Abbott & Sompolinsky,
# Phys. Rev. E 82, 2010): "tanh_driven" is the tanh cell with 3x the input weights, which
# stays predictable (negative Lyapunov exponent) at gains where the undriven one is chaotic.
_INPUT_SCALE = {"tanh": 1.0, "tanh_driven": 3.0, "gru": 1.0}


def random_weights(key, cell: str, n: int, d: int, dtype):
    k1, k2, k3 = jax.random.split(key, 3)
    gates = 3 if cell == "gru" else 1
    return dict(
        W=jax.random.normal(k1, (gates, n, n), dtype) / np.sqrt(n),
        U=_INPUT_SCALE[cell] * jax.random.normal(k2, (gates, n, d), dtype) / np.sqrt(d),
        b=0.1 * jax.random.normal(k3, (gates, n), dtype),
    )


def step_function(cell: str, weights, gain):
    """The step function ``f(h, x) -> (h', h')`` with recurrent weights scaled by ``gain``."""
    W = gain * weights["W"]

    def tanh(h, x):
        h = jnp.tanh(W[0] @ h + weights["U"][0] @ x + weights["b"][0])
        return h, h

    def gru(h, x):
        gi = weights["U"] @ x + weights["b"]
        r = jax.nn.sigmoid(gi[0] + W[0] @ h)
        z = jax.nn.sigmoid(gi[1] + W[1] @ h)
        cand = jnp.tanh(gi[2] + r * (W[2] @ h))
        h = (1 - z) * cand + z * h
        return h, h

    return {"tanh": tanh, "tanh_driven": tanh, "gru": gru}[cell]


def _programs(cell, methods, n, d, dtype):
    """One jitted program per method, taking (weights, gain, xs)."""
    h0 = jnp.zeros(n, dtype)
    programs = {
        "sequential": jax.jit(lambda w, g, xs: jax.lax.scan(step_function(cell, w, g), h0, xs)[1])
    }
    solves = {}
    for label, method in methods:

        def solve(w, g, xs, method=method):
            return rnnscan.solve(step_function(cell, w, g), h0, xs, method=method)

        solves[label] = jax.jit(solve)
        programs[label] = solves[label]
    return programs, solves


def run(config: dict, lengths, out: Path, config_path: str) -> list[dict]:
    dtype = jnp.dtype(config["dtype"])
    n, d = config["hidden"], config["in_features"]
    methods = [harness.method(spec) for spec in config["methods"]]
    provenance = harness.provenance(config, config_path)
    records = []
    cases = [(cell, T) for cell in config["cells"] for T in lengths]
    for cell, T in tqdm(cases, desc="hard dynamics"):
        key = jax.random.PRNGKey(config["seed"])
        weights = random_weights(key, cell, n, d, dtype)
        xs = jax.random.normal(jax.random.fold_in(key, 1), (T, d), dtype)
        programs, solves = _programs(cell, methods, n, d, dtype)
        for gain in config["gains"]:
            g = jnp.asarray(gain, dtype)
            reference = programs["sequential"](weights, g, xs)
            for fn in programs.values():  # compile (once per cell and T) and warm up
                jax.block_until_ready(fn(weights, g, xs))
            medians = harness.interleaved_medians(programs, (weights, g, xs), config["repeats"])
            for label, _ in methods:
                sol = solves[label](weights, g, xs)
                record = dict(
                    cell=cell,
                    hidden=n,
                    length=T,
                    dtype=str(dtype),
                    gain=gain,
                    **solve_fields(label, sol, reference, medians),
                    provenance=provenance,
                )
                records.append(record)
                harness.append_jsonl(out, record)
    return records


def solve_fields(label: str, sol, reference, medians: dict) -> dict:
    """The fields of a record that describe one method's solve and its time."""
    return dict(
        method=label,
        iterations=int(sol.iterations),
        result=int(sol.result),
        result_message=rnnscan.RESULTS.message(sol.result),
        fell_back=bool(sol.fell_back),
        max_abs_dev=float(jnp.max(jnp.abs(sol.ys - reference))),
        median_s=medians[label],
        sequential_median_s=medians["sequential"],
        time_vs_sequential=medians[label] / medians["sequential"],
    )


def report(records: list[dict]) -> str:
    """A markdown table per (cell, T): rows gains, columns methods."""
    lines = []
    first = records[0]["provenance"]
    versions = first["versions"]
    lines.append(
        f"Device: {first['device'].get('kind', first['device'].get('platform'))}; jax "
        f"{versions['jax']}; dtype {records[0]['dtype']}; hidden {records[0]['hidden']}. "
        "Entries: iterations, result (ok / gave up: diverged, stalled / cap), † = fell back to "
        "the sequential scan; then the median time relative to jax.lax.scan (lower is better)."
    )
    short = {0: "ok", 1: "cap", 2: "nonfinite", 3: "diverged", 4: "stalled"}
    for cell in sorted({r["cell"] for r in records}):
        for T in sorted({r["length"] for r in records if r["cell"] == cell}):
            rows = [r for r in records if r["cell"] == cell and r["length"] == T]
            methods = list(dict.fromkeys(r["method"] for r in rows))
            lines += ["", f"### {cell}, T = {T:,}", ""]
            lines.append("| gain | lax.scan | " + " | ".join(methods) + " |")
            lines.append("|---:|---:|" + "---:|" * len(methods))
            for gain in sorted({r["gain"] for r in rows}):
                by = {r["method"]: r for r in rows if r["gain"] == gain}
                seq = next(iter(by.values()))["sequential_median_s"]
                cells = [
                    f"{r['iterations']} it {short[r['result']]}{' †' if r['fell_back'] else ''}, "
                    f"{r['time_vs_sequential']:.1f}×"
                    for r in (by[m] for m in methods)
                ]
                lines.append(f"| {gain} | {seq * 1e3:.2f} ms | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    plt = harness.pyplot()
    groups = sorted({(r["cell"], r["length"]) for r in records})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), squeeze=False)
    for ax, (cell, T) in zip(axes[0], groups):
        rows = [r for r in records if r["cell"] == cell and r["length"] == T]
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted(
                (r["gain"], r["time_vs_sequential"], r["fell_back"])
                for r in rows
                if r["method"] == method
            )
            gains, ratios, fell = zip(*pts)
            (line,) = ax.plot(gains, ratios, marker="o", label=method)
            ax.scatter(
                [g for g, f in zip(gains, fell) if f],
                [t for t, f in zip(ratios, fell) if f],
                marker="x",
                s=60,
                color=line.get_color(),
            )
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("recurrent gain")
        ax.set_ylabel("time / jax.lax.scan")
        ax.set_title(f"{cell}, T = {T:,} (× = fell back)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    harness.save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = harness.records_parser(
        "python -m experiments.hard_dynamics", "configs/experiments/hard_dynamics.yaml"
    )
    parser.add_argument("--lengths", type=int, nargs="*", help="override the config's lengths")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    records = run(config, args.lengths or config["lengths"], args.out, args.config)
    harness.report_and_plot(records, args, "Hard dynamics", report, plot)


if __name__ == "__main__":
    main()
