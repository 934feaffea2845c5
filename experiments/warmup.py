"""Warm-up (Lambrechts et al., 2023) on the long-memory synthetic marker task.

``python -m experiments.warmup --config configs/experiments/warmup_synthetic.yaml [--out PREFIX]
[--set k=v]``

The task is :func:`rnnscan.data.make_synthetic_series`: a class marker in the first 10% of
each series, white noise afterwards, so the classifier (:class:`rnnscan.nn.SequenceClassifier`,
logits averaged over time) must hold the marker in memory for most of the series. For every
cell in ``cells`` (GRU, BRC, nBRC) and seed, the same initialisation is trained twice for
the same budget of Adam steps, once as initialised and once after ``warmup.steps`` warm-up
steps (:func:`rnnscan.train.warmup`). Recorded: validation accuracy and loss after
the budget (and along the way), and each recurrent layer's VAA (number of attractors reached
by random input sequences followed by a zero-input phase, :func:`attractor_stats`) before and
after the warm-up.

Writes ``PREFIX.json`` (everything, with provenance), ``PREFIX.md`` (the table) and a figure.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import rnnscan.nn as rn
from rnnscan.data import make_synthetic_series
from rnnscan.train import attractor_stats, warmup

from . import harness

# The cells this experiment compares, by their names in rnnscan.nn.CELLS.
CELL_NAMES = ("gru", "brc", "nbrc")

DEFAULTS: dict[str, Any] = {
    "name": "warmup",
    "seeds": [0],
    "cells": ["gru", "brc", "nbrc"],
    "data": {"num_series": 256, "seq_len": 1024, "num_channels": 2, "num_classes": 4,
             "marker_len": 16},
    "val_fraction": 0.25,
    "hidden_features": 16,
    "num_blocks": 1,
    "method": "sequential",
    "batch_size": 16,
    "train_steps": 80,
    "lr": 3e-3,
    "eval_every": 20,
    "warmup": {"steps": 100, "lr": 3e-2, "batch_size": 16, "drive_steps": 100,
               "settle_steps": 100, "settle_increment": 2, "epsilon": 1e-3, "target": 1.0},
    "measure": {"batch_size": 32, "drive_steps": 100, "settle_steps": 300, "epsilon": 1e-3},
    "out": None,
    "figure": None,
}  # fmt: skip


def check_config(config: dict[str, Any]) -> None:
    unknown_cells = set(config["cells"]) - set(CELL_NAMES)
    if unknown_cells:
        raise ValueError(f"cells: unknown {sorted(unknown_cells)}; known: {sorted(CELL_NAMES)}")


def make_data(config):
    series = make_synthetic_series(**config["data"], seed=0)
    X, y = np.asarray(series.X), np.asarray(series.y)
    n_val = int(round(config["val_fraction"] * len(y)))
    return (X[n_val:], y[n_val:]), (X[:n_val], y[:n_val])


def build(config, cell, seed):
    return rn.SequenceClassifier(
        config["data"]["num_channels"],
        config["data"]["num_classes"],
        hidden_features=config["hidden_features"],
        num_blocks=config["num_blocks"],
        cell=cell,
        method=config["method"],
        rngs=nnx.Rngs(seed),
    )


def train_run(config, model, data, seed, desc):
    (X_tr, y_tr), (X_val, y_val) = data
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(float(config["lr"])))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params, rest)(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    evaluate = jax.jit(loss_fn)
    rng = np.random.default_rng(seed)
    bs = config["batch_size"]
    curve = []

    def batch(_):
        idx = rng.choice(len(y_tr), bs, replace=False)
        return X_tr[idx], y_tr[idx]

    def validate(k, params):
        val_loss, val_acc = evaluate(params, X_val, y_val)
        curve.append({"step": k, "val_loss": float(val_loss), "val_accuracy": float(val_acc)})

    started = time.perf_counter()
    run = harness.fit(
        jax.jit(harness.train_step(loss_fn, tx)),
        params,
        tx.init(params),
        batch,
        steps=config["train_steps"],
        desc=desc,
        every=config["eval_every"],
        on_every=validate,
        leave=False,
    )
    return {"curve": curve, "train_loss": run.losses, "train_s": time.perf_counter() - started}


def run_one(config, cell, seed, warm, data):
    model = build(config, cell, seed)
    measure = functools.partial(attractor_stats, **config["measure"], seed=100 + seed)
    record = {"cell": cell, "seed": seed, "warmup": warm}
    record["vaa_before"] = measure(model)
    if warm:
        started = time.perf_counter()
        result = warmup(model, **config["warmup"], seed=seed, progress=True)
        record["warmup_s"] = time.perf_counter() - started
        record["vaa_star_history"] = result.history.mean(axis=1).tolist()
        record["vaa_after"] = measure(model)
    record.update(train_run(config, model, data, seed, f"{cell} seed {seed} warm={warm}"))
    record["final"] = record["curve"][-1]
    return record


def _vaa_text(stats):
    return ", ".join(
        f"{s['vaa']:.2f} ({s['attractors']}, conv {s['converged']:.0%})" for s in stats
    )


def summarise(config, runs, provenance, wall_s):
    d = config["data"]
    lines = [
        f"# Warm-up on the synthetic marker task ({provenance['date_utc'][:10]})",
        "",
        f"T = {d['seq_len']}, {d['num_series']} series ({config['val_fraction']:.0%} validation),"
        f" {d['num_classes']} classes (chance {1 / d['num_classes']:.2f}); SequenceClassifier "
        f"width {config['hidden_features']} x {config['num_blocks']} block(s), method "
        f"{config['method']}; Adam {config['lr']}, {config['train_steps']} steps of batch "
        f"{config['batch_size']}; warm-up {config['warmup']['steps']} steps "
        f"(lr {config['warmup']['lr']}). VAA: measured on {config['measure']['batch_size']} "
        f"random sequences + {config['measure']['settle_steps']} zero-input steps, "
        f"ε = {config['measure']['epsilon']}: VAA (attractors, fraction converged).",
        "",
        "| cell | seed | warm-up | VAA before | VAA after warm-up | val acc | val loss | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        after = _vaa_text(r["vaa_after"]) if r["warmup"] else "-"
        lines.append(
            f"| {r['cell']} | {r['seed']} | {'yes' if r['warmup'] else 'no'} | "
            f"{_vaa_text(r['vaa_before'])} | {after} | {r['final']['val_accuracy']:.3f} | "
            f"{r['final']['val_loss']:.3f} | {r['train_s']:.0f} |"
        )
    lines += ["", f"Wall time {wall_s:.0f} s on {provenance['device']}.", ""]
    return "\n".join(lines)


def plot(config, runs, path):
    plt = harness.pyplot()
    cells = list(dict.fromkeys(r["cell"] for r in runs))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(cells, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for r in runs:
        steps = [c["step"] for c in r["curve"]]
        acc = [c["val_accuracy"] for c in r["curve"]]
        style = "-" if r["warmup"] else "--"
        label = f"{r['cell']} {'warm-up' if r['warmup'] else 'no warm-up'} (seed {r['seed']})"
        axes[0].plot(steps, acc, style, color=colors[r["cell"]], label=label, marker="o", ms=3)
        if r["warmup"]:
            axes[1].plot(r["vaa_star_history"], color=colors[r["cell"]], label=label)
    axes[0].axhline(1 / config["data"]["num_classes"], color="grey", lw=0.8, ls=":")
    axes[0].set(xlabel="training step", ylabel="validation accuracy",
                title=f"marker task, T = {config['data']['seq_len']}")  # fmt: skip
    axes[1].set(xlabel="warm-up step", ylabel="VAA* (mean over layers)", title="warm-up")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    harness.save_figure(fig, path)


def main(argv=None) -> None:
    args, config, out = harness.setup(
        "python -m experiments.warmup", __doc__, DEFAULTS, argv, check=check_config
    )
    started = time.perf_counter()
    data = make_data(config)
    runs = []
    for seed in config["seeds"]:
        for cell in config["cells"]:
            for warm in (False, True):
                runs.append(run_one(config, cell, seed, warm, data))
                r = runs[-1]
                vaa_now = _vaa_text(r.get("vaa_after", r["vaa_before"]))
                acc = r["final"]["val_accuracy"]
                print(f"{cell} seed {seed} warm-up {warm}: val acc {acc:.3f} VAA {vaa_now}")
    wall = time.perf_counter() - started
    provenance = harness.provenance(config, args.config, args.set)
    record = {"config": config, "provenance": provenance, "runs": runs, "wall_s": wall}
    harness.write_outputs(out, record, summarise(config, runs, provenance, wall))
    if config["figure"]:
        plot(config, runs, config["figure"])
        print(f"figure: {config['figure']}")


if __name__ == "__main__":
    main()
