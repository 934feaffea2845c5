"""Trainable timescales at CPU scale: single- vs multi-head curricula on N-parity (and N-DMS).

``python -m experiments.timescales --config configs/experiments/timescales_cpu.yaml
[--out PREFIX] [--set key=value]``

A small-scale check of the findings of Khajehabdollahi, Zeraati, Giannakakis, Schäfer, Martius
& Levina, "Emergent mechanisms for long timescales depend on training curriculum and affect
performance in memory tasks" (arXiv:2309.12927, 2023): leaky ReLU RNNs whose per-neuron
time constants τ are trained with the weights (:class:`rnnscan.nn.LeakyRNNCell`), N growing by
one whenever the current objective is learned (:func:`rnnscan.train.train_curriculum`):

* single-head (one N at a time, a new head per N): the paper finds τ grows with N, large N
  are reached, and earlier N are forgotten;
* multi-head (heads for every N up to the current one, trained together): τ stays near its
  start, the network-mediated timescales τ_net (fitted autocorrelation decay of each neuron's
  activity under random input, :func:`rnnscan.diagnostics.network_timescales`) grow instead,
  training is faster, nothing is forgotten.

Recorded per task, curriculum and seed: the largest N learned, the steps each N took, mean τ,
mean leak timescale and mean τ_net at every learned N, the final network's accuracy on every
learned N, and the final accuracies recomputed with a parallel solver (Newton) against the
sequential scan the training used.

Writes ``PREFIX.json`` (everything, with provenance), ``PREFIX.md`` (tables and the checks)
and a figure (``figure:`` in the config). ``--set render_only=true`` redraws both from an
existing ``PREFIX.json`` (to add the ``discussion:`` text written after reading the numbers).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from rnnscan.train import CurriculumConfig, train_curriculum

from . import harness

DEFAULTS: dict[str, Any] = {
    "name": "cpu",
    "tasks": ["parity"],
    "curricula": ["single", "multi"],
    "seeds": [0],
    "curriculum": {},  # CurriculumConfig keys shared by every run
    "task_overrides": {},  # per task: CurriculumConfig keys (e.g. {"dms": {"n_max": 20}})
    "discussion": None,
    "render_only": False,
    "out": None,
    "figure": None,
}


def check_config(config: dict[str, Any]) -> None:
    for task in config["tasks"]:
        for curriculum in config["curricula"]:
            _run_config(config, task, curriculum, 0)  # raises on a bad key or value


def _run_config(config, task, curriculum, seed) -> CurriculumConfig:
    values = {
        **config["curriculum"],
        **config["task_overrides"].get(task, {}),
        "task": task,
        "curriculum": curriculum,
        "seed": seed,
    }
    return CurriculumConfig.from_dict(values)


def run(config) -> list[dict[str, Any]]:
    runs = []
    for task in config["tasks"]:
        for seed in config["seeds"]:
            for curriculum in config["curricula"]:
                result = train_curriculum(_run_config(config, task, curriculum, seed))
                record = result.to_json()
                record.update(task=task, curriculum=curriculum, seed=seed)
                runs.append(record)
                print(
                    f"{task} {curriculum}-head seed {seed}: largest N {result.largest_n} "
                    f"in {result.stages[-1]['step']} steps, {result.seconds:.0f} s"
                    + (f" ({result.gave_up})" if result.gave_up else "")
                )
    return runs


# --- the checks --------------------------------------------------------------------------------


def _slope(xs, ys) -> float:
    """Least-squares slope of ys against xs (NaN with fewer than two points)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    keep = np.isfinite(ys)
    if keep.sum() < 2:
        return float("nan")
    return float(np.polyfit(xs[keep], ys[keep], 1)[0])


def _learned(run):
    return [s for s in run["stages"][1:]]


def _mean_over_seeds(runs, fn) -> float:
    return float(np.nanmean([fn(r) for r in runs]))


def _tau_slope(key):
    """The slope of ``stage[key]`` against N over a run's learned N."""

    def slope(run):
        stages = _learned(run)
        return _slope([s["n"] for s in stages], [s[key] for s in stages])

    return slope


def _steps_to(n):
    return lambda run: next((s["step"] for s in _learned(run) if s["n"] == n), np.nan)


def _earlier_accuracy(runs) -> float:
    """Mean final accuracy on the learned N other than the last (forgetting)."""
    values = [a for r in runs for n, a in r["retained"].items() if int(n) < r["largest_n"]]
    return float(np.mean(values)) if values else float("nan")


def _verdict(ok) -> str:
    return "**yes**" if ok else "**no**"


def _task_checks(task, single, multi) -> list[str]:
    """The paper's claims on one task's single- and multi-head runs."""
    largest = {
        c: _mean_over_seeds(r, lambda x: x["largest_n"]) for c, r in (("s", single), ("m", multi))
    }
    tau = {c: _mean_over_seeds(r, _tau_slope("tau_mean")) for c, r in (("s", single), ("m", multi))}
    net = {
        c: _mean_over_seeds(r, _tau_slope("tau_net_mean")) for c, r in (("s", single), ("m", multi))
    }
    common = min(r["largest_n"] for r in single + multi)
    steps = {c: _mean_over_seeds(r, _steps_to(common)) for c, r in (("s", single), ("m", multi))}
    kept = {"s": _earlier_accuracy(single), "m": _earlier_accuracy(multi)}
    return [
        f"### {task}",
        "",
        "| claim (paper) | measured here | reproduced? |",
        "|---|---|---|",
        f"| single-head τ grows with N | slope of mean τ vs N: single {tau['s']:+.3f} / N, "
        f"multi {tau['m']:+.3f} / N | {_verdict(tau['s'] > 0.01)} |",
        f"| multi-head τ stays near its start, below single-head's | slope multi "
        f"{tau['m']:+.3f} vs single {tau['s']:+.3f} | {_verdict(tau['m'] < tau['s'])} |",
        f"| multi-head τ_net grows with N | slope of mean τ_net vs N: multi {net['m']:+.3f} / N, "
        f"single {net['s']:+.3f} / N | {_verdict(net['m'] > 0.01)} |",
        f"| multi-head learns faster | total steps to reach N = {common}: single "
        f"{steps['s']:.0f}, multi {steps['m']:.0f} | {_verdict(steps['m'] < steps['s'])} |",
        f"| single-head forgets earlier N, multi-head does not | final accuracy on earlier N "
        f"(mean): single {kept['s']:.3f}, multi {kept['m']:.3f} | "
        f"{_verdict(kept['m'] > kept['s'] + 0.05)} |",
        f"| single-head reaches larger N (within the budget) | largest N: single "
        f"{largest['s']:.1f}, multi {largest['m']:.1f} | {_verdict(largest['s'] > largest['m'])} |",
        "",
    ]


def _checks(runs, config) -> list[str]:
    """The paper's claims, each checked on these runs (per task, mean over seeds)."""
    lines = []
    for task in config["tasks"]:
        single = [r for r in runs if r["task"] == task and r["curriculum"] == "single"]
        multi = [r for r in runs if r["task"] == task and r["curriculum"] == "multi"]
        if single and multi:
            lines += _task_checks(task, single, multi)
    return lines


# --- report ------------------------------------------------------------------------------------


def _fmt(value, digits=2):
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def summarise(config, runs, provenance, wall) -> str:
    c = CurriculumConfig.from_dict(config["curriculum"])
    lines = [
        f"# Trainable timescales: single- vs multi-head curricula ({config['name']})",
        "",
        harness.device_line(provenance) + f" Whole run {wall:.0f} s.",
        "",
        f"Leaky {c.activation} RNN, n = {c.hidden_features} neurons, τ = 1 + softplus(ρ) "
        f"trained (initially {c.tau_init:g}), one input (the bit), float32. Streams of "
        f"T = {c.seq_len} fair bits, batch {c.batch_size} (fresh every step), Adam lr "
        f"{c.learning_rate:g}, clip {c.clip_norm}; accuracy every {c.eval_every} steps on "
        f"{c.eval_batch_size} fresh streams; N advances at accuracy >= {c.threshold:g} (multi-"
        f"head: every head); a run stops at N = {c.n_max}, after {c.max_steps_per_n} steps on "
        f"one N, or after {c.max_steps} steps. Training evaluates the RNN with "
        f'`rnnscan.nn.RNN(method="{c.method}")` (on a CPU at T = {c.seq_len} the sequential '
        f"scan is the fastest); the final accuracies are recomputed with "
        f'`"{c.check_method}"`. τ_net: {c.timescale_runs} random bit streams of '
        f"{c.burn_in} + {c.timescale_len} steps, autocorrelation of each neuron's activity "
        f"after the burn-in, exponential fitted on lags 1 .. K (AC > {c.cutoff:g}, K <= "
        f"{c.max_lag}); means over the neurons that are not silent. τ_leak = "
        f"-1 / log(1 - 1/τ) is the decay time of an isolated neuron (≈ τ - 1/2).",
        "",
        "## The paper's claims, checked",
        "",
        *_checks(runs, config),
    ]
    if config.get("discussion"):
        lines += ["## Reading", "", config["discussion"].strip(), ""]
    lines += ["## Runs", ""]
    for r in runs:
        check = r["check"]
        lines += [
            f"### {r['task']}, {r['curriculum']}-head, seed {r['seed']}",
            "",
            f"Largest N learned: **{r['largest_n']}**"
            + (f" ({r['gave_up']})" if r["gave_up"] else " (every N up to n_max)")
            + f"; {r['seconds']:.0f} s. "
            + (
                f"Final accuracies with `{check['method']}` vs the sequential scan: max abs "
                f"difference {check['max_abs_difference']:.1e}."
                if check
                else ""
            ),
            "",
            "| N | learned at step | steps on N | mean τ | mean τ_leak | mean τ_net | "
            "median τ_net | silent neurons | final accuracy on N |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in r["stages"]:
            label = f"{s['n']} (init)" if s["steps"] == 0 and s["step"] == 0 else str(s["n"])
            final = r["retained"].get(str(s["n"]))
            lines.append(
                f"| {label} | {s['step']} | {s['steps']} | {_fmt(s['tau_mean'])} | "
                f"{_fmt(s['tau_leak_mean'])} | {_fmt(s['tau_net_mean'])} | "
                f"{_fmt(s['tau_net_median'])} | {s['silent']} | {_fmt(final, 3)} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(config, runs, path):
    plt = harness.pyplot()
    tasks = config["tasks"]
    fig, axes = plt.subplots(len(tasks), 4, figsize=(18, 4.2 * len(tasks)), squeeze=False)
    colors = {"single": "C0", "multi": "C3"}
    for row, task in enumerate(tasks):
        ax_tau, ax_net, ax_steps, ax_keep = axes[row]
        for r in (x for x in runs if x["task"] == task):
            stages = _learned(r)
            ns = [s["n"] for s in stages]
            color = colors.get(r["curriculum"], "k")
            label = f"{r['curriculum']}-head" + (
                f" s{r['seed']}" if len(config["seeds"]) > 1 else ""
            )
            init = r["stages"][0]
            ax_tau.plot(ns, [s["tau_mean"] for s in stages], "o-", color=color, label=label)
            ax_tau.axhline(init["tau_mean"], color="grey", lw=0.8, ls=":")
            ax_net.plot(ns, [s["tau_net_mean"] for s in stages], "o-", color=color, label=label)
            ax_net.plot(
                ns,
                [s["tau_leak_mean"] for s in stages],
                "x--",
                color=color,
                alpha=0.6,
                label=f"{label}: τ_leak",
            )
            ax_steps.plot(ns, [s["step"] for s in stages], "o-", color=color, label=label)
            kept = sorted((int(n), a) for n, a in r["retained"].items())
            ax_keep.plot([k for k, _ in kept], [a for _, a in kept], "o-", color=color, label=label)
        ax_tau.set(xlabel="N", ylabel="mean τ (trained)", title=f"{task}: single-neuron τ")
        ax_net.set(xlabel="N", ylabel="steps", title=f"{task}: mean τ_net (fit) and τ_leak")
        ax_steps.set(xlabel="N", ylabel="total training steps", title=f"{task}: steps to learn N")
        ax_keep.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax_keep.set(
            xlabel="N",
            ylabel="accuracy",
            ylim=(0.4, 1.02),
            title=f"{task}: final network on every learned N",
        )
        for ax in axes[row]:
            ax.legend(fontsize=7)
    harness.save_figure(fig, path, title="Trainable timescales, single- vs multi-head curricula")


def main(argv=None) -> None:
    args, config, out = harness.setup(
        "python -m experiments.timescales", __doc__, DEFAULTS, argv, check=check_config
    )
    if config["render_only"]:
        record = json.loads(Path(f"{out}.json").read_text())
        record["config"]["discussion"] = config["discussion"]
        runs, provenance, wall = record["training"], record["provenance"], record["wall_s"]
        summary = summarise(record["config"], runs, provenance, wall)
        harness.write_outputs(out, record, summary)
    else:
        start = time.perf_counter()
        runs = run(config)
        wall = time.perf_counter() - start
        provenance = harness.provenance(config, args.config, args.set)
        record = {"config": config, "provenance": provenance, "wall_s": wall, "training": runs}
        harness.write_outputs(out, record, summarise(config, runs, provenance, wall))
    if config["figure"]:
        plot(record["config"], runs, config["figure"])
        print(f"figure: {config['figure']}")


if __name__ == "__main__":
    main()
