"""Exact RTRL against truncated BPTT on a recall task whose delay exceeds the truncation.

``python -m experiments.rtrl_delay --config configs/experiments/rtrl_delay.yaml [--out PREFIX]
[--set key=value]``

After Irie, Gopalakrishnan & Schmidhuber, "Exploring the Promise and Limits of Real-Time
Recurrent Learning" (ICLR 2024): for element-wise recurrent cells RTRL is exact at a memory
cost independent of the sequence length, whereas truncated BPTT is cheap but blind to
dependencies longer than its window. The task (a delayed cue recall):

- inputs x_t in R^(C+2): at t = 0 a cue symbol (one-hot of C) with a start flag; at
  t = 1 .. T-2 a random distractor symbol of the same alphabet; at t = T-1 a query flag;
- the target, at the last step only, is the cue: a delay of D = T - 1 steps. Chance is 1 / C.

The model is a :class:`rnnscan.nn.DiagGRUCell` with a linear read-out inside the cell (the
read-out's parameters move no unit: RTRL gives them their direct gradient). Three ways to
train it, the same initialisation, data and optimiser (Adam, gradient-norm clipping):

- ``bptt``: ``jax.grad`` through ``jax.lax.scan`` (exact; stores the T carries);
- ``tbptt``: truncated BPTT, windows of K steps each differentiated on its own from the
  carry it starts with (a ``lax.scan`` over windows: K steps of activations held): blind to
  the cue when K < D;
- ``rtrl``: :func:`rnnscan.rtrl.sequence_gradient` (exact; influence memory constant in T).

Besides the training curves, the peak temporary memory of each gradient program (XLA's
compiled memory analysis, ``jax.jit(...).lower(...).compile().memory_analysis()``) is read
for growing T without running it, and the size of RTRL's influence state.

Writes ``PREFIX.json`` (everything, with provenance), ``PREFIX.md`` (the tables) and a figure
(``figure:`` in the config).
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
from rnnscan import rtrl

from . import harness

DEFAULTS: dict[str, Any] = {
    "name": "rtrl-delay",
    "seed": 0,
    "dtype": "float32",
    "task": {"symbols": 4, "lengths": [16, 48], "batch": 64, "test_batch": 1000},
    "model": {"hidden": 32, "update_gate_bias": 2.0},
    "train": {
        "methods": ["bptt", "tbptt", "rtrl"],
        "truncation": 8,
        "steps": 400,
        "learning_rate": 1.0e-2,
        "clip_norm": 1.0,
        "seeds": 2,
        "curve_every": 20,
    },
    "memory": {"lengths": [32, 64, 128, 256, 512, 1024, 2048], "batch": 64},
    "out": None,
    "figure": "results/figures/rtrl_delay.png",
}


def check_config(config: dict[str, Any]) -> None:
    methods = set(config["train"]["methods"])
    if not methods <= {"bptt", "tbptt", "rtrl"}:
        raise ValueError(f"train.methods: unknown {sorted(methods - {'bptt', 'tbptt', 'rtrl'})}")
    K = config["train"]["truncation"]
    lengths = config["task"]["lengths"] + config["memory"]["lengths"]
    if K < 1 or any(T % K for T in lengths):
        raise ValueError(f"train.truncation must be >= 1 and divide every length, got {K}")


class ReadoutCell(rn.Cell):
    """A cell followed by a linear read-out of its output: ``(carry, logits)``. Its carry
    Jacobian is the inner cell's (the read-out does not feed back)."""

    def __init__(self, cell: rn.Cell, out_features: int, *, rngs: nnx.Rngs, param_dtype):
        self.cell = cell
        self.readout = nnx.Linear(
            cell.hidden_features, out_features, param_dtype=param_dtype, rngs=rngs
        )
        self.in_features = cell.in_features
        self.hidden_features = cell.hidden_features
        self.carry_dtype = cell.carry_dtype
        self.jacobian_structure = cell.jacobian_structure

    def __call__(self, carry, x):
        carry, y = self.cell(carry, x)
        return carry, self.readout(y)

    def initialize_carry(self, input_shape, rngs=None, carry_init=None):
        """The inner cell's carry."""
        return self.cell.initialize_carry(input_shape, rngs, carry_init)


def make_model(config, seed: int, dtype) -> ReadoutCell:
    C, n = config["task"]["symbols"], config["model"]["hidden"]
    rngs = nnx.Rngs(seed)
    cell = rn.DiagGRUCell(C + 2, n, param_dtype=dtype, rngs=rngs)
    # A positive update-gate bias makes units hold their value at initialisation (z near 1),
    # so that a gradient from the last step reaches the first at all (the "chrono" idea).
    bias = cell.input_bias[...]
    cell.input_bias[...] = bias.at[n : 2 * n].set(config["model"]["update_gate_bias"])
    return ReadoutCell(cell, C, rngs=rngs, param_dtype=dtype)


def make_batch(key, T: int, batch: int, C: int, dtype):
    """``(xs (T, batch, C + 2), cue (batch,))``."""
    k_cue, k_distract = jax.random.split(key)
    cue = jax.random.randint(k_cue, (batch,), 0, C)
    distract = jax.random.randint(k_distract, (T, batch), 0, C)
    symbols = (
        jax.nn.one_hot(distract, C, dtype=dtype).at[0].set(jax.nn.one_hot(cue, C, dtype=dtype))
    )
    symbols = symbols.at[T - 1].set(0)
    flags = jnp.zeros((T, batch, 2), dtype).at[0, :, 0].set(1).at[T - 1, :, 1].set(1)
    return jnp.concatenate([symbols, flags], axis=-1), cue


def last_step_loss(T: int, cue):
    """loss_fn(y_t, t): cross-entropy of the cue at the last step, nothing before."""

    def loss_fn(logits, t):
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, cue).mean()
        return jnp.where(t == T - 1, ce, 0.0)

    return loss_fn


def bptt_loss(model, carry, xs, cue):
    """The loss through ``jax.lax.scan`` over the whole sequence (BPTT stores every carry)."""
    _, logits = jax.lax.scan(lambda c, x: model(c, x), carry, xs)
    return optax.softmax_cross_entropy_with_integer_labels(logits[-1], cue).mean()


def tbptt_value_and_grad(graphdef, params, carry, xs, cue, K: int):
    """Truncated BPTT with windows of K steps: each window's loss is differentiated through
    that window only, from the carry it starts with held constant, and the window gradients
    are summed. A ``lax.scan`` over windows keeps K steps of activations, not T."""
    T = xs.shape[0]
    windows = xs.reshape((T // K, K) + xs.shape[1:])

    def window(state, inputs):
        carry, value, grads = state
        w, x = inputs

        def loss(params, carry):
            model = nnx.merge(graphdef, params)
            carry, logits = jax.lax.scan(lambda c, x: model(c, x), carry, x)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits[-1], cue).mean()
            # The only loss is at the last step, which lies in the last window.
            return jnp.where(w == T // K - 1, ce, 0.0), carry

        (v, carry), g = jax.value_and_grad(loss, has_aux=True)(params, carry)
        grads = jax.tree_util.tree_map(jnp.add, grads, g)
        return (carry, value + v, grads), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    init = (carry, jnp.zeros((), xs.dtype), zeros)
    (_, value, grads), _ = jax.lax.scan(window, init, (jnp.arange(T // K), windows))
    return value, grads


def gradient_fn(method: str, graphdef, truncation: int):
    """``grad(params, xs, cue) -> (loss, grads)`` of one method."""

    def grad(params, xs, cue):
        model = nnx.merge(graphdef, params)
        carry = model.initialize_carry(xs.shape[1:])
        if method == "rtrl":
            return rtrl.sequence_gradient(
                model, carry, xs, last_step_loss(xs.shape[0], cue), return_value=True
            )
        if method == "tbptt":
            return tbptt_value_and_grad(graphdef, params, carry, xs, cue, truncation)

        def loss(params):
            return bptt_loss(nnx.merge(graphdef, params), carry, xs, cue)

        return jax.value_and_grad(loss)(params)

    return grad


def test_accuracy(graphdef, params, xs, cue) -> jax.Array:
    model = nnx.merge(graphdef, params)
    _, logits = jax.lax.scan(lambda c, x: model(c, x), model.initialize_carry(xs.shape[1:]), xs)
    return jnp.mean(jnp.argmax(logits[-1], -1) == cue)


def train_one(config, method: str, T: int, seed: int, dtype) -> dict[str, Any]:
    task, train = config["task"], config["train"]
    model = make_model(config, seed, dtype)
    graphdef, params = nnx.split(model, nnx.Param)
    optimiser = optax.chain(
        optax.clip_by_global_norm(train["clip_norm"]), optax.adam(train["learning_rate"])
    )
    opt_state = optimiser.init(params)
    grad = gradient_fn(method, graphdef, train["truncation"])

    @jax.jit
    def step(params, opt_state, key):
        xs, cue = make_batch(key, T, task["batch"], task["symbols"], dtype)
        loss, grads = grad(params, xs, cue)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    test_xs, test_cue = make_batch(
        jax.random.key(10_000 + seed), T, task["test_batch"], task["symbols"], dtype
    )
    evaluate = jax.jit(lambda p: test_accuracy(graphdef, p, test_xs, test_cue))
    keys = jax.random.split(jax.random.key(seed), train["steps"])
    curve, losses, times = [], [], []
    start = time.perf_counter()
    for k in range(train["steps"]):
        tick = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, keys[k])
        losses.append(float(loss))
        times.append(time.perf_counter() - tick)
        if (k + 1) % train["curve_every"] == 0 or k + 1 == train["steps"]:
            curve.append((k + 1, float(evaluate(params))))
    wall = time.perf_counter() - start
    return {
        "method": method,
        "T": T,
        "seed": seed,
        "final_accuracy": curve[-1][1],
        "curve": curve,
        "losses": losses,
        "wall_s": wall,
        "step_s_median": float(np.median(times[1:])),
    }


def memory_rows(config, dtype) -> list[dict[str, Any]]:
    """Peak temporary bytes of each method's compiled gradient program against T (compiled,
    not run), and RTRL's influence bytes."""
    C, batch = config["task"]["symbols"], config["memory"]["batch"]
    model = make_model(config, 0, dtype)
    graphdef, params = nnx.split(model, nnx.Param)
    carry = model.initialize_carry((batch, C + 2))
    influence = rtrl.init(model, carry).influence
    rows = []
    for T in config["memory"]["lengths"]:
        xs = jnp.zeros((T, batch, C + 2), dtype)
        cue = jnp.zeros((batch,), jnp.int32)
        row = {"T": T, "rtrl_influence_bytes": int(influence.nbytes)}
        for method in config["train"]["methods"]:
            grad = gradient_fn(method, graphdef, config["train"]["truncation"])
            stats = jax.jit(grad).lower(params, xs, cue).compile().memory_analysis()
            row[f"{method}_temp_bytes"] = None if stats is None else int(stats.temp_size_in_bytes)
        rows.append(row)
    return rows


def summarise(config, runs, memory, provenance, wall) -> str:
    train, task = config["train"], config["task"]
    lines = [
        "# RTRL vs truncated BPTT on delayed cue recall",
        "",
        harness.device_line(provenance),
        "",
        f"DiagGRU (n = {config['model']['hidden']}) + linear read-out, {config['dtype']}; "
        f"{task['symbols']} symbols (chance {1 / task['symbols']:.2f}); delay D = T - 1; "
        f"truncation K = {train['truncation']}; Adam lr {train['learning_rate']}, clip "
        f"{train['clip_norm']}, batch {task['batch']}, {train['steps']} steps, "
        f"{train['seeds']} seeds; test accuracy on {task['test_batch']} fresh sequences. "
        f"Wall time {wall:.0f} s.",
        "",
        "## Test accuracy after training (mean over seeds, [min, max])",
        "",
        "| T (delay) | " + " | ".join(train["methods"]) + " |",
        "|---|" + "---|" * len(train["methods"]),
    ]
    for T in task["lengths"]:
        cells = []
        for method in train["methods"]:
            accs = [r["final_accuracy"] for r in runs if r["T"] == T and r["method"] == method]
            cells.append(f"{np.mean(accs):.3f} [{min(accs):.3f}, {max(accs):.3f}]")
        lines.append(f"| {T} ({T - 1}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Time per training step (median over the steps after the first, then over seeds; ms):",
        "",
        "| T | " + " | ".join(train["methods"]) + " |",
        "|---|" + "---|" * len(train["methods"]),
    ]
    for T in task["lengths"]:
        cells = []
        for method in train["methods"]:
            ws = [r["step_s_median"] for r in runs if r["T"] == T and r["method"] == method]
            cells.append(f"{np.median(ws) * 1e3:.1f}")
        lines.append(f"| {T} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Memory of the gradient program against T (batch {config['memory']['batch']})",
        "",
        "Temporary bytes of the compiled program (XLA memory analysis, CPU), and RTRL's "
        "influence state (batch x N x Q).",
        "",
        "| T | " + " | ".join(f"{m} temp" for m in train["methods"]) + " | RTRL influence |",
        "|---|" + "---|" * (len(train["methods"]) + 1),
    ]
    for row in memory:
        cells = [
            "n/a" if row[f"{m}_temp_bytes"] is None else f"{row[f'{m}_temp_bytes'] / 1024:.0f} KiB"
            for m in train["methods"]
        ]
        lines.append(
            f"| {row['T']} | "
            + " | ".join(cells)
            + f" | {row['rtrl_influence_bytes'] / 1024:.0f} KiB |"
        )
    return "\n".join(lines) + "\n"


def plot(config, runs, memory, path) -> None:
    plt = harness.pyplot()
    lengths = config["task"]["lengths"]
    methods = config["train"]["methods"]
    colours = {"bptt": "tab:blue", "tbptt": "tab:red", "rtrl": "tab:green"}
    styles = {"bptt": "-", "tbptt": "-", "rtrl": "--"}
    fig, axes = plt.subplots(1, len(lengths) + 1, figsize=(4.2 * (len(lengths) + 1), 3.6))
    for ax, T in zip(axes, lengths):
        for method in methods:
            for i, r in enumerate(r for r in runs if r["T"] == T and r["method"] == method):
                steps, accs = zip(*r["curve"])
                label = method if i == 0 else None
                if method == "tbptt":
                    label = label and f"tbptt (K={config['train']['truncation']})"
                ax.plot(steps, accs, styles[method], color=colours[method], label=label, alpha=0.8)
        ax.axhline(1 / config["task"]["symbols"], color="grey", lw=0.8, ls=":")
        ax.set_title(f"delay D = {T - 1}")
        ax.set_xlabel("training step")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    ax = axes[-1]
    Ts = [row["T"] for row in memory]
    for method in methods:
        ax.plot(
            Ts,
            [row[f"{method}_temp_bytes"] / 2**20 for row in memory],
            "o" + styles[method],
            color=colours[method],
            label=f"{method} (program temp)",
        )
    ax.plot(
        Ts,
        [row["rtrl_influence_bytes"] / 2**20 for row in memory],
        "k:",
        label="rtrl influence state",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("MiB")
    ax.set_title("gradient memory vs T")
    ax.legend(fontsize=8)
    harness.save_figure(fig, path, title="RTRL vs truncated BPTT, delayed cue recall")


def main(argv=None) -> None:
    args, config, out = harness.setup(
        "python -m experiments.rtrl_delay", __doc__, DEFAULTS, argv, check=check_config
    )
    dtype = jnp.dtype(config["dtype"])
    start = time.perf_counter()
    runs = []
    cases = [
        (method, T, seed)
        for T in config["task"]["lengths"]
        for seed in range(config["train"]["seeds"])
        for method in config["train"]["methods"]
    ]
    for method, T, seed in harness.tqdm(cases, desc="runs", unit="run"):
        runs.append(train_one(config, method, T, config["seed"] + seed, dtype))
    memory = memory_rows(config, dtype)
    wall = time.perf_counter() - start
    provenance = harness.provenance(config, args.config, args.set)
    record = {
        "config": config,
        "provenance": provenance,
        "wall_s": wall,
        "runs": runs,
        "memory": memory,
    }
    harness.write_outputs(out, record, summarise(config, runs, memory, provenance, wall))
    if config["figure"]:
        plot(config, runs, memory, config["figure"])
        print(f"figure: {config['figure']}")


if __name__ == "__main__":
    main()
