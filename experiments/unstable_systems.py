"""Unstable but not chaotic: where the damped methods converge and Newton diverges.

``python -m experiments.unstable_systems --config configs/experiments/unstable_systems.yaml
--out R.jsonl [--report R.md] [--plot FIGURE.png]``

Two systems whose trajectories are predictable (largest Lyapunov exponent < 0, measured by
:func:`rnnscan.diagnostics.lyapunov_exponents` and recorded) but whose linearisations are
unstable away from the trajectory, so that Newton's (DEER's) undamped steps overshoot:

- ``forced_bistable``: n weakly coupled overdamped Duffing units, forward Euler with
  dt = 0.05, h' = h + dt (h - h^3 + C h + A sin(2 pi t / P + phi_i)), C ~ coupling N(0, 1/n),
  A = 3, P = 100 steps, phases phi_i spread over [0, 2 pi). Unforced, each unit is bistable;
  the forcing exceeds the fold (2 / (3 sqrt 3)) and leaves one attractor, which the state
  follows through the unstable middle (dF/dh = 1 + dt there). Newton's first step overshoots
  into the cubic and overflows.
- ``pendulum``: a damped pendulum, theta'' = -g sin(theta) - damping theta' + 0.1 cos(t),
  g = 10, damping = 0.2, integrated by RK4 (:func:`rnnscan.ode.solve_ivp`) from
  (theta, omega) = (1, 0) on a uniform grid. Linearised about a wrong guess (the pendulum
  upright) it grows like exp(sqrt(g) t); Newton passes through iterates of 10^12 and does not
  converge in its 50-iteration cap.

Every method of the config on each: iterations, the RESULTS code, whether it fell back, the
largest deviation from the sequential scan, and the median time of one jitted call relative
to the sequential scan (timed in the same process, calls interleaved round by round).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from tqdm import tqdm

import rnnscan
from rnnscan import ode
from rnnscan.diagnostics import lyapunov_exponents

from . import harness
from .hard_dynamics import solve_fields

_SHORT = {0: "ok", 1: "cap", 2: "nonfinite", 3: "diverged", 4: "stalled"}


def forced_bistable(length: int, n: int, coupling: float, dtype, seed: int = 0):
    """``(step, init, xs)`` of the coupled forced Duffing units."""
    C = coupling * jax.random.normal(jax.random.PRNGKey(seed), (n, n), dtype) / np.sqrt(n)
    C = C.astype(dtype)
    phases = jnp.linspace(0, 2 * np.pi, n, endpoint=False, dtype=dtype)
    t = jnp.arange(length, dtype=dtype)[:, None]
    xs = (3.0 * jnp.sin(2 * np.pi * t / 100 + phases)).astype(dtype)

    def step(h, x):
        h = h + 0.05 * (h - h**3 + C @ h + x)
        return h, h

    return step, jnp.zeros(n, dtype), xs


def _pendulum_field(t, y, args):
    g, damping = args
    return jnp.stack([y[1], -g * jnp.sin(y[0]) - damping * y[1] + 0.1 * jnp.cos(t)])


def _pendulum_problem(length: int, duration: float, dtype):
    ts = jnp.linspace(0.0, duration, length + 1, dtype=dtype)
    args = (jnp.asarray(10.0, dtype), jnp.asarray(0.2, dtype))
    return jnp.array([1.0, 0.0], dtype), ts, args


def _programs(system: str, length: int, config: dict, dtype, methods):
    """``(programs, lle)``: one jitted call per method label (and ``"sequential"``), each
    returning an object with ``ys``, ``iterations``, ``result`` and ``fell_back``."""
    if system == "forced_bistable":
        step, init, xs = forced_bistable(length, config["hidden"], config["coupling"], dtype)
        lle = lyapunov_exponents(step, init, xs, transient=100)[0]
        make = lambda m: jax.jit(lambda xs: rnnscan.solve(step, init, xs, method=m))  # noqa: E731
        operand = xs
    elif system == "pendulum":
        y0, ts, args = _pendulum_problem(length, config["pendulum_duration"], dtype)
        scheme = ode.RK4()
        vf = lambda t, y, u: _pendulum_field(t, y, args)  # noqa: E731

        def rk4_step(y, t01):
            y = scheme.step(vf, t01[0], t01[1], y, None, None)
            return y, y

        lle = lyapunov_exponents(rk4_step, y0, jnp.stack([ts[:-1], ts[1:]], 1), transient=100)[0]
        make = lambda m: jax.jit(  # noqa: E731
            lambda y0: ode.solve_ivp(_pendulum_field, y0, ts, args, scheme=scheme, method=m)
        )
        operand = y0
    else:
        raise ValueError(f"unknown system {system!r}; expected forced_bistable or pendulum")
    programs = {"sequential": make(rnnscan.Sequential())}
    programs.update({label: make(method) for label, method in methods})
    return programs, operand, float(lle)


def run(config: dict, out: Path, config_path: str) -> list[dict]:
    if "float64" in config["dtypes"]:
        jax.config.update("jax_enable_x64", True)
    methods = [harness.method(spec) for spec in config["methods"]]
    provenance = harness.provenance(config, config_path)
    records = []
    cases = [
        (system, length, dtype)
        for system, lengths in config["systems"].items()
        for length in lengths
        for dtype in config["dtypes"]
    ]
    for system, length, dtype_name in tqdm(cases, desc="unstable systems"):
        dtype = jnp.dtype(dtype_name)
        programs, operand, lle = _programs(system, length, config, dtype, methods)
        solutions = {name: jax.block_until_ready(fn(operand)) for name, fn in programs.items()}
        medians = harness.interleaved_medians(programs, (operand,), config["repeats"])
        reference = solutions["sequential"].ys
        for label, _ in methods:
            record = dict(
                system=system,
                length=length,
                dtype=dtype_name,
                largest_lyapunov_exponent=lle,
                **solve_fields(label, solutions[label], reference, medians),
                provenance=provenance,
            )
            records.append(record)
            harness.append_jsonl(out, record)
    return records


def report(records: list[dict]) -> str:
    """One markdown table: a row per (system, T, dtype), a column per method."""
    first = records[0]["provenance"]
    device = first["device"].get("kind", first["device"].get("platform"))
    methods = list(dict.fromkeys(r["method"] for r in records))
    lines = [
        f"Device: {device}; jax {first['versions']['jax']}; commit "
        f"{first.get('git', {}).get('commit')}. Entries: iterations, result (ok / diverged / "
        "stalled / cap), † = fell back to the sequential scan, then the median time relative "
        "to the sequential scan. LLE: the largest Lyapunov exponent per step (< 0: not "
        "chaotic).",
        "",
        "| system | T | dtype | LLE | sequential | " + " | ".join(methods) + " |",
        "|---|---:|---|---:|---:|" + "---:|" * len(methods),
    ]
    keys = dict.fromkeys((r["system"], r["length"], r["dtype"]) for r in records)
    for system, length, dtype in keys:
        by = {
            r["method"]: r
            for r in records
            if (r["system"], r["length"], r["dtype"]) == (system, length, dtype)
        }
        any_row = next(iter(by.values()))
        cells = [
            f"{r['iterations']} {_SHORT[r['result']]}{' †' if r['fell_back'] else ''}, "
            f"{r['time_vs_sequential']:.1f}×"
            for r in (by[m] for m in methods)
        ]
        lines.append(
            f"| {system} | {length:,} | {dtype} | {any_row['largest_lyapunov_exponent']:.3f} | "
            f"{any_row['sequential_median_s'] * 1e3:.2f} ms | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    """Iterations per method for every case; hatched bars fell back."""
    plt = harness.pyplot()
    keys = list(dict.fromkeys((r["system"], r["length"], r["dtype"]) for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        for i, key in enumerate(keys):
            r = next(
                r
                for r in records
                if (r["system"], r["length"], r["dtype"]) == key and r["method"] == method
            )
            ax.bar(
                i + j * width,
                r["iterations"],
                width,
                color=f"C{j}",
                hatch="//" if r["fell_back"] else None,
                edgecolor="black" if r["fell_back"] else None,
                label=method if i == 0 else None,
            )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))])
    ax.set_xticklabels([f"{s}\nT={t:,} {d}" for s, t, d in keys], fontsize=8)
    ax.set_ylabel("parallel iterations")
    ax.set_title("Unstable, not chaotic (hatched: gave up and fell back)")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    harness.save_figure(fig, path, dpi=110)


def main(argv=None) -> None:
    parser = harness.records_parser(
        "python -m experiments.unstable_systems", "configs/experiments/unstable_systems.yaml"
    )
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    records = run(config, args.out, args.config)
    harness.report_and_plot(records, args, "Unstable, not chaotic", report, plot)


if __name__ == "__main__":
    main()
