"""CfC cells on an irregularly sampled task: dense vs low-rank vs low-rank + sparse recurrence.

``python -m experiments.cfc --config configs/experiments/cfc_cpu.yaml [--out PREFIX]
[--set key=value]``

Closed-form continuous-time cells (Hasani et al., Nature MI 2022) read the time elapsed since
the previous observation, so they take irregularly sampled sequences as they come; Tumma et
al. (ICLR 2024) parameterise their recurrent weights by rank and sparsity. Here damped
oscillators q(τ) = a e^{-γτ} cos(ωτ + φ), with random a, φ, ω, γ per sequence, are observed
(with noise) at random times τ_t (Δt_t uniform on ``dt_range``); the model sees
x_t = [q̃(τ_t), Δt_t] (``CfCCell(time_input=True)``) and predicts the clean state
(q(τ_t), q'(τ_t)) through a linear read-out: the velocity is never observed, so it must be
inferred from the observations and their spacing.

Every model in ``models`` (CfC with dense W_rec, rank R, rank R with a fixed 50% sparse mask)
trains with Adam from one initialisation, once with ``rnnscan.nn.RNN`` (``method="newton"``,
the parallel DEER solve) and once with ``method="sequential"`` (``jax.lax.scan``): the loss
curves agree to the solver tolerance. Recorded: parameter counts, losses, held-out MSE,
Newton iterations, time per training step (median after warm-up), compile time.

Writes ``PREFIX.json`` (everything, with provenance), ``PREFIX.md`` (a summary table) and a
figure (``figure:`` in the config).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import rnnscan.nn as rn

from . import harness

DEFAULTS: dict[str, Any] = {
    "name": "cfc",
    "seed": 0,
    "dtype": "float32",
    "system": {
        "amplitude": [0.5, 1.5],
        "omega": [1.0, 2.0],
        "damping": [0.05, 0.3],
        "noise": 0.02,
    },
    "dt_range": [0.05, 0.45],
    "sequences": 32,
    "test_sequences": 64,
    "length": 100,
    "hidden": 16,
    "backbone_features": 32,
    "backbone_layers": 1,
    "models": [
        {"label": "dense", "rank": None, "sparsity": 0.0},
        {"label": "rank 4", "rank": 4, "sparsity": 0.0},
        {"label": "rank 4, 50% sparse", "rank": 4, "sparsity": 0.5},
    ],
    "methods": ["newton", "sequential"],
    "steps": 200,
    "learning_rate": 1e-2,
    "warmup_steps": 5,
    "out": None,
    "figure": None,
}


# --- data: damped oscillators at random times ------------------------------------------------


def oscillator_data(seed, config, count, dtype):
    """Inputs (count, T, 2) = [noisy q, Δt], targets (count, T, 2) = clean (q, q'), times."""
    rng = np.random.default_rng(seed)
    system = config["system"]
    T = config["length"]
    a = rng.uniform(*system["amplitude"], (count, 1))
    omega = rng.uniform(*system["omega"], (count, 1))
    gamma = rng.uniform(*system["damping"], (count, 1))
    phi = rng.uniform(0.0, 2 * np.pi, (count, 1))
    dt = rng.uniform(*config["dt_range"], (count, T))
    tau = np.cumsum(dt, axis=1)
    decay, angle = a * np.exp(-gamma * tau), omega * tau + phi
    q = decay * np.cos(angle)
    p = -gamma * q - decay * omega * np.sin(angle)  # dq/dτ
    observed = q + system["noise"] * rng.standard_normal(q.shape)
    inputs = np.stack([observed, dt], axis=-1).astype(dtype)
    targets = np.stack([q, p], axis=-1).astype(dtype)
    return jnp.asarray(inputs), jnp.asarray(targets), tau


# --- the model -------------------------------------------------------------------------------


class Model(nnx.Module):
    """A CfC layer reading [q̃, Δt] and a linear read-out of (q, q')."""

    def __init__(self, config, spec, method, dtype, rngs):
        cell = rn.CfCCell(
            2,
            config["hidden"],
            rank=spec["rank"],
            sparsity=spec["sparsity"],
            backbone_features=config["backbone_features"],
            backbone_layers=config["backbone_layers"],
            time_input=True,
            param_dtype=dtype,
            rngs=rngs,
        )
        self.rnn = rn.RNN(cell, method=method)
        self.readout = nnx.Linear(config["hidden"], 2, param_dtype=dtype, rngs=rngs)

    def __call__(self, xs):
        hs, stats = self.rnn(xs, return_stats=True)
        return self.readout(hs), stats


def train(config, spec, method, data, test_data, dtype):
    model = Model(config, spec, method, dtype, nnx.Rngs(config["seed"]))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    optimiser = optax.adam(config["learning_rate"])

    def loss_fn(params, xs, ys):
        pred, stats = nnx.merge(graphdef, params, rest)(xs)
        return jnp.mean((pred - ys) ** 2), (jnp.mean(stats.iterations), jnp.sum(stats.fell_back))

    @jax.jit
    def evaluate(params, xs, ys):
        # flax's sequential scan: the same values, without compiling a second parallel solve.
        model = nnx.merge(graphdef, params, rest)
        pred = model.readout(nnx.RNN(model.rnn.cell)(xs))
        return jnp.mean((pred - ys) ** 2), pred

    step = jax.jit(harness.train_step(loss_fn, optimiser))
    run = harness.fit(
        step,
        params,
        optimiser.init(params),
        data,
        steps=config["steps"],
        desc=f"cfc {spec['label']} / {method}",
        compile_ahead=True,
    )
    test_loss, test_pred = evaluate(run.params, *test_data)
    cell = nnx.merge(graphdef, run.params, rest).rnn.cell
    return {
        "label": spec["label"],
        "rank": spec["rank"],
        "sparsity": spec["sparsity"],
        "method": method,
        "params": harness.count_params(run.params),
        "cell_params": harness.count_params(nnx.state(cell, nnx.Param)),
        "recurrent_params": int(
            cell.hidden_features * cell.recurrent_width
            if cell.rank is None
            else cell.rank * (cell.hidden_features + cell.recurrent_width)
        ),
        "compile_s": run.compile_s,
        "losses": run.losses,
        "test_mse": float(test_loss),
        "step_times_s": run.step_times_s,
        **harness.step_time_summary(run.step_times_s, config["warmup_steps"]),
        "newton_iterations_mean": [its for its, _ in run.aux],
        "fallbacks": [int(fell) for _, fell in run.aux],
    }, np.asarray(test_pred[0])


def summarise(config, runs, provenance) -> str:
    lines = [
        f"# CfC on irregularly sampled damped oscillators ({config['name']})",
        "",
        f"{config['sequences']} training sequences (held-out MSE on {config['test_sequences']}) "
        f"of {config['length']} observations at random times (Δt ~ U{tuple(config['dt_range'])}"
        f"); input [noisy q, Δt], target (q, q'). CfCCell(time_input=True), n = "
        f"{config['hidden']}, backbone {config['backbone_layers']} x "
        f"{config['backbone_features']} (lecun_tanh), linear read-out; {config['dtype']}; Adam "
        f"lr {config['learning_rate']}, {config['steps']} full-batch steps; median step time "
        f"after {config['warmup_steps']} warm-up steps.",
        "",
        harness.device_line(provenance),
        "",
        "| W_rec | method | params (W_rec) | final loss | held-out MSE | rel. loss diff vs "
        "sequential: step 0 / first 100 / all | Newton iterations (mean) | step time (median) "
        "| compile | fallbacks |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        ref = next(
            (r for r in runs if r["label"] == run["label"] and r["method"] == "sequential"), run
        )
        losses, ref_losses = np.asarray(run["losses"]), np.asarray(ref["losses"])
        rel_all = np.abs(losses - ref_losses) / np.abs(ref_losses)
        rel = f"{rel_all[0]:.1e} / {np.max(rel_all[:100]):.1e} / {np.max(rel_all):.1e}"
        its = np.mean(run["newton_iterations_mean"])
        lines.append(
            f"| {run['label']} | {run['method']} | {run['params']} ({run['recurrent_params']}) | "
            f"{losses[-1]:.4e} | {run['test_mse']:.4e} | {rel} | {its:.1f} | "
            f"{1e3 * run['step_time_median_s']:.1f} ms | {run['compile_s']:.1f} s | "
            f"{sum(run['fallbacks'])} |"
        )
    lines += [
        "",
        "Step 0 compares the two solves at the same parameters (the same loss to float32 "
        "rounding); later steps also carry the drift of two training runs whose parameters "
        "differ by rounding, which training amplifies: the differences grow from rounding level "
        "over the run (first 100 steps vs all 200 above).",
    ]
    return "\n".join(lines) + "\n"


def plot(config, runs, test_inputs, test_targets, tau, predictions, path):
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in runs:
        style = "-" if run["method"] != "sequential" else "--"
        colour = f"C{[r['label'] for r in runs].index(run['label'])}"
        axes[0].semilogy(
            run["losses"], style, color=colour, label=f"{run['label']} ({run['method']})"
        )
    axes[0].set(xlabel="training step", ylabel="MSE of (q, q')", title="training loss")
    axes[0].legend(fontsize=7)
    names = [f"{r['label']} / {r['method']}" for r in runs]
    medians = [1e3 * r["step_time_median_s"] for r in runs]
    colours = [f"C{[r['label'] for r in runs].index(r['label'])}" for r in runs]
    axes[1].bar(range(len(runs)), medians, color=colours)
    axes[1].set_xticks(range(len(runs)), names, fontsize=7, rotation=30, ha="right")
    axes[1].set(ylabel="ms per training step (median)", title="time per step")
    for i, value in enumerate(medians):
        axes[1].text(i, value, f"{value:.0f}", ha="center", va="bottom", fontsize=7)
    t = tau[0]
    axes[2].plot(t, test_targets[0, :, 1], "k-", lw=1, label="true q'")
    axes[2].plot(t, test_inputs[0, :, 0], "k.", ms=3, label="observed q")
    for label, pred in predictions.items():
        axes[2].plot(t, pred[:, 1], lw=1, label=f"predicted q' ({label})")
    axes[2].set(xlabel="time τ", title="held-out sequence: inferred velocity")
    axes[2].legend(fontsize=7)
    title = (
        f"CfC, irregular sampling: {config['sequences']} x {config['length']} observations, "
        f"n = {config['hidden']}, {config['dtype']}"
    )
    harness.save_figure(fig, path, title=title)


def main(argv=None) -> None:
    args, config, out = harness.setup("python -m experiments.cfc", __doc__, DEFAULTS, argv)
    dtype = jnp.dtype(config["dtype"])

    started = time.perf_counter()
    xs, ys, _ = oscillator_data(config["seed"], config, config["sequences"], dtype)
    test_xs, test_ys, test_tau = oscillator_data(
        config["seed"] + 1, config, config["test_sequences"], dtype
    )
    runs, predictions = [], {}
    for spec in config["models"]:
        for method in config["methods"]:
            run, pred = train(config, spec, method, (xs, ys), (test_xs, test_ys), dtype)
            runs.append(run)
            if method == config["methods"][0]:
                predictions[spec["label"]] = pred

    provenance = harness.provenance(config, args.config, args.set)
    record = {
        "config": config,
        "provenance": provenance,
        "wall_s": time.perf_counter() - started,
        "runs": runs,
    }
    harness.write_outputs(out, record, summarise(config, runs, provenance))
    print(f"wall time: {record['wall_s']:.0f} s")
    if config["figure"]:
        plot(
            config,
            runs,
            np.asarray(test_xs),
            np.asarray(test_ys),
            test_tau,
            predictions,
            config["figure"],
        )
        print(f"figure: {config['figure']}")


if __name__ == "__main__":
    main()
