"""ELK's benchmark: the trained autoregressive GRU of Gonzalez, Warrington, Smith & Linderman,
"Towards Scalable and Stable Parallelization of Nonlinear RNNs" (NeurIPS 2024), Figure 4.

``python -m experiments.elk_argru --out R.jsonl [--report R.md] [--plot FIGURE.png]``

The model (public repository lindermanlab/elk, ``experiments/elk_exps_figs_4_7_8``,
``argru_sine_wave_L=10000.eqx``, BSD-3-Clause) is an autoregressive GRU trained on sine waves.
Its packed state is s = [x, h]: the last sample x and the 3 units of the GRU, n = 4. One step
with the standard-normal driver u:

    h' = GRU(input x, hidden h)                  (equinox's GRUCell: reset, update, new gates)
    mu, raw = D (h' + x) + d                     (identity activation, skip connection)
    x' = mu + softplus(raw) u                    (the reparameterised sample)
    s' = [x', h']

(ELK's ``elk.utils.elk_utils.packed_single_step`` over ``elk.models``; ported from reading it.)
Sampling 10,000 steps of it is the paper's hard case: the largest Lyapunov exponent is about
-0.0005 per step, on the edge of chaos, and DEER overflows.

The weights and exact reference trajectories for the paper's seeds 1-3 are not part of this
repository: they are read from the folder ``elk-argru`` (``elk_argru.npz``, see its README),
by default ``../shared/data/elk-argru`` beside the repository, or ``$RNNSCAN_ELK_ARGRU``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SEEDS = (1, 2, 3)
_PREFIX = "param.conditioners[0]."
_CELL = _PREFIX + "seq_model.layers[0].ssm.cell."


def data_dir() -> Path:
    """Where ``elk_argru.npz`` is looked for."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "elk-argru"
    return Path(os.environ.get("RNNSCAN_ELK_ARGRU", default))


def available() -> bool:
    return (data_dir() / "elk_argru.npz").is_file()


class ARGRU(NamedTuple):
    """The weights of the trained model (float32 arrays)."""

    weight_ih: jnp.ndarray  # (9, 1): reset, update, new gates from the input x
    weight_hh: jnp.ndarray  # (9, 3): the same from the hidden state
    bias: jnp.ndarray  # (9,)
    bias_n: jnp.ndarray  # (3,): inside the reset gate's product, as in equinox's GRUCell
    decoder_weight: jnp.ndarray  # (2, 3): mean and raw scale of the next sample
    decoder_bias: jnp.ndarray  # (2,)


class Problem(NamedTuple):
    """One seed: s_t = step(s_{t-1}, drivers[t]) for t = 0..T-1 from ``init``; ``states`` are
    the exact sequential evaluation by ELK's own code."""

    init: jnp.ndarray  # (4,)
    drivers: jnp.ndarray  # (T,)
    states: np.ndarray  # (T, 4)


def load(seed: int, dtype=jnp.float32) -> tuple[ARGRU, Problem]:
    """The model and the problem of one of the paper's seeds (1, 2 or 3)."""
    with np.load(data_dir() / "elk_argru.npz") as data:
        model = ARGRU(
            weight_ih=data[_CELL + "weight_ih"],
            weight_hh=data[_CELL + "weight_hh"],
            bias=data[_CELL + "bias"],
            bias_n=data[_CELL + "bias_n"],
            decoder_weight=data[_PREFIX + "decoder.weight"],
            decoder_bias=data[_PREFIX + "decoder.bias"],
        )
        problem = Problem(
            init=data[f"seed{seed}/init_state"],
            drivers=data[f"seed{seed}/drivers"],
            states=np.asarray(data[f"seed{seed}/states"]),
        )
    model = ARGRU(*(jnp.asarray(a, dtype) for a in model))
    return model, problem._replace(
        init=jnp.asarray(problem.init, dtype), drivers=jnp.asarray(problem.drivers, dtype)
    )


def step(model: ARGRU, s, u):
    """One step of the sampler: packed state ``s = [x, h]`` (4,), driver ``u`` (scalar)."""
    x, h = s[:1], s[1:]
    input_gates = jnp.split(model.weight_ih @ x + model.bias, 3)
    hidden_gates = jnp.split(model.weight_hh @ h, 3)
    reset = jax.nn.sigmoid(input_gates[0] + hidden_gates[0])
    keep = jax.nn.sigmoid(input_gates[1] + hidden_gates[1])
    new = jnp.tanh(input_gates[2] + reset * (hidden_gates[2] + model.bias_n))
    h = new + keep * (h - new)
    mean, raw_scale = model.decoder_weight @ (h + x) + model.decoder_bias
    x = mean + jax.nn.softplus(raw_scale) * u
    return jnp.concatenate([x[None], h])


def scan_step(model: ARGRU):
    """``f(s, u) -> (s', s')`` for ``jax.lax.scan`` and ``rnnscan.solve``."""

    def f(s, u):
        s = step(model, s, u)
        return s, s

    return f


# --- ELK's Figure 4 protocol -----------------------------------------------------------------

DEFAULTS = {
    "name": "cpu",
    "seeds": [1, 2, 3],
    # Each method as a user would call it (its defaults), plus what the paper compares.
    "methods": [
        "newton",
        "quasi_newton",
        "elk",
        "quasi_elk",
        # The paper's quasi-ELK: fixed damping 0.01 (ELK's sigmasq = 1e2), thousands of
        # iterations, so without the give-up rules (its prefix grows ~6 steps an iteration);
        # and at 0.005, near the best of a sweep over 0.001-0.03 on seed 1 (0.001, 0.002 do not
        # converge in 3,000; 0.003: 1,983; 0.004: 1,232; 0.005: 1,304; 0.0075: 1,479;
        # 0.01: 1,600; 0.02: 2,029; 0.03: 2,367 iterations).
        {
            "name": "quasi_elk",
            "damping": 0.01,
            "adaptive": False,
            "give_up": False,
            "max_steps": 3000,
        },
        {
            "name": "quasi_elk",
            "damping": 0.005,
            "adaptive": False,
            "give_up": False,
            "max_steps": 3000,
        },
        {"name": "newton", "window": 100, "give_up": False},
    ],
    "repeats": 3,
    # The error-against-iteration curves of ELK's Figure 4, for the first seed: the mean
    # |error| after k iterations, k on this grid (up to each method's own count).
    "curve_iterations": [
        1,
        2,
        3,
        5,
        8,
        12,
        20,
        30,
        50,
        80,
        120,
        200,
        300,
        500,
        800,
        1200,
        1600,
        2000,
        3000,
    ],
    "error_threshold": 1e-2,
    "out": None,
}

# ELK's own code (lindermanlab/elk, run in a scratch environment; ../shared/data/elk-argru's
# README): iterations until the mean |error| of the sampled signal is below 1e-2.
ELK_REFERENCE = {"elk": [156, 165, 147], "quasi_elk": [1394, 1424, 1370], "newton": None}


def _solver(method, seed):
    """``(solve, problem)``: ``solve(max_steps)`` the mean |error| of the sampled signal after
    at most ``max_steps`` iterations of ``method`` (every iterate from the same start, so
    the k-th of one run is the k-th of any longer one)."""
    import rnnscan

    model, problem = load(seed)
    f = scan_step(model)
    if isinstance(method, str):
        method = rnnscan.method_class(method)()

    def solve(max_steps=None):
        m = method if max_steps is None else dataclasses.replace(method, max_steps=max_steps)
        run = jax.jit(lambda s0, us: rnnscan.solve(f, s0, us, method=m, on_failure="return"))
        return run, jax.block_until_ready(run(problem.init, problem.drivers))

    return solve, problem


def mean_error(sol, problem) -> float:
    """The mean |error| of the sampled signal x against ELK's exact trajectory (inf if the
    iterate is not finite)."""
    error = np.abs(np.asarray(sol.carries)[:, 0] - problem.states[:, 0])
    return float(error.mean()) if np.isfinite(error).all() else float("inf")


def _windowed(method) -> bool:
    """Whether ``max_steps`` caps each window rather than the whole solve (then the k-th
    iterate of the curves and the threshold search is not defined)."""
    return getattr(method, "window", None) is not None


def iterations_to_error(solve, problem, threshold, upper) -> int | None:
    """The fewest iterations (<= ``upper``) after which the mean |error| is below
    ``threshold``, by bisection (the error falls about monotonically on these solves)."""
    if mean_error(solve(upper)[1], problem) >= threshold:
        return None
    low, high = 0, upper  # error(low) >= threshold > error(high)
    while high - low > 1:
        mid = (low + high) // 2
        if mean_error(solve(mid)[1], problem) < threshold:
            high = mid
        else:
            low = mid
    return high


def error_curve(method, seed, grid) -> list[tuple[int, float]]:
    """``[(k, mean |error| after k iterations)]`` for k on ``grid``."""
    solve, problem = _solver(method, seed)
    return [(k, mean_error(solve(k)[1], problem)) for k in grid]


def run_case(label, method, seed, repeats, threshold=None):
    """One method on one seed: iterations, result, errors against ELK's exact trajectory
    (of the parallel iterate itself: ``on_failure="return"``), the median time and (with
    ``threshold``) the iterations to a mean |error| below it, ELK's own criterion."""
    import time

    import rnnscan

    solve_k, problem = _solver(method, seed)
    solve, sol = solve_k()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(solve(problem.init, problem.drivers))
        times.append(time.perf_counter() - start)
    error = np.abs(np.asarray(sol.carries)[:, 0] - problem.states[:, 0])
    to_threshold = (
        iterations_to_error(solve_k, problem, threshold, int(sol.iterations))
        if threshold is not None and np.isfinite(error).all() and not _windowed(method)
        else None
    )
    return {
        "method": label,
        "seed": seed,
        "iterations": int(sol.iterations),
        "converged": bool(sol.converged),
        "result": rnnscan.RESULTS.message(int(sol.result)),
        "mean_abs_error": float(np.nanmean(error)) if np.isfinite(error).any() else None,
        "max_abs_error": float(np.nanmax(error)) if np.isfinite(error).any() else None,
        "median_s": sorted(times)[len(times) // 2],
        "iterations_to_threshold": to_threshold,
    }


def report(records) -> str:
    seeds = sorted({r["seed"] for r in records})
    lines = [
        "| method | "
        + " | ".join(f"seed {s}: iterations (mean / max error)" for s in seeds)
        + " | ELK's code to mean error < 1e-2 |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for label in dict.fromkeys(r["method"] for r in records):
        cells = []
        for s in seeds:
            r = next(r for r in records if r["method"] == label and r["seed"] == s)
            mark = "" if r["converged"] else " (not converged)"
            err = (
                f"{r['mean_abs_error']:.1e} / {r['max_abs_error']:.1e}"
                if r["mean_abs_error"] is not None
                else "non-finite"
            )
            reach = r.get("iterations_to_threshold")
            reach = f"; < 1e-2 after {reach}" if reach is not None else ""
            cells.append(f"{r['iterations']}{mark} ({err}{reach})")
        ref = ELK_REFERENCE.get(label.split(",")[0])
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {' / '.join(map(str, ref)) if ref else '–'} |"
        )
    return "\n".join(lines) + "\n"


def _short(label: str) -> str:
    """A method's label without the options every long run shares."""
    for noise in (", adaptive=False", ", give_up=False", ", max_steps=3000"):
        label = label.replace(noise, "")
    return label.replace("damping=", "fixed λ=")


def plot(records, path, curves=None, threshold=1e-2) -> None:
    """Iterations per method and seed (bars) beside ELK's counts and, with ``curves``
    (``{label: [(k, mean error)]}``), the error against iteration of ELK's Figure 4."""
    from . import harness

    plt = harness.pyplot()
    labels = list(dict.fromkeys(r["method"] for r in records))
    seeds = sorted({r["seed"] for r in records})
    if curves:
        fig, (ax, curve_ax) = plt.subplots(1, 2, figsize=(15, 4.5))
        for label, points in curves.items():
            ks, errors = zip(*points)
            finite = [e if np.isfinite(e) else np.nan for e in errors]
            curve_ax.plot(ks, finite, marker=".", label=_short(label))
        curve_ax.axhline(threshold, color="k", ls=":", lw=1, label=f"mean error {threshold:g}")
        curve_ax.set_xscale("log")
        curve_ax.set_yscale("log")
        curve_ax.set_ylim(1e-6, 1e2)  # Newton's overflowing iterates are off the top
        curve_ax.set_xlabel("iterations")
        curve_ax.set_ylabel(f"mean |error| of the sampled signal (seed {seeds[0]})")
        curve_ax.legend(fontsize=7)
    else:
        fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(seeds)
    for i, s in enumerate(seeds):
        its = [next(r for r in records if r["method"] == m and r["seed"] == s) for m in labels]
        xs = np.arange(len(labels)) + i * width
        bars = ax.bar(xs, [r["iterations"] for r in its], width, label=f"rnnscan, seed {s}")
        for bar, r in zip(bars, its):
            if not r["converged"]:
                bar.set_hatch("//")
        for x, m in zip(xs, labels):
            ref = ELK_REFERENCE.get(m.split(",")[0])
            if ref:
                ax.plot(x, ref[i], "k_", ms=12, mew=2)
    ax.plot([], [], "k_", ms=12, mew=2, label="ELK's code, to mean error < 1e-2")
    ticks = [_short(label).replace(", ", "\n") for label in labels]
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, ticks, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("iterations (hatched: not converged)")
    ax.legend(fontsize=8)
    harness.save_figure(fig, path, title="ELK's AR-GRU (T = 9,999, float32)")


def main(argv=None) -> None:
    from tqdm import tqdm

    from . import harness

    args, config, out = harness.setup("python -m experiments.elk_argru", __doc__, DEFAULTS, argv)
    if not available():
        raise SystemExit(f"error: the ELK AR-GRU data is not at {data_dir()} (see its README)")
    meta = harness.provenance(config, args.config, args.set)
    cases = [(harness.method(spec), seed) for spec in config["methods"] for seed in config["seeds"]]
    records = []
    threshold = config["error_threshold"]
    for (label, method), seed in tqdm(cases, desc="AR-GRU solves"):
        records.append(run_case(label, method, seed, config["repeats"], threshold))
    curves = {}
    methods = [harness.method(spec) for spec in config["methods"]]
    for label, method in tqdm([m for m in methods if not _windowed(m[1])], desc="curves"):
        first = next(r for r in records if r["method"] == label)
        grid = [k for k in config["curve_iterations"] if k < first["iterations"]]
        curves[label] = error_curve(method, first["seed"], grid + [first["iterations"]])
    summary = (
        "# ELK's benchmark: the paper's trained AR-GRU\n\n"
        + harness.device_line(meta)
        + "\n\n"
        + report(records)
    )
    harness.write_outputs(out, {"provenance": meta, "records": records, "curves": curves}, summary)
    plot(records, f"results/figures/{Path(out).name}.png", curves, threshold)


if __name__ == "__main__":
    main()
