"""Bad input gets a clear error naming the argument and pytree path; odd but valid input works.
Property-based tests (hypothesis) over shapes and pytree structures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TOLERANCES, jit_solve, tree_allclose
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnscan


def _step(h, x):
    return jnp.tanh(h + x["a"].sum()), x["b"]


def test_mismatched_time_lengths_name_the_leaves():
    xs = {"a": jnp.ones((10, 2)), "b": jnp.ones((9,))}
    with pytest.raises(ValueError, match=r"\['a'\].*10.*\['b'\].*9"):
        rnnscan.scan(_step, jnp.zeros(3), xs)


def test_length_disagreeing_with_xs():
    with pytest.raises(ValueError, match="length=5.*10 steps"):
        rnnscan.scan(_step, jnp.zeros(3), {"a": jnp.ones((10, 2)), "b": jnp.ones(10)}, length=5)


def test_xs_none_without_length():
    with pytest.raises(ValueError, match="length="):
        rnnscan.scan(lambda h, _: (h, h), jnp.zeros(3), None)


def test_scalar_leaf_in_xs():
    with pytest.raises(ValueError, match=r"xs\['b'\] is a scalar"):
        rnnscan.scan(_step, jnp.zeros(3), {"a": jnp.ones((10, 2)), "b": jnp.float64(1.0)})


def test_integer_carry_names_its_path():
    init = {"h": jnp.zeros(3), "count": jnp.array(0)}
    step = lambda c, x: ({"h": c["h"] + x, "count": c["count"] + 1}, x)
    with pytest.raises(TypeError, match=r"init\['count'\] has dtype int"):
        rnnscan.scan(step, init, jnp.ones((4, 3)))


def test_f_changing_the_carry_shape():
    with pytest.raises(TypeError, match=r"carry\[1\].*float64\[3\].*float64\[4\]"):
        rnnscan.scan(
            lambda c, x: ((c[0], jnp.concatenate([c[1], x[:1]])), x),
            (jnp.zeros(2), jnp.zeros(3)),
            jnp.ones((5, 2)),
        )


def test_f_changing_the_carry_dtype():
    with pytest.raises(TypeError, match=r"float32\[3\].*float64\[3\]"):
        rnnscan.scan(
            lambda c, x: (c.astype(jnp.float64) + x, x), jnp.zeros(3, jnp.float32), jnp.ones((5, 3))
        )


def test_f_changing_the_carry_structure():
    with pytest.raises(TypeError, match="pytree structure"):
        rnnscan.scan(lambda c, x: ((c, c), x), jnp.zeros(3), jnp.ones((5, 3)))


def test_f_not_returning_a_pair():
    with pytest.raises(TypeError, match=r"pair \(new_carry, y\)"):
        rnnscan.scan(lambda c, x: c + x, jnp.zeros(3), jnp.ones((5, 3)))


def test_unknown_method_and_options():
    with pytest.raises(ValueError, match="method must be one of"):
        rnnscan.scan(_step, jnp.zeros(3), None, length=3, method="deer")
    with pytest.raises(ValueError, match="on_failure"):
        rnnscan.scan(_step, jnp.zeros(3), None, length=3, on_failure="ignore")
    with pytest.raises(ValueError, match="max_steps"):
        rnnscan.Newton(max_steps=0)
    with pytest.raises(ValueError, match="rtol"):
        rnnscan.Newton(rtol=-1.0)
    with pytest.raises(ValueError, match="jacobian"):
        rnnscan.Newton(jacobian="sparse")


def test_block_size_must_divide_the_carry():
    with pytest.raises(ValueError, match=r"BlockDiagonal\(2\).*size 3"):
        rnnscan.scan(
            lambda c, x: (jnp.tanh(c + x), c),
            jnp.zeros(3),
            jnp.ones((4, 3)),
            method=rnnscan.Newton(jacobian=rnnscan.BlockDiagonal(2)),
        )


def test_bad_guess_shape():
    with pytest.raises(ValueError, match=r"guess.*\(4, 3\)"):
        rnnscan.scan(
            lambda c, x: (jnp.tanh(c + x), c),
            jnp.zeros(3),
            jnp.ones((4, 3)),
            guess=jnp.zeros((3, 3)),
        )


def test_zero_length_is_like_lax_scan():
    final, ys = rnnscan.scan(lambda c, x: (c + x, 2 * x), jnp.ones(3), jnp.zeros((0, 3)))
    ref_final, ref_ys = jax.lax.scan(lambda c, x: (c + x, 2 * x), jnp.ones(3), jnp.zeros((0, 3)))
    tree_allclose((final, ys), (ref_final, ref_ys), rtol=0, atol=0)


def test_integer_inputs_and_no_outputs():
    """Token ids as xs (no gradient for them) and y = None, as jax.lax.scan allows."""
    table = jax.random.normal(jax.random.PRNGKey(0), (7, 4))
    step = lambda h, token: (jnp.tanh(0.5 * h + table[token]), None)
    tokens = jnp.array([1, 5, 2, 6, 0, 3] * 10)
    sol = jit_solve(step, jnp.zeros(4), tokens)
    assert sol.ys is None
    tree_allclose(
        sol.final_carry, jax.lax.scan(step, jnp.zeros(4), tokens)[0], rtol=1e-10, atol=1e-10
    )
    grad = jax.grad(
        lambda table: rnnscan.scan(
            lambda h, t: (jnp.tanh(0.5 * h + table[t]), None), jnp.zeros(4), tokens
        )[0].sum()
    )
    ref = jax.grad(
        lambda table: jax.lax.scan(
            lambda h, t: (jnp.tanh(0.5 * h + table[t]), None), jnp.zeros(4), tokens
        )[0].sum()
    )
    tree_allclose(grad(table), ref(table), rtol=1e-8, atol=1e-10)


# --- property-based: random pytree carries and inputs -----------------------------------

_leaf_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@st.composite
def _problems(draw):
    carry_shapes = draw(st.lists(_leaf_shapes, min_size=1, max_size=3))
    container = draw(st.sampled_from(["tuple", "dict", "list"]))
    T = draw(st.integers(1, 40))
    d = draw(st.integers(1, 3))
    reverse = draw(st.booleans())
    method = draw(st.sampled_from(["newton", "quasi_newton", "fixed_point"]))
    seed = draw(st.integers(0, 2**16))
    return carry_shapes, container, T, d, reverse, method, seed


def _pack(container, leaves):
    if container == "dict":
        return {f"leaf{i}": leaf for i, leaf in enumerate(leaves)}
    return tuple(leaves) if container == "tuple" else list(leaves)


@settings(
    max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(_problems())
def test_random_pytrees_match_lax_scan(problem):
    carry_shapes, container, T, d, reverse, method, seed = problem
    sizes = [int(np.prod(s)) for s in carry_shapes]
    n = sum(sizes)
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    W = 0.8 * jax.random.normal(keys[0], (n, n)) / np.sqrt(n)
    U = jax.random.normal(keys[1], (n, d))
    init = _pack(
        container,
        [
            jax.random.normal(k, s)
            for k, s in zip(jax.random.split(keys[2], len(sizes)), carry_shapes)
        ],
    )
    xs = {"u": jax.random.normal(keys[3], (T, d)), "scale": jnp.linspace(0.5, 1.5, T)}

    def step(carry, x):
        leaves = jax.tree_util.tree_leaves(carry)
        h = jnp.concatenate([leaf.ravel() for leaf in leaves])
        h = jnp.tanh(W @ h + x["scale"] * (U @ x["u"]))
        parts = np.split(np.arange(n), np.cumsum(sizes)[:-1])
        new = [h[idx].reshape(s) for idx, s in zip(parts, carry_shapes)]
        return _pack(container, new), {"first": h[0], "all": h}

    sol = jit_solve(step, init, xs, reverse=reverse, method=method)
    final, ys = jax.lax.scan(step, init, xs, reverse=reverse)
    tree_allclose(sol.final_carry, final, **TOLERANCES[jnp.float64])
    tree_allclose(sol.ys, ys, **TOLERANCES[jnp.float64])
