"""The Pallas kernel for the diagonal and block-diagonal linear recurrence (interpret mode on
the CPU) against ``jax.lax.associative_scan``: values, gradients, forward mode and second
order, float32 and float64, reverse, T = 1, T and n not multiples of the chunk and feature
block, vmap, and Newton solves with it against ``jax.lax.scan``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnscan
from rnnscan._linear_recurrence import linear_recurrence
from rnnscan._pallas_recurrence import pallas_linear_recurrence

# Small blocks so that small arrays span several chunks and feature blocks (and padding).
BLOCKS = {"chunk": 8, "feature_block": 4}
TOL = {jnp.float64: {"rtol": 1e-12, "atol": 1e-12}, jnp.float32: {"rtol": 1e-5, "atol": 1e-5}}


DIAGONAL = rnnscan.Diagonal()


def _pallas(a, b, reverse=False, structure=DIAGONAL):
    return pallas_linear_recurrence(a, b, structure, reverse=reverse, interpret=True, **BLOCKS)


def _reference(a, b, reverse=False, structure=DIAGONAL):
    return linear_recurrence(a, b, structure, reverse=reverse, backend="associative")


def _problem(T, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1.1, 1.1, (T, n)).astype(dtype)
    b = rng.standard_normal((T, n)).astype(dtype)
    return jnp.asarray(a), jnp.asarray(b)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_values_and_gradients_match_the_associative_scan(dtype, reverse):
    a, b = _problem(37, 5, dtype)  # 5 chunks of 8 (the last padded), 2 feature blocks
    np.testing.assert_allclose(_pallas(a, b, reverse), _reference(a, b, reverse), **TOL[dtype])

    def loss(solver):
        return lambda a, b: jnp.sum(jnp.sin(solver(a, b, reverse)) * jnp.arange(1, 6)[None, :])

    got = jax.grad(loss(_pallas), argnums=(0, 1))(a, b)
    expected = jax.grad(loss(_reference), argnums=(0, 1))(a, b)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, **TOL[dtype])


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_two_by_two_blocks_match_the_associative_scan(reverse):
    structure = rnnscan.BlockDiagonal(2)
    rng = np.random.default_rng(4)
    A = jnp.asarray(rng.uniform(-0.8, 0.8, (37, 5, 2, 2)))  # n = 10: 5 blocks of 2
    b = jnp.asarray(rng.standard_normal((37, 10)))
    tol = TOL[jnp.float64]
    np.testing.assert_allclose(
        _pallas(A, b, reverse, structure), _reference(A, b, reverse, structure), **tol
    )

    def loss(solver):
        return lambda A, b: jnp.sum(jnp.sin(solver(A, b, reverse, structure)))

    got = jax.grad(loss(_pallas), argnums=(0, 1))(A, b)
    expected = jax.grad(loss(_reference), argnums=(0, 1))(A, b)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, **tol)


def test_forward_mode_second_order_and_vmap():
    a, b = _problem(37, 5, jnp.float64, seed=1)
    da, db = _problem(37, 5, jnp.float64, seed=2)
    got = jax.jvp(_pallas, (a, b), (da, db))
    expected = jax.jvp(_reference, (a, b), (da, db))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, **TOL[jnp.float64])

    def curvature(solver):  # d^2/ds^2 of a loss along (da, db)
        def along(s):
            return jnp.sum(jnp.tanh(solver(a + s * da, b + s * db)))

        return jax.grad(jax.grad(along))(0.0)

    np.testing.assert_allclose(curvature(_pallas), curvature(_reference), rtol=1e-10)

    batch = jnp.stack([b, 2 * b, -b])
    np.testing.assert_allclose(
        jax.vmap(_pallas, in_axes=(None, 0))(a, batch),
        jax.vmap(_reference, in_axes=(None, 0))(a, batch),
        **TOL[jnp.float64],
    )


def test_one_step_and_the_backend_switch():
    a, b = _problem(1, 3, jnp.float64)
    np.testing.assert_allclose(_pallas(a, b), b)  # x_0 = b_0
    a, b = _problem(37, 5, jnp.float64)
    np.testing.assert_allclose(
        linear_recurrence(a, b, rnnscan.Diagonal(), backend="pallas"),
        _reference(a, b),
        **TOL[jnp.float64],
    )
    with pytest.raises(NotImplementedError, match="BlockDiagonal"):
        linear_recurrence(jnp.ones((4, 2, 2)), jnp.ones((4, 2)), rnnscan.Dense(), backend="pallas")
    with pytest.raises(ValueError, match="backend"):
        linear_recurrence(a, b, rnnscan.Diagonal(), backend="cuda")
    with pytest.raises(ValueError, match=r"A must be \(T, n\)"):
        pallas_linear_recurrence(a, b[:, :2], rnnscan.Diagonal())


def test_the_benchmark_runs_and_records_both_backends(tmp_path):
    import json

    from benchmarks import linear_recurrence as bench

    out = tmp_path / "lr"
    overrides = ["lengths=[40]", "hidden=[3]", "batch=2", "repeats=1"]
    bench.main(["--out", str(out)] + [arg for o in overrides for arg in ("--set", o)])
    (record,) = json.loads(out.with_suffix(".json").read_text())["records"]
    assert record["associative"]["max_relative_deviation"] == 0.0
    assert record["pallas"]["max_relative_deviation"] < 1e-5
    assert "| 40 | 3 | 2 | float32 |" in out.with_suffix(".md").read_text()


def test_a_newton_solve_with_the_kernel_matches_lax_scan():
    a = jnp.array([0.5, -0.9, 0.8, 1.2, -0.3])

    def f(h, x):
        h = jnp.tanh(a * h + x[:1] - x[1:])
        return h, h**2

    xs = jnp.asarray(np.random.default_rng(3).standard_normal((37, 2)))
    h0 = jnp.zeros(5)
    method = rnnscan.Newton(jacobian=rnnscan.Diagonal(), linear_recurrence="pallas")

    def loss(solver):
        def value(h0, xs):
            final, ys = solver(h0, xs)
            return jnp.sum(ys) + jnp.sum(final)

        return value

    def parallel(h0, xs):
        return rnnscan.scan(f, h0, xs, method=method, on_failure="raise")

    def sequential(h0, xs):
        return jax.lax.scan(f, h0, xs)

    assert "pallas_call" in str(jax.make_jaxpr(parallel)(h0, xs))  # the kernel, not the scan
    for got, expected in zip(parallel(h0, xs), sequential(h0, xs)):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    got = jax.grad(loss(parallel), argnums=(0, 1))(h0, xs)
    expected = jax.grad(loss(sequential), argnums=(0, 1))(h0, xs)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="linear_recurrence"):
        rnnscan.Newton(linear_recurrence="triton")
    with pytest.raises(ValueError, match="window"):
        rnnscan.Newton(linear_recurrence="pallas", window=8)


def test_a_block_diagonal_cell_solved_with_the_kernel_matches_lax_scan():
    from flax import nnx

    cell = rnnscan.nn.DiagLSTMCell(2, 3, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    structure = type(cell).jacobian_structure
    assert structure == rnnscan.BlockDiagonal(2)
    method = rnnscan.Newton(jacobian=structure, linear_recurrence="pallas")
    xs = jnp.asarray(np.random.default_rng(5).standard_normal((37, 2)))
    init = cell.initialize_carry((2,))
    final, ys = rnnscan.scan(cell, init, xs, method=method, on_failure="raise")
    ref_final, ref_ys = jax.lax.scan(cell, init, xs)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-10, atol=1e-12)
    for got, expected in zip(
        jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(ref_final)
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
