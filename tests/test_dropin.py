"""rnnscan.scan / rnnscan.nn.RNN as drop-ins for jax.lax.scan / flax.nnx.RNN: the patterns of
JAX's scan tests and flax's RNN tests that a user switching over meets, each against the
original (not copies of their files)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import tree_allclose

import rnnscan

PARALLEL = ["newton", "quasi_newton", "fixed_point", "elk", "quasi_elk"]
METHODS = ["sequential", *PARALLEL]


def test_rank_promotion_is_strict_in_this_suite():
    # conftest sets it for every test and worker: the whole suite runs under it.
    assert jax.config.jax_numpy_rank_promotion == "raise"


@pytest.mark.parametrize("method", METHODS)
def test_elementwise_body_under_strict_rank_promotion(method):
    f = lambda c, x: (jnp.sin(c * x), c)
    init, xs = jnp.full(4, 0.3), jnp.linspace(0.1, 1.0, 20).reshape(5, 4)
    tree_allclose(
        rnnscan.scan(f, init, xs, method=method), jax.lax.scan(f, init, xs), rtol=1e-8, atol=1e-10
    )
    grad = lambda scan: jax.grad(lambda c: jnp.sum(scan(f, c, xs)[1]))(init)
    tree_allclose(
        grad(lambda *a: rnnscan.scan(*a, method=method)), grad(jax.lax.scan), rtol=1e-8, atol=1e-10
    )


@pytest.mark.parametrize(
    "init, xs",
    [
        (0, jnp.arange(5)),
        (jnp.array(False), jnp.array([True, False, True])),
        ((jnp.int32(0), jnp.float32(1.0)), jnp.arange(4.0, dtype=jnp.float32)),
    ],
    ids=["int", "bool", "int-and-float"],
)
def test_sequential_takes_what_lax_scan_takes(init, xs):
    def f(c, x):
        if isinstance(c, tuple):
            return (c[0] + 1, c[1] * x), c[0]
        return (c + x if c.dtype != bool else c ^ x), c

    tree_allclose(
        rnnscan.scan(f, init, xs, method="sequential"),
        jax.lax.scan(f, init, xs),
        rtol=1e-8,
        atol=1e-10,
    )


def test_sequential_takes_a_key_carry():
    f = lambda key, x: (jax.random.split(key)[0], jax.random.normal(key) + x)
    key = jax.random.key(3)
    ours_key, ours = rnnscan.scan(f, key, jnp.arange(4.0), method="sequential")
    ref_key, ref = jax.lax.scan(f, key, jnp.arange(4.0))
    tree_allclose(ours, ref, rtol=1e-8, atol=1e-10)
    assert jnp.array_equal(jax.random.key_data(ours_key), jax.random.key_data(ref_key))


@pytest.mark.parametrize("method", PARALLEL)
def test_parallel_methods_name_an_integer_carry(method):
    with pytest.raises(TypeError, match=r"init.*int"):
        rnnscan.scan(lambda c, x: (c + x, c), 0, jnp.arange(5), method=method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("init", [(), None, {}], ids=["tuple", "none", "dict"])
@pytest.mark.parametrize("reverse", [False, True])
def test_empty_carry_is_a_map(method, init, reverse):
    f = lambda c, x: (c, (jnp.sin(x), 2 * x))
    xs = jnp.linspace(0.0, 1.0, 12).reshape(6, 2)
    ours = rnnscan.scan(f, init, xs, reverse=reverse, method=method)
    tree_allclose(ours, jax.lax.scan(f, init, xs, reverse=reverse), rtol=1e-8, atol=1e-10)
    sol = rnnscan.solve(f, init, xs, method=method)
    assert sol.converged and int(sol.iterations) == 0


def test_empty_carry_without_inputs():
    f = lambda c, x: (c, jnp.ones(3))
    tree_allclose(
        rnnscan.scan(f, (), None, length=4),
        jax.lax.scan(f, (), None, length=4),
        rtol=1e-8,
        atol=1e-10,
    )


@pytest.mark.parametrize("method", ["sequential", "newton"])
@pytest.mark.parametrize("unroll", [1, 2, 3, True, False, 0])
def test_unroll_is_accepted_as_lax_scan_accepts_it(method, unroll):
    f = lambda c, x: (jnp.tanh(c + x), c)
    init, xs = jnp.zeros(2), jnp.ones((7, 2))
    ours = rnnscan.scan(f, init, xs, unroll=unroll, method=method)
    tree_allclose(ours, jax.lax.scan(f, init, xs, unroll=unroll), rtol=1e-8, atol=1e-10)


def test_unroll_reaches_lax_scan():
    f = lambda c, x: (jnp.tanh(c + x), c)
    jaxpr = jax.make_jaxpr(
        lambda xs: rnnscan.scan(f, jnp.zeros(2), xs, unroll=3, method="sequential")
    )(jnp.ones((7, 2)))
    assert "unroll=3" in str(jaxpr)


@pytest.mark.parametrize("method", PARALLEL)
@pytest.mark.parametrize("unroll", [-1, 1.5])
def test_invalid_unroll_is_refused(method, unroll):
    # "sequential" raises what jax.lax.scan raises (test_sequential_raises_what_lax_scan_raises).
    with pytest.raises(ValueError, match="unroll"):
        rnnscan.scan(lambda c, x: (c + x, c), 0.0, jnp.arange(3.0), unroll=unroll, method=method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.float32])
def test_python_float_init_adopts_the_body_dtype(method, dtype):
    f = lambda c, x: (0.5 * c + x, c)
    xs = jnp.linspace(0.0, 1.0, 6, dtype=dtype)
    carry, ys = rnnscan.scan(f, 0.0, xs, method=method)
    ref_carry, ref_ys = jax.lax.scan(f, 0.0, xs)
    assert carry.dtype == ref_carry.dtype == dtype and ys.dtype == ref_ys.dtype
    tree_allclose((carry, ys), (ref_carry, ref_ys), rtol=1e-3, atol=1e-3)


def test_a_strongly_typed_init_still_must_match():
    with pytest.raises(TypeError, match="changed the carry"):
        rnnscan.scan(lambda c, x: (c * x, c), jnp.float32(0.0), jnp.ones(3, jnp.float64))


def test_declared_structure_is_picked_up_without_arguments():
    cell = rnnscan.nn.DiagGRUCell(3, 6, rngs=nnx.Rngs(0))
    init, xs = cell.initialize_carry((3,)), jnp.ones((40, 3), jnp.float32)
    program = lambda method: str(
        jax.make_jaxpr(lambda x: rnnscan.scan(cell, init, x, method=method))(xs)
    )
    assert program("newton") == program(rnnscan.Newton(jacobian=rnnscan.Diagonal()))
    assert program("newton") != program(rnnscan.Newton(jacobian=rnnscan.Dense()))
    tree_allclose(rnnscan.scan(cell, init, xs), jax.lax.scan(cell, init, xs), rtol=1e-5, atol=1e-5)


def test_declared_structure_reaches_the_gradient():
    # A step function that declares a diagonal Jacobian is solved and differentiated with it.
    W = jnp.array([[0.5, 0.0], [0.0, -0.3]])

    def f(c, x):
        return jnp.tanh(W @ c + x), c

    f_declared = type(
        "Step", (), {"__call__": staticmethod(f), "jacobian_structure": rnnscan.Diagonal()}
    )()
    xs = jnp.linspace(0.0, 1.0, 20).reshape(10, 2)
    loss = lambda scan, c: jnp.sum(scan(c, xs)[1] ** 2)
    ours = jax.grad(lambda c: loss(lambda c, x: rnnscan.scan(f_declared, c, x), c))(jnp.ones(2))
    ref = jax.grad(lambda c: loss(lambda c, x: jax.lax.scan(f, c, x), c))(jnp.ones(2))
    tree_allclose(ours, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", ["sequential", "newton"])
def test_rnn_takes_flax_constructor_flags(method):
    cell = nnx.GRUCell(3, 5, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 9, 3), jnp.float32)
    ours = rnnscan.nn.RNN(cell, unroll=2, state_axes=None, broadcast_rngs=None, method=method)
    theirs = nnx.RNN(cell, unroll=2, state_axes=None, broadcast_rngs=None)
    tree_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flag", ["state_axes", "broadcast_rngs"])
def test_rnn_refuses_flax_flags_it_cannot_honour(flag):
    cell = nnx.GRUCell(3, 5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=flag):
        rnnscan.nn.RNN(cell, **{flag: {nnx.Param: 0}})


def test_rnn_refuses_a_negative_unroll():
    with pytest.raises(ValueError, match="unroll"):
        rnnscan.nn.RNN(nnx.GRUCell(3, 5, rngs=nnx.Rngs(0)), unroll=-1)


def test_numbers_agree_with_numpy_reference():
    # The sequential loop of the docstring, by hand, as the last word on the semantics.
    f = lambda c, x: (c * 0.9 + x, c)
    xs = np.arange(5.0)
    c, ys = 0.0, []
    for x in xs:
        ys.append(c)
        c = c * 0.9 + x
    tree_allclose(
        rnnscan.scan(f, 0.0, jnp.asarray(xs)),
        (jnp.asarray(c), jnp.asarray(ys)),
        rtol=1e-8,
        atol=1e-10,
    )


def test_sequential_scan_is_the_lax_scan_program():
    # JAX's own jaxpr tests (forwarding of xs to ys, the scan equation's params) then hold too.
    f = lambda c, x: (c + 1, x)
    ours = jax.make_jaxpr(lambda x: rnnscan.scan(f, 0, x, method="sequential", unroll=2))
    ref = jax.make_jaxpr(lambda x: jax.lax.scan(f, 0, x, unroll=2))
    assert str(ours(jnp.arange(3.0))) == str(ref(jnp.arange(3.0)))


def _bad_calls():
    def changes_structure(c, x):
        return (c[0], c[1], c[1]), x

    def changes_dtype(c, x):
        return c.astype(jnp.float32), x

    return {
        "not-callable": lambda scan: scan(0, 0.0, jnp.arange(3.0)),
        "carry-structure": lambda scan: scan(changes_structure, (0.0, 1.0), jnp.arange(3.0)),
        "carry-dtype": lambda scan: scan(changes_dtype, jnp.int32(0), jnp.arange(3.0)),
        "not-a-pair": lambda scan: scan(lambda c, x: c, 0.0, jnp.arange(3.0)),
        "scalar-xs": lambda scan: scan(lambda c, x: (c, x), 0.0, [1.0, 2.0]),
        "length": lambda scan: scan(lambda c, x: (c, x), 0.0, jnp.arange(3.0), length=2),
        "unroll": lambda scan: scan(lambda c, x: (c, x), 0.0, jnp.arange(3.0), unroll=-1),
    }


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_sequential_raises_what_lax_scan_raises(name):
    call = _bad_calls()[name]
    with pytest.raises(Exception) as ref:
        call(jax.lax.scan)
    with pytest.raises(type(ref.value)) as ours:
        call(lambda *a, **k: rnnscan.scan(*a, method="sequential", **k))
    assert str(ours.value) == str(ref.value)


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_parallel_methods_raise_the_exception_class_lax_scan_raises(name):
    # The messages are rnnscan's own (they name the argument at fault); the classes match.
    call = _bad_calls()[name]
    with pytest.raises(Exception) as ref:
        call(jax.lax.scan)
    with pytest.raises(type(ref.value)):
        call(lambda *a, **k: rnnscan.scan(*a, method="newton", **k))


@pytest.mark.parametrize("method", ["sequential", "newton"])
@pytest.mark.parametrize("argument", ["length", "unroll"])
def test_a_traced_length_or_unroll_is_a_concretization_error(method, argument):
    # As jax.lax.scan: a jitted argument cannot set the number of steps or the unrolling.
    def call(n, x):
        kwargs = {"length": n} if argument == "length" else {"length": 4, "unroll": n}
        return rnnscan.scan(lambda c, _: (c, c), x, None, method=method, **kwargs)

    with pytest.raises(jax.errors.ConcretizationTypeError, match=f"`{argument}` argument"):
        jax.jit(call)(3, 1.0)
