"""Lyapunov exponents vs parallel iterations: does ``rnnscan.diagnostics`` predict the solve?

``python -m experiments.lyapunov --config configs/experiments/lyapunov.yaml --out R.jsonl
[--plot FIG.png] [--report R.md] [--split holdout]``

For every problem of the config (a tanh RNN, h' = tanh(gain W h + U x + b), or an
``rnnscan.nn`` cell with its recurrent weights multiplied by ``scale``) and every scale:

- the largest Lyapunov exponent from the report of
  :func:`rnnscan.diagnostics.parallelizability` (with its prediction for every method),
  from :func:`rnnscan.diagnostics.lyapunov_exponents` (QR) and from a plain numpy QR loop
  (the reference);
- every method of the config solved with ``rnnscan.solve`` (default options, so the default
  iteration caps and early give-up): iterations, result, whether it fell back;
- the median time of the estimate (``parallelizability`` from scratch, trajectory included)
  and of each solve, relative to ``jax.lax.scan``.

Problems are tagged ``calibration`` (used to choose the predictor's constants), ``holdout``
or ``holdout2`` (not used for them; the acceptance numbers are reported on these). Cells from
``rnnscan.nn`` are used here only: the diagnostics module itself never imports them.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from tqdm import tqdm

import rnnscan
import rnnscan.diagnostics

from . import harness
from .hard_dynamics import random_weights, step_function


def make_problem(cell: str, n: int, d: int, dtype, seed: int):
    """``(params, init, make_f, structure)``: ``make_f(params, scale)`` is the step function
    with recurrent weights scaled by ``scale`` (an argument of the compiled programs)."""
    if cell == "tanh":
        weights = random_weights(jax.random.PRNGKey(seed), "tanh", n, d, dtype)
        weights = jax.tree_util.tree_map(lambda w: w.astype(dtype), weights)
        return (
            weights,
            jnp.zeros(n, dtype),
            lambda w, g: step_function("tanh", w, g),
            rnnscan.Dense(),
        )
    from flax import nnx

    from rnnscan import nn as cells

    module = cells.CELLS[cell](d, n, param_dtype=dtype, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(module)
    init = module.initialize_carry((d,))

    def make_f(state, scale):
        def scaled(path, leaf):
            name = jax.tree_util.keystr(path)
            return (
                leaf * scale if "recurrent_kernel" in name or "recurrent_weight" in name else leaf
            )

        return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(scaled, state))

    return state, init, make_f, type(module).jacobian_structure


def qr_reference_lle(make_f, params, scale, init, xs, carries) -> float:
    """lambda_1 by a plain numpy loop: Jacobians by jax.jacfwd, QR by numpy, random start."""
    from jax.flatten_util import ravel_pytree

    f = make_f(params, scale)
    flat0, unravel = ravel_pytree(init)
    flat_c = jax.vmap(lambda c: ravel_pytree(c)[0])(carries)
    c_prev = jnp.concatenate([flat0[None], flat_c[:-1]])
    J = jax.jit(
        jax.vmap(lambda c, x: jax.jacfwd(lambda c: ravel_pytree(f(unravel(c), x)[0])[0])(c))
    )(c_prev, xs)
    J = np.asarray(J, np.float64)
    q = np.random.default_rng(0).standard_normal(J.shape[-1])
    q /= np.linalg.norm(q)
    total = 0.0
    for Jt in J:
        q = Jt @ q
        r = np.linalg.norm(q)
        total += np.log(r)
        q /= r
    return total / len(J)


def _median_time(fn, args, repeats):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _finite(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _programs(make_f, init, structure, methods):
    """The jitted programs of one problem, each taking ``(params, scale, xs)``."""

    def sequential(p, s, xs):
        f = make_f(p, s)
        return jax.lax.scan(lambda c, x: (f(c, x)[0],) * 2, init, xs)

    def lle(p, s, xs, carries):
        return rnnscan.diagnostics.lyapunov_exponents(make_f(p, s), init, xs, carries=carries)

    def estimate(p, s, xs):  # from scratch: the trajectory is part of the cost
        return rnnscan.diagnostics.parallelizability(make_f(p, s), init, xs)

    def solver(name):
        def solve(p, s, xs):
            return rnnscan.solve(
                make_f(p, s), init, xs, method=rnnscan.method_class(name)(jacobian=structure)
            )

        return jax.jit(solve)

    return (
        jax.jit(sequential),
        jax.jit(lle),
        jax.jit(estimate),
        {name: solver(name) for name in methods},
    )


def run(config: dict, out: Path, config_path: str, splits, only=None) -> list[dict]:
    d = config["in_features"]
    methods = config["methods"]
    provenance = harness.provenance(config, config_path)
    problems = [
        p
        for i, p in enumerate(config["problems"])
        if p["split"] in splits and (only is None or i in only)
    ]
    records = []
    bar = tqdm(total=sum(len(p["scales"]) for p in problems), desc="lyapunov")
    for problem in problems:
        cell, n, T, seed = problem["cell"], problem["hidden"], problem["length"], problem["seed"]
        dtype = jnp.dtype(problem.get("dtype", config["dtype"]))
        params, init, make_f, structure = make_problem(cell, n, d, dtype, seed)
        xs = jax.random.normal(jax.random.PRNGKey(seed + 1000), (T, d), dtype)
        sequential, lle, estimate, solves = _programs(make_f, init, structure, methods)
        for scale in problem["scales"]:
            args = (params, jnp.asarray(scale, dtype), xs)
            carries = sequential(*args)[1]
            lle_est = float(lle(*args, carries)[0])
            lle_ref = qr_reference_lle(make_f, params, args[1], init, xs, carries)
            rep = estimate(*args)
            t_seq = _median_time(sequential, args, config["repeats"])
            t_est = _median_time(estimate, args, config["repeats"])
            for name in methods:
                sol = solves[name](*args)
                repeats = config["repeats"] if name == "newton" else 1
                t_solve = _median_time(solves[name], args, repeats)
                method = rnnscan.method_class(name)(jacobian=structure).resolved(dtype, T)
                record = dict(
                    split=problem["split"],
                    cell=cell,
                    hidden=n,
                    length=T,
                    seed=seed,
                    dtype=str(dtype),
                    scale=scale,
                    jacobian_structure=repr(structure),
                    method=name,
                    lyapunov=float(rep.lyapunov),
                    lyapunov_qr=lle_est,
                    lyapunov_reference=lle_ref,
                    amplification=float(rep.amplification),
                    log_sensitivity=float(rep.log_sensitivity),
                    guess_amplification=float(rep.guess_amplification),
                    growth=[float(g) for g in rep.growth],
                    predicted_iterations=_finite(rep.iterations_for(method)),
                    predicted_newton_iterations=_finite(rep.expected_newton_iterations),
                    predictable=bool(rep.predictable),
                    max_steps=int(method.max_steps),
                    iterations=int(sol.iterations),
                    result=int(sol.result),
                    converged=bool(sol.result == rnnscan.RESULTS.successful),
                    fell_back=bool(sol.fell_back),
                    sequential_s=t_seq,
                    estimate_s=t_est,
                    solve_s=t_solve,
                    summary=rep.summary if name == "newton" else None,
                    provenance=provenance,
                )
                records.append(record)
                harness.append_jsonl(out, record)
            bar.update()
    bar.close()
    return records


def _within(pred, meas, cap):
    """The acceptance rule: a factor of 3 or +-2 where the solve converged; inf or >= cap
    where it did not."""
    return pred is not None and (abs(pred - meas) <= 2 or (pred / 3 <= meas <= 3 * pred))


def accuracy(records: list[dict]) -> dict:
    """Acceptance statistics per (split, method)."""
    out = {}
    for key in sorted({(r["split"], r["method"]) for r in records}):
        rows = [r for r in records if (r["split"], r["method"]) == key]
        conv = [r for r in rows if r["converged"]]
        fail = [r for r in rows if not r["converged"]]
        ok_conv = [
            r for r in conv if _within(r["predicted_iterations"], r["iterations"], r["max_steps"])
        ]
        ok_fail = [
            r
            for r in fail
            if r["predicted_iterations"] is None or r["predicted_iterations"] >= r["max_steps"]
        ]
        ratios = [
            r["predicted_iterations"] / r["iterations"]
            for r in conv
            if r["predicted_iterations"] is not None and r["iterations"] > 0
        ]
        out[key] = dict(
            cases=len(rows),
            converged=len(conv),
            converged_within=len(ok_conv),
            failed=len(fail),
            failed_predicted=len(ok_fail),
            max_log_ratio=max((abs(math.log(q)) for q in ratios), default=0.0),
        )
    return out


def report(records: list[dict]) -> str:
    first = records[0]["provenance"]
    lines = [
        f"Device: {first['device']['device_kind']}; jax {first['versions']['jax']}; dtype "
        f"{records[0]['dtype']}. Iterations: measured (predicted); † = did not converge "
        "(result code), ∞ = predicted not to converge within the cap. LLE: the report's "
        "estimate / the numpy QR reference. Times: estimate and Newton solve relative to "
        "jax.lax.scan.",
        "",
        "| split | cell | n | T | scale | LLE | LLE ref | log a | log S | log a (guess) | "
        "predictable | "
        + " | ".join(dict.fromkeys(r["method"] for r in records))
        + " | estimate | newton solve |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        + "---:|" * len(dict.fromkeys(r["method"] for r in records))
        + "---:|---:|",
    ]
    methods = list(dict.fromkeys(r["method"] for r in records))
    groups = {}
    for r in records:
        groups.setdefault(
            (r["split"], r["cell"], r["hidden"], r["length"], r["seed"], r["scale"]), {}
        )[r["method"]] = r
    for key, by in groups.items():
        r0 = next(iter(by.values()))

        def fmt(r):
            pred = r["predicted_iterations"]
            p = "∞" if pred is None else f"{pred:.0f}"
            return f"{r['iterations']}{'' if r['converged'] else '†'} ({p})"

        nt = by.get("newton", r0)
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[5]} | {r0['lyapunov']:.3f} | "
            f"{r0['lyapunov_reference']:.3f} | {r0['amplification']:.2f} | "
            f"{r0['log_sensitivity']:.2f} | {r0.get('guess_amplification', float('nan')):.2f} | "
            f"{'yes' if r0['predictable'] else 'no'} | "
            + " | ".join(fmt(by[m]) if m in by else "" for m in methods)
            + f" | {nt['estimate_s'] / nt['sequential_s']:.1f}× "
            + f"| {nt['solve_s'] / nt['sequential_s']:.1f}× |"
        )
    lines += ["", "Acceptance (predicted within ×3 or ±2 where converged; ∞/≥cap where not):", ""]
    for (split, method), a in accuracy(records).items():
        lines.append(
            f"- {split}, {method}: {a['converged_within']}/{a['converged']} converged cases "
            f"within, {a['failed_predicted']}/{a['failed']} failures predicted; worst "
            f"|log(pred/meas)| = {a['max_log_ratio']:.2f}"
        )
    firsts = [r for r in records if r["method"] == methods[0]]
    for field, what in (
        ("lyapunov", "the report's estimate (1/T) log||J_T...J_1||"),
        ("lyapunov_qr", "lyapunov_exponents (QR)"),
    ):
        rows = [r for r in firsts if r.get(field) is not None]
        if not rows:
            continue
        err = [abs(r[field] - r["lyapunov_reference"]) for r in rows]
        ok = [e for e, r in zip(err, rows) if e <= 0.01 + 0.05 * abs(r["lyapunov_reference"])]
        lines.append(
            f"- LLE, {what}, vs the numpy QR reference: {len(ok)}/{len(err)} within "
            f"0.01 + 5%; max |error| {max(err):.2e}"
        )
    cost = [r["estimate_s"] / r["solve_s"] for r in records if r["method"] == "newton"]
    if cost:
        lines.append(
            f"- estimate / Newton solve time: median {statistics.median(cost):.2f}, "
            f"max {max(cost):.2f}"
        )
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    plt = harness.pyplot()
    methods = list(dict.fromkeys(r["method"] for r in records))
    fig, axes = plt.subplots(2, len(methods), figsize=(5 * len(methods), 8.4), squeeze=False)
    markers = {"tanh": "o", "gru": "s", "lstm": "^", "diag_gru": "D", "diag_lstm": "v"}
    for ax, method in zip(axes[0], methods):
        rows = [r for r in records if r["method"] == method]
        cap = max(r["max_steps"] for r in rows)
        for cell in dict.fromkeys(r["cell"] for r in rows):
            for split, filled in (("calibration", True), ("holdout", False), ("holdout2", False)):
                pts = [r for r in rows if r["cell"] == cell and r["split"] == split]
                if not pts:
                    continue
                meas = [r["iterations"] if r["converged"] else cap * 1.15 for r in pts]
                pred = [
                    min(r["predicted_iterations"], cap * 1.15)
                    if r["predicted_iterations"] is not None
                    else cap * 1.15
                    for r in pts
                ]
                ax.scatter(
                    pred,
                    meas,
                    marker=markers.get(cell, "o"),
                    facecolors=None if filled else "none",
                    edgecolors=f"C{list(markers).index(cell)}",
                    color=f"C{list(markers).index(cell)}" if filled else None,
                    label=f"{cell} ({split})",
                )
        lo, hi = 1, cap * 1.3
        grid = np.geomspace(lo, hi, 50)
        ax.plot(grid, grid, color="black", lw=0.8)
        ax.fill_between(
            grid,
            np.minimum(grid / 3, grid - 2),
            np.maximum(grid * 3, grid + 2),
            color="gray",
            alpha=0.15,
        )
        ax.axhline(cap * 1.15, color="red", lw=0.6, ls="--")
        ax.axvline(cap * 1.15, color="red", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("predicted iterations (right of dashed: ∞ / ≥ cap)")
        ax.set_ylabel("measured iterations (above dashed: did not converge)")
        ax.set_title(f"{method} (cap {cap})")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    for ax, method in zip(axes[1], methods):
        _iterations_against_lle(ax, [r for r in records if r["method"] == method], markers)
        ax.set_title(f"{method}: iterations against the LLE")
    axes[1][0].legend(fontsize=7)
    fig.tight_layout()
    harness.save_figure(fig, path, dpi=110)


def _iterations_against_lle(ax, rows, markers) -> None:
    """Measured iterations (markers; filled: calibration, hollow: held out) against the
    largest Lyapunov exponent, and the predicted iterations as a line through each sweep
    (problems of one cell, size, length and split, in order of their exponent)."""
    cap = max(r["max_steps"] for r in rows)
    top = cap * 1.15
    sweeps = dict.fromkeys((r["cell"], r["hidden"], r["length"], r["split"]) for r in rows)
    for cell, hidden, length, split in sweeps:
        pts = sorted(
            (
                r
                for r in rows
                if (r["cell"], r["hidden"], r["length"], r["split"])
                == (cell, hidden, length, split)
            ),
            key=lambda r: r["lyapunov"],
        )
        color = f"C{list(markers).index(cell)}" if cell in markers else "C0"
        lle = [r["lyapunov"] for r in pts]
        pred = [
            top if r["predicted_iterations"] is None else min(r["predicted_iterations"], top)
            for r in pts
        ]
        ax.plot(lle, pred, color=color, lw=0.9, alpha=0.7)
        ax.scatter(
            lle,
            [r["iterations"] if r["converged"] else top for r in pts],
            marker=markers.get(cell, "o"),
            color=color if split == "calibration" else None,
            facecolors=None if split == "calibration" else "none",
            edgecolors=color,
            label=f"{cell} n={hidden} T={length:,} ({split})",
        )
    ax.axhline(top, color="red", lw=0.6, ls="--")
    ax.axvline(0.0, color="black", lw=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("largest Lyapunov exponent per step (> 0: chaotic)")
    ax.set_ylabel("iterations (markers: measured, lines: predicted)")
    ax.grid(alpha=0.3)


def main(argv=None) -> None:
    parser = harness.records_parser(
        "python -m experiments.lyapunov", "configs/experiments/lyapunov.yaml"
    )
    parser.add_argument("--split", nargs="*", default=["calibration", "holdout", "holdout2"])
    parser.add_argument("--problems", type=int, nargs="*", help="indices of config problems")
    parser.add_argument("--from-results", action="store_true", help="only report/plot --out")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    if config.get("dtype") == "float64":
        jax.config.update("jax_enable_x64", True)
    if not args.from_results:
        run(config, args.out, args.config, set(args.split), args.problems)
    # Report on every record of the file (a run may have been completed in parts).
    records = harness.read_jsonl(args.out)
    harness.report_and_plot(
        records, args, "Lyapunov exponents vs parallel iterations", report, plot
    )


if __name__ == "__main__":
    main()
