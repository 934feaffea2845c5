"""Transfer across time scales with time-warping LSTM cells, on synthetic time-lag systems.

``python -m experiments.time_warp --config configs/experiments/time_warp_cpu.yaml [--out PREFIX]
[--set key=value]``

After Hirschi ("Time-Warping Recurrent Neural Networks for Transfer Learning", arXiv:2604.02474,
2026; fuel-moisture models pretrained on 10 h fuels and transferred to 1 h, 100 h and 1000 h
fuels): the data are first-order time-lag systems

    y_t = y_{t-1} + (u_t - y_{t-1}) (1 - exp(-1 / tau)),    y_0 = 0,

driven by a random piecewise-constant input u (levels uniform in [-1, 1], holding times
log-uniform in ``hold``), with tau in {1, 10, 100, 1000}. The model is a
:class:`rnnscan.nn._warp.TimeWarpLSTMCell` (1 input, ``hidden`` units, one warp per unit) run by
``rnnscan.nn.RNN`` and a linear read-out. It is pretrained at tau = ``source_tau`` on many
sequences, then transferred to each target tau with a few sequences and the same small number
of Adam steps by

* ``warp``: training only the warp parameters (``rn.WarpParam``: ``hidden`` numbers), from neutral;
* ``finetune``: training every parameter from the pretrained ones;
* ``scratch``: training every parameter from a fresh initialisation;
* ``retime``: the analytic re-timing ``cell.warped(tau / source_tau)``, no training;
* ``retime+warp``: the analytic re-timing, then training only the warp parameters;

and, for reference, ``pretrained``: the source model unchanged. Reported: test MSE and
relative error (MSE / Var(y)) on held-out sequences, per target tau and strategy, mean over
``seeds`` (each seed draws its own data and pretrains its own model).

Writes ``PREFIX.json`` (everything, with provenance), ``PREFIX.md`` (the table) and a figure.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import rnnscan.nn as rn

from . import harness

DEFAULTS: dict[str, Any] = {
    "name": "time-warp",
    "seeds": [0, 1],
    "dtype": "float32",
    "method": "sequential",
    "hidden": 8,
    "source_tau": 10.0,
    "target_taus": [1.0, 100.0, 1000.0],
    "hold": [2, 400],
    "source": {"sequences": 16, "length": 500, "steps": 300, "learning_rate": 1e-2},
    "target": {"sequences": 4, "length": 2000, "test_sequences": 8, "steps": 60},
    "learning_rates": {"warp": 0.1, "finetune": 3e-3, "scratch": 1e-2, "retime+warp": 0.02},
    "strategies": ["pretrained", "retime", "warp", "retime+warp", "finetune", "scratch"],
    "out": None,
    "figure": None,
    "figure_copy": None,
}
TRAINED = {"warp": "warp", "retime+warp": "warp", "finetune": "all", "scratch": "all"}


def check_config(config: dict[str, Any]) -> None:
    unknown = set(config["strategies"]) - {"pretrained", "retime", *TRAINED}
    if unknown:
        raise ValueError(f"strategies: unknown {sorted(unknown)}")


# --- data ------------------------------------------------------------------------------------


def random_steps(rng: np.random.Generator, sequences: int, length: int, hold) -> np.ndarray:
    """Piecewise-constant inputs: levels U(-1, 1), holding times log-uniform in ``hold``."""
    u = np.empty((sequences, length))
    lo, hi = math.log(hold[0]), math.log(hold[1])
    for b in range(sequences):
        t = 0
        while t < length:
            span = int(round(math.exp(rng.uniform(lo, hi))))
            u[b, t : t + span] = rng.uniform(-1.0, 1.0)
            t += span
    return u


def time_lag(u: np.ndarray, tau: float) -> np.ndarray:
    """y_t = y_{t-1} + (u_t - y_{t-1}) (1 - e^{-1/tau}) from y_0 = 0, for every sequence."""
    gain = -math.expm1(-1.0 / tau)
    y, out = np.zeros(u.shape[0]), np.empty_like(u)
    for t in range(u.shape[1]):
        y = y + (u[:, t] - y) * gain
        out[:, t] = y
    return out


def dataset(rng, sequences, length, tau, hold, dtype):
    u = random_steps(rng, sequences, length, hold)
    y = time_lag(u, tau)
    return jnp.asarray(u[..., None], dtype), jnp.asarray(y[..., None], dtype)


# --- the model -------------------------------------------------------------------------------


class LagModel(nnx.Module):
    """TimeWarpLSTMCell + linear read-out of h."""

    def __init__(self, hidden: int, method: str, dtype, rngs: nnx.Rngs):
        self.rnn = rn.RNN(
            rn.TimeWarpLSTMCell(1, hidden, param_dtype=dtype, rngs=rngs), method=method
        )
        self.readout = nnx.Linear(hidden, 1, param_dtype=dtype, rngs=rngs)

    def __call__(self, xs):
        return self.readout(self.rnn(xs))


class Trainer:
    """Jitted Adam steps on the warp parameters only or on everything (the learning rate is a
    hyperparameter in the optimiser state, so one compilation serves every run)."""

    def __init__(self, graphdef, other):
        self.graphdef, self.other = graphdef, other
        self.tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
        # "warp": the parameters trained are the warps (the rest a fixed argument); "all":
        # (warp, rest) together.
        self._steps = {
            "warp": jax.jit(harness.train_step(self._loss, self.tx)),
            "all": jax.jit(
                harness.train_step(lambda both, xs, ys: self._loss(*both, xs, ys), self.tx)
            ),
        }
        self.evaluate = jax.jit(lambda warp, rest, xs, ys: self._loss(warp, rest, xs, ys)[0])

    def _loss(self, warp, rest, xs, ys):
        model = nnx.merge(self.graphdef, warp, rest, self.other)
        return jnp.mean((model(xs) - ys) ** 2), ()

    def train(self, warp, rest, which, xs, ys, steps, learning_rate, desc):
        trained, batch = (warp, (rest, xs, ys)) if which == "warp" else ((warp, rest), (xs, ys))
        opt_state = self.tx.init(trained)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
        run = harness.fit(
            self._steps[which], trained, opt_state, batch, steps=steps, desc=desc, leave=False
        )
        warp, rest = (run.params, rest) if which == "warp" else run.params
        return warp, rest, run.losses


def log_warps(warp) -> list[float]:
    return [float(v) for v in np.ravel(jax.tree_util.tree_leaves(warp)[0])]


def run_seed(config, seed, dtype):
    rng = np.random.default_rng(seed)
    hold, hidden, method = config["hold"], config["hidden"], config["method"]
    src, tgt = config["source"], config["target"]
    model = LagModel(hidden, method, dtype, nnx.Rngs(seed))
    graphdef, warp0, rest0, other = nnx.split(model, rn.WarpParam, nnx.Param, ...)
    trainer = Trainer(graphdef, other)
    n_all = harness.count_params(warp0) + harness.count_params(rest0)
    n_warp = harness.count_params(warp0)

    xs, ys = dataset(rng, src["sequences"], src["length"], config["source_tau"], hold, dtype)
    start = time.perf_counter()
    warp_src, rest_src, pre_losses = trainer.train(
        warp0, rest0, "all", xs, ys, src["steps"], src["learning_rate"], f"pretrain seed {seed}"
    )
    pretrain_s = time.perf_counter() - start
    x_src_test, y_src_test = dataset(
        rng, tgt["test_sequences"], src["length"], config["source_tau"], hold, dtype
    )
    source_mse = float(trainer.evaluate(warp_src, rest_src, x_src_test, y_src_test))
    record = {
        "seed": seed,
        "pretrain_s": pretrain_s,
        "pretrain_losses": pre_losses,
        "source_test_mse": source_mse,
        "source_test_rel": source_mse / float(jnp.var(y_src_test)),
        "params_total": n_all,
        "params_warp": n_warp,
        "targets": [],
    }
    fresh = LagModel(hidden, method, dtype, nnx.Rngs(1000 + seed))
    _, warp_fresh, rest_fresh, _ = nnx.split(fresh, rn.WarpParam, nnx.Param, ...)
    for tau in config["target_taus"]:
        x_tr, y_tr = dataset(rng, tgt["sequences"], tgt["length"], tau, hold, dtype)
        x_te, y_te = dataset(rng, tgt["test_sequences"], tgt["length"], tau, hold, dtype)
        var = float(jnp.var(y_te))
        shift = math.log(tau / config["source_tau"])
        retimed = jax.tree_util.tree_map(lambda w, s=shift: w + jnp.asarray(s, w.dtype), warp_src)
        starts = {
            "pretrained": (warp_src, rest_src),
            "retime": (retimed, rest_src),
            "warp": (warp_src, rest_src),
            "retime+warp": (retimed, rest_src),
            "finetune": (warp_src, rest_src),
            "scratch": (warp_fresh, rest_fresh),
        }
        results = {}
        for strategy in config["strategies"]:
            warp, rest = starts[strategy]
            losses, trained_params, seconds = [], 0, 0.0
            if strategy in TRAINED:
                which = TRAINED[strategy]
                start = time.perf_counter()
                warp, rest, losses = trainer.train(
                    warp,
                    rest,
                    which,
                    x_tr,
                    y_tr,
                    tgt["steps"],
                    config["learning_rates"][strategy],
                    f"tau={tau:g} {strategy} seed {seed}",
                )
                seconds = time.perf_counter() - start
                trained_params = n_warp if which == "warp" else n_all
            mse = float(trainer.evaluate(warp, rest, x_te, y_te))
            model_out = nnx.merge(graphdef, warp, rest, other)(x_te[:1])
            results[strategy] = {
                "test_mse": mse,
                "test_rel": mse / var,
                "trained_params": trained_params,
                "train_losses": losses,
                "train_s": seconds,
                "log_time_scale": log_warps(warp),
                "example": np.asarray(model_out[0, :, 0]).tolist(),
            }
        record["targets"].append(
            {
                "tau": tau,
                "test_var": var,
                "example_input": np.asarray(x_te[0, :, 0]).tolist(),
                "example_target": np.asarray(y_te[0, :, 0]).tolist(),
                "strategies": results,
            }
        )
    return record


# --- report ----------------------------------------------------------------------------------


def table(config, records):
    strategies = config["strategies"]
    taus = config["target_taus"]
    lines = [
        "| target τ | " + " | ".join(strategies) + " |",
        "|---:|" + "---:|" * len(strategies),
    ]
    for k, tau in enumerate(taus):
        cells = []
        for strategy in strategies:
            mse = [r["targets"][k]["strategies"][strategy]["test_mse"] for r in records]
            rel = [r["targets"][k]["strategies"][strategy]["test_rel"] for r in records]
            cells.append(f"{np.mean(mse):.2e} ({100 * np.mean(rel):.2g}%)")
        lines.append(f"| {tau:g} | " + " | ".join(cells) + " |")
    first = records[0]["targets"][0]["strategies"]
    lines.append(
        "| trained parameters | "
        + " | ".join(str(first[s]["trained_params"]) for s in strategies)
        + " |"
    )
    return lines


def summarise(config, records, provenance, wall_s) -> str:
    src, tgt = config["source"], config["target"]
    r0 = records[0]
    lines = [
        f"# Transfer across time scales with time-warping LSTM cells ({config['name']})",
        "",
        f"First-order time lags y_t = y_(t-1) + (u_t - y_(t-1))(1 - e^(-1/τ)) driven by random "
        f"steps (holding times log-uniform in {config['hold']}). Model: TimeWarpLSTMCell "
        f"(1 → {config['hidden']}, one warp per unit) in rnnscan.nn.RNN "
        f"(method={config['method']!r}) + linear read-out, {r0['params_total']} parameters "
        f"({r0['params_warp']} of them rn.WarpParam); {config['dtype']}. Pretrained at "
        f"τ = {config['source_tau']:g} on {src['sequences']} sequences of {src['length']} steps "
        f"({src['steps']} Adam steps, lr {src['learning_rate']}); transferred with "
        f"{tgt['sequences']} sequences of {tgt['length']} steps and {tgt['steps']} Adam steps "
        f"(lr {config['learning_rates']}); tested on {tgt['test_sequences']} new sequences. "
        f"Mean over seeds {config['seeds']}.",
        "",
        f"Device: {provenance['device']['device_kind']} ({provenance['device']['platform']}, "
        f"{provenance['system']['cpu_count']} CPUs visible); jax "
        f"{provenance['versions']['jax']}; {provenance['date_utc']}; wall time {wall_s:.0f} s.",
        "",
        "Source model at τ = "
        f"{config['source_tau']:g}: test MSE "
        f"{np.mean([r['source_test_mse'] for r in records]):.2e} "
        f"({100 * np.mean([r['source_test_rel'] for r in records]):.2g}% of Var(y)).",
        "",
        "Test MSE (relative error MSE / Var(y)) per target τ and strategy:",
        "",
        *table(config, records),
        "",
        "Strategies: pretrained = the τ = 10 model unchanged; retime = `cell.warped(τ / 10)`, no "
        "training; warp = train only the rn.WarpParam from neutral; retime+warp = retime, then "
        "train only the rn.WarpParam; finetune = train everything from the pretrained weights; "
        "scratch = train everything from a fresh initialisation.",
        "",
        "Learned warps (mean log κ over units, seed "
        f"{records[0]['seed']}; the analytic value is log(τ/10)):",
        "",
        "| target τ | log(τ/10) | warp | retime+warp |",
        "|---:|---:|---:|---:|",
    ]
    for k, tau in enumerate(config["target_taus"]):
        st = records[0]["targets"][k]["strategies"]
        vals = [
            f"{np.mean(st[s]['log_time_scale']):.2f}" if s in st else "-"
            for s in ("warp", "retime+warp")
        ]
        lines.append(
            f"| {tau:g} | {math.log(tau / config['source_tau']):.2f} | " + " | ".join(vals) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(config, records, path):
    plt = harness.pyplot()
    strategies = config["strategies"]
    taus = config["target_taus"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    width = 0.8 / len(strategies)
    for j, strategy in enumerate(strategies):
        rel = [
            np.mean([r["targets"][k]["strategies"][strategy]["test_rel"] for r in records])
            for k in range(len(taus))
        ]
        axes[0].bar(
            np.arange(len(taus)) + (j - len(strategies) / 2 + 0.5) * width,
            rel,
            width,
            label=strategy,
        )
    axes[0].set_yscale("log")
    axes[0].set_xticks(range(len(taus)), [f"τ = {t:g}" for t in taus])
    axes[0].set(ylabel="test MSE / Var(y)", title=f"transfer from τ = {config['source_tau']:g}")
    axes[0].legend(fontsize=7)
    target = records[0]["targets"][-1]
    axes[1].plot(target["example_input"], color="0.8", lw=0.8, label="input u")
    axes[1].plot(target["example_target"], "k", lw=2, label="target y")
    for strategy in ("pretrained", "retime", "warp", "finetune"):
        if strategy in target["strategies"]:
            axes[1].plot(target["strategies"][strategy]["example"], lw=1, label=strategy)
    axes[1].set(xlabel="t", title=f"a test sequence, τ = {target['tau']:g}")
    axes[1].legend(fontsize=7)
    for r in records:
        for k, tau in enumerate(taus):
            st = r["targets"][k]["strategies"]
            for strategy, marker in (("warp", "o"), ("retime+warp", "x")):
                if strategy in st:
                    values = st[strategy]["log_time_scale"]
                    axes[2].plot(
                        [math.log10(tau)] * len(values),
                        np.asarray(values) / math.log(10),
                        marker,
                        color="C0" if strategy == "warp" else "C3",
                        alpha=0.5,
                        label=strategy if (r is records[0] and k == 0) else None,
                    )
    grid = np.linspace(0, 3, 10)
    axes[2].plot(grid, grid - math.log10(config["source_tau"]), "k--", label="analytic log(τ/10)")
    axes[2].set(xlabel="log10 target τ", ylabel="log10 κ per unit", title="learned warps")
    axes[2].legend(fontsize=7)
    harness.save_figure(fig, path, dpi=110, title="Time-warping LSTM transfer")


def _rounded(value, digits: int = 4):
    """Floats to ``digits`` significant digits: the example trajectories are most of the file."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v, digits) for v in value]
    return value


def main(argv=None) -> None:
    args, config, out = harness.setup(
        "python -m experiments.time_warp", __doc__, DEFAULTS, argv, check=check_config
    )
    dtype = jnp.dtype(config["dtype"])

    start = time.perf_counter()
    records = [run_seed(config, seed, dtype) for seed in config["seeds"]]
    wall_s = time.perf_counter() - start
    provenance = harness.provenance(config, args.config, args.set)
    record = {"config": config, "provenance": provenance, "wall_s": wall_s, "seeds": records}
    summary = summarise(config, records, provenance, wall_s)
    harness.write_outputs(out, _rounded(record), summary, indent=None)
    if config["figure"]:
        plot(config, records, config["figure"])
        print(f"figure: {config['figure']}")
        if config["figure_copy"]:
            Path(config["figure_copy"]).parent.mkdir(parents=True, exist_ok=True)
            Path(config["figure_copy"]).write_bytes(Path(config["figure"]).read_bytes())


if __name__ == "__main__":
    main()
