"""BRC and nBRC (Vecoven et al., PLoS ONE 2021): equations against a NumPy reference, parallel
solves against jax.lax.scan, flax.nnx.RNN, the declared Jacobian structure, bistability and
parameter counts."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from _cells_helpers import (
    normal,
    randomize_params,
)
from flax import nnx

import rnnscan
import rnnscan.nn as rn
from rnnscan.nn._bistable import BRCCell, NBRCCell

D, N, T = 3, 5, 40
CELLS = {"brc": BRCCell, "nbrc": NBRCCell}


def _make(name, dtype=jnp.float64, seed=0, **kwargs):
    return CELLS[name](D, N, param_dtype=dtype, rngs=nnx.Rngs(seed), **kwargs)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _reference_step(name, params, h, x):
    """The paper's update, written out in NumPy from the parameter blocks."""
    U = params["input_kernel"]
    U_a, U_c, U_h = U[:, :N], U[:, N : 2 * N], U[:, 2 * N :]
    b_a, b_c = params["bias"][:N], params["bias"][N:]
    if name == "brc":
        w_a, w_c = params["recurrent_weight"][:N], params["recurrent_weight"][N:]
        rec_a, rec_c = w_a * h, w_c * h
    else:
        W = params["recurrent_kernel"]
        rec_a, rec_c = h @ W[:, :N], h @ W[:, N:]
    a = 1.0 + np.tanh(x @ U_a + rec_a + b_a)
    c = _sigmoid(x @ U_c + rec_c + b_c)
    return c * h + (1.0 - c) * np.tanh(x @ U_h + a * h)


def _params(cell):
    return {k: np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(cell, nnx.Param)).items()}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_equations_match_reference(name):
    cell = _make(name)
    randomize_params(cell, 1, scale=0.5)
    params = _params(cell)
    h = np.asarray(normal(2, (4, N)))
    x = np.asarray(normal(3, (4, D)))
    new_h, y = nnx.jit(lambda c, h, x: c(h, x))(cell, jnp.asarray(h), jnp.asarray(x))
    expected = _reference_step(name, params, h, x)
    np.testing.assert_allclose(np.asarray(new_h), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)


def test_initialisation():
    """Glorot-uniform input kernels, w_a = w_c = 1 (BRC), orthogonal W_a, W_c (nBRC), zero
    biases: the reference implementation's."""
    brc, nbrc = _make("brc"), _make("nbrc")
    np.testing.assert_array_equal(brc.recurrent_weight[...], 1.0)
    np.testing.assert_array_equal(brc.bias[...], 0.0)
    np.testing.assert_array_equal(nbrc.bias[...], 0.0)
    W = np.asarray(nbrc.recurrent_kernel[...])
    for block in (W[:, :N], W[:, N:]):
        np.testing.assert_allclose(block.T @ block, np.eye(N), atol=1e-10)
    limit = np.sqrt(6.0 / (D + N))  # glorot-uniform bound of one (d, n) block
    U = np.asarray(brc.input_kernel[...])
    assert np.all(np.abs(U) <= limit) and np.abs(U).max() > 0.5 * limit


def test_resolved_solvers():
    assert rn.resolve_method("newton", _make("brc")).jacobian == rnnscan.Diagonal()
    assert rn.resolve_method("newton", _make("nbrc")).jacobian == rnnscan.Dense()
    assert not BRCCell.carry_linear and not NBRCCell.carry_linear


def _fixed_point(a):
    """The positive root of h = tanh(a h) for a > 1, by bisection (independent of the cell)."""
    lo, hi = 1e-6, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.tanh(a * mid) > mid else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("b_a, bistable", [(3.0, True), (-3.0, False)])
def test_bistability(b_a, bistable):
    """Zero input, a = 1 + tanh(b_a) fixed (w_a = 0), c = 1/2: with a > 1 the states started
    at +0.5 and -0.5 settle on the two stable fixed points ±h* of h = tanh(a h); with a < 1
    both settle on the single fixed point 0."""
    n = 2
    cell = BRCCell(1, n, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    cell.input_kernel[...] = jnp.zeros((1, 3 * n))
    cell.recurrent_weight[...] = jnp.zeros(2 * n)
    cell.bias[...] = jnp.asarray([b_a] * n + [0.0] * n)
    h0 = jnp.asarray([0.5, -0.5])
    final = rnnscan.solve(cell, h0, jnp.zeros((400, 1)), method="sequential").final_carry
    a = 1.0 + np.tanh(b_a)
    if bistable:
        h_star = _fixed_point(a)
        assert h_star > 0.9
        np.testing.assert_allclose(np.asarray(final), [h_star, -h_star], atol=1e-10)
    else:
        np.testing.assert_allclose(np.asarray(final), [0.0, 0.0], atol=1e-10)
