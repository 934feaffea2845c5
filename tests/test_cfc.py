"""CfCCell: the closed-form continuous-time equations against a NumPy reference (in the form
of the authors' ncps implementation), irregular sampling, low-rank and sparse recurrent
weights, parallel solves against jax.lax.scan, parameter counts and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cells_helpers import (
    TOLERANCES,
    count_params,
    normal,
    random_like,
    randomize_params,
    tree_allclose,
)
from flax import nnx

import rnnscan
import rnnscan.nn as rn
from rnnscan.nn._cfc import CfCCell, SparsityMask, num_params

D, N, M, T = 3, 5, 8, 40


def _cell(in_features=D, hidden=N, param_dtype=jnp.float64, seed=0, **kwargs):
    kwargs.setdefault("backbone_features", M)
    return CfCCell(in_features, hidden, param_dtype=param_dtype, rngs=nnx.Rngs(seed), **kwargs)


def _time_column(seed, length, low=0.05, high=2.5):
    """Irregular, strictly positive elapsed times."""
    return np.random.default_rng(seed).uniform(low, high, (length, 1))


def _inputs(seed, cell, length=T, dtype=np.float64):
    """A (length, in_features) sequence; with ``time_input`` its last column is Δt > 0."""
    xs = np.random.default_rng(seed).standard_normal((length, cell.in_features))
    if cell.time_input:
        xs[:, -1:] = _time_column(seed + 100, length)
    return jnp.asarray(xs.astype(dtype))


# ---------------------------------------------------------------------------------------------
# A NumPy reference, written in the form of ncps's CfCCell.forward: the backbone reads the
# concatenation [x, h] through one (d + n, m) matrix; ff1 = tanh(.) is the head the gate
# leaves (η), ff2 = tanh(.) the head it selects (g), t_interp = σ(t_a Δt + t_b) with t_a = -f.


def _np(v):
    return np.asarray(v, dtype=np.float64)


def _reference_step(cell, h, x, act="lecun"):
    n = cell.hidden_features
    h, x = _np(h), _np(x)
    if cell.time_input:
        x, ts = x[:-1], x[-1]
    else:
        ts = cell.default_timespan
    if cell.rank is None:
        W_rec = _np(cell.recurrent_kernel[...])
    else:
        W_rec = _np(cell.recurrent_u[...]) @ _np(cell.recurrent_v[...]).T
    if cell.sparsity > 0:
        W_rec = W_rec * _np(cell.mask[...])
    first = np.vstack([_np(cell.input_kernel[...]), W_rec])  # reads [x, h]
    act = {
        "lecun": lambda v: 1.7159 * np.tanh(0.666 * v),
        "tanh": np.tanh,
    }[act]
    xh = np.concatenate([x, h])
    if cell.backbone_layers > 0:
        z = act(xh @ first + _np(cell.backbone_bias[...]))
        for W, b in zip(cell.hidden_kernels, cell.hidden_biases):
            z = act(z @ _np(W[...]) + _np(b[...]))
        out = z @ _np(cell.head_kernel[...]) + _np(cell.head_bias[...])
    else:
        out = xh @ first + _np(cell.head_bias[...])
    if cell.mode == "pure":
        A, w_tau = _np(cell.A[...]), _np(cell.w_tau[...])
        return -A * np.exp(-ts * (np.abs(w_tau) + np.abs(out))) * out + A
    ff2 = np.tanh(out[0:n])  # g
    ff1 = np.tanh(out[n : 2 * n])  # η
    t_a = -out[2 * n : 3 * n]  # -f
    t_b = out[3 * n : 4 * n] if cell.time_bias else 0.0
    t_interp = 1.0 / (1.0 + np.exp(-(t_a * ts + t_b)))
    if cell.mode == "no_gate":
        return ff1 + t_interp * ff2
    return ff1 * (1.0 - t_interp) + t_interp * ff2


def _reference_sequence(cell, h0, xs, act="lecun"):
    h, ys = _np(h0), []
    for x in np.asarray(xs):
        h = _reference_step(cell, h, x, act)
        ys.append(h)
    return h, np.stack(ys)


EQUATION_CASES = {
    "rank_sparse": dict(rank=2, sparsity=0.5),
    "no_backbone_rank": dict(backbone_layers=0, rank=3, sparsity=0.3),
    "deep_tanh": dict(backbone_layers=3, activation="tanh"),
    "no_gate": dict(mode="no_gate", timespan=0.7),
    "pure": dict(mode="pure", rank=2),
    "no_time_bias": dict(time_bias=False, time_input=True),
}


@pytest.mark.parametrize("case", sorted(EQUATION_CASES))
def test_equations_match_reference(case):
    kwargs = dict(EQUATION_CASES[case])
    if "timespan" in kwargs:
        kwargs["default_timespan"] = kwargs.pop("timespan")
    in_features = D + 1 if kwargs.get("time_input") else D
    cell = _cell(in_features, **kwargs)
    act = "tanh" if kwargs.get("activation") == "tanh" else "lecun"
    randomize_params(cell, 1, scale=0.5)
    if kwargs.get("mode") == "pure":  # w_tau, A start at 0 and 1: move them
        cell.w_tau[...] = normal(7, (N,))
    h0 = normal(2, (N,))
    xs = _inputs(3, cell, length=6)
    step = nnx.jit(lambda cell, carry, x: cell(carry, x))
    h = h0
    for x in xs:
        expected = _reference_step(cell, h, x, act)
        h, y = step(cell, h, x)
        np.testing.assert_allclose(np.asarray(h), expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(h))


def test_irregular_time_matches_reference_sequence():
    """time_input=True: every step decays with its own Δt (a lax.scan of the cell against the
    NumPy loop); and Δt matters: the same observations with shuffled Δt give other states."""
    cell = _cell(D + 1, rank=2, sparsity=0.5, time_input=True)
    randomize_params(cell, 4)
    h0 = normal(5, (N,))
    xs = _inputs(6, cell)
    run = nnx.jit(lambda cell, h0, xs: jax.lax.scan(cell, h0, xs))
    final, ys = run(cell, h0, xs)
    ref_final, ref_ys = _reference_sequence(cell, h0, xs)
    np.testing.assert_allclose(np.asarray(ys), ref_ys, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(final), ref_final, rtol=1e-10, atol=1e-10)
    shuffled = xs.at[:, -1].set(xs[::-1, -1])
    _, ys_shuffled = run(cell, h0, shuffled)
    assert not np.allclose(np.asarray(ys_shuffled), np.asarray(ys), atol=1e-3)


@pytest.mark.parametrize("dt", [0.3, 1.7])
def test_constant_time_column_equals_default_timespan(dt):
    """time_input=True with a constant Δt column is the time_input=False cell with
    default_timespan=Δt and the same weights."""
    timed = _cell(D + 1, rank=2, sparsity=0.5, time_input=True, seed=1)
    plain = _cell(D, rank=2, sparsity=0.5, default_timespan=dt, seed=2)
    randomize_params(timed, 3)
    nnx.update(plain, nnx.state(timed))  # weights and mask
    h0 = normal(4, (N,))
    obs = normal(5, (T, D))
    xs = jnp.concatenate([obs, jnp.full((T, 1), dt)], axis=-1)
    run = nnx.jit(lambda cell, h0, xs: jax.lax.scan(cell, h0, xs))
    final_t, ys_t = run(timed, h0, xs)
    final_p, ys_p = run(plain, h0, obs)
    np.testing.assert_allclose(np.asarray(ys_t), np.asarray(ys_p), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(np.asarray(final_t), np.asarray(final_p), rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Parallel solves against jax.lax.scan: values and gradients.


def _sequence_loss(graphdef, method):
    def loss(state, init, xs, weights):
        cell = nnx.merge(graphdef, state)
        if method is None:
            final, ys = jax.lax.scan(cell, init, xs)
            stats = None
        else:
            sol = rnnscan.solve(cell, init, xs, method=method, on_failure="return")
            final, ys = sol.final_carry, sol.ys
            stats = (sol.iterations, sol.result)
        return jnp.sum(ys * weights) + jnp.sum(final**2), (final, ys, stats)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


# The shared cell matrix (test_cells.py) runs rank + sparsity; these add elapsed-time inputs.
PARALLEL_CASES = [
    ("time_irregular", dict(rank=3, sparsity=0.25, time_input=True), jnp.float64),
    ("time_irregular", dict(rank=3, sparsity=0.25, time_input=True), jnp.float32),
]


@pytest.mark.parametrize(
    "case, kwargs, dtype", PARALLEL_CASES, ids=lambda v: getattr(v, "__name__", None)
)
def test_parallel_matches_lax_scan(case, kwargs, dtype):
    in_features = D + 1 if kwargs.get("time_input") else D
    cell = _cell(in_features, param_dtype=dtype, **kwargs)
    randomize_params(cell, 1)
    graphdef, state = nnx.split(cell)
    init = random_like(2, cell.initialize_carry((in_features,)))
    xs = _inputs(3, cell, dtype=np.dtype(dtype))
    weights = normal(4, (T, N), dtype)

    (value, (final, ys, _)), grads = _sequence_loss(graphdef, None)(state, init, xs, weights)
    solver = rn.resolve_method("newton", cell)
    (p_value, (p_final, p_ys, (iterations, result))), p_grads = _sequence_loss(graphdef, solver)(
        state, init, xs, weights
    )
    assert result == rnnscan.RESULTS.successful
    assert iterations > 1  # not carry-linear
    tol = TOLERANCES[dtype]
    tree_allclose(p_ys, ys, **tol)
    tree_allclose(p_final, final, **tol)
    tree_allclose(p_value, value, **tol)
    tree_allclose(p_grads, grads, **tol)


def test_rnn_matches_flax_rnn():
    """rnnscan.nn.RNN against flax.nnx.RNN, on the options the other parallel tests leave out:
    no backbone, the pure (minimal) mode."""
    cell = _cell(D + 1, backbone_layers=0, mode="pure", rank=2, sparsity=0.5, time_input=True)
    randomize_params(cell, 1)
    cell.w_tau[...] = normal(7, (N,))
    xs = jnp.stack([_inputs(seed, cell) for seed in range(3)])
    apply = lambda layer: nnx.jit(lambda layer, xs: layer(xs))(layer, xs)  # noqa: E731
    (carry, outputs), stats = nnx.jit(lambda layer, xs: layer(xs, return_stats=True))(
        rn.RNN(cell, return_carry=True), xs
    )
    ref_carry, ref_outputs = apply(nnx.RNN(cell, return_carry=True))
    tree_allclose(outputs, ref_outputs, **TOLERANCES[jnp.float64])
    tree_allclose(carry, ref_carry, **TOLERANCES[jnp.float64])
    assert bool(jnp.all(stats.converged)) and not bool(jnp.any(stats.fell_back))
    assert bool(jnp.all(stats.iterations > 1))


# ---------------------------------------------------------------------------------------------
# Structure and interface.


@pytest.mark.parametrize(
    "kwargs", [dict(rank=1, sparsity=0.5), dict(backbone_layers=0, rank=1, sparsity=0.5)]
)
def test_jacobian_is_dense_and_not_carry_linear(kwargs):
    """Dense: with a backbone every entry is nonzero, even with rank 1 and sparsity. Without a
    backbone a sparse mask can zero an entry (k, j), exactly where all H masked weights from
    h_j to unit k's heads are zero: a random pattern, not one of the declared structures."""
    cell = _cell(**kwargs)
    randomize_params(cell, 1)
    assert cell.jacobian_structure == rnnscan.Dense() and not cell.carry_linear
    x = normal(2, (D,))
    jac = jax.jit(jax.jacfwd(lambda h: cell(h, x)[0]))
    J1, J2 = np.asarray(jac(normal(3, (N,)))), np.asarray(jac(normal(4, (N,))))
    assert not np.allclose(J1, J2)
    if cell.backbone_layers > 0:
        assert np.all(np.abs(J1) > 0)
    else:
        mask = np.asarray(cell.mask[...]).reshape(N, cell.num_heads, N)  # (j, head, k)
        structural_zero = ~mask.any(axis=1).T  # (k, j)
        assert structural_zero.any() and not structural_zero.all()
        np.testing.assert_array_equal(J1 == 0, structural_zero)
        np.testing.assert_array_equal(J2 == 0, structural_zero)


# ---------------------------------------------------------------------------------------------
# Low rank and sparsity.


def test_low_rank_matrix_and_initialisation():
    """U Vᵀ has rank R, and at initialisation it is the best rank-R approximation (truncated
    SVD) of the dense cell's W_rec drawn from the same seed."""
    R = 2
    low = _cell(rank=R, seed=3)
    dense = _cell(seed=3)
    W = np.asarray(low.recurrent_matrix())
    assert W.shape == (N, M)
    assert np.linalg.matrix_rank(W, tol=1e-10) == R
    u, s, vt = np.linalg.svd(np.asarray(dense.recurrent_kernel[...]), full_matrices=False)
    np.testing.assert_allclose(W, (u[:, :R] * s[:R]) @ vt[:R], rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(low.input_kernel[...]), dense.input_kernel[...])
    randomize_params(low, 1)  # any U, V: still rank <= R
    assert np.linalg.matrix_rank(np.asarray(low.recurrent_matrix()), tol=1e-10) <= R


def test_sparsity_mask_is_fixed_and_exact():
    s = 0.5
    cell = _cell(rank=None, sparsity=s)
    mask = np.asarray(cell.mask[...])
    assert isinstance(cell.mask, SparsityMask) and not isinstance(cell.mask, nnx.Param)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    assert int((mask == 0).sum()) == round(s * N * M)
    assert "mask" not in nnx.to_pure_dict(nnx.state(cell, nnx.Param))
    # The mask stream of rngs draws it: another mask seed, another mask, same parameters.
    other = CfCCell(
        D, N, backbone_features=M, sparsity=s, param_dtype=jnp.float64, rngs=nnx.Rngs(0, mask=9)
    )
    assert not np.array_equal(np.asarray(other.mask[...]), mask)
    np.testing.assert_array_equal(other.recurrent_kernel[...], cell.recurrent_kernel[...])


@pytest.mark.parametrize("rank", [None, 2])
def test_mask_survives_training_steps(rank):
    """Adam steps over nnx.Param (through a sequential layer: the solver is not what is tested
    here): the mask is unchanged, the masked entries of the effective
    W_rec stay exactly zero (their gradient is zero in the dense case), the others train."""
    cell = _cell(rank=rank, sparsity=0.5)
    randomize_params(cell, 1)
    mask0 = np.asarray(cell.mask[...])
    W0 = np.asarray(cell.recurrent_matrix())
    np.testing.assert_array_equal(W0[mask0 == 0], 0.0)
    xs = normal(2, (4, T, D))
    targets = normal(3, (4, T, N))
    layer = rn.RNN(cell, method="sequential")
    optimizer = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(layer, optimizer):
        def loss_fn(layer):
            return jnp.mean((layer(xs) - targets) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(layer)
        optimizer.update(layer, grads)
        return loss, grads

    for _ in range(3):
        _, grads = train_step(layer, optimizer)
    if rank is None:
        g = np.asarray(grads["cell"]["recurrent_kernel"][...])
        np.testing.assert_array_equal(g[mask0 == 0], 0.0)
        assert np.all(g[mask0 == 1] != 0)
    np.testing.assert_array_equal(np.asarray(layer.cell.mask[...]), mask0)
    W = np.asarray(layer.cell.recurrent_matrix())
    np.testing.assert_array_equal(W[mask0 == 0], 0.0)
    assert np.all(W[mask0 == 1] != W0[mask0 == 1])


# ---------------------------------------------------------------------------------------------
# Parameter counts and errors.

COUNT_CASES = [
    # (kwargs, count written out: d m + rec + m + (L-1)(m^2 + m) + H n (m + 1) [+ 2n])
    (dict(), 3 * 8 + 5 * 8 + 8 + 4 * 5 * 9),
    (dict(rank=2, sparsity=0.5), 3 * 8 + 2 * (5 + 8) + 8 + 4 * 5 * 9),
    (dict(backbone_layers=3, time_bias=False), 3 * 8 + 5 * 8 + 8 + 2 * 72 + 3 * 5 * 9),
    (dict(mode="pure", time_input=True), 2 * 8 + 5 * 8 + 8 + 1 * 5 * 9 + 10),
    # no backbone: m = H n = 20; d m + rec + m
    (dict(backbone_layers=0), 3 * 20 + 5 * 20 + 20),
    (dict(backbone_layers=0, rank=4, mode="no_gate"), 3 * 20 + 4 * (5 + 20) + 20),
    (dict(backbone_layers=0, mode="pure", rank=1), 3 * 5 + 1 * (5 + 5) + 5 + 10),
]


@pytest.mark.parametrize("kwargs, expected", COUNT_CASES)
def test_parameter_counts(kwargs, expected):
    cell = nnx.eval_shape(lambda: _cell(**kwargs))
    assert count_params(cell) == expected
    counted = {k: v for k, v in kwargs.items() if k != "sparsity"}
    assert num_params(D, N, backbone_features=M, **counted) == expected


def test_default_width_is_ncps():
    cell = nnx.eval_shape(lambda: CfCCell(D, N, rngs=nnx.Rngs(0)))
    assert cell.backbone_features == 128 and cell.backbone_layers == 1 and cell.mode == "default"
    assert count_params(cell) == 128 * (D + N + 1) + 4 * N * 129


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sparsity=1.0), "sparsity.*1.0"),
        (dict(sparsity=-0.1), "sparsity.*-0.1"),
        (dict(rank=0), "rank.*0"),
        (dict(rank=6), "rank.*min.*rank=6"),
        (dict(backbone_layers=0, rank=21), "rank.*rank=21"),
        (dict(rank=2.5), "rank.*2.5"),
        (dict(mode="minimal"), "mode.*'minimal'"),
        (dict(activation="swish"), "activation.*'swish'"),
        (dict(backbone_layers=-1), "backbone_layers.*-1"),
        (dict(backbone_features=0), "backbone_features.*0"),
        (dict(default_timespan=0.0), "default_timespan.*0.0"),
        (dict(hidden=0), "hidden_features.*0"),
        (dict(in_features=1, time_input=True), "in_features.*1"),
    ],
)
def test_errors(kwargs, match):
    kwargs = dict(kwargs)
    in_features = kwargs.pop("in_features", D)
    hidden = kwargs.pop("hidden", N)
    with pytest.raises(ValueError, match=match):
        _cell(in_features, hidden, **kwargs)
