"""Dale's-law cells (ColEI, DANN) and the normalised SVD entropy: equations against NumPy
references, sign constraints, initialisation, parallel solves against jax.lax.scan."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _cells_helpers import (
    normal,
    randomize_params,
)
from flax import nnx

from rnnscan.diagnostics._spectrum import svd_entropy
from rnnscan.nn._dale import ColEICell, DANNCell

D, N, T = 3, 5, 40
H = jax.jit(svd_entropy)  # one compilation per shape instead of one per primitive
CELLS = {"col_ei": (ColEICell, {}), "dann": (DANNCell, {})}


def make(name, d=D, n=N, param_dtype=jnp.float64, seed=0, **kwargs):
    cls, extra = CELLS[name]
    return cls(d, n, param_dtype=param_dtype, rngs=nnx.Rngs(seed), **{**extra, **kwargs})


def _params(cell):
    return {k: np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(cell, nnx.Param)).items()}


def _relu(v):
    return np.maximum(v, 0.0)


# ---------------------------------------------------------------------------------------------
# svd_entropy


def _entropy_reference(W):
    s = np.linalg.svd(W, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return -np.sum(p * np.log(p)) / np.log(min(W.shape))


def test_svd_entropy_matches_numpy_on_a_batch():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((2, 3, 6, 4)) * rng.exponential(size=(2, 3, 1, 4))
    value = H(jnp.asarray(W))
    assert value.shape == (2, 3) and value.dtype == jnp.float64
    expected = np.array([[_entropy_reference(w) for w in row] for row in W])
    np.testing.assert_allclose(np.asarray(value), expected, rtol=1e-10, atol=1e-12)
    assert np.all((expected > 0) & (expected < 1))


def test_svd_entropy_known_cases():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    u, v = rng.standard_normal(6), rng.standard_normal(4)
    np.testing.assert_allclose(H(jnp.eye(5)), 1.0, atol=1e-12)
    np.testing.assert_allclose(H(3.0 * Q), 1.0, atol=1e-12)  # orthogonal, scaled
    np.testing.assert_allclose(H(np.outer(u, v)), 0.0, atol=1e-12)  # rank 1
    # Two equal singular values out of three: H = log 2 / log 3.
    np.testing.assert_allclose(H(np.diag([2.0, 2.0, 0.0])), math.log(2) / math.log(3))
    # Scale invariance, and float32 / integer inputs.
    W = rng.standard_normal((5, 5))
    np.testing.assert_allclose(H(7.5 * W), H(W), rtol=1e-12)
    H32 = H(jnp.asarray(W, jnp.float32))
    assert H32.dtype == jnp.float32
    np.testing.assert_allclose(H32, _entropy_reference(W), rtol=1e-5)
    np.testing.assert_allclose(H(np.eye(3, dtype=int)), 1.0, atol=1e-12)


def test_svd_entropy_zero_matrix_is_zero_with_zero_gradient():
    Z = jnp.zeros((2, 4, 4))
    np.testing.assert_array_equal(H(Z), [0.0, 0.0])
    grad = jax.jit(jax.grad(svd_entropy))(jnp.zeros((3, 3)))
    np.testing.assert_array_equal(grad, 0.0)
    # Nonzero, generic matrices have finite gradients.
    grad = jax.jit(jax.grad(svd_entropy))(normal(0, (4, 4)))
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


@pytest.mark.parametrize("shape", [(), (5,), (1, 5), (3, 4, 1)])
def test_svd_entropy_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="svd_entropy"):
        svd_entropy(jnp.ones(shape))


# ---------------------------------------------------------------------------------------------
# ColEI


def test_col_ei_step_matches_reference():
    cell = make("col_ei")
    randomize_params(cell, 1)
    p = _params(cell)
    h, x = normal(2, (4, N)), normal(3, (4, D))
    sign = np.array([1.0] * cell.n_excitatory + [-1.0] * cell.n_inhibitory)
    W = np.abs(p["recurrent_weight"]) * sign[None, :]
    expected = _relu(np.asarray(h) @ W.T + np.asarray(x) @ np.abs(p["input_weight"]).T + p["bias"])
    new_h, y = nnx.jit(lambda c, h, x: c(h, x))(cell, h, x)
    np.testing.assert_allclose(new_h, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(y, new_h)
    np.testing.assert_allclose(cell.recurrent_matrix(), W, rtol=1e-14)
    np.testing.assert_allclose(cell.input_matrix(), np.abs(p["input_weight"]), rtol=1e-14)


@pytest.mark.parametrize(
    "n, fraction, n_e", [(5, 0.8, 4), (2, 0.8, 1), (20, 0.95, 19), (5, 0.01, 1)]
)
def test_col_ei_population_sizes(n, fraction, n_e):
    cell = make("col_ei", n=n, excitatory_fraction=fraction)
    assert (cell.n_excitatory, cell.n_inhibitory) == (n_e, n - n_e)
    np.testing.assert_array_equal(cell.sign, [1] * n_e + [-1] * (n - n_e))


def test_col_ei_initialisation():
    n, f = 80, 0.8
    cell = make("col_ei", n=n, excitatory_fraction=f, spectral_radius=1.3)
    W = np.asarray(cell.recurrent_matrix())
    ne = cell.n_excitatory
    assert np.all(W[:, :ne] >= 0) and np.all(W[:, ne:] <= 0)
    np.testing.assert_array_equal(np.diag(W), 0.0)
    np.testing.assert_allclose(np.max(np.abs(np.linalg.eigvals(W))), 1.3, rtol=1e-10)
    assert np.all(np.asarray(cell.input_matrix()) >= 0)
    # Balance, before rescaling: exponential means sigma_E and (ne / ni) sigma_E.
    raw = make("col_ei", n=n, excitatory_fraction=f, spectral_radius=None, zero_diagonal=False)
    W = np.asarray(raw.recurrent_matrix())
    sigma_e = math.sqrt(2 * math.pi / ((2 * math.pi - 1) * (ne + ne**2 / (n - ne))))
    np.testing.assert_allclose(W[:, :ne].mean(), sigma_e, rtol=0.1)
    np.testing.assert_allclose(-W[:, ne:].mean(), sigma_e * ne / (n - ne), rtol=0.1)
    row_sums = W.sum(axis=1)  # each row's expected input: ne sigma_e - ni (ne / ni) sigma_e = 0
    assert abs(row_sums.mean()) < 3 * row_sums.std() / math.sqrt(n)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"excitatory_fraction": 0.0}, "excitatory_fraction"),
        ({"excitatory_fraction": 1.0}, "excitatory_fraction"),
        ({"spectral_radius": -1.0}, "spectral_radius"),
        ({"n": 1}, "hidden_features"),
        ({"n": 0}, "hidden_features"),
        ({"d": 2.5}, "in_features"),
    ],
)
def test_col_ei_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make("col_ei", **kwargs)


# ---------------------------------------------------------------------------------------------
# DANN


def test_dann_step_matches_reference():
    cell = make("dann", interneurons=2, input_interneurons=3)
    randomize_params(cell, 1)
    p = {k: v if k == "bias" else np.abs(v) for k, v in _params(cell).items()}
    h, x = np.asarray(normal(2, (4, N))), np.asarray(normal(3, (4, D)))
    W = p["recurrent_ee"] - p["recurrent_ei"] @ p["recurrent_ie"]
    U = p["input_ee"] - p["input_ei"] @ p["input_ie"]
    expected = _relu(h @ W.T + x @ U.T + p["bias"])
    new_h, y = nnx.jit(lambda c, h, x: c(h, x))(cell, jnp.asarray(h), jnp.asarray(x))
    np.testing.assert_allclose(new_h, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(y, new_h)
    np.testing.assert_allclose(cell.recurrent_matrix(), W, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cell.input_matrix(), U, rtol=1e-12, atol=1e-14)
    shapes = {k: v.shape for k, v in p.items()}
    assert shapes["recurrent_ei"] == (N, 2) and shapes["input_ie"] == (3, D)


def test_dann_initialisation():
    n = 60
    cell = make("dann", n=n)
    p = _params(cell)
    assert cell.interneurons == cell.input_interneurons == 6 and cell.hidden_features == n
    assert all(np.all(v >= 0) for v in p.values())
    np.testing.assert_allclose(p["recurrent_ei"].sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p["input_ei"].sum(axis=1), 1.0, rtol=1e-12)
    # Feed-forward inhibition subtracts the mean excitation over units: U's columns sum to 0.
    np.testing.assert_allclose(np.asarray(cell.input_matrix()).sum(axis=0), 0.0, atol=1e-12)
    sigma = math.sqrt(1 / (3 * (n - 1)))
    np.testing.assert_allclose(p["recurrent_ee"].mean(), sigma, rtol=0.1)
    np.testing.assert_allclose(p["recurrent_ie"].mean(), sigma, rtol=0.2)
    # Balance: E[W_EI W_IE] = E[W_EE], so the effective W has mean ~0.
    W = np.asarray(cell.recurrent_matrix())
    assert abs(W.mean()) < 0.1 * sigma


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"interneurons": 0}, "interneurons"),
        ({"interneurons": 2.0}, "interneurons"),
        ({"input_interneurons": -1}, "input_interneurons"),
        ({"n": 0}, "hidden_features"),
    ],
)
def test_dann_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make("dann", **kwargs)


# ---------------------------------------------------------------------------------------------
# Both: constraints under training, parallel solves, interface.


@pytest.mark.parametrize("name", sorted(CELLS))
def test_training_keeps_dale_signs_and_gradients_flow(name):
    """Large Adam steps on a loss that pushes every weight negative: the effective weights
    keep their signs (ColEI: column signs; DANN: the effective W keeps its E - EI IE form)."""
    cell = make(name, param_dtype=jnp.float32)
    graphdef, params = nnx.split(cell, nnx.Param)
    h, x = normal(0, (4, N), jnp.float32), normal(1, (4, D), jnp.float32)

    def loss(params):
        c = nnx.merge(graphdef, params)
        return jnp.sum(c(h, x)[0]) + jnp.sum(c.recurrent_matrix())

    grads = jax.grad(loss)(params)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree_util.tree_leaves(grads))
    opt = optax.adam(0.5)
    state = opt.init(params)
    step = jax.jit(lambda p, s: _adam(opt, loss, p, s))
    for _ in range(3):
        params, state = step(params, state)
    trained = nnx.merge(graphdef, params)
    W = np.asarray(trained.recurrent_matrix())
    if name == "col_ei":
        ne = trained.n_excitatory
        assert np.all(W[:, :ne] >= 0) and np.all(W[:, ne:] <= 0)
        assert np.all(np.asarray(trained.input_matrix()) >= 0)
    else:
        p = {k: np.abs(v) for k, v in _params(trained).items()}
        np.testing.assert_allclose(
            W, p["recurrent_ee"] - p["recurrent_ei"] @ p["recurrent_ie"], rtol=1e-5, atol=1e-6
        )
    assert not np.allclose(W, np.asarray(cell.recurrent_matrix()))


def _adam(opt, loss, params, state):
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state
