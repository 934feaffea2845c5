"""Tests of rnnscan.train: configs, CLI, data order, exact resume, solver equivalence.

Runs are tiny (synthetic series of 64 steps, a width-4 model) and share their compiled
steps through rnnscan.train's in-process cache, so the module stays within a minute or
so on two CPU cores. The worm-sample test skips when the shared data is absent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx
from helpers import tree_allclose

import rnnscan.train as rt
from rnnscan.data import DatasetNotFoundError, load_worm_sample
from rnnscan.train import ConfigError, TrainConfig, load_config, train
from rnnscan.train.__main__ import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "train"

# Volatile fields: wall-clock times and which step happened to compile in this process.
VOLATILE = {"step_time_s", "time_s", "includes_compile"}


def tiny(out_dir: Path, **overrides) -> TrainConfig:
    """A run that takes a fraction of a second per step: 26 synthetic series of 64 steps,
    6 channels and 5 classes (the worm sample's shape, so the worm test reuses the
    compiled steps), one GRU block of width 4."""
    config = TrainConfig.from_dict(
        {
            "name": "tiny",
            "out_dir": str(out_dir),
            "data": {
                "source": "synthetic",
                "synthetic": {
                    "num_series": 26,
                    "seq_len": 64,
                    "num_channels": 6,
                    "num_classes": 5,
                    "marker_len": 4,
                },
            },
            "model": {"cell": "gru", "hidden_features": 4, "num_blocks": 1},
            "optim": {"lr": 1e-2},
            "train": {"batch_size": 4, "eval_batch_size": 4, "epochs": 2, "progress": False},
            "checkpoint": {"every_steps": 2},
        }
    )
    return config.replace(overrides)


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def assert_trees_equal(a, b) -> None:
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted tiny run: 2 epochs of 5 steps, validation after every 3 steps."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return train(tiny(out, **{"train.eval_every": 3}))


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "name", ["eigenworms_gru", "worm_sample_small", "worm_sample_gru", "synthetic"]
)
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.name == name
    assert config.data.max_len is None  # every shipped config uses all the steps


def test_eigenworms_config_is_the_deer_setup():
    c = load_config(CONFIGS / "eigenworms_gru.yaml")
    assert (c.model.cell, c.model.hidden_features, c.model.num_blocks) == ("gru", 32, 5)
    assert (c.model.method, c.model.dtype) == ("newton", "float32")
    assert (c.data.source, c.data.split, c.data.fractions) == (
        "eigenworms",
        "pooled",
        (0.7, 0.15, 0.15),
    )
    assert (c.optim.name, c.optim.lr, c.optim.clip_norm) == ("adam", 3e-5, 1.0)
    assert (c.train.batch_size, c.train.patience) == (4, 1000)


def test_overrides_are_typed():
    c = load_config(
        CONFIGS / "synthetic.yaml",
        [
            "optim.lr=3e-4",  # YAML 1.1 reads this as a string; the float field converts it
            "model.cell=lstm",
            "train.batch_size=8.0",
            "data.max_len=null",
            "data.fractions=[0.5, 0.25, 0.25]",
            "data.synthetic={num_series: 10, seq_len: 32}",
        ],
    )
    assert c.optim.lr == 3e-4 and isinstance(c.optim.lr, float)
    assert c.model.cell == "lstm"
    assert c.train.batch_size == 8 and isinstance(c.train.batch_size, int)
    assert c.data.max_len is None
    assert c.data.fractions == (0.5, 0.25, 0.25)
    assert c.data.synthetic == {"num_series": 10, "seq_len": 32}


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1e-3", "'optim.lrr'.*Did you mean 'lr'"),
        ("modle.cell=gru", "'modle'.*Did you mean 'model'"),
        ("train.batch_size=many", "train.batch_size: expected int"),
        ("model.cell=transformer", "model.cell: expected"),
        ("model.method=magic", "model.method: expected"),
        ("data.synthetic={seqlen: 5}", "data.synthetic.seqlen"),
        ("model=3", "model: expected a mapping"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "synthetic.yaml", [override])


def test_unknown_key_in_a_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hidden: 8\n")
    with pytest.raises(ConfigError, match="'model.hidden'.*hidden_features"):
        load_config(path)


def test_cli_overrides_and_shortcuts(capsys):
    argv = [
        "--config",
        str(CONFIGS / "worm_sample_small.yaml"),
        "--method",
        "sequential",
        "--seed",
        "7",
        "--data-dir",
        "/somewhere",
        "--model.cell=lstm",
        "--train.epochs",
        "3",
        "--set",
        "optim.lr=1e-4",
        "--print-config",
    ]
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["method"] == "sequential"
    assert printed["model"]["cell"] == "lstm"
    assert printed["train"]["seed"] == 7
    assert printed["train"]["epochs"] == 3
    assert printed["optim"]["lr"] == 1e-4
    assert printed["data"]["data_dir"] == "/somewhere"


def test_cli_reports_unknown_keys(capsys):
    assert main(["--config", str(CONFIGS / "synthetic.yaml"), "--optim.learning_rate=1"]) == 2
    assert "optim.learning_rate" in capsys.readouterr().err


# ----------------------------------------------------------------------------- data order


def test_stratified_folds_partition_and_balance():
    y = np.repeat(np.arange(5), [10, 9, 9, 9, 6])
    folds = rt.stratified_folds(y, 5, seed=0)
    everything = np.sort(np.concatenate(folds))
    np.testing.assert_array_equal(everything, np.arange(y.size))
    sizes = [f.size for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in range(5):
        per_fold = [np.sum(y[f] == c) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1
    split = rt.cv_split(y, 5, fold=4, seed=0)
    np.testing.assert_array_equal(split.test, folds[4])
    np.testing.assert_array_equal(split.val, folds[0])
    assert split.covers(y.size)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a = rt.epoch_order(31, seed=3, epoch=5)
    np.testing.assert_array_equal(a, rt.epoch_order(31, seed=3, epoch=5))
    assert not np.array_equal(a, rt.epoch_order(31, seed=3, epoch=6))
    assert not np.array_equal(a, rt.epoch_order(31, seed=4, epoch=5))
    np.testing.assert_array_equal(np.sort(a), np.arange(31))


def test_last_batch_is_padded_with_zero_weights():
    from rnnscan.train._data import batches

    order = np.arange(10)
    full = list(batches(order, 4))
    assert [b.weights.sum() for b in full] == [4, 4, 2]
    assert all(b.indices.size == 4 for b in full)
    assert len(list(batches(order, 4, drop_last=True))) == 2


# ----------------------------------------------------------------------------- runs


def test_run_directory_contents(reference_run):
    out = reference_run.out_dir
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = reference_run.records
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == reference_run.summary["steps"] == 10
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6, 9, 10]
    assert kinds[-1] == "test"
    step = records[0]
    for key in ("loss", "accuracy", "lr", "step_time_s", "iterations_mean", "iterations_max"):
        assert key in step
    assert step["iterations_mean"] >= 1 and step["fell_back"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["count"] == 4 and summary["best"]["val_accuracy"] is not None
    assert summary["time"]["step_time"]["median_s"] > 0
    assert summary["device"]["platform"] and summary["versions"]["jax"] == jax.__version__
    # The returned model holds the best parameters.
    assert_trees_equal(nnx.state(reference_run.model, nnx.Param), reference_run.best_params)


class Crash(Exception):
    pass


def test_resume_after_a_crash_is_exact(tmp_path, reference_run):
    """Crash after step 7 (last checkpoint: step 6, mid-epoch), restart: same everything."""
    config = tiny(tmp_path / "run", **{"train.eval_every": 3})

    def crash_after_step_7(record):
        if record["kind"] == "train" and record["step"] == 7:
            raise Crash

    with pytest.raises(Crash):
        train(config, callback=crash_after_step_7)
    assert max(r["step"] for r in rt.read_metrics(tmp_path / "run" / "metrics.jsonl")) == 7
    resumed = train(config)
    assert_trees_equal(resumed.final_params, reference_run.final_params)
    assert_trees_equal(resumed.best_params, reference_run.best_params)
    assert stable(resumed.records) == stable(reference_run.records)
    assert resumed.summary["best"] == reference_run.summary["best"]
    assert resumed.summary["test"] == reference_run.summary["test"] | {
        "time_s": resumed.summary["test"]["time_s"]
    }


def test_rerunning_a_finished_run_does_not_train_again(reference_run):
    again = train(tiny(reference_run.out_dir, **{"train.eval_every": 3}))
    assert again.summary["steps"] == 10
    assert_trees_equal(again.final_params, reference_run.final_params)


def test_resume_refuses_a_different_configuration(reference_run):
    config = tiny(reference_run.out_dir, **{"train.eval_every": 3, "model.hidden_features": 8})
    with pytest.raises(ConfigError, match="model.hidden_features"):
        train(config)


def test_sigkill_and_resume(tmp_path):
    """A real kill -9 of `python -m rnnscan.train` after a checkpoint; the resumed run
    ends exactly where an uninterrupted run of the same length ends."""
    out = tmp_path / "killed"
    config = tiny(
        out,
        **{
            "train.epochs": 1000,
            "checkpoint.every_steps": 1,
            "data.fractions": [1.0, 0.0, 0.0],  # no evaluation: only the train step compiles
        },
    )
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(config.to_yaml())
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu")  # as in this process
    proc = subprocess.Popen(
        [sys.executable, "-m", "rnnscan.train", "--config", str(config_path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = [int(p.name) for p in (out / "checkpoints").glob("*") if p.name.isdigit()]
            if done and max(done) >= 3:
                break
            assert proc.poll() is None, "the training process ended before it was killed"
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint within two minutes")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    end = max(int(p.name) for p in (out / "checkpoints").glob("*") if p.name.isdigit()) + 3
    resumed = train(config.replace({"train.max_steps": end}))
    fresh = train(config.replace({"train.max_steps": end, "out_dir": str(tmp_path / "fresh")}))
    assert resumed.summary["steps"] == fresh.summary["steps"] == end
    assert_trees_equal(resumed.final_params, fresh.final_params)
    assert stable(resumed.records)[:-1] == stable(fresh.records)[:-1]  # all but "test"


@pytest.mark.parametrize("methods", [("sequential", "newton", "quasi_newton")])
def test_solvers_give_the_same_training_trajectory(tmp_path, methods):
    """Three optimiser steps of a GRU classifier in float64: the parallel solvers reproduce
    the sequential scan's losses and parameters up to the solver tolerance (1e-10)."""
    runs = {}
    for method in methods:
        config = tiny(
            tmp_path / method,
            **{
                "model.method": method,
                "model.dtype": "float64",
                "train.max_steps": 3,
                "data.fractions": [1.0, 0.0, 0.0],  # no evaluation: the steps only
                "checkpoint.enabled": False,
            },
        )
        runs[method] = train(config)
    reference = runs["sequential"]
    losses = [r["loss"] for r in reference.records if r["kind"] == "train"]
    assert reference.records[0]["iterations_mean"] == 0  # sequential does not iterate
    for method in methods[1:]:
        run = runs[method]
        assert [r["loss"] for r in run.records if r["kind"] == "train"] == pytest.approx(
            losses, rel=1e-9, abs=1e-12
        )
        assert run.records[0]["iterations_mean"] > 1
        for a, b in zip(
            jax.tree_util.tree_leaves(run.final_params),
            jax.tree_util.tree_leaves(reference.final_params),
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-7, atol=1e-9)


def test_warm_started_evaluations_match_cold_ones(tmp_path):
    """train.warm_start_eval: the same validation losses and predictions (to the solver
    tolerance), from fewer Newton iterations once there is a previous evaluation. The warm
    run also logs each block's Lyapunov exponent (train.lyapunov), which changes nothing
    else."""
    settings = {
        "model.dtype": "float64",
        "train.eval_every": 1,
        "train.max_steps": 4,
        "checkpoint.enabled": False,
    }
    runs = {
        warm: train(
            tiny(
                tmp_path / str(warm),
                **settings,
                **{"train.warm_start_eval": warm, "train.lyapunov": warm},
            )
        )
        for warm in (False, True)
    }
    cold, warm = ([r for r in runs[k].records if r["kind"] == "eval"] for k in (False, True))
    assert len(cold) == len(warm) == 4
    for a, b in zip(cold, warm):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-9)
        assert b["correct"] == a["correct"]
        assert "lyapunov_per_block" not in a
        (exponent,) = b["lyapunov_per_block"]  # one block
        assert -10 < exponent < 0  # a GRU near its initialisation contracts
    assert warm[0]["iterations_mean"] == cold[0]["iterations_mean"]  # nothing to start from
    assert all(b["iterations_mean"] < a["iterations_mean"] for a, b in zip(cold[1:], warm[1:]))
    tree_allclose(runs[True].final_params, runs[False].final_params, rtol=1e-9, atol=1e-12)
    config = tiny(tmp_path / "mesh", **{"train.lyapunov": True})
    with pytest.raises(ConfigError, match="train.lyapunov"):
        config.replace({"train.sequence_devices": 2})


def test_cross_validation_tests_every_series_once(tmp_path):
    config = tiny(
        tmp_path / "cv", **{"data.cv_folds": 3, "train.max_steps": 1, "checkpoint.enabled": False}
    )
    result = rt.cross_validate(config)
    assert result.summary["test_count"] == 26
    assert len(result.folds) == 3
    assert (tmp_path / "cv" / "cv_summary.json").is_file()


def test_worm_sample_smoke(tmp_path):
    try:
        load_worm_sample()
    except DatasetNotFoundError:
        pytest.skip("worm sample absent (expected at ../shared/data/worm-sample/worm_sample.npz)")
    config = tiny(
        tmp_path / "worm",
        **{
            "data": {"source": "worm_sample", "split": "stratified", "max_len": 64},
            "train.max_steps": 2,
        },
    )
    result = train(config)
    data = result.summary["data"]
    assert data["sizes"] == {"train": 31, "val": 6, "test": 6}
    assert data["seq_len"] == 64 and data["classes"][0] == "N2"
    assert result.summary["test"]["count"] == 6


def test_compilation_cache_points_jax_at_the_directory_or_stays_off(tmp_path):
    """The CLI's default: JAX's persistent cache in the chosen directory, storing every
    program; "off" leaves JAX's settings alone."""
    from rnnscan.train import use_compilation_cache

    before = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    try:
        path = use_compilation_cache(tmp_path / "cache")
        assert path == tmp_path / "cache" and path.is_dir()
        assert jax.config.jax_compilation_cache_dir == str(path)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        jax.config.update("jax_compilation_cache_dir", before[0])
        assert use_compilation_cache("off") is None
        assert jax.config.jax_compilation_cache_dir == before[0]
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
