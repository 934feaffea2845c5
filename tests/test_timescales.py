"""Trainable timescales: the leaky cell against a hand-written update, the N-parity / N-DMS
targets against plain-Python definitions, the autocorrelation fit against AR(1) processes of
known timescale, and the curricula on a tiny problem."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cells_helpers import normal, randomize_params
from flax import nnx

import rnnscan.nn as rn
from rnnscan.data import (
    make_dms,
    make_parity,
    make_timescale_series,
    make_timescale_task,
)
from rnnscan.diagnostics import autocorrelation, leak_timescale, network_timescales
from rnnscan.train import ConfigError, CurriculumConfig, load_config, train_curriculum
from rnnscan.train._data import load_dataset

# ---------------------------------------------------------------------------------------------
# LeakyRNNCell


def _numpy_leaky(cell: rn.LeakyRNNCell, h, xs, phi):
    """h_t = (1 - 1/τ) h_{t-1} + (1/τ) φ(W h_{t-1} + U x_t + b), in float64 NumPy, with
    τ = τ_min + log(1 + exp(ρ)) written out."""
    W = np.asarray(cell.recurrent_kernel[...], np.float64).T  # [post, pre]
    U = np.asarray(cell.input_kernel[...], np.float64).T
    b = np.asarray(cell.bias[...], np.float64)
    tau = cell.tau_min + np.log1p(np.exp(np.asarray(cell.tau_raw[...], np.float64)))
    h = np.asarray(h, np.float64)
    out = []
    for x in np.asarray(xs, np.float64):
        h = (1 - 1 / tau) * h + (1 / tau) * phi(W @ h + U @ x + b)
        out.append(h)
    return np.stack(out)


@pytest.mark.parametrize(
    "activation, phi",
    [("relu", lambda z: np.maximum(z, 0.0)), ("tanh", np.tanh)],
)
def test_leaky_cell_matches_numpy_update(activation, phi):
    cell = rn.LeakyRNNCell(
        3,
        5,
        activation=activation,
        tau_init=(1.2, 8.0),
        tau_min=1.0,
        param_dtype=jnp.float64,
        rngs=nnx.Rngs(0),
    )
    randomize_params(cell, 1)
    xs = normal(2, (30, 3))
    h0 = normal(3, (5,))
    _, ys = jax.jit(lambda h, xs: jax.lax.scan(cell, h, xs))(h0, xs)
    np.testing.assert_allclose(ys, _numpy_leaky(cell, h0, xs, phi), rtol=1e-12, atol=1e-12)
    # And through rnnscan.nn.RNN's parallel (Newton) solve, batched.
    ys_rnn = rn.RNN(cell, method="newton")(xs[None], initial_carry=h0[None])[0]
    np.testing.assert_allclose(ys_rnn, _numpy_leaky(cell, h0, xs, phi), rtol=1e-9, atol=1e-9)


def test_leaky_cell_tau():
    cell = rn.LeakyRNNCell(
        2, 6, tau_init=3.0, tau_min=1.5, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
    )
    np.testing.assert_allclose(cell.tau, 3.0, rtol=1e-12)
    ranged = rn.LeakyRNNCell(2, 200, tau_init=(2.0, 10.0), rngs=nnx.Rngs(1))
    tau = np.asarray(ranged.tau)
    assert tau.min() >= 2.0 - 1e-5 and tau.max() <= 10.0 + 1e-4 and tau.std() > 1.0
    # τ never falls below τ_min, whatever the parameter (it reaches it in rounding only).
    nnx.update(
        cell, nnx.State({"tau_raw": nnx.Param(jnp.asarray([-50.0, -5.0, 0.0, 5.0, 50.0, 1e3]))})
    )
    tau = np.asarray(cell.tau)
    assert np.all(tau >= 1.5) and np.all(np.diff(tau) > 0)
    # τ = τ_min + softplus(ρ) is trained: it is a Param, and gradients reach it.
    assert "tau_raw" in nnx.state(cell, nnx.Param)
    grads = nnx.grad(lambda c: jnp.sum(c(jnp.ones((6,)), jnp.ones((2,)))[0]))(cell)
    assert np.all(np.abs(np.asarray(grads["tau_raw"][...])) > 0)


def test_leaky_cell_fixed_tau_is_not_a_parameter():
    cell = rn.LeakyRNNCell(2, 4, tau_init=5.0, train_tau=False, rngs=nnx.Rngs(0))
    assert "tau_raw" not in nnx.state(cell, nnx.Param)
    np.testing.assert_allclose(cell.tau, 5.0, rtol=1e-5)
    xs = jnp.ones((1, 10, 2), jnp.float32)
    ys = rn.RNN(cell, method="newton")(xs)
    ref = nnx.RNN(cell)(xs)
    np.testing.assert_allclose(ys, ref, rtol=1e-4, atol=1e-5)


def test_leaky_cell_isolated_unit_decays_with_leak_timescale():
    """W = 0, no input, φ = identity: h_k = (1 - 1/τ)^k h_0 = exp(-k / τ_leak) h_0."""
    cell = rn.LeakyRNNCell(
        1,
        3,
        activation=lambda z: z,
        tau_init=4.0,
        recurrent_kernel_init=nnx.initializers.zeros_init(),
        kernel_init=nnx.initializers.zeros_init(),
        param_dtype=jnp.float64,
        rngs=nnx.Rngs(0),
    )
    _, ys = jax.lax.scan(cell, jnp.ones(3), jnp.zeros((20, 1)))
    k = np.arange(1, 21)
    np.testing.assert_allclose(ys[:, 0], np.exp(-k / leak_timescale(4.0)), rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"activation": "gelu"}, "activation"),
        ({"tau_init": 1.0}, "tau_init"),
        ({"tau_init": (3.0, 2.0)}, "tau_init"),
        ({"tau_min": 0.0}, "tau_min"),
    ],
)
def test_leaky_cell_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rn.LeakyRNNCell(2, 4, rngs=nnx.Rngs(0), **kwargs)


def test_leaky_cell_in_name_table():
    assert rn.CELLS["leaky_rnn"] is rn.LeakyRNNCell


# ---------------------------------------------------------------------------------------------
# N-parity and N-DMS


def _reference(task, bits, n):
    """Per-step targets and scored steps, written out from the definitions."""
    targets, valid = [], []
    for t in range(len(bits)):
        if task == "parity":
            ok = t >= n - 1
            value = sum(bits[t - n + 1 : t + 1]) % 2 if ok else 0
        else:
            ok = t >= n
            value = int(bits[t] == bits[t - n]) if ok else 0
        targets.append(value)
        valid.append(ok)
    return targets, valid


@pytest.mark.parametrize("task", ["parity", "dms"])
def test_targets_match_definitions(task):
    streams = make_timescale_task(task, 4, 25, [1, 2, 3, 7], seed=5)
    assert streams.bits.shape == (4, 25) and streams.targets.shape == (4, 25, 4)
    assert streams.inputs.shape == (4, 25, 1) and streams.inputs.dtype == np.float32
    for b in range(4):
        bits = [int(v) for v in streams.bits[b]]
        for k, n in enumerate(streams.ns):
            targets, valid = _reference(task, bits, n)
            assert streams.targets[b, :, k].tolist() == targets
            assert streams.valid[b, :, k].tolist() == valid


def test_tasks_are_deterministic_and_balanced():
    a, b = make_parity(64, 200, 5, seed=3), make_parity(64, 200, 5, seed=3)
    np.testing.assert_array_equal(a.bits, b.bits)
    assert not np.array_equal(a.bits, make_parity(64, 200, 5, seed=4).bits)
    for streams in (a, make_dms(64, 200, 5, seed=3)):
        scored = streams.targets[streams.valid]
        assert abs(scored.mean() - 0.5) < 0.02


def test_timescale_series_labels_the_last_step():
    series = make_timescale_series("parity", 50, 12, 4, seed=1)
    bits = series.X[..., 0].astype(int)
    np.testing.assert_array_equal(series.y, bits[:, -4:].sum(axis=1) % 2)
    dms = make_timescale_series("dms", 50, 12, 4, seed=1)
    bits = dms.X[..., 0].astype(int)
    np.testing.assert_array_equal(dms.y, (bits[:, -1] == bits[:, -5]).astype(int))
    with pytest.raises(ValueError, match="seq_len"):
        make_timescale_series("dms", 10, 4, 4)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: make_timescale_task("xor", 2, 10, 2), "task"),
        (lambda: make_parity(2, 10, 0), "n"),
        (lambda: make_parity(2, 10, []), "n"),
        (lambda: make_dms(0, 10, 2), "num_sequences"),
    ],
)
def test_task_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_parity_source_in_training_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "data:\n  source: parity\n  synthetic: {num_series: 40, seq_len: 10, n: 3}\n"
        "  standardize: null\n"
    )
    ds = load_dataset(load_config(path).data)
    assert ds.X_train.shape[1:] == (10, 1)
    with pytest.raises(ConfigError, match="marker_len"):
        load_config(path, ["data.synthetic.marker_len=3"])


# ---------------------------------------------------------------------------------------------
# Timescales from activity


def _ar1(phis, runs, length, seed=0):
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((runs, length, len(phis)))
    x = np.zeros_like(noise)
    for t in range(1, length):
        x[:, t] = phis * x[:, t - 1] + noise[:, t]
    return x


def test_network_timescales_of_ar1_processes():
    """AR(1), a_t = φ a_{t-1} + ε_t: AC(k) = φ^k, a timescale of -1 / log φ."""
    phis = np.array([0.5, 0.8, 0.9])
    x = _ar1(phis, 32, 20_000)
    fit = network_timescales(x, max_lag=100)
    np.testing.assert_allclose(fit.tau, -1 / np.log(phis), rtol=0.04)
    np.testing.assert_allclose(fit.amplitude, 1.0, atol=0.05)
    ac = autocorrelation(x, 5)
    np.testing.assert_allclose(ac, phis[None, :] ** np.arange(6)[:, None], atol=0.01)
    assert not fit.reached_max_lag.any()


def test_network_timescales_white_component_changes_amplitude_not_tau():
    """AR(1) plus independent white noise of equal variance: AC(k) = φ^k / 2 for k >= 1."""
    phi = 0.9
    slow = _ar1(np.array([phi]), 32, 20_000)
    white = np.random.default_rng(1).standard_normal(slow.shape) * slow.std()
    fit = network_timescales(slow + white, max_lag=100)
    np.testing.assert_allclose(fit.tau, -1 / np.log(phi), rtol=0.06)
    np.testing.assert_allclose(fit.amplitude, 0.5, atol=0.05)


def test_network_timescales_edge_cases():
    rng = np.random.default_rng(0)
    activity = np.stack([np.full(500, 0.7), rng.standard_normal(500), np.zeros(500)], axis=-1)
    fit = network_timescales(activity, max_lag=20)
    assert np.isnan(fit.tau[0]) and np.isnan(fit.tau[2])  # constant: no timescale
    assert 0.0 <= fit.tau[1] < 0.5  # white noise: decorrelated within a step
    with pytest.raises(ValueError, match="max_lag"):
        network_timescales(activity, max_lag=500)
    with pytest.raises(ValueError, match="cutoff"):
        network_timescales(activity, cutoff=1.0)


def test_leak_timescale():
    np.testing.assert_allclose(
        leak_timescale([1.0, 2.0, 50.0]), [0.0, 1 / math.log(2), -1 / math.log(0.98)], rtol=1e-5
    )
    with pytest.raises(ValueError, match="tau"):
        leak_timescale(0.5)


# ---------------------------------------------------------------------------------------------
# Curricula


TINY = dict(
    n_start=2,
    n_max=3,
    hidden_features=16,
    seq_len=24,
    batch_size=32,
    eval_batch_size=64,
    learning_rate=1e-2,
    threshold=0.95,
    eval_every=25,
    max_steps_per_n=600,
    max_steps=1200,
    timescale_runs=2,
    timescale_len=300,
    burn_in=20,
    max_lag=30,
    check_batch_size=8,
    verbose=False,
)


@pytest.mark.parametrize("curriculum", ["single", "multi"])
def test_curriculum_learns_small_parity(curriculum):
    result = train_curriculum({**TINY, "curriculum": curriculum})
    assert result.largest_n == 3, result.gave_up
    assert [s["n"] for s in result.stages] == [1, 2, 3]
    steps = [s["step"] for s in result.stages]
    assert steps == sorted(steps)
    for stage in result.stages[1:]:
        assert min(stage["accuracy"]) >= 0.95
        assert len(stage["tau"]) == 16 and stage["tau_mean"] > 1.0
    # Multi-head trains every head to the end; the last N is known to both.
    assert result.retained[3] >= 0.9
    if curriculum == "multi":
        assert len(result.stages[-1]["accuracy"]) == 2 and result.retained[2] >= 0.9
    # The parallel solve gives the sequential scan's accuracies.
    assert result.check["method"] == "newton" and result.check["max_abs_difference"] < 1e-6
    json.dumps(result.to_json())  # JSON-compatible


def test_curriculum_config_errors():
    with pytest.raises(ConfigError, match="curriculum"):
        CurriculumConfig(curriculum="both")
    with pytest.raises(ConfigError, match="unknown curriculum key 'nmax'"):
        CurriculumConfig.from_dict({"nmax": 4})
    with pytest.raises(ConfigError, match="seq_len"):
        CurriculumConfig(n_max=30, seq_len=20)


def test_curriculum_cli(tmp_path, capsys):
    from rnnscan.train.curriculum import main

    out = tmp_path / "r.json"
    args = [f"--set={k}={v}" for k, v in {**TINY, "n_max": 2, "check_method": "null"}.items()]
    assert main([*args, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["largest_n"] == 2 and record["check"] is None
    assert "largest N learned: 2" in capsys.readouterr().out
    assert main(["--set", "curriculum=nope"]) == 2
    assert "error: curriculum" in capsys.readouterr().err
