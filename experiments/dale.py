"""Dale's-law RNNs at CPU scale: SVD entropy at initialisation and learning on the adding task.

``python -m experiments.dale --config configs/experiments/dale_cpu.yaml [--out PREFIX]
[--set key=value]``

A small-scale check of the qualitative findings of Li, Cornford, Ghosh & Richards, "Learning
better with Dale's Law: A Spectral Perspective" (NeurIPS 2023):

(a) the normalised SVD entropy (:func:`rnnscan.diagnostics.svd_entropy`) of the
    recurrent matrix at initialisation, for a standard RNN (PyTorch's uniform initialisation,
    and an orthogonal matrix), a ColEI RNN (:class:`rnnscan.nn.ColEICell`) and a
    recurrent DANN (:class:`rnnscan.nn.DANNCell`, interneurons per excitatory unit
    matched to the ColEI E:I ratio), across sizes and excitatory fractions, over many seeds.
    Expected: ColEI lower, especially for small networks with few inhibitory units; DANN close
    to standard.
(b) the test loss after training each kind (one ReLU RNN layer, a linear readout of the last
    hidden state) on the adding problem (Hochreiter & Schmidhuber, 1997): inputs (value
    ~ U(0, 1), marker), two markers (one in each half of the sequence), target the sum of the
    two marked values; mean squared error (predicting the mean 1 scores 1/6). Adam with
    gradient-norm clipping, fresh batches every step, the same data for every model of a seed;
    seeds are trained together (``vmap``). The layers are ``rnnscan.nn.RNN`` with ``method``
    (``"sequential"`` by default: on a CPU the sequential scan is the fastest exact
    evaluation); after training, the test loss of every model is recomputed with parallel
    Newton (DEER) and the difference is recorded.

Writes ``PREFIX.json`` (everything, with provenance), ``PREFIX.md`` (the tables) and a figure
(``figure:`` in the config).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import rnnscan.nn as rn
from rnnscan.diagnostics import svd_entropy

from . import harness

DEFAULTS: dict[str, Any] = {
    "name": "dale",
    "seed": 0,
    "dtype": "float32",
    "activation": "relu",
    "col_ei_spectral_radius": 1.5,
    "entropy": {
        "sizes": [16, 32, 64, 128],
        "excitatory_fractions": [0.5, 0.8, 0.9, 0.95],
        "seeds": 20,
    },
    "task": {"length": 50, "batch": 64, "test_batch": 1000},
    "train": {
        "sizes": [16, 64],
        "col_ei_fractions": [0.5, 0.8, 0.95],
        "seeds": 3,
        "steps": 1000,
        "learning_rate": 3.0e-3,
        "clip_norm": 1.0,
        "method": "sequential",
        "check_method": "newton",
        "check_sizes": [16],
        "curve_every": 10,
    },
    "out": None,
    "figure": None,
}

ACTIVATIONS = {"relu": nnx.relu, "tanh": nnx.tanh}


def check_config(config: dict[str, Any]) -> None:
    if config["activation"] not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}: {config['activation']}")


# --- models ----------------------------------------------------------------------------------


def torch_uniform(key, shape, dtype=jnp.float32):
    """PyTorch's default RNN initialisation, U(-1/sqrt(n), 1/sqrt(n)) (n = hidden size), which
    Li et al.'s standard RNNs use."""
    bound = 1.0 / math.sqrt(shape[-1])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def make_cell(kind: str, n: int, d: int, fraction: float | None, config, dtype, seed: int):
    """``kind``: "standard" (flax's SimpleCell, PyTorch-uniform weights), "col_ei" (with
    excitatory fraction ``fraction``) or "dann" (default interneurons, about 10%)."""
    rngs = nnx.Rngs(seed)
    act = ACTIVATIONS[config["activation"]]
    if kind == "standard":
        return nnx.SimpleCell(
            d,
            n,
            activation_fn=act,
            kernel_init=torch_uniform,
            recurrent_kernel_init=torch_uniform,
            param_dtype=dtype,
            dtype=dtype,
            rngs=rngs,
        )
    if kind == "col_ei":
        return rn.ColEICell(
            d,
            n,
            excitatory_fraction=fraction,
            spectral_radius=config["col_ei_spectral_radius"],
            activation_fn=act,
            param_dtype=dtype,
            rngs=rngs,
        )
    if kind == "dann":
        return rn.DANNCell(d, n, activation_fn=act, param_dtype=dtype, rngs=rngs)
    raise ValueError(f"unknown model kind {kind!r}")


def recurrent_matrix(cell) -> jax.Array:
    if isinstance(cell, nnx.SimpleCell):
        return cell.dense_h.kernel[...].T
    return cell.recurrent_matrix()


class Model(nnx.Module):
    """One recurrent layer and a linear readout of its last output."""

    def __init__(self, cell, method: str, dtype, seed: int):
        self.rnn = rn.RNN(cell, method=method, rngs=False)
        self.readout = nnx.Linear(
            cell.hidden_features, 1, param_dtype=dtype, rngs=nnx.Rngs(seed + 10_000)
        )

    def __call__(self, xs):
        carry = jnp.zeros((xs.shape[0], self.rnn.cell.hidden_features), xs.dtype)
        return self.readout(self.rnn(xs, initial_carry=carry)[:, -1])[:, 0]


# --- (a) SVD entropy at initialisation -------------------------------------------------------


def entropy_sweep(config, dtype) -> list[dict[str, Any]]:
    """Rows {kind, n, fraction, entropy_mean, entropy_std, entropies}: ColEI with E fraction f;
    DANN with round(n (1 - f) / f) interneurons (the same E:I ratio); the standard and
    orthogonal matrices do not depend on f (one row each, fraction None)."""
    spec = config["entropy"]
    seeds = range(spec["seeds"])
    entropy = jax.jit(svd_entropy)
    rows = []
    jobs = [(n, f) for n in spec["sizes"] for f in spec["excitatory_fractions"]]
    for n in tqdm(spec["sizes"], desc="entropy: standard", unit="size"):
        keys = jax.random.split(jax.random.PRNGKey(config["seed"]), spec["seeds"])
        uniform = jax.vmap(lambda k, n=n: torch_uniform(k, (n, n), dtype))(keys)
        ortho = jax.vmap(lambda k, n=n: nnx.initializers.orthogonal()(k, (n, n), dtype))(keys)
        for kind, mats in (("standard", uniform), ("orthogonal", ortho)):
            rows.append(_entropy_row(kind, n, None, np.asarray(entropy(mats))))
    for n, f in tqdm(jobs, desc="entropy: ColEI / DANN", unit="config"):
        # The cells' recurrent matrices at initialisation (their jitted initialisers compile
        # once per size and E:I split).
        ne = min(max(round(f * n), 1), n - 1)  # as ColEICell
        ni = max(1, round(n * (1 - f) / f))
        col, dann = [], []
        for s in seeds:
            col_ei = rn.ColEICell(
                1,
                n,
                excitatory_fraction=f,
                spectral_radius=config["col_ei_spectral_radius"],
                zero_diagonal=True,
                param_dtype=dtype,
                rngs=nnx.Rngs(s),
            )
            assert col_ei.n_excitatory == ne
            col.append(col_ei.recurrent_matrix())
            cell = rn.DANNCell(
                1, n, interneurons=ni, input_interneurons=1, param_dtype=dtype, rngs=nnx.Rngs(s)
            )
            dann.append(cell.recurrent_matrix())
        rows.append(_entropy_row("col_ei", n, f, np.asarray(entropy(jnp.stack(col)))))
        row = _entropy_row("dann", n, f, np.asarray(entropy(jnp.stack(dann))))
        row["interneurons"] = ni
        rows.append(row)
    return rows


def _entropy_row(kind, n, fraction, values):
    return {
        "kind": kind,
        "n": n,
        "fraction": fraction,
        "entropy_mean": float(np.mean(values)),
        "entropy_std": float(np.std(values)),
        "entropies": [float(v) for v in values],
    }


# --- (b) training on the adding problem ------------------------------------------------------


def adding_batch(key, batch: int, length: int, dtype):
    """Inputs (batch, length, 2) = (value, marker) and targets (batch,)."""
    k_v, k_a, k_b = jax.random.split(key, 3)
    values = jax.random.uniform(k_v, (batch, length), dtype)
    half = length // 2
    first = jax.random.randint(k_a, (batch,), 0, half)
    second = jax.random.randint(k_b, (batch,), half, length)
    steps = jnp.arange(length)
    markers = ((steps == first[:, None]) | (steps == second[:, None])).astype(dtype)
    return jnp.stack([values, markers], axis=-1), jnp.sum(values * markers, axis=-1)


def train_kind(kind, n, fraction, config, dtype):
    """Train ``seeds`` models of one kind together; returns per-seed curves and test losses,
    and the trained states (stacked over seeds)."""
    spec, task = config["train"], config["task"]
    S, steps = spec["seeds"], spec["steps"]
    models = [
        Model(make_cell(kind, n, 2, fraction, config, dtype, seed), spec["method"], dtype, seed)
        for seed in range(S)
    ]
    graphdef, _ = nnx.split(models[0])
    params0 = jax.tree_util.tree_map(
        lambda *leaves: jnp.stack(leaves), *[nnx.state(m) for m in models]
    )
    entropy0 = [float(svd_entropy(recurrent_matrix(m.rnn.cell))) for m in models]
    optimiser = optax.chain(
        optax.clip_by_global_norm(spec["clip_norm"]), optax.adam(spec["learning_rate"])
    )
    data_keys = jax.random.split(jax.random.PRNGKey(config["seed"] + 1), S)
    test_x, test_y = adding_batch(
        jax.random.PRNGKey(config["seed"] + 2), task["test_batch"], task["length"], dtype
    )

    def loss_fn(params, xs, ys):
        return jnp.mean((nnx.merge(graphdef, params)(xs) - ys) ** 2), ()

    update = harness.train_step(loss_fn, optimiser)

    def run(params, data_key):
        # The whole run in one jax.lax.scan, vmapped over the seeds.
        def step(carry, key):
            xs, ys = adding_batch(key, task["batch"], task["length"], dtype)
            params, opt_state, loss, _ = update(*carry, xs, ys)
            return (params, opt_state), loss

        (params, _), losses = jax.lax.scan(
            step, (params, optimiser.init(params)), jax.random.split(data_key, steps)
        )
        return params, losses, loss_fn(params, test_x, test_y)[0]

    start = time.perf_counter()
    params, losses, test_loss = jax.block_until_ready(jax.jit(jax.vmap(run))(params0, data_keys))
    wall = time.perf_counter() - start

    # The trained models evaluated with the parallel solver: the same losses up to tolerance.
    check = []
    for s in range(S) if n in spec["check_sizes"] else []:
        model = nnx.merge(graphdef, jax.tree_util.tree_map(lambda p, s=s: p[s], params))
        model.rnn = rn.RNN(model.rnn.cell, method=spec["check_method"], rngs=False)
        pred = nnx.jit(lambda m, xs: m(xs))(model, test_x)
        check.append(float(jnp.mean((pred - test_y) ** 2)))
    losses = np.asarray(losses)
    every = spec["curve_every"]
    curves = [
        [float(v) for v in losses[s].reshape(-1, every).mean(axis=1)]
        if steps % every == 0
        else [float(v) for v in losses[s]]
        for s in range(S)
    ]
    test = [float(v) for v in np.asarray(test_loss)]
    return {
        "kind": kind,
        "n": n,
        "fraction": fraction,
        "entropy_init": entropy0,
        "test_mse": test,
        "test_mse_mean": float(np.mean(test)),
        "test_mse_std": float(np.std(test)),
        f"test_mse_{spec['check_method']}": check,
        "max_abs_diff_vs_check": (
            float(np.max(np.abs(np.asarray(check) - np.asarray(test)))) if check else None
        ),
        "curves": curves,
        "train_wall_s": wall,
    }


def training_runs(config, dtype) -> list[dict[str, Any]]:
    spec = config["train"]
    jobs = []
    for n in spec["sizes"]:
        jobs += [("standard", n, None), ("dann", n, None)]
        jobs += [("col_ei", n, f) for f in spec["col_ei_fractions"]]
    return [
        train_kind(kind, n, f, config, dtype)
        for kind, n, f in tqdm(jobs, desc="training", unit="model")
    ]


# --- reporting -------------------------------------------------------------------------------


def _label(kind, fraction):
    if kind == "col_ei":
        return f"ColEI (E {fraction:g})"
    return {"standard": "standard", "dann": "DANN", "orthogonal": "orthogonal"}[kind]


def summarise(config, entropy_rows, runs, provenance, wall) -> str:
    spec, task, tr = config["entropy"], config["task"], config["train"]
    fractions = spec["excitatory_fractions"]
    lines = [
        f"# Dale's-law RNNs: SVD entropy and the adding task ({config['name']})",
        "",
        f"Device: {provenance['device']['device_kind']} ({provenance['device']['platform']}, "
        f"{provenance['system']['cpu_count']} CPUs visible); jax "
        f"{provenance['versions']['jax']}; {provenance['date_utc']}; whole run {wall:.0f} s.",
        "",
        f"## (a) Normalised SVD entropy of the recurrent matrix at initialisation "
        f"(mean ± std over {spec['seeds']} seeds)",
        "",
        "ColEI: spectral radius "
        f"{config['col_ei_spectral_radius']}, zero diagonal; DANN: round(n (1 - f) / f) "
        "interneurons (the same E:I ratio); standard: PyTorch's U(-1/sqrt(n), 1/sqrt(n)); "
        "orthogonal: H = 1 exactly.",
        "",
        "| n | standard | "
        + " | ".join(f"ColEI E {f:g}" for f in fractions)
        + " | "
        + " | ".join(f"DANN E {f:g}" for f in fractions)
        + " |",
        "|---:|---:|" + "---:|" * (2 * len(fractions)),
    ]

    def cell(kind, n, f):
        row = next(
            r for r in entropy_rows if r["kind"] == kind and r["n"] == n and r["fraction"] == f
        )
        return f"{row['entropy_mean']:.3f} ± {row['entropy_std']:.3f}"

    for n in spec["sizes"]:
        lines.append(
            f"| {n} | {cell('standard', n, None)} | "
            + " | ".join(cell("col_ei", n, f) for f in fractions)
            + " | "
            + " | ".join(cell("dann", n, f) for f in fractions)
            + " |"
        )
    lines += [
        "",
        f"## (b) Adding problem, T = {task['length']}: test MSE after {tr['steps']} Adam steps",
        "",
        f"Batch {task['batch']} (fresh each step), test batch {task['test_batch']}, lr "
        f"{tr['learning_rate']}, clip {tr['clip_norm']}, {config['activation']} units, "
        f"{config['dtype']}, {tr['seeds']} seeds; training with `rnnscan.nn.RNN(method="
        f'"{tr["method"]}")`, test loss rechecked with `"{tr["check_method"]}"`. '
        "Predicting the mean scores 0.1667.",
        "",
        "| model | n | SVD entropy at init | test MSE (mean ± std) | per seed | "
        f"max abs diff, {tr['check_method']} vs {tr['method']} |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {_label(r['kind'], r['fraction'])} | {r['n']} | "
            f"{np.mean(r['entropy_init']):.3f} | {r['test_mse_mean']:.4f} ± "
            f"{r['test_mse_std']:.4f} | {', '.join(f'{v:.4f}' for v in r['test_mse'])} | "
            + (
                "not checked |"
                if r["max_abs_diff_vs_check"] is None
                else f"{r['max_abs_diff_vs_check']:.1e} |"
            )
        )
    return "\n".join(lines) + "\n"


def plot(config, entropy_rows, runs, path):
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    spec = config["entropy"]
    sizes = spec["sizes"]

    def series(kind, f):
        rows = [
            next(
                r for r in entropy_rows if r["kind"] == kind and r["n"] == n and r["fraction"] == f
            )
            for n in sizes
        ]
        return [r["entropy_mean"] for r in rows], [r["entropy_std"] for r in rows]

    ax = axes[0]
    for kind, style in (("standard", "k-"), ("orthogonal", "k:")):
        m, s = series(kind, None)
        ax.errorbar(sizes, m, yerr=s, fmt=style, label=_label(kind, None), capsize=2)
    for i, f in enumerate(spec["excitatory_fractions"]):
        m, s = series("col_ei", f)
        ax.errorbar(sizes, m, yerr=s, fmt="o-", color=f"C{i}", label=f"ColEI E {f:g}", capsize=2)
        m, s = series("dann", f)
        ax.errorbar(sizes, m, yerr=s, fmt="s--", color=f"C{i}", label=f"DANN E {f:g}", capsize=2)
    ax.set(xscale="log", xlabel="n (units)", ylabel="normalised SVD entropy")
    ax.set_title("SVD entropy at initialisation")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.legend(fontsize=7, ncol=2)

    ax = axes[1]
    markers = {16: "o", 32: "^", 64: "s", 128: "D"}
    colors = {"standard": "k", "dann": "C3", "col_ei": "C0"}
    for r in runs:
        ax.scatter(
            r["entropy_init"],
            r["test_mse"],
            marker=markers.get(r["n"], "x"),
            color=colors[r["kind"]],
            alpha=0.4 + 0.6 * (r["fraction"] or 1.0) if r["kind"] == "col_ei" else 1.0,
            label=f"{_label(r['kind'], r['fraction'])}, n={r['n']}",
        )
    ax.axhline(1 / 6, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="SVD entropy at init", ylabel="test MSE", yscale="log")
    ax.set_title("adding problem: final loss vs entropy")
    ax.legend(fontsize=6, ncol=2)

    ax = axes[2]
    every = config["train"]["curve_every"]
    n_big = max(config["train"]["sizes"])
    for i, r in enumerate(x for x in runs if x["n"] == n_big):
        curve = np.mean(np.asarray(r["curves"]), axis=0)
        ax.plot(
            np.arange(len(curve)) * every,
            curve,
            color=f"C{i}",
            label=_label(r["kind"], r["fraction"]),
        )
    ax.axhline(1 / 6, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="training step", ylabel="training MSE (mean over seeds)", yscale="log")
    ax.set_title(f"training curves, n = {n_big}")
    ax.legend(fontsize=7)
    title = f"Dale's-law RNNs ({config['activation']}), adding T={config['task']['length']}"
    harness.save_figure(fig, path, title=title)


def main(argv=None) -> None:
    args, config, out = harness.setup(
        "python -m experiments.dale", __doc__, DEFAULTS, argv, check=check_config
    )
    dtype = jnp.dtype(config["dtype"])

    start = time.perf_counter()
    entropy_rows = entropy_sweep(config, dtype)
    runs = training_runs(config, dtype)
    wall = time.perf_counter() - start

    provenance = harness.provenance(config, args.config, args.set)
    record = {
        "config": config,
        "provenance": provenance,
        "wall_s": wall,
        "entropy": entropy_rows,
        "training": runs,
    }
    harness.write_outputs(out, record, summarise(config, entropy_rows, runs, provenance, wall))
    if config["figure"]:
        plot(config, entropy_rows, runs, config["figure"])
        print(f"figure: {config['figure']}")


if __name__ == "__main__":
    main()
