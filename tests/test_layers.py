"""rnnscan.nn layers: RNN and Bidirectional against flax.nnx's, padded batches against the
unpadded sequences, gradients against sequential evaluation, and SequenceClassifier."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cells_helpers import (
    CELL_NAMES,
    CELLS,
    OPTION_VARIANTS,
    TOLERANCES,
    make_cell,
    normal,
    random_like,
    randomize_params,
    tree_allclose,
)
from flax import nnx

import rnnscan
import rnnscan.nn as rn

D, N, T = 3, 4, 24
F64 = TOLERANCES[jnp.float64]

FLAX_CELLS = {
    "nnx.GRUCell": nnx.GRUCell,
    "nnx.LSTMCell": nnx.LSTMCell,
    "nnx.OptimizedLSTMCell": nnx.OptimizedLSTMCell,
    "nnx.SimpleCell": nnx.SimpleCell,
}


def _apply(layer, xs, **kwargs):
    """``layer(xs, **kwargs)`` under ``nnx.jit`` (one compilation instead of one per op)."""
    return nnx.jit(lambda layer, xs: layer(xs, **kwargs))(layer, xs)


def _loss(outputs):
    return jnp.sum(jnp.sin(outputs))


def _run_with_grads(layer, xs, outputs_of=lambda out: out, **kwargs):
    """``layer(xs, **kwargs)`` and the gradient of a loss of its outputs w.r.t. the cell's
    parameters, in one compilation."""

    def loss(layer):
        out = layer(xs, **kwargs)
        return _loss(outputs_of(out)), out

    (_, out), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(layer)
    return out, nnx.to_pure_dict(grads["cell"])


def _sequence(tree, b):
    return jax.tree_util.tree_map(lambda leaf: leaf[b], tree)


def _valid(seq_lengths, length):
    return (np.arange(length) < np.asarray(seq_lengths)[:, None])[..., None]


# ---------------------------------------------------------------------------------------------
# RNN against flax.nnx.RNN.


@pytest.mark.parametrize("name", sorted(FLAX_CELLS))
def test_flax_cells_plug_in(name):
    """flax's own cells (no declared structure: dense, nonlinear) give flax.nnx.RNN's values and
    gradients."""
    cell = FLAX_CELLS[name](D, N, dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    randomize_params(cell, 1)
    xs = normal(2, (3, T, D))
    assert rn.resolve_method("newton", cell) == rnnscan.Newton(jacobian=rnnscan.Dense())

    ((carry, outputs), stats), grads = _run_with_grads(
        rn.RNN(cell, return_carry=True, on_failure="return"),
        xs,
        outputs_of=lambda out: out[0][1],
        return_stats=True,
    )
    (ref_carry, ref_outputs), ref_grads = _run_with_grads(
        nnx.RNN(cell, return_carry=True), xs, outputs_of=lambda out: out[1]
    )
    assert bool(jnp.all(stats.converged))
    tree_allclose(outputs, ref_outputs, **F64)
    tree_allclose(carry, ref_carry, **F64)
    tree_allclose(grads, ref_grads, **F64)


@pytest.mark.parametrize("keep_order", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_flags_and_padding_match_flax(reverse, keep_order):
    """reverse / keep_order / seq_lengths as in flax.nnx.RNN: same outputs on valid steps, same
    final carry. (flax runs the cell on the padding; rnnscan outputs zeros there.)"""
    cell = rn.LSTMCell(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    xs = normal(1, (4, T, D))
    seq_lengths = jnp.array([T, 5, 17, 1])
    flags = dict(return_carry=True, reverse=reverse, keep_order=keep_order)
    carry, outputs = _apply(rn.RNN(cell, **flags), xs, seq_lengths=seq_lengths)
    ref_carry, ref_outputs = _apply(nnx.RNN(cell, **flags), xs, seq_lengths=seq_lengths)

    valid = _valid(seq_lengths, T)
    tree_allclose(np.where(valid, outputs, 0), np.where(valid, ref_outputs, 0), **F64)
    np.testing.assert_array_equal(np.where(valid, 0, outputs), 0)
    tree_allclose(carry, ref_carry, **F64)


@pytest.mark.parametrize("time_major", [False, True])
def test_batch_layouts_match_flax(time_major):
    """time-major inputs, several batch axes and unbatched sequences."""
    cell = rn.GRUCell(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    xs = normal(1, (2, 3, T, D))  # (batch, batch, time, features)
    if time_major:
        xs = jnp.moveaxis(xs, 2, 0)
    for inputs in (xs, xs[:, 0] if time_major else xs[0, 0]):
        outputs = _apply(rn.RNN(cell, time_major=time_major), inputs)
        tree_allclose(outputs, _apply(nnx.RNN(cell, time_major=time_major), inputs), **F64)


def test_initial_carry_and_rngs():
    cell = rn.LSTMCell(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    xs = normal(1, (2, T, D))
    init = random_like(2, cell.initialize_carry((2, D)))
    flags = dict(initial_carry=init, return_carry=True)
    tree_allclose(
        _apply(rn.RNN(cell, rngs=False), xs, **flags), _apply(nnx.RNN(cell), xs, **flags), **F64
    )


# ---------------------------------------------------------------------------------------------
# Padded batches against the unpadded sequences.


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", ["gru", "diag_lstm", "lru", "min_gru"])
def test_padded_batch_matches_unpadded_sequences(name, reverse):
    """Each sequence of a padded batch against flax.nnx.RNN on that sequence alone."""
    cell = make_cell(name, D, N, jnp.float64)
    xs = normal(1, (4, T, cell.in_features))
    seq_lengths = [T, 7, 1, 0]
    init = random_like(2, cell.initialize_carry((4, cell.in_features)))
    flags = dict(return_carry=True, reverse=reverse, keep_order=True)
    (carry, outputs), stats = _apply(
        rn.RNN(cell, on_failure="return", **flags),
        xs,
        initial_carry=init,
        seq_lengths=jnp.array(seq_lengths),
        return_stats=True,
    )
    assert bool(jnp.all(stats.converged))

    for b, length in enumerate(seq_lengths):
        init_b = _sequence(init, b)
        if length == 0:
            expected_carry, expected = init_b, np.zeros((0,) + outputs.shape[2:])
        else:
            expected_carry, expected = _apply(
                nnx.RNN(cell, **flags), xs[b, :length], initial_carry=init_b
            )
        tree_allclose(outputs[b, :length], expected, **F64)
        np.testing.assert_array_equal(outputs[b, length:], 0)
        tree_allclose(_sequence(carry, b), expected_carry, **F64)


# ---------------------------------------------------------------------------------------------
# Gradients w.r.t. the cell's parameters against the sequential method.


@pytest.mark.parametrize(
    "name, padded, reverse",
    [
        ("gru", False, False),
        ("gru", True, True),
        ("diag_lstm", True, False),
        ("lru", True, False),
        ("cp_rnn", False, True),
    ],
)
def test_parameter_gradients_match_sequential(name, padded, reverse):
    cell = make_cell(name, D, N, jnp.float64)
    randomize_params(cell, 1)
    xs = normal(2, (3, T, cell.in_features))
    kwargs = dict(seq_lengths=jnp.array([T, 9, 2])) if padded else {}
    flags = dict(reverse=reverse, on_failure="return")
    _, parallel = _run_with_grads(rn.RNN(cell, **flags), xs, **kwargs)
    _, sequential = _run_with_grads(rn.RNN(cell, method="sequential", **flags), xs, **kwargs)
    tree_allclose(parallel, sequential, **F64)


def test_parameter_gradients_float32():
    cell = rn.GRUCell(D, 8, rngs=nnx.Rngs(0))
    xs = normal(1, (2, 48, D), np.float32)
    outputs, grads = _run_with_grads(rn.RNN(cell), xs)
    ref_outputs, ref_grads = _run_with_grads(nnx.RNN(cell), xs)
    tree_allclose(outputs, ref_outputs, **TOLERANCES[jnp.float32])
    tree_allclose(grads, ref_grads, **TOLERANCES[jnp.float32])


# ---------------------------------------------------------------------------------------------
# Methods and statistics.


def test_method_resolution():
    gru, min_gru = rn.GRUCell(2, 3, rngs=nnx.Rngs(0)), rn.MinGRUCell(2, 3, rngs=nnx.Rngs(0))
    lru = rn.LRUCell(2, 3, rngs=nnx.Rngs(0))
    assert rn.resolve_method("newton", gru) == rnnscan.Newton(jacobian=rnnscan.Dense())
    assert rn.resolve_method("newton", min_gru) == rnnscan.Newton(
        jacobian=rnnscan.Diagonal(), carry_linear=True
    )
    assert rn.resolve_method("quasi_newton", lru) == rnnscan.QuasiNewton(
        jacobian=rnnscan.BlockDiagonal(2)
    )
    assert rn.resolve_method("fixed_point", min_gru) == rnnscan.FixedPoint(
        jacobian=rnnscan.Diagonal()
    )
    assert rn.resolve_method("sequential", gru) == rnnscan.Sequential()
    custom = rnnscan.Newton(rtol=1e-3, max_steps=7)
    assert rn.resolve_method(custom, min_gru) is custom
    with pytest.raises(ValueError, match="method"):
        rn.RNN(gru, method="jacobi")


@pytest.mark.parametrize("method", ["quasi_newton", "fixed_point"])
def test_other_methods(method):
    cell = rn.DiagGRUCell(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    xs = normal(1, (2, T, D))
    outputs, stats = _apply(rn.RNN(cell, method=method, on_failure="return"), xs, return_stats=True)
    tree_allclose(outputs, _apply(nnx.RNN(cell), xs), **F64)
    assert bool(jnp.all(stats.converged))


def test_stats_shapes_and_sow():
    cell = rn.GRUCell(D, N, rngs=nnx.Rngs(0))
    layer = rn.RNN(cell, sow_stats=True)
    xs = normal(1, (2, 3, T, D), np.float32)

    @nnx.jit
    def forward(layer, xs):
        return nnx.capture(layer, nnx.Intermediate)(xs, return_stats=True)

    (_, stats), intermediates = forward(layer, xs)
    for field in (stats.iterations, stats.residual, stats.result, stats.fell_back):
        assert field.shape == (2, 3)
    assert bool(jnp.all(stats.ok)) and bool(jnp.all(stats.iterations >= 1))
    (sown,) = intermediates["solver_stats"]
    tree_allclose(sown, stats, rtol=0, atol=0)


def test_diagnostics_give_each_sequence_its_exponent():
    """RNN(diagnostics=True) on a padded batch: each sequence's Lyapunov estimate is that of
    rnnscan.solve on the sequence alone (its valid steps only), whichever method runs."""
    cell = make_cell("diag_lstm", D, N, jnp.float64)  # block-diagonal: the declared structure
    xs = normal(3, (3, T, cell.in_features))
    seq_lengths = [T, 7, 1]
    init = random_like(4, cell.initialize_carry((3, cell.in_features)))
    for method in ("newton", "sequential"):
        _, stats = _apply(
            rn.RNN(cell, method=method),
            xs,
            initial_carry=init,
            seq_lengths=jnp.array(seq_lengths),
            return_stats=True,
            diagnostics=True,
        )
        assert stats.lyapunov.shape == (3,)
        for b, length in enumerate(seq_lengths):
            alone = jax.jit(
                lambda init, xs: (
                    rnnscan.solve(cell, init, xs, method="sequential", diagnostics=True).lyapunov
                )
            )(_sequence(init, b), xs[b, :length])
            np.testing.assert_allclose(stats.lyapunov[b], alone, rtol=1e-9)
    assert _apply(rn.RNN(cell), xs, return_stats=True)[1].lyapunov is None


@pytest.mark.parametrize("time_major", [False, True])
def test_carries_warm_start_the_next_call(time_major):
    """return_carries gives every carry (batch-major, aligned with the inputs, as
    jax.lax.scan collects them); passed back as guess to a cell with slightly different
    weights they give the same outputs as a cold start in fewer iterations."""
    cell = make_cell("gru", D, N, jnp.float64)
    xs = normal(5, (3, T, D))
    inputs = jnp.swapaxes(xs, 0, 1) if time_major else xs
    layer = rn.RNN(cell, time_major=time_major)
    out, stats = _apply(layer, inputs, return_stats=True, return_carries=True)
    init = cell.initialize_carry((3, D))
    expected = jax.vmap(lambda c, x: jax.lax.scan(lambda c, x: (cell(c, x)[0],) * 2, c, x)[1])(
        init, xs
    )
    assert stats.carries.shape == (3, T, N)
    tree_allclose(stats.carries, expected, **F64)
    randomize_params(cell, 6, scale=0.01)  # small steps, as between two evaluations
    cold_out, cold = _apply(layer, inputs, return_stats=True)
    warm_out, warm = _apply(layer, inputs, return_stats=True, guess=stats.carries)
    tree_allclose(warm_out, cold_out, **F64)
    assert bool(jnp.all(warm.converged))
    assert bool(jnp.all(warm.iterations < cold.iterations)), (warm.iterations, cold.iterations)
    with pytest.raises(ValueError, match=r"guess has shape \(2, 24, 4\).*batch \(3,\)"):
        layer(inputs, guess=stats.carries[:2])


def test_unconverged_solve_falls_back_or_reports():
    cell = rn.GRUCell(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    xs = normal(1, (2, T, D))
    one_step = rnnscan.Newton(max_steps=1)
    expected = _apply(nnx.RNN(cell), xs)

    outputs, stats = _apply(rn.RNN(cell, method=one_step), xs, return_stats=True)
    tree_allclose(outputs, expected, **F64)
    assert not bool(jnp.any(stats.converged)) and bool(jnp.all(stats.fell_back & stats.ok))

    _, stats = _apply(rn.RNN(cell, method=one_step, on_failure="return"), xs, return_stats=True)
    assert not bool(jnp.any(stats.ok))


# ---------------------------------------------------------------------------------------------
# Bidirectional.


def test_bidirectional_matches_flax():
    forward = rn.GRUCell(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    backward = rn.LSTMCell(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    xs = normal(2, (3, T, D))
    seq_lengths = jnp.array([T, 11, 3])
    layer = rn.Bidirectional(rn.RNN(forward), rn.RNN(backward), return_carry=True)
    reference = nnx.Bidirectional(nnx.RNN(forward), nnx.RNN(backward), return_carry=True)

    (carries, outputs), (forward_stats, backward_stats) = _apply(
        layer, xs, seq_lengths=seq_lengths, return_stats=True
    )
    ref_carries, ref_outputs = _apply(reference, xs, seq_lengths=seq_lengths)
    assert outputs.shape == (3, T, 2 * N)
    valid = _valid(seq_lengths, T)
    tree_allclose(np.where(valid, outputs, 0), np.where(valid, ref_outputs, 0), **F64)
    tree_allclose(carries, ref_carries, **F64)
    assert bool(jnp.all(forward_stats.converged & backward_stats.converged))


# ---------------------------------------------------------------------------------------------
# SequenceClassifier.


def _classifier(cell, method, **kwargs):
    options = dict(
        hidden_features=6,
        num_blocks=1,
        on_failure="return",
        param_dtype=jnp.float64,
        rngs=nnx.Rngs(0),
    )
    return rn.SequenceClassifier(D, 3, cell=cell, method=method, **{**options, **kwargs})


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_classifier_builds_every_cell(cell):
    """Shapes only (no compilation): every named cell fits the architecture (with its
    options as ``cell_kwargs`` for the option variants)."""
    options = {"cell_kwargs": CELLS[cell][1]} if cell in OPTION_VARIANTS else {}
    name = OPTION_VARIANTS.get(cell, cell)
    model = nnx.eval_shape(lambda: _classifier(name, "newton", num_blocks=2, **options))
    logits, stats = nnx.eval_shape(
        lambda model, xs: model(xs, return_stats=True),
        model,
        jax.ShapeDtypeStruct((2, 16, D), jnp.float64),
    )
    assert logits.shape == (2, 3) and len(stats) == 2 and stats[0].iterations.shape == (2,)


@pytest.mark.parametrize("cell", ["gru", "diag_lstm", "lru", "cp_rnn"])
def test_classifier_parallel_matches_sequential(cell):
    """The same parameters (same seed) evaluated in parallel and sequentially."""
    xs = normal(1, (2, 16, D))
    logits, stats = _apply(_classifier(cell, "newton"), xs, return_stats=True)
    expected = _apply(_classifier(cell, "sequential"), xs)
    assert logits.shape == (2, 3)
    tree_allclose(logits, expected, **F64)
    assert len(stats) == 1 and bool(jnp.all(stats[0].converged))


def test_classifier_gradients_match_sequential():
    xs, labels = normal(1, (2, 16, D)), jnp.array([0, 2])

    def grads(model):
        def loss(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(xs), labels).mean()

        return nnx.to_pure_dict(nnx.jit(nnx.grad(loss))(model))

    tree_allclose(
        grads(_classifier("gru", "newton")), grads(_classifier("gru", "sequential")), **F64
    )


def test_classifier_padded_batch_matches_unpadded_sequences():
    """Padded batch (parallel) against each sequence alone (sequential, same parameters)."""
    xs = normal(1, (3, 16, D))
    seq_lengths = [16, 9, 4]
    logits = _apply(_classifier("lstm", "newton"), xs, seq_lengths=jnp.array(seq_lengths))
    reference = _classifier("lstm", "sequential")
    for b, length in enumerate(seq_lengths):
        tree_allclose(logits[b], _apply(reference, xs[b : b + 1, :length])[0], **F64)


def test_classifier_options():
    factory = functools.partial(rn.CPRNNCell, rank=2, param_dtype=jnp.float64)
    model = _classifier(factory, "newton", num_blocks=1)
    assert model.blocks[0].rnn.cell.rank == 2
    model = _classifier("cp_rnn", "newton", num_blocks=1, cell_kwargs={"rank": 5})
    assert model.blocks[0].rnn.cell.rank == 5
    with pytest.raises(ValueError, match="unknown cell"):
        _classifier("transformer", "newton")


def test_classifier_training_step_lowers_the_loss():
    """A jitted optax (Adam) training step of the default GRU classifier, float32."""
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((16, 32, D)).astype(np.float32)
    labels = (xs[:, :, 0].mean(axis=1) > 0).astype(np.int32)  # a learnable rule
    model = rn.SequenceClassifier(D, 2, hidden_features=8, num_blocks=2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, xs, labels):
        def loss_fn(model):
            logits, stats = model(xs, return_stats=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, stats

        (loss, stats), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, stats

    losses = []
    for _ in range(8):
        loss, stats = train_step(model, optimizer, xs, labels)
        losses.append(float(loss))
        assert all(bool(jnp.all(s.ok)) for s in stats)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
