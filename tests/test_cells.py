"""rnnscan.nn cells: equations against independent references, declared Jacobian structures
against autodiff, parallel solves against jax.lax.scan, and parameter counts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cells_helpers import (
    CARRY_LINEAR,
    CELL_NAMES,
    CELLS,
    OPTION_VARIANTS,
    TOLERANCES,
    count_params,
    flat_carry,
    make_cell,
    normal,
    random_like,
    randomize_params,
    tree_allclose,
)
from flax import nnx

import rnnscan
import rnnscan.nn as rn

D, N, T = 3, 5, 40


def _step(cell, carry, x):
    """One jitted step (eager calls compile every primitive separately, which is slow)."""
    return nnx.jit(lambda cell, carry, x: cell(carry, x))(cell, carry, x)


def _apply(layer, xs, **kwargs):
    return nnx.jit(lambda layer, xs: layer(xs, **kwargs))(layer, xs)


# ---------------------------------------------------------------------------------------------
# Parallel solves against jax.lax.scan: values and gradients.


def _sequence_loss(graphdef, method):
    """A scalar loss of the outputs and final carry, computed by ``jax.lax.scan`` (method None)
    or by ``rnnscan.solve``; its aux carries the values and the solve's statistics."""

    def loss(params, init, xs, weights):
        cell = nnx.merge(graphdef, params)
        if method is None:
            final, ys = jax.lax.scan(cell, init, xs)
            stats = None
        else:
            sol = rnnscan.solve(cell, init, xs, method=method, on_failure="return")
            final, ys = sol.final_carry, sol.ys
            stats = (sol.iterations, sol.result)
        value = jnp.sum(ys * weights) + sum(
            jnp.sum(jnp.abs(leaf) ** 2) for leaf in jax.tree_util.tree_leaves(final)
        )
        return value, (final, ys, stats)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


# Newton for every cell in both precisions; quasi-Newton where it is exact (diagonal carry
# Jacobians: it is then Newton; two such cells stand for them) and on the dense GRU, where it
# converges more slowly.
QUASI_NEWTON_CELLS = ["brc", "diag_gru"]
assert all(CELLS[n][0].jacobian_structure == rnnscan.Diagonal() for n in QUASI_NEWTON_CELLS)
PARALLEL_CASES = [
    *[(name, "newton", dtype) for name in CELL_NAMES for dtype in (jnp.float64, jnp.float32)],
    *[(name, "quasi_newton", jnp.float64) for name in [*QUASI_NEWTON_CELLS, "gru"]],
]


@pytest.mark.parametrize(
    "name, method, dtype", PARALLEL_CASES, ids=lambda v: getattr(v, "__name__", str(v))
)
def test_parallel_matches_lax_scan(name, method, dtype):
    cell = make_cell(name, D, N, dtype)
    randomize_params(cell, 1)
    graphdef, params = nnx.split(cell)
    init = random_like(2, cell.initialize_carry((cell.in_features,)))
    xs = normal(3, (T, cell.in_features), dtype)
    ys_shape = jax.eval_shape(cell, init, xs[0])[1].shape
    weights = normal(4, (T,) + ys_shape, dtype)

    (value, (final, ys, _)), grads = _sequence_loss(graphdef, None)(params, init, xs, weights)
    solver = rn.resolve_method(method, cell)
    (p_value, (p_final, p_ys, (iterations, result))), p_grads = _sequence_loss(graphdef, solver)(
        params, init, xs, weights
    )

    assert result == rnnscan.RESULTS.successful
    if name in CARRY_LINEAR and method == "newton":
        assert iterations == 1
    tol = TOLERANCES[dtype]
    tree_allclose(p_ys, ys, **tol)
    tree_allclose(p_final, final, **tol)
    tree_allclose(p_value, value, **tol)
    tree_allclose(p_grads, grads, **tol)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_rnn_matches_flax_rnn(name):
    """The same cell in rnnscan.nn.RNN and in flax.nnx.RNN (float64, a batch of 3); cells
    affine in their carry take exactly one parallel iteration."""
    cell = make_cell(name, D, N, jnp.float64)
    xs = normal(0, (3, T, cell.in_features), jnp.float64)
    (carry, outputs), stats = _apply(rn.RNN(cell, return_carry=True), xs, return_stats=True)
    ref_carry, ref_outputs = _apply(nnx.RNN(cell, return_carry=True), xs)
    tree_allclose(outputs, ref_outputs, **TOLERANCES[jnp.float64])
    tree_allclose(carry, ref_carry, **TOLERANCES[jnp.float64])
    assert bool(jnp.all(stats.converged)) and not bool(jnp.any(stats.fell_back))
    if name in CARRY_LINEAR:
        np.testing.assert_array_equal(stats.iterations, 1)
    else:
        assert bool(jnp.all(stats.iterations > 1))


# ---------------------------------------------------------------------------------------------
# Declared structure against the autodiff Jacobian.


def _flat_step(cell, template, x):
    """The carry update as a map of flat real vectors (the layout of ``flat_carry``)."""
    leaves, treedef = jax.tree_util.tree_flatten(template)

    def step(v):
        parts, start = [], 0
        for leaf in leaves:
            size = leaf.size
            if jnp.iscomplexobj(leaf):
                value = v[start : start + size] + 1j * v[start + size : start + 2 * size]
                start += 2 * size
            else:
                value = v[start : start + size]
                start += size
            parts.append(value.reshape(leaf.shape).astype(leaf.dtype))
        new_carry, _ = cell(jax.tree_util.tree_unflatten(treedef, parts), x)
        return flat_carry(new_carry)

    return step


def _allowed_entries(structure, n):
    rows, cols = np.indices((n, n))
    if isinstance(structure, rnnscan.Dense):
        return np.ones((n, n), bool)
    if isinstance(structure, rnnscan.Diagonal):
        return rows == cols
    if isinstance(structure, rnnscan.BlockDiagonal):
        units = n // structure.block_size  # strided blocks: entry r * units + j is unit j
        return rows % units == cols % units
    raise AssertionError(structure)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_declared_jacobian_structure_is_exact(name):
    cell = make_cell(name, D, N, jnp.float64)
    randomize_params(cell, 1)
    template = cell.initialize_carry((cell.in_features,))
    x = normal(2, (cell.in_features,), jnp.float64)
    step = _flat_step(cell, template, x)
    c1, c2 = (flat_carry(random_like(seed, template)) for seed in (3, 4))
    jacobian = jax.jit(jax.jacfwd(step))
    J1, J2 = jacobian(c1), jacobian(c2)

    allowed = _allowed_entries(cell.jacobian_structure, c1.shape[0])
    np.testing.assert_array_equal(J1[~allowed], 0.0)
    np.testing.assert_array_equal(J2[~allowed], 0.0)
    if cell.carry_linear:
        np.testing.assert_allclose(J1, J2, rtol=1e-12, atol=1e-12)
    else:
        assert not np.allclose(J1, J2)


# ---------------------------------------------------------------------------------------------
# Equations against independent references.


def _sigmoid(v):
    return 1 / (1 + np.exp(-v))


def _params(cell) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(cell, nnx.Param)).items()}


def _set_params(cell, **values) -> None:
    for name, value in values.items():
        getattr(cell, name)[...] = jnp.asarray(value)


def _rng(seed):
    return np.random.default_rng(seed)


def test_gru_matches_pytorch_equations():
    """PyTorch's nn.GRU equations with its parameter layout (weight_ih (3n, d), weight_hh
    (3n, n), both biases (3n,), gates r, z, n), loaded into GRUCell."""
    d, n = 4, 6
    rng = _rng(0)
    weight_ih = rng.standard_normal((3 * n, d)) / math.sqrt(d)
    weight_hh = rng.standard_normal((3 * n, n)) / math.sqrt(n)
    bias_ih = 0.5 * rng.standard_normal(3 * n)
    bias_hh = 0.5 * rng.standard_normal(3 * n)

    def torch_gru(h, x):
        gi = weight_ih @ x + bias_ih
        gh = weight_hh @ h + bias_hh
        i_r, i_z, i_n = gi[:n], gi[n : 2 * n], gi[2 * n :]
        h_r, h_z, h_n = gh[:n], gh[n : 2 * n], gh[2 * n :]
        r = _sigmoid(i_r + h_r)
        z = _sigmoid(i_z + h_z)
        candidate = np.tanh(i_n + r * h_n)  # b_hn inside r * (W_hn h + b_hn)
        return (1 - z) * candidate + z * h

    cell = rn.GRUCell(d, n, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    # b_hr and b_hz only ever add to b_ir and b_iz; b_hn is separate.
    folded = bias_hh.copy()
    folded[2 * n :] = 0.0
    _set_params(
        cell,
        input_kernel=weight_ih.T,
        recurrent_kernel=weight_hh.T,
        input_bias=bias_ih + folded,
        recurrent_bias=bias_hh[2 * n :],
    )
    h = rng.standard_normal(n)
    for x in rng.standard_normal((5, d)):
        new_h, y = _step(cell, h, x)
        expected = torch_gru(h, x)
        np.testing.assert_allclose(new_h, expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
        h = expected


def test_lstm_matches_flax_lstm():
    d, n = 3, 4
    cell = rn.LSTMCell(d, n, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    randomize_params(cell, 1)
    ref = nnx.LSTMCell(d, n, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    p = _params(cell)
    W_i, W_h, b = (np.split(p[k], 4, axis=-1) for k in ("input_kernel", "recurrent_kernel", "bias"))
    gates = [(ref.ii, ref.hi), (ref.if_, ref.hf), (ref.ig, ref.hg), (ref.io, ref.ho)]
    for k, (i_layer, h_layer) in enumerate(gates):
        _set_params(i_layer, kernel=W_i[k])
        _set_params(h_layer, kernel=W_h[k], bias=b[k])
    carry = random_like(2, cell.initialize_carry((2, d)))
    x = normal(3, (2, d), jnp.float64)
    tree_allclose(_step(cell, carry, x), _step(ref, carry, x), rtol=1e-12, atol=1e-12)


def test_lstm_forget_bias():
    cell = rn.LSTMCell(3, 4, forget_bias=1.5, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(cell.bias[...], np.r_[np.zeros(4), np.full(4, 1.5), np.zeros(8)])


@pytest.mark.parametrize(
    "diag_name, dense_cls", [("diag_gru", rn.GRUCell), ("diag_lstm", rn.LSTMCell)]
)
def test_diagonal_cells_are_dense_cells_with_diagonal_recurrence(diag_name, dense_cls):
    diag = make_cell(diag_name, D, N, jnp.float64)
    randomize_params(diag, 1)
    p = _params(diag)
    dense = dense_cls(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    diagonal_blocks = [np.diag(a) for a in p.pop("recurrent_weight").reshape(-1, N)]
    _set_params(dense, recurrent_kernel=np.concatenate(diagonal_blocks, axis=-1), **p)
    carry = random_like(2, diag.initialize_carry((2, D)))
    x = normal(3, (2, D), jnp.float64)
    tree_allclose(_step(diag, carry, x), _step(dense, carry, x), rtol=1e-12, atol=1e-12)


def test_min_gru_and_min_lstm_equations():
    rng = _rng(0)
    x, h = rng.standard_normal(D), rng.standard_normal(N)

    gru = make_cell("min_gru", D, N, jnp.float64)
    randomize_params(gru, 2)
    W, b = _params(gru)["input_kernel"], _params(gru)["input_bias"]
    z = _sigmoid(x @ W[:, :N] + b[:N])
    candidate = x @ W[:, N:] + b[N:]
    np.testing.assert_allclose(_step(gru, h, x)[0], (1 - z) * h + z * candidate, rtol=1e-12)

    lstm = make_cell("min_lstm", D, N, jnp.float64)
    randomize_params(lstm, 3)
    W, b = _params(lstm)["input_kernel"], _params(lstm)["input_bias"]
    f = _sigmoid(x @ W[:, :N] + b[:N])
    i = _sigmoid(x @ W[:, N : 2 * N] + b[N : 2 * N])
    candidate = x @ W[:, 2 * N :] + b[2 * N :]
    expected = f / (f + i) * h + i / (f + i) * candidate
    np.testing.assert_allclose(_step(lstm, h, x)[0], expected, rtol=1e-12)


def test_lru_matches_complex_reference():
    cell = rn.LRUCell(D, N, r_min=0.5, r_max=0.95, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    p = _params(cell)
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    B = (p["B_re"] + 1j * p["B_im"]) * np.exp(p["gamma_log"])[:, None]
    C = p["C_re"] + 1j * p["C_im"]

    h = np.asarray(random_like(1, cell.initialize_carry((D,))))
    assert h.dtype == np.complex128
    for x in _rng(2).standard_normal((4, D)):
        new_h, y = _step(cell, h, x)
        h = lam * h + B @ x
        np.testing.assert_allclose(new_h, h, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(y, (C @ h).real + p["D"] * x, rtol=1e-12, atol=1e-12)


def test_lru_initialisation():
    cell = rn.LRUCell(2, 4096, r_min=0.4, r_max=0.9, max_phase=1.0, rngs=nnx.Rngs(0))
    p = _params(cell)
    modulus = np.exp(-np.exp(p["nu_log"]))
    phase = np.exp(p["theta_log"])
    assert modulus.min() >= 0.4 - 1e-6 and modulus.max() <= 0.9 + 1e-6
    assert phase.min() >= 0 and phase.max() <= 1.0 + 1e-6
    # |λ|² is uniform on [r_min², r_max²] (uniform on the ring's area).
    np.testing.assert_allclose(np.mean(modulus**2), (0.4**2 + 0.9**2) / 2, atol=0.01)
    np.testing.assert_allclose(np.exp(p["gamma_log"]), np.sqrt(1 - modulus**2), rtol=1e-5)


def test_rglru_matches_reference():
    n = 4
    cell = rn.RGLRUCell(n, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    randomize_params(cell, 1)
    p = _params(cell)
    W, b = p["gate_kernel"], p["gate_bias"]
    rng = _rng(2)
    x, h = rng.standard_normal(n), rng.standard_normal(n)
    r = _sigmoid(x @ W[:, :n] + b[:n])
    i = _sigmoid(x @ W[:, n:] + b[n:])
    a = _sigmoid(p["Lambda"]) ** (8 * r)
    expected = a * h + np.sqrt(1 - a**2) * (i * x)
    np.testing.assert_allclose(_step(cell, h, x)[0], expected, rtol=1e-12)


def test_rglru_initialisation():
    cell = rn.RGLRUCell(4096, rngs=nnx.Rngs(0))
    decay = _sigmoid(_params(cell)["Lambda"].astype(np.float64)) ** 8
    assert decay.min() >= 0.9 - 1e-5 and decay.max() <= 0.999 + 1e-5
    with pytest.raises(ValueError, match="in_features"):
        rn.RGLRUCell(3, 4, rngs=nnx.Rngs(0))


def test_second_order_equation():
    """h'_k = tanh(sum_ij A_ijk h_i x_j + sum_i A_idk h_i + sum_j A_njk x_j + A_ndk)."""
    cell = make_cell("second_order", D, N, jnp.float64)
    A = _params(cell)["kernel"]
    rng = _rng(0)
    x, h = rng.standard_normal(D), rng.standard_normal(N)
    expected = np.tanh(
        np.einsum("ijk,i,j->k", A[:N, :D], h, x) + h @ A[:N, D] + x @ A[N, :D] + A[N, D]
    )
    np.testing.assert_allclose(_step(cell, h, x)[0], expected, rtol=1e-12)


def test_mirnn_is_a_cprnn():
    """MIRNN: alpha*Wx*Uh + beta1*Uh + beta2*Wx + b, as a CPRNN of rank n with A = U, B = W,
    C = diag(alpha), V = U diag(beta1), U_cp = W diag(beta2)."""
    mi = make_cell("mirnn", D, N, jnp.float64)
    randomize_params(mi, 1)
    p = _params(mi)
    cp = rn.CPRNNCell(D, N, rank=N, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    W, U = p["input_kernel"], p["recurrent_kernel"]
    _set_params(
        cp,
        A=U,
        B=W,
        C=np.diag(p["alpha"]),
        recurrent_kernel=U * p["beta_recurrent"],
        input_kernel=W * p["beta_input"],
        bias=p["bias"],
    )
    x = normal(2, (2, D), jnp.float64)
    h = normal(3, (2, N), jnp.float64)
    tree_allclose(_step(mi, h, x), _step(cp, h, x), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Parameter counts.

PARAM_COUNTS = {
    "second_order": lambda n, d, R: (n + 1) * (d + 1) * n,  # Lizaire et al. 2024
    "mirnn": lambda n, d, R: n * d + n**2 + 4 * n,  # Lizaire et al. 2024
    "cp_rnn": lambda n, d, R: R * (2 * n + d) + n * d + n**2 + n,  # Lizaire et al. 2024
    "gru": lambda n, d, R: 3 * (n * d + n**2 + n) + n,
    "lstm": lambda n, d, R: 4 * (n * d + n**2 + n),
    "min_gru": lambda n, d, R: 2 * (n * d + n),
    "min_lstm": lambda n, d, R: 3 * (n * d + n),
    "lru": lambda n, d, R: 3 * n + 4 * n * d + d,
    "rglru": lambda n, d, R: 2 * (n**2 + n) + n,
    "diag_gru": lambda n, d, R: 3 * n * d + 7 * n,
    "diag_lstm": lambda n, d, R: 4 * n * d + 8 * n,
    "brc": lambda n, d, R: 3 * n * d + 4 * n,  # Vecoven et al. 2021
    "nbrc": lambda n, d, R: 3 * n * d + 2 * n**2 + 2 * n,
    # The default backbone (one layer of m = 128) and four heads (Hasani et al. 2022; ncps).
    "col_ei": lambda n, d, R: n * d + n**2 + n,  # Li et al. 2023
    # n_I = max(1, round(n / 10)) recurrent and input interneurons (Cornford et al. 2021).
    "dann": lambda n, d, R: (
        n**2 + 2 * n * max(1, round(n / 10)) + n * d + (n + d) * max(1, round(n / 10)) + n
    ),
    "cfc": lambda n, d, R: 128 * (d + n + 1) + 4 * n * 129,
    "time_warp_lstm": lambda n, d, R: 4 * (n * d + n**2 + n) + n,  # + one warp per unit
    "time_warp_gru": lambda n, d, R: 3 * (n * d + n**2 + n) + 2 * n,
    # W_h = U Vᵀ: n r + g n r in place of g n² (Lu et al. 2016), r = 2.
    "gru_rank2": lambda n, d, R: 3 * (n * d + n) + n + 4 * n * 2,
    "lstm_rank2": lambda n, d, R: 4 * (n * d + n) + 5 * n * 2,
    "leaky_rnn": lambda n, d, R: n * d + n**2 + 2 * n,  # + one trained tau per neuron
}


@pytest.mark.parametrize("n, d, R", [(5, 3, 2), (8, 8, 8), (2, 7, 11)])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_parameter_counts(name, n, d, R):
    cls = rn.CELLS[OPTION_VARIANTS.get(name, name)]
    if name == "rglru":
        d = n
    kwargs = {"rank": R} if name == "cp_rnn" else {}
    if name in OPTION_VARIANTS:
        kwargs = CELLS[name][1]
    cell = nnx.eval_shape(lambda: cls(d, n, rngs=nnx.Rngs(0), **kwargs))  # shapes only
    assert count_params(cell) == PARAM_COUNTS[name](n, d, R)


# ---------------------------------------------------------------------------------------------
# Interface details.


@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize(
    "dtype, param_dtype", [(None, jnp.float32), (None, jnp.float64), (jnp.float32, jnp.float64)]
)
def test_carry_dtype_is_stable(name, dtype, param_dtype):
    """The carry ``initialize_carry`` makes is the carry the cell returns (shapes and dtypes),
    as ``jax.lax.scan`` and ``rnnscan.solve`` require."""
    cell = make_cell(name, D, N, param_dtype, dtype=dtype)
    carry = cell.initialize_carry((2, cell.in_features))
    x = normal(0, (2, cell.in_features), param_dtype if dtype is None else dtype)
    new_carry, _ = jax.eval_shape(cell, carry, x)

    def spec(tree):
        return jax.tree_util.tree_map(lambda a: (a.shape, jnp.dtype(a.dtype)), tree)

    assert spec(new_carry) == spec(carry)
    assert cell.num_feature_axes == 1
