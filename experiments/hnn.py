"""Training a Hamiltonian neural network with parallel vs sequential ODE integration.

``python -m experiments.hnn --config configs/experiments/hnn_cpu.yaml [--out PREFIX]
[--set key=value]``

In the spirit of DEER's Hamiltonian-NN experiment (Lim et al., ICLR 2024), after Greydanus,
Dzamba & Yosinski (NeurIPS 2019): H_theta(q, p) is an MLP, the model's dynamics are
Hamilton's equations

    dq/dt = dH_theta/dp,   dp/dt = -dH_theta/dq,

integrated with RK4 on the observation grid by :func:`rnnscan.ode.solve_ivp`, from each
trajectory's first observed state; the loss is the mean squared error against the observed
trajectories (simulated mass-spring systems, H = p^2 / 2m + k q^2 / 2, exact solutions plus
optional noise). Every method in ``methods`` trains from the same initialisation on the same
data with Adam; the run records every step's loss (they should agree to the solver
tolerance), the compile time, the time per training step (forward + implicit gradient +
update; median after warm-up, ``block_until_ready``), Newton iterations and fallbacks.

Writes ``PREFIX.json`` (everything, with provenance: device, versions, git state, config),
``PREFIX.md`` (a summary table) and a figure (``figure:`` in the config; loss curves, step
times and a learned trajectory).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rnnscan

from . import harness

DEFAULTS: dict[str, Any] = {
    "name": "hnn",
    "seed": 0,
    "dtype": "float32",
    "system": {"mass": 1.0, "stiffness": 1.0, "radius": [0.2, 1.0], "noise": 0.0},
    "trajectories": 16,
    "grid_points": 400,
    "t_final": 3.0,
    "hidden": [64, 64],
    "scheme": "rk4",
    "methods": ["newton", "sequential"],
    "steps": 60,
    "learning_rate": 1e-2,
    "warmup_steps": 3,
    "out": None,
    "figure": None,
}


# --- data: mass-spring trajectories ----------------------------------------------------------


def mass_spring_data(key, config, ts):
    """Exact trajectories (q, p) of H = p^2/2m + k q^2/2 from random initial states on an
    annulus of radii ``radius`` in phase space, plus Gaussian noise."""
    system = config["system"]
    m, k = float(system["mass"]), float(system["stiffness"])
    omega = np.sqrt(k / m)
    key_r, key_phi, key_noise = jax.random.split(key, 3)
    B = config["trajectories"]
    r = jax.random.uniform(key_r, (B,), ts.dtype, *system["radius"])
    phi = jax.random.uniform(key_phi, (B,), ts.dtype, 0.0, 2 * np.pi)
    q0, p0 = r * jnp.cos(phi), r * jnp.sin(phi)
    wt = omega * ts[None, :]
    q = q0[:, None] * jnp.cos(wt) + p0[:, None] / (m * omega) * jnp.sin(wt)
    p = -m * omega * q0[:, None] * jnp.sin(wt) + p0[:, None] * jnp.cos(wt)
    ys = jnp.stack([q, p], axis=-1)  # (B, N, 2)
    noise = float(system["noise"]) * jax.random.normal(key_noise, ys.shape, ys.dtype)
    return ys + noise


# --- the model -------------------------------------------------------------------------------


def init_mlp(key, sizes, dtype):
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, sub = jax.random.split(key)
        W = jax.random.normal(sub, (fan_out, fan_in), dtype) / np.sqrt(fan_in)
        params.append((W, jnp.zeros(fan_out, dtype)))
    return params


def hamiltonian(params, y):
    h = y
    for W, b in params[:-1]:
        h = jnp.tanh(W @ h + b)
    W, b = params[-1]
    return (W @ h + b)[0]


def hamiltonian_field(t, y, params):
    """Hamilton's equations for H_theta: (dH/dp, -dH/dq)."""
    dH = jax.grad(hamiltonian, argnums=1)(params, y)
    return jnp.stack([dH[1], -dH[0]])


def train(config, method, params0, observed, ts):
    def loss_fn(params, observed):
        def one(y_obs):
            sol = rnnscan.ode.solve_ivp(
                hamiltonian_field, y_obs[0], ts, params, scheme=config["scheme"], method=method
            )
            return jnp.mean((sol.ys - y_obs) ** 2), sol

        losses, sols = jax.vmap(one)(observed)
        return jnp.mean(losses), (jnp.mean(sols.iterations), jnp.sum(sols.fell_back))

    optimiser = optax.adam(config["learning_rate"])
    run = harness.fit(
        jax.jit(harness.train_step(loss_fn, optimiser)),
        params0,
        optimiser.init(params0),
        (observed,),
        steps=config["steps"],
        desc=f"hnn {method}",
        compile_ahead=True,
    )
    return run.params, {
        "method": method,
        "compile_s": run.compile_s,
        "losses": run.losses,
        "step_times_s": run.step_times_s,
        **harness.step_time_summary(run.step_times_s, config["warmup_steps"]),
        "newton_iterations_mean": [its for its, _ in run.aux],
        "fallbacks": [int(fell) for _, fell in run.aux],
    }


def summarise(config, runs, provenance) -> str:
    ref = next((r for r in runs if r["method"] == "sequential"), runs[0])
    B, N = config["trajectories"], config["grid_points"]
    lines = [
        f"# HNN training, parallel vs sequential ODE integration ({config['name']})",
        "",
        f"Mass-spring trajectories: {B} per batch, {N} grid points on [0, {config['t_final']}]"
        f" ({N - 1} {config['scheme'].upper()} steps), state (q, p); H_theta MLP "
        f"2-{'-'.join(map(str, config['hidden']))}-1 (tanh); {config['dtype']}; Adam "
        f"lr {config['learning_rate']}, {config['steps']} steps; median step time after "
        f"{config['warmup_steps']} warm-up steps.",
        "",
        harness.device_line(provenance),
        "",
        "| method | step time (median) | IQR | compile | first loss | final loss "
        "| rel. loss diff vs sequential: step 0 / max | Newton iterations (mean) "
        "| fallbacks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        losses, ref_losses = np.asarray(run["losses"]), np.asarray(ref["losses"])
        rel_all = np.abs(losses - ref_losses) / np.abs(ref_losses)
        rel0, rel = float(rel_all[0]), float(np.max(rel_all))
        its = np.mean(run["newton_iterations_mean"])
        lo, hi = run["step_time_iqr_s"]
        lines.append(
            f"| {run['method']} | {1e3 * run['step_time_median_s']:.1f} ms | "
            f"{1e3 * lo:.1f}-{1e3 * hi:.1f} ms | {run['compile_s']:.1f} s | "
            f"{losses[0]:.4e} | {losses[-1]:.4e} | {rel0:.1e} / {rel:.1e} | {its:.1f} | "
            f"{sum(run['fallbacks'])} |"
        )
    lines += [
        "",
        "Step 0 compares the two integrations at the same parameters; later steps also carry "
        "the drift of two training runs whose parameters differ by rounding (float32: the "
        "Newton tolerance is 1e-5 on the state).",
    ]
    return "\n".join(lines) + "\n"


def plot(config, runs, ts, observed, params_by_method, path):
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for run in runs:
        style = "-" if run["method"] != "sequential" else "--"
        axes[0].semilogy(run["losses"], style, label=run["method"])
    axes[0].set(xlabel="training step", ylabel="trajectory MSE", title="loss")
    axes[0].legend()
    names = [r["method"] for r in runs]
    medians = [1e3 * r["step_time_median_s"] for r in runs]
    axes[1].bar(names, medians, color=["C0", "C1", "C2", "C3"][: len(runs)])
    axes[1].set(ylabel="ms per training step (median)", title="time per step")
    for i, value in enumerate(medians):
        axes[1].text(i, value, f"{value:.1f}", ha="center", va="bottom")
    y_obs = observed[0]
    axes[2].plot(y_obs[:, 0], y_obs[:, 1], "k.", ms=2, label="observed")
    for name, params in params_by_method.items():
        sol = rnnscan.ode.solve_ivp(hamiltonian_field, y_obs[0], ts, params, method="sequential")
        axes[2].plot(sol.ys[:, 0], sol.ys[:, 1], label=f"learned ({name})")
    axes[2].set(xlabel="q", ylabel="p", title="trajectory 0 after training")
    axes[2].legend(fontsize=8)
    title = f"HNN, {config['trajectories']} x {config['grid_points']} points, {config['dtype']}"
    harness.save_figure(fig, path, title=title)


def main(argv=None) -> None:
    args, config, out = harness.setup("python -m experiments.hnn", __doc__, DEFAULTS, argv)
    dtype = jnp.dtype(config["dtype"])

    key_data, key_model = jax.random.split(jax.random.PRNGKey(config["seed"]))
    ts = jnp.linspace(0.0, config["t_final"], config["grid_points"], dtype=dtype)
    observed = mass_spring_data(key_data, config, ts)
    params0 = init_mlp(key_model, [2, *config["hidden"], 1], dtype)

    runs, params_by_method = [], {}
    for method in config["methods"]:
        params, run = train(config, method, params0, observed, ts)
        runs.append(run)
        params_by_method[method] = params

    provenance = harness.provenance(config, args.config, args.set)
    record = {"config": config, "provenance": provenance, "runs": runs}
    harness.write_outputs(out, record, summarise(config, runs, provenance))
    if config["figure"]:
        plot(config, runs, ts, observed, params_by_method, config["figure"])
        print(f"figure: {config['figure']}")


if __name__ == "__main__":
    main()
