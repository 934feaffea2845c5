"""``method="auto"``: the run-time switch of :class:`rnnscan.nn.RNN` (against ``lax.scan``),
the :class:`rnnscan.train.MethodSelector` decision logic (on simulated step times), and
``rnnscan.train`` with ``model.method: auto`` (a stalling layer is switched, the trajectory
is the sequential one, a resumed run keeps the selector's state)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tree_allclose

import rnnscan.nn as rnn
from rnnscan.train import MethodSelector, TrainConfig, read_metrics, train

# ----------------------------------------------------------------------------- the layer


def _gru_rnn(method, seed=0, **kwargs):
    cell = rnn.GRUCell(3, 5, param_dtype=jnp.float64, dtype=jnp.float64, rngs=nnx.Rngs(seed))
    return rnn.RNN(cell, method=method, **kwargs)


@nnx.jit
def _values_and_grads(layer, x, seq_lengths):
    """Outputs, final carry, stats and parameter gradients, compiled once per assignment."""

    def loss(layer):
        (carry, ys), stats = layer(x, seq_lengths=seq_lengths, return_carry=True, return_stats=True)
        return jnp.sum(jnp.sin(ys)) + jnp.sum(carry), (carry, ys, stats)

    grads, aux = nnx.grad(loss, has_aux=True)(layer)
    return aux, nnx.state(grads, nnx.Param)


def test_auto_rnn_matches_lax_scan_either_way():
    """Values and parameter gradients with either flag are those of the sequential scan
    (float64, padding included)."""
    x = jax.random.normal(jax.random.key(0), (3, 40, 3), jnp.float64)
    lengths = jnp.array([40, 25, 7])
    reference, reference_grads = _values_and_grads(_gru_rnn("sequential"), x, lengths)
    auto = _gru_rnn(rnn.Auto(parallel="newton", start="sequential"))
    assert rnn.get_methods(auto) == [False]
    for parallel in (True, False):
        rnn.set_methods(auto, [parallel])
        assert rnn.get_methods(auto) == [parallel]
        (carry, ys, stats), grads = _values_and_grads(auto, x, lengths)
        tree_allclose((carry, ys), reference[:2], rtol=1e-10, atol=1e-12)
        tree_allclose(grads, reference_grads, rtol=1e-8, atol=1e-10)
        assert bool(jnp.all(stats.iterations > 0)) == parallel  # which method ran


def test_each_assignment_compiles_once():
    """The flag is static: a jitted function compiles each assignment the first time and
    reuses it when the flag comes back."""
    traces = []

    @nnx.jit
    def forward(layer, x):
        traces.append(1)
        return layer(x, return_stats=True)

    layer = _gru_rnn(rnn.Auto(parallel="quasi_newton"))
    x = jax.random.normal(jax.random.key(1), (2, 30, 3), jnp.float64)
    reference = _gru_rnn("sequential")(x)
    for flag in (True, False, True, False):
        rnn.set_methods(layer, [flag])
        ys, stats = forward(layer, x)
        tree_allclose(ys, reference, rtol=1e-9, atol=1e-11)
        assert bool(jnp.all(stats.iterations > 0)) == flag
    assert len(traces) == 2


def test_auto_in_bidirectional_and_bad_flags():
    layer = rnn.Bidirectional(_gru_rnn("auto", 0), _gru_rnn("auto", 1))
    reference = rnn.Bidirectional(_gru_rnn("sequential", 0), _gru_rnn("sequential", 1))
    x = jax.random.normal(jax.random.key(2), (2, 25, 3), jnp.float64)
    lengths = jnp.array([25, 9])
    rnn.set_methods(layer, [True, False])
    run = nnx.jit(lambda layer, x: layer(x, seq_lengths=lengths))
    tree_allclose(run(layer, x), run(reference, x), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="2 auto layers"):
        rnn.set_methods(layer, [True])
    with pytest.raises(ValueError, match="parallel method"):
        rnn.Auto(parallel="sequential")


# ----------------------------------------------------------------------------- the selector


def simulate(selector, cost, steps):
    """Run ``selector`` against a cost model ``cost(step, parallel) -> (seconds, iterations,
    fell_back)``; return the total time and the assignment of every step."""
    total, assignments = 0.0, []
    for step in range(1, steps + 1):
        parallel = selector.parallel
        seconds, iterations, fell_back = cost(step, parallel)
        total += seconds
        assignments.append(parallel)
        selector.observe(step, seconds, iterations, fell_back, includes_compile=step == 1)
    return total, assignments


def additive(parallel_cost, sequential_cost=1.0, noise=0.03, seed=0):
    """Layers that run one after another: the step time is the sum of the layers' costs (with
    a little deterministic noise); ``parallel_cost(step, layer) -> (seconds, iterations)``."""
    rng = np.random.default_rng(seed)

    def cost(step, parallel):
        seconds, iterations = 0.1, []
        for layer, p in enumerate(parallel):
            c, it = parallel_cost(step, layer) if p else (sequential_cost, 0.0)
            seconds += c
            iterations.append(it)
        return seconds * (1 + noise * rng.uniform(-1, 1)), iterations, [0.0] * len(parallel)

    return cost


def fixed(cost, steps, parallel):
    return sum(cost(s, parallel)[0] for s in range(1, steps + 1))


def test_selector_picks_the_faster_method_per_layer():
    # Layer 0 is 3x faster in parallel, layer 1 2x slower.
    cost = additive(lambda step, layer: (0.33, 5.0) if layer == 0 else (2.0, 30.0))
    selector = MethodSelector(2)
    simulate(selector, cost, 40)
    assert selector.parallel == (True, False)
    assert selector.methods == ("parallel", "sequential")


def test_selector_keeps_the_current_method_within_the_margin():
    cost = additive(lambda step, layer: (1.02, 5.0))  # parallel 2 % slower: not worth a switch
    selector = MethodSelector(1, start="sequential", margin=0.05)
    simulate(selector, cost, 20)
    assert selector.parallel == (False,)


def test_selector_follows_rising_iterations_and_stays_within_10_percent():
    """Newton's iterations grow as training moves the weights (5 -> 35 over 300 steps); the
    parallel layer costs 0.05 s per iteration against 1 s for the sequential scan, so it pays
    until iteration ~16. ``auto`` must spend at most 1.1x the better fixed choice."""

    def newton(step, layer):
        iterations = 5 + step / 10 + 2 * layer
        return 0.2 + 0.05 * iterations, iterations

    cost, steps = additive(newton), 300
    selector = MethodSelector(2)
    total, assignments = simulate(selector, cost, steps)
    best = min(fixed(cost, steps, (True, True)), fixed(cost, steps, (False, False)))
    assert total <= 1.1 * best
    assert assignments[20] == (True, True)  # early on, parallel pays
    assert selector.parallel == (False, False)
    # Each layer switches for good near where it stops paying (iteration 17 with the
    # margin: step 120 for layer 0, 100 for layer 1, which iterates twice more).
    switch = [max(i for i, a in enumerate(assignments, 1) if a[k]) + 1 for k in (0, 1)]
    assert 100 <= switch[1] < switch[0] <= 160


def test_fallbacks_switch_a_layer_at_once():
    def cost(step, parallel):
        falls = step >= 20 and parallel[1]  # layer 1 fails from step 20 (after the probes)
        return 1.0, [5.0, 50.0 if falls else 5.0], [0.0, 1.0 if falls else 0.0]

    selector = MethodSelector(2, window=3, fallback_steps=2, recheck_every=1000)
    _, assignments = simulate(selector, cost, 24)
    assert selector.phase == "hold"
    assert assignments[20] == (True, True)  # step 21: one step of fallbacks, not yet
    assert assignments[21] == (True, False)  # step 22: switched after the second
    assert assignments[-1] == (True, False)


def test_selector_is_deterministic_and_resumes_from_its_state():
    def newton(step, layer):
        return 0.5 + 0.01 * step, 5 + step / 20

    cost = additive(newton, seed=3)
    whole = MethodSelector(2, window=2, recheck_every=20)
    records = [cost(s, (True, True)) for s in range(1, 101)]

    def feed(selector, steps):
        for step in steps:
            seconds, iterations, fell_back = records[step - 1]
            yield step, selector.observe(step, seconds, iterations, fell_back)

    decisions = [d for _, ds in feed(whole, range(1, 101)) for d in ds]
    first = MethodSelector(2, window=2, recheck_every=20)
    before = [d for _, ds in feed(first, range(1, 58)) for d in ds]
    state = first.state_dict()
    second = MethodSelector(2, window=2, recheck_every=20)
    second.load_state_dict(state)
    after = [d for _, ds in feed(second, range(58, 101)) for d in ds]
    assert before + after == decisions
    assert second.parallel == whole.parallel
    assert len(decisions) > 4


def test_selector_announces_the_next_probe():
    selector = MethodSelector(2, start="sequential", window=1, fallback_steps=1)
    assert selector.upcoming == (True, True)  # measuring; then all layers flipped together
    selector.observe(1, 1.0, [0.0, 0.0], [0.0, 0.0])
    assert selector.phase == "probe" and selector.upcoming is None


def test_a_probe_whose_compile_cannot_pay_is_deferred():
    selector = MethodSelector(2, start="sequential", window=1, fallback_steps=1, probe_budget=0.1)
    # Compiling 5 s of the 100 s left is within the budget: the probe goes ahead ...
    assert selector.defer_unaffordable(1, remaining_seconds=100.0, compile_seconds=5.0) == []
    assert selector.upcoming == (True, True)
    # ... 5 s of 40 s is not: the round ends with nothing changed, for both layers.
    decisions = selector.defer_unaffordable(1, remaining_seconds=40.0, compile_seconds=5.0)
    assert [(d.layer, d.kind, d.parallel, d.changed) for d in decisions] == [
        (0, "deferred", False, False),
        (1, "deferred", False, False),
    ]
    assert "40 s the run has left" in decisions[0].reason
    assert selector.phase == "hold" and selector.upcoming is None
    assert selector.parallel == (False, False)
    # A probe toward sequential compiles a smaller program than the current one: never deferred.
    parallel = MethodSelector(1, start="parallel")
    assert parallel.defer_unaffordable(1, remaining_seconds=1.0, compile_seconds=5.0) == []
    assert parallel.upcoming == (False,)


def test_selector_rejects_bad_options():
    with pytest.raises(ValueError, match="window"):
        MethodSelector(2, window=0)
    with pytest.raises(ValueError, match="probe_budget"):
        MethodSelector(2, probe_budget=0.0)
    with pytest.raises(ValueError, match="start has 1 flags"):
        MethodSelector(2, start=[True])
    with pytest.raises(ValueError, match="expected 2 per-layer values"):
        MethodSelector(2).observe(1, 1.0, [1.0], [0.0, 0.0])


# ----------------------------------------------------------------------------- training


def stalling(out_dir, method="auto", **overrides):
    """A one-block GRU whose Newton solves are capped at one iteration: every solve fails and
    falls back to the sequential scan (the stalling regime, without waiting for training to
    reach it). ``window`` is longer than the run, so only the fallback rule decides, and the
    run is deterministic."""
    config = TrainConfig.from_dict(
        {
            "name": "stall",
            "out_dir": str(out_dir),
            "data": {
                "source": "synthetic",
                "synthetic": {"num_series": 24, "seq_len": 48, "num_channels": 3},
                "fractions": [0.75, 0.25, 0.0],
            },
            "model": {
                "cell": "gru",
                "hidden_features": 4,
                "num_blocks": 1,
                "method": method,
                "max_iterations": 1,
                "dtype": "float64",
                "auto": (
                    {"window": 20, "fallback_steps": 2, "start": "parallel"}
                    if method == "auto"
                    else {}
                ),
            },
            "optim": {"lr": 1e-2},
            "train": {
                "batch_size": 4,
                "eval_batch_size": 6,
                "eval_every": 4,
                "max_steps": 8,
                "progress": False,
            },
            "checkpoint": {"every_steps": 2},
        }
    )
    return config.replace(overrides)


@pytest.fixture(scope="module")
def sequential_run(tmp_path_factory):
    return train(stalling(tmp_path_factory.mktemp("seq") / "run", method="sequential"))


def _train_records(run):
    return [r for r in run.records if r["kind"] == "train"]


def test_auto_switches_a_stalling_layer_and_keeps_the_trajectory(tmp_path, sequential_run):
    run = train(stalling(tmp_path / "auto"))
    records = _train_records(run)
    assert [r["methods"] for r in records] == [["newton"]] * 2 + [["sequential"]] * 6
    assert records[0]["fell_back"] > 0 and records[2]["fell_back"] == 0
    (change,) = run.summary["solver"]["method_changes"]
    assert change["step"] == 2 and change["decision"] == "fallback"
    assert "fell back" in change["reason"]
    assert run.summary["solver"]["method_steps"] == [{"newton": 2, "sequential": 6}]
    evaluations = [r for r in run.records if r["kind"] == "eval"]
    assert evaluations and all(r["methods"] == ["sequential"] for r in evaluations)
    assert all(r["iterations_mean"] == 0 for r in evaluations)  # they ran what they say
    reference = _train_records(sequential_run)
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in reference], rel=1e-10)
    tree_allclose(run.final_params, sequential_run.final_params, rtol=1e-9, atol=1e-12)
    assert (tmp_path / "auto" / "curves.png").exists()


def test_fixed_parallel_method_warns_once(tmp_path):
    run = train(stalling(tmp_path / "newton", method="newton", **{"train.max_steps": 3}))
    warnings = [r for r in run.records if r["kind"] == "warning"]
    assert len(warnings) == 1 and "model.method: auto" in warnings[0]["message"]
    assert all(r["fell_back"] > 0 for r in _train_records(run))


class Crash(Exception):
    pass


def test_the_probe_runs_a_step_compiled_in_the_background(tmp_path):
    """While sequential steps run, the Newton train step of the coming probe compiles on a
    worker thread; the steps meanwhile are not timed for decisions, and the probe's first
    step runs the ahead-compiled executable (no compilation in it) and computes the same
    losses as the sequential run."""

    def slow_down_while_compiling(record):  # let the compile finish within the short run
        if record["kind"] == "train" and record["during_background_compile"]:
            time.sleep(1.0)

    settings = {"model.max_iterations": 50, "train.max_steps": 30, "train.eval_every": 2}
    auto = {"window": 1, "fallback_steps": 1, "start": "sequential", "recheck_every": 1000}
    # A run this short could never pay for the compile (the next test): allow it anyway.
    auto["probe_budget"] = 1e6
    config = stalling(tmp_path / "ahead", **settings, **{"model.auto": auto})
    records = _train_records(train(config, callback=slow_down_while_compiling))
    sequential = stalling(tmp_path / "seq", method="sequential", **settings)
    reference = [r["loss"] for r in _train_records(train(sequential))]
    assert records[0]["methods"] == ["sequential"] and records[0]["includes_compile"]
    # It starts after the first evaluation (step 2) has compiled.
    shared = [r["step"] for r in records if r["during_background_compile"]]
    assert shared and shared[0] > 2, shared
    probed = [r for r in records if r["methods"] == ["newton"]]
    assert probed, [r["methods"] for r in records]
    assert not probed[0]["includes_compile"] and probed[0]["fell_back"] == 0
    np.testing.assert_allclose([r["loss"] for r in records], reference, rtol=1e-9)


def test_a_short_run_does_not_compile_a_probe_it_cannot_use(tmp_path):
    """30 steps of a few milliseconds cannot pay for compiling the Newton step: the probe is
    deferred (and logged why), nothing compiles in the background, and every step is
    sequential."""
    auto = {"window": 1, "fallback_steps": 1, "start": "sequential", "recheck_every": 1000}
    # A width no other test compiles: a cached program would measure a compile time of ~0.
    settings = {"model.hidden_features": 5, "train.max_steps": 30, "model.auto": auto}
    run = train(stalling(tmp_path / "short", **settings))
    records = _train_records(run)
    assert all(r["methods"] == ["sequential"] for r in records)
    assert not any(r["during_background_compile"] for r in records)
    deferred = [r for r in run.records if r["kind"] == "method"]
    assert [r["decision"] for r in deferred] == ["deferred"], deferred
    # Judged after the first evaluation (step 4), whose compile comes first.
    assert deferred[0]["step"] == 5 and "the run has left" in deferred[0]["reason"]


def test_resume_keeps_the_selectors_decisions(tmp_path):
    """Crash after step 5 (last checkpoint: step 4), resume: the same methods, losses and
    selector state as an uninterrupted run."""
    whole = train(stalling(tmp_path / "whole"))
    config = stalling(tmp_path / "crashed")

    def crash_after_step_5(record):
        if record["kind"] == "train" and record["step"] == 5:
            raise Crash

    with pytest.raises(Crash):
        train(config, callback=crash_after_step_5)
    resumed = train(config)
    pick = lambda run: [(r["methods"], r["loss"]) for r in _train_records(run)]  # noqa: E731
    assert pick(resumed) == pick(whole)
    saved = read_metrics(tmp_path / "crashed" / "metrics.jsonl")
    assert [r["step"] for r in saved if r["kind"] == "train"] == list(range(1, 9))
