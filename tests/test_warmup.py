"""The warm-up (Lambrechts et al., 2023): VAA and VAA* against NumPy references, the warm-up
raising the multistability of a small BRC and GRU, errors, and the train.warmup switch."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnnscan.nn as rn
from rnnscan.nn._bistable import BRCCell
from rnnscan.train import train
from rnnscan.train._config import ConfigError, TrainConfig
from rnnscan.train._warmup import (
    attractor_stats,
    count_attractors,
    recurrent_cells,
    soft_vaa,
    vaa,
    warmup,
)

EPS = 1e-3


def _np_vaa(h, eps):
    d = np.linalg.norm(h[:, None] - h[None], axis=-1)
    return np.mean([1.0 / np.sum(d[i] < eps) for i in range(len(h))])


def _np_soft_vaa(h, eps, delta=1e-6):
    t = np.tanh(h)
    total = 0.0
    for i in range(len(h)):
        d = np.linalg.norm(t - t[i], axis=-1)
        c = 1.0 - np.maximum(d - eps, 0.0) / (d + delta)
        total += 1.0 / c.sum()
    return total / len(h)


def _point_sets():
    rng = np.random.default_rng(0)
    B, n = 8, 3
    same = np.tile(rng.standard_normal(n), (B, 1))
    distinct = rng.standard_normal((B, n))
    # Two attractors reached by 6 and 2 sequences (with sub-tolerance jitter).
    a, b = rng.standard_normal(n), rng.standard_normal(n)
    mixed = np.stack([a] * 6 + [b] * 2) + 1e-5 * rng.standard_normal((B, n))
    return {"same": same, "distinct": distinct, "mixed": mixed}


@pytest.mark.parametrize("name", ["same", "distinct", "mixed"])
def test_vaa_matches_numpy_reference(name):
    h = _point_sets()[name]
    got = float(vaa(jnp.asarray(h), EPS))
    np.testing.assert_allclose(got, _np_vaa(h, EPS), rtol=1e-12)
    np.testing.assert_allclose(
        float(soft_vaa(jnp.asarray(h), EPS)), _np_soft_vaa(h, EPS), rtol=1e-10
    )
    expected_vaa, expected_count = {
        "same": (1 / 8, 1),  # the minimum, 1/B
        "distinct": (1.0, 8),  # the maximum
        "mixed": ((6 * (1 / 6) + 2 * (1 / 2)) / 8, 2),
    }[name]
    np.testing.assert_allclose(got, expected_vaa, rtol=1e-12)
    assert count_attractors(h, EPS) == expected_count


def test_soft_vaa_bounds_and_finite_gradient():
    sets = _point_sets()
    np.testing.assert_allclose(float(soft_vaa(jnp.asarray(sets["same"]), EPS)), 1 / 8)
    assert float(soft_vaa(jnp.asarray(sets["distinct"]), EPS)) > 0.95
    # Coinciding states (distance exactly 0) must not poison the gradient.
    grad = jax.jit(jax.grad(lambda h: soft_vaa(h, EPS)))(jnp.asarray(sets["same"][:4] * 0.1))
    assert np.all(np.isfinite(np.asarray(grad)))


MEASURE = dict(batch_size=16, drive_steps=20, settle_steps=40, epsilon=1e-3, seed=7)
OPTIONS = dict(
    batch_size=16,
    drive_steps=20,
    settle_steps=40,
    settle_increment=2,
    epsilon=1e-3,
    target=1.0,
    progress=False,
)


@pytest.mark.parametrize("cls, lr", [(rn.GRUCell, 5e-2), (BRCCell, 5e-2)])
def test_warmup_increases_vaa(cls, lr):
    """From a monostable start (the GRU at initialisation; a BRC with b_a = -3, so a < 1)."""
    cell = cls(2, 4, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    if cls is BRCCell:
        cell.bias[...] = jnp.asarray([-3.0] * 4 + [0.0] * 4, jnp.float32)
    before = attractor_stats(cell, **MEASURE)[0]
    params_before = jax.tree_util.tree_map(np.asarray, nnx.state(cell, nnx.Param))
    result = warmup(cell, steps=60, lr=lr, seed=1, **OPTIONS)
    after = attractor_stats(cell, **MEASURE)[0]
    assert result.history.shape == (60, 1) and result.loss.shape == (60,)
    assert np.all(np.isfinite(result.history))
    assert after["vaa_star"] > before["vaa_star"] + 0.2, (before, after)
    assert after["attractors"] > before["attractors"]
    changed = jax.tree_util.tree_map(
        lambda a, b: not np.allclose(a, np.asarray(b)), params_before, nnx.state(cell, nnx.Param)
    )
    assert any(jax.tree_util.tree_leaves(changed))


def test_warmup_of_a_stack_changes_only_recurrent_layers():
    model = rn.SequenceClassifier(2, 3, hidden_features=4, num_blocks=2, rngs=nnx.Rngs(0))
    cells = recurrent_cells(model)
    assert len(cells) == 2 and all(isinstance(c, rn.GRUCell) for c in cells)
    cell = BRCCell(2, 3, rngs=nnx.Rngs(0))
    assert recurrent_cells(cell) == [cell]
    encoder = np.asarray(model.encoder.hidden.kernel[...])
    kernel = np.asarray(model.blocks[0].rnn.cell.recurrent_kernel[...])
    result = warmup(model, steps=3, seed=0, **OPTIONS)
    assert result.history.shape == (3, 2)
    np.testing.assert_array_equal(np.asarray(model.encoder.hidden.kernel[...]), encoder)
    assert not np.allclose(np.asarray(model.blocks[0].rnn.cell.recurrent_kernel[...]), kernel)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 1}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"epsilon": 0.0}, "epsilon"),
        ({"target": 1.5}, "target"),
        ({"settle_input": "noise"}, "settle_input"),
        ({"method": "bogus"}, "method"),
        ({"drive_steps": 0}, "drive_steps"),
    ],
)
def test_warmup_errors(kwargs, name):
    cell = BRCCell(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=name) as info:
        warmup(cell, **{"steps": 1, "progress": False, **kwargs})
    assert repr(list(kwargs.values())[0]) in str(info.value)


def test_model_without_cells_and_bad_states():
    with pytest.raises(ValueError, match="model"):
        warmup(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), steps=1, progress=False)
    with pytest.raises(ValueError, match="states"):
        vaa(jnp.zeros((1, 3)))


# ---------------------------------------------------------------------------------------------
# The train.warmup switch.


def _tiny(out_dir, **train_section):
    return TrainConfig.from_dict(
        {
            "name": "tiny-warmup",
            "out_dir": str(out_dir),
            "data": {
                "source": "synthetic",
                "synthetic": {
                    "num_series": 26,
                    "seq_len": 16,
                    "num_channels": 6,
                    "num_classes": 5,
                    "marker_len": 4,
                },
            },
            "model": {"cell": "gru", "hidden_features": 4, "num_blocks": 1, "method": "sequential"},
            "optim": {"lr": 1e-2},
            "train": {
                "batch_size": 4,
                "eval_batch_size": 4,
                "epochs": 1,
                "max_steps": 2,
                "progress": False,
                **train_section,
            },
            "checkpoint": {"enabled": False},
        }
    )


def test_train_with_warmup(tmp_path):
    options = {"steps": 2, "batch_size": 4, "drive_steps": 8, "settle_steps": 8}
    result = train(_tiny(tmp_path / "run", warmup=options))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    warm = [r for r in records if r["kind"] == "warmup"]
    assert len(warm) == 1 and warm[0]["steps"] == 2 and len(warm[0]["vaa_star_last"]) == 1
    assert result.summary["steps"] == 2


@pytest.mark.parametrize(
    "warmup_section, key",
    [
        ({"stepz": 3}, "train.warmup.stepz"),
        ({"lr": 0.1}, "train.warmup.steps"),
        ({"steps": 2, "settle_input": "noise"}, "train.warmup.settle_input"),
    ],
)
def test_bad_warmup_config_is_rejected(tmp_path, warmup_section, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _tiny(tmp_path, warmup=warmup_section)
    assert _tiny(tmp_path).train.warmup == {}  # off by default
