"""The linear recurrence's backends against the plain loop of its docstring."""

import jax
import jax.numpy as jnp
import pytest
from helpers import tree_allclose

from rnnscan._chunked_recurrence import chunk_size, chunked_linear_recurrence
from rnnscan._linear_recurrence import linear_recurrence, resolve_backend
from rnnscan._structure import BlockDiagonal, Dense, Diagonal

STRUCTURES = {
    "dense": (Dense(), (4, 4)),
    "diagonal": (Diagonal(), (4,)),
    "block": (BlockDiagonal(2), (2, 2, 2)),
}


def reference(A, b, structure, reverse):
    """The docstring's loop, one step after another."""
    step = lambda x, ab: (structure.matvec(ab[0], x) + ab[1],) * 2
    return jax.lax.scan(step, jnp.zeros(b.shape[1], b.dtype), (A, b), reverse=reverse)[1]


def problem(T, shape, seed=0):
    A = 0.6 * jax.random.normal(jax.random.key(seed), (T, *shape))
    b = jax.random.normal(jax.random.key(seed + 1), (T, 4))
    return A, b


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("T", [1, 3, 17, 101])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backend", ["chunked", "associative"])
def test_backends_match_the_loop(structure, T, reverse, backend):
    structure, shape = STRUCTURES[structure]
    A, b = problem(T, shape, seed=T)
    ours = linear_recurrence(A, b, structure, reverse=reverse, backend=backend)
    tree_allclose(ours, reference(A, b, structure, reverse), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 2, 5, 40, 64])
def test_any_chunk_size(chunk):
    A, b = problem(40, (4, 4))
    ours = chunked_linear_recurrence(A, b, Dense(), chunk=chunk)
    tree_allclose(ours, reference(A, b, Dense(), False), rtol=1e-10, atol=1e-12)


def test_chunk_size_balances_the_passes():
    # ~sqrt(T), a divisor of T within a third of it where there is one (10,001 =
    # 73 x 137; 4,000 = 50 x 80), else ceil(sqrt(T)) with padding (17,984 = 2^6 x 281).
    lengths = (1, 2, 4, 5, 100, 4_000, 10_001, 17_984)
    assert [chunk_size(T) for T in lengths] == [1, 2, 2, 3, 10, 50, 73, 135]


def test_chunked_under_vmap_and_its_derivatives():
    A, b = problem(23, (4,))
    run = lambda A, b: linear_recurrence(A, b, Diagonal(), backend="chunked")
    ref = lambda A, b: reference(A, b, Diagonal(), False)
    batch = jnp.stack([b, 2 * b])
    tree_allclose(
        jax.vmap(run, (None, 0))(A, batch),
        jax.vmap(ref, (None, 0))(A, batch),
        rtol=1e-10,
        atol=1e-12,
    )
    loss = lambda f: lambda A, b: jnp.sum(f(A, b) ** 2)
    tree_allclose(
        jax.grad(loss(run), (0, 1))(A, b), jax.grad(loss(ref), (0, 1))(A, b), rtol=1e-9, atol=1e-11
    )


def test_the_program_does_not_grow_with_T():
    # The associative scan unrolls log2(T) levels into the program; the chunked passes don't.
    def size(T, backend):
        run = lambda A, b: linear_recurrence(A, b, Dense(), backend=backend)
        return len(jax.make_jaxpr(run)(*problem(T, (4, 4))).eqns)

    assert size(100, "chunked") == size(10_000, "chunked")
    assert size(100, "associative") < size(10_000, "associative")


def test_auto_is_chunked_on_cpus_for_every_structure():
    expected = "chunked" if jax.default_backend() == "cpu" else "associative"
    for structure in (Diagonal(), BlockDiagonal(2), Dense()):
        assert resolve_backend("auto", structure) == expected
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("fast")


def test_a_carry_linear_solve_is_one_associative_scan_without_a_loop():
    """Newton on an affine recurrence takes one step: no while loop around it and, on
    "auto", the associative scan (faster than the chunked passes for a single scan), with
    the exact result of lax.scan."""
    import rnnscan

    def step(h, x):
        h = 0.9 * h + x
        return h, h

    xs = jax.random.normal(jax.random.PRNGKey(0), (300, 3))
    method = rnnscan.Newton(jacobian=Diagonal(), carry_linear=True)
    run = lambda xs: rnnscan.solve(step, jnp.zeros(3), xs, method=method)
    assert "while[" not in str(jax.make_jaxpr(run)(xs))  # at any depth of the program
    sol = jax.jit(run)(xs)
    assert int(sol.iterations) == 1 and sol.ok and not sol.fell_back
    tree_allclose(sol.ys, jax.lax.scan(step, jnp.zeros(3), xs)[1], rtol=1e-10, atol=1e-10)
    # The exception follows the method's own Jacobian, whatever the step declares; a dense
    # one-scan solve keeps "auto" (the chunked passes run it faster on CPUs).
    for declared in (Diagonal(), Dense()):
        resolved = method.resolved(jnp.float64, 300, structure=declared)
        assert resolved.linear_recurrence == "associative"
    dense = rnnscan.Newton(carry_linear=True).resolved(jnp.float64, 300, structure=Dense())
    assert dense.linear_recurrence == "auto"


@pytest.mark.parametrize("T", [1, 2, 3, 17, 50])
@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_associative_scan_matches_jax(T, reverse):
    from rnnscan._chunked_recurrence import chunked_associative_scan

    def combine(earlier, later):  # a non-commutative operator on pairs
        return Dense().compose(later[0], earlier[0]), Dense().matvec(later[0], earlier[1]) + later[
            1
        ]

    elements = problem(T, (4, 4), seed=T)
    ours = chunked_associative_scan(combine, elements, reverse=reverse)
    tree_allclose(
        ours, jax.lax.associative_scan(combine, elements, reverse=reverse), rtol=1e-10, atol=1e-12
    )
