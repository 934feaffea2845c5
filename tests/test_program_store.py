"""The store of traced training steps (rnnscan/train/_program_store.py): a program kept on
disk gives what ``jax.jit`` gives, is reused without tracing by a fresh object or a second
process, and is never served to a different program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tree_allclose

from rnnscan.train import TrainConfig
from rnnscan.train import _program_store as store

pytest.importorskip("flatbuffers", reason="jax.export's serialisation needs flatbuffers")


@pytest.fixture
def directory(tmp_path):
    store.set_program_directory(tmp_path / "programs")
    yield tmp_path / "programs"
    store.set_program_directory(None)


def counted(traces: list):
    """A step on a pytree state with a keyword argument; appends to ``traces`` when traced."""

    def step(state, x, scale=None):
        traces.append(1)
        h = jnp.tanh(state["w"] @ x + state["b"])
        if scale is not None:
            h = h * scale
        return {"w": state["w"] + jnp.outer(h, x), "b": state["b"] - h}, {"h": h, "n": h.sum()}

    return step


def arguments(n=3, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    state = {"w": jax.random.normal(k1, (n, n)), "b": jax.random.normal(k2, (n,))}
    return state, jax.random.normal(k3, (n,))


def test_a_stored_program_is_reused_without_tracing(directory):
    state, x = arguments()
    expected = jax.jit(counted([]))(state, x, scale=2.0)
    traces = []
    first = store.StoredProgram(counted(traces), "step", "identity")
    tree_allclose(first(state, x, scale=2.0), expected, rtol=1e-13, atol=1e-14)
    assert len(traces) == 1 and len(list(directory.iterdir())) == 1
    tree_allclose(first(state, x, scale=2.0), expected, rtol=1e-13, atol=1e-14)
    assert len(traces) == 1

    later = []  # as another process would: a new object, nothing in memory
    second = store.StoredProgram(counted(later), "step", "identity")
    tree_allclose(second(state, x, scale=2.0), expected, rtol=1e-13, atol=1e-14)
    assert later == [] and list(second.loaded.values()) == [True]


def test_another_program_is_never_served_from_the_store(directory):
    state, x = arguments()
    traces = []
    store.StoredProgram(counted(traces), "step", "one")(state, x)
    # Another identity, another shape, another keyword, another dtype: each traced anew.
    store.StoredProgram(counted(traces), "step", "two")(state, x)
    wider = arguments(n=4)
    out = store.StoredProgram(counted(traces), "step", "one")(*wider)
    tree_allclose(out, jax.jit(counted([]))(*wider), rtol=1e-13, atol=1e-14)
    store.StoredProgram(counted(traces), "step", "one")(state, x, scale=3.0)
    as_f32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), (state, x))
    store.StoredProgram(counted(traces), "step", "one")(*as_f32)
    assert len(traces) == 5 and len(list(directory.iterdir())) == 5


def test_a_damaged_file_is_traced_again_with_a_warning(directory):
    state, x = arguments()
    store.StoredProgram(counted([]), "step", "identity")(state, x)
    (path,) = directory.iterdir()
    path.write_bytes(b"not a program")
    traces = []
    with pytest.warns(UserWarning, match="could not be read"):
        out = store.StoredProgram(counted(traces), "step", "identity")(state, x)
    assert len(traces) == 1
    tree_allclose(out, jax.jit(counted([]))(state, x), rtol=1e-13, atol=1e-14)


def test_without_a_directory_it_is_jax_jit(tmp_path):
    assert store.program_directory() is None
    state, x = arguments()
    traces = []
    step = store.StoredProgram(counted(traces), "step", "identity")
    step(state, x)
    step(state, x)
    assert len(traces) == 1 and not list(tmp_path.iterdir())


def test_addresses_do_not_enter_the_identity():
    assert store.stable_repr([jnp.tanh]) == store.stable_repr([jnp.tanh])
    assert " at 0x" in repr(jnp.tanh) and " at 0x" not in store.stable_repr(jnp.tanh)


def test_a_second_training_process_loads_the_steps(tmp_path):
    """Two real runs of the same configuration: the second reads the stored train and eval
    steps (the files are not written again) and trains exactly as the first."""
    config = TrainConfig.from_dict(
        {
            "name": "stored",
            "data": {
                "source": "synthetic",
                "synthetic": {"num_series": 12, "seq_len": 32, "num_channels": 3},
            },
            "model": {"cell": "gru", "hidden_features": 4, "num_blocks": 1},
            "train": {"batch_size": 4, "eval_batch_size": 4, "max_steps": 2, "progress": False},
            "checkpoint": {"enabled": False},
        }
    )
    config_path = tmp_path / "stored.yaml"
    config_path.write_text(config.to_yaml())
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}

    def run(name: str) -> list[dict]:
        out = tmp_path / name
        command = [sys.executable, "-m", "rnnscan.train", "--config", str(config_path)]
        command += ["--compilation-cache", str(cache), "--out-dir", str(out)]
        subprocess.run(command, env=env, check=True, capture_output=True)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if "loss" in r]

    first = run("first")
    programs = {p.name: p.stat().st_mtime_ns for p in (cache / "programs").iterdir()}
    assert sorted(name.split("-")[0] for name in programs) == ["eval_step", "train_step"]
    second = run("second")
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "programs").iterdir()} == programs
    np.testing.assert_array_equal(first, second)
    assert len(first) >= 3  # two steps, the validation and the test evaluations


def test_the_store_follows_the_compilation_cache(tmp_path):
    from rnnscan.train import use_compilation_cache

    before = jax.config.jax_compilation_cache_dir
    try:
        use_compilation_cache(tmp_path / "cache")
        assert store.program_directory() == Path(tmp_path / "cache" / "programs")
        assert use_compilation_cache("off") is None and store.program_directory() is None
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        store.set_program_directory(None)


def test_a_model_class_from_outside_enters_the_key_by_its_source(directory):
    """A user's own cell (here: a class of this test module) keys the program by its module's
    source; a class whose source cannot be read turns the store off for that program."""

    class Node:
        def __init__(self, node_type):
            self.type = node_type

    class Graph:
        def __init__(self, *types):
            self.nodes = [Node(t) for t in types]

    own = Graph(type(store.StoredProgram), dict)  # rnnscan's and builtins' classes: no source
    assert store._outside_sources(own) == ""
    assert "def test_a_model_class_from_outside" in store._outside_sources(Graph(Node))
    sourceless = type("Cell", (), {"__module__": "a_module_that_is_not_loaded"})
    assert store._outside_sources(Graph(sourceless)) is None
    state, x = arguments()
    traces = []
    step = store.StoredProgram(counted(traces), "step", "identity", Graph(sourceless))
    step(state, x)
    assert len(traces) == 1 and not directory.exists()
