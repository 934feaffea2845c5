"""Low-rank recurrent kernels of GRUCell and LSTMCell (W_h = U Vᵀ, Lu et al. 2016).

The parallel solvers against ``lax.scan``, gradients, declared Jacobian structure and the
classifier are covered by the shared cell matrix (``gru_rank2`` / ``lstm_rank2`` in
``_cells_helpers.CELLS``); here the equations against the full cells, counts, errors,
initialisation and the training-config path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cells_helpers import count_params, normal, random_like, randomize_params, tree_allclose
from flax import nnx

import rnnscan.nn as rn
from rnnscan.train import load_config
from rnnscan.train._steps import build_model

D, N = 3, 6
GATES = {rn.GRUCell: 3, rn.LSTMCell: 4}
CLASSES = pytest.mark.parametrize("cls", [rn.GRUCell, rn.LSTMCell], ids=["gru", "lstm"])


@CLASSES
@pytest.mark.parametrize("rank", [1, 2, N])
def test_low_rank_cell_is_the_full_cell_with_the_product_kernel(cls, rank):
    """Every output and carry equals the full-rank cell's whose recurrent kernel is the
    product of the factors (formed in NumPy) and whose other parameters are the same."""
    low = cls(D, N, rank=rank, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    randomize_params(low, 1)
    full = cls(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(5))
    low_params = nnx.to_pure_dict(nnx.state(low, nnx.Param))
    U, V = np.asarray(low_params.pop("recurrent_u")), np.asarray(low_params.pop("recurrent_v"))
    full_params = {**low_params, "recurrent_kernel": jnp.asarray(U @ V.T)}
    assert set(full_params) == set(nnx.to_pure_dict(nnx.state(full, nnx.Param)))
    nnx.update(full, full_params)

    carry = random_like(2, low.initialize_carry((4, D)))
    xs = normal(3, (7, 4, D))

    def run(cell):
        return jax.lax.scan(lambda c, x: cell(c, x), carry, xs)

    tree_allclose(run(low), run(full), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(low.recurrent_matrix()), U @ V.T, rtol=0, atol=0)


@CLASSES
def test_full_rank_default_is_unchanged(cls):
    """``rank=None`` keeps the parameter names and shapes of the full cells (checkpoints)."""
    cell = cls(D, N, rngs=nnx.Rngs(0))
    assert cell.rank is None
    shapes = {k: v.shape for k, v in nnx.to_pure_dict(nnx.state(cell, nnx.Param)).items()}
    g = GATES[cls]
    assert shapes["recurrent_kernel"] == (N, g * N)
    assert "recurrent_u" not in shapes and "recurrent_v" not in shapes
    np.testing.assert_array_equal(cell.recurrent_matrix(), cell.recurrent_kernel[...])


@CLASSES
@pytest.mark.parametrize("n, d, r", [(6, 3, 1), (6, 3, 4), (16, 2, 4), (5, 5, 5)])
def test_parameter_counts(cls, n, d, r):
    """n r + g n r recurrent parameters in place of g n² (the rest unchanged)."""
    g = GATES[cls]
    full = nnx.eval_shape(lambda: cls(d, n, rngs=nnx.Rngs(0)))
    low = nnx.eval_shape(lambda: cls(d, n, rank=r, rngs=nnx.Rngs(0)))
    assert count_params(full) - count_params(low) == g * n**2 - (n * r + g * n * r)
    shapes = {k: v.shape for k, v in nnx.to_pure_dict(nnx.state(low, nnx.Param)).items()}
    assert shapes["recurrent_u"] == (n, r) and shapes["recurrent_v"] == (g * n, r)
    assert "recurrent_kernel" not in shapes


@CLASSES
@pytest.mark.parametrize("rank", [0, -1, N + 1, 2.0, True, "2"])
def test_bad_rank_raises(cls, rank):
    with pytest.raises(ValueError, match=r"rank must be None .* 1 <= rank <= hidden_features"):
        cls(D, N, rank=rank, rngs=nnx.Rngs(0))


@CLASSES
@pytest.mark.parametrize("rank", [2, N])
def test_each_gate_block_starts_as_a_partial_isometry(cls, rank):
    """Orthogonal factors: each gate's block U V_kᵀ has r singular values 1, the rest 0
    (at r = n it is orthogonal, as the full cells' blocks)."""
    cell = cls(D, N, rank=rank, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    W = np.asarray(cell.recurrent_matrix())
    for k in range(GATES[cls]):
        singular_values = np.linalg.svd(W[:, k * N : (k + 1) * N], compute_uv=False)
        expected = np.r_[np.ones(rank), np.zeros(N - rank)]
        np.testing.assert_allclose(singular_values, expected, atol=1e-12)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_rank_from_a_training_config(cell):
    """``model.cell_kwargs`` carries ``rank`` from a YAML override to every block's cell."""
    config = load_config(
        None,
        [f"model.cell={cell}", "model.hidden_features=8", "model.cell_kwargs={rank: 3}"],
    )
    assert config.model.cell_kwargs == {"rank": 3}
    model = nnx.eval_shape(lambda: build_model(config.model, 2, 3, seed=0))
    cells = [block.rnn.cell for block in model.blocks]
    assert len(cells) == config.model.num_blocks
    for c in cells:
        assert c.rank == 3 and c.recurrent_u.shape == (8, 3)
        assert not hasattr(c, "recurrent_kernel")

    too_large = load_config(
        None, [f"model.cell={cell}", "model.hidden_features=8", "model.cell_kwargs={rank: 9}"]
    )
    with pytest.raises(ValueError, match="rank"):
        build_model(too_large.model, 2, 3, seed=0)
