"""Every JAX transformation through the solve (forward mode, reverse mode, Hessians,
derivatives of derivatives, linearize / linear_transpose, nested vmap, jit) against the same
transformation of jax.lax.scan."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from flax import nnx
from helpers import (
    diagonal_lstm,
    diagonal_rnn,
    gru,
    lstm,
    tanh_rnn,
    tree_allclose,
)

import rnnscan
import rnnscan.nn as rn

T, N, D = 16, 4, 2
F64 = dict(rtol=1e-8, atol=1e-9)

# name -> (cell, jacobian structure the parallel methods declare)
PROBLEMS = {
    "tanh (dense)": (tanh_rnn, rnnscan.Dense()),
    "lstm (pytree carry, dense)": (lstm, rnnscan.Dense()),
    "diagonal": (diagonal_rnn, rnnscan.Diagonal()),
    "diagonal lstm (2x2 blocks)": (diagonal_lstm, rnnscan.BlockDiagonal(2)),
}
SOLVERS = {
    "newton": rnnscan.Newton,
    "quasi_newton": rnnscan.QuasiNewton,
    "fixed_point": rnnscan.FixedPoint,
}


def _problem(name, dtype=jnp.float64, T=T, n=N, seed=0):
    cell, structure = PROBLEMS[name]
    params, init, f = cell(jax.random.PRNGKey(seed), n, D, dtype)
    xs = jax.random.normal(jax.random.PRNGKey(seed + 1), (T, D), dtype)
    return f, structure, params, init, xs


def _loss_fn(f, scan_fn):
    """A scalar of the final carry and every output, weighted so that no symmetry hides a
    wrong entry."""

    def loss(params, init, xs):
        final, ys = scan_fn(functools.partial(f, params), init, xs)
        leaves = jax.tree_util.tree_leaves(ys) + jax.tree_util.tree_leaves(final)
        weights = [jnp.cos(jnp.arange(leaf.size).reshape(leaf.shape)) for leaf in leaves]
        return sum(jnp.sum(w * jnp.sin(leaf)) for w, leaf in zip(weights, leaves))

    return loss


def _trajectory_fn(f, scan_fn):
    """(params, init, xs) -> (final carry, outputs): a vector-valued map for Jacobians."""
    return lambda params, init, xs: scan_fn(functools.partial(f, params), init, xs)


# Every problem with Newton, the other solvers on one: the derivative rule is shared, only the
# primal iteration differs between solvers.
CASES = [(problem, "newton") for problem in sorted(PROBLEMS)] + [
    ("tanh (dense)", solver) for solver in ("quasi_newton", "fixed_point")
]


def _parallel(method):
    return functools.partial(rnnscan.scan, method=method)


def _random_tangents(primals, seed):
    leaves, treedef = jax.tree_util.tree_flatten(primals)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return treedef.unflatten(
        [jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
    )


@pytest.mark.parametrize("problem, solver", CASES)
def test_forward_and_reverse_mode(problem, solver):
    """jvp, jacfwd, jacrev, vjp and linearize of the trajectory, float64."""
    f, structure, params, init, xs = _problem(problem)
    ours = _trajectory_fn(f, _parallel(SOLVERS[solver](jacobian=structure)))
    ref = _trajectory_fn(f, jax.lax.scan)
    primals = (params, init, xs)
    tangents = _random_tangents(primals, 2)

    def all_derivatives(fn):
        out, jvp_out = jax.jvp(fn, primals, tangents)
        _, vjp = jax.vjp(fn, *primals)
        cotangent = jax.tree_util.tree_map(jnp.cos, out)
        _, linear = jax.linearize(fn, *primals)
        return dict(
            jvp=jvp_out,
            vjp=vjp(cotangent),
            linearize=linear(*tangents),
            jacfwd=jax.jacfwd(fn, argnums=(1, 2))(*primals),
            jacrev=jax.jacrev(fn, argnums=(0, 1))(*primals),
        )

    tree_allclose(
        jax.jit(all_derivatives, static_argnums=0)(ours),
        jax.jit(all_derivatives, static_argnums=0)(ref),
        **F64,
    )


@pytest.mark.parametrize("problem, solver", CASES)
def test_second_order(problem, solver):
    """hessian, jacrev(grad) and jacfwd(grad) (grad of grad) under jit, float64."""
    f, structure, params, init, xs = _problem(problem)
    ours = _loss_fn(f, _parallel(SOLVERS[solver](jacobian=structure)))
    ref = _loss_fn(f, jax.lax.scan)

    def second(loss):
        return dict(
            hessian=jax.hessian(loss, argnums=(0, 1, 2))(params, init, xs),
            jacrev_grad=jax.jacrev(jax.grad(loss, argnums=1), argnums=2)(params, init, xs),
            jacfwd_grad=jax.jacfwd(jax.grad(loss, argnums=0), argnums=1)(params, init, xs),
        )

    tree_allclose(
        jax.jit(second, static_argnums=0)(ours), jax.jit(second, static_argnums=0)(ref), **F64
    )


def test_third_order_and_hessian_vector_products():
    f, structure, params, init, xs = _problem("tanh (dense)", T=10, n=3)
    ours, ref = _loss_fn(f, _parallel("newton")), _loss_fn(f, jax.lax.scan)
    v = _random_tangents(xs, 3)

    def derivatives(loss):
        g = lambda xs: jax.grad(loss, argnums=2)(params, init, xs)
        hvp = jax.jvp(g, (xs,), (v,))[1]  # forward-over-reverse
        third = jax.jacfwd(jax.hessian(loss, argnums=1), argnums=1)(params, init, xs)
        return hvp, third

    tree_allclose(
        jax.jit(derivatives, static_argnums=0)(ours),
        jax.jit(derivatives, static_argnums=0)(ref),
        **F64,
    )


def test_linear_transpose_of_the_tangent_map():
    """The tangent map is linear and JAX can transpose it: its transpose is the VJP."""
    f, _, params, init, xs = _problem("tanh (dense)")
    traj = _trajectory_fn(f, _parallel("newton"))
    tangent_map = lambda dxs: jax.jvp(lambda xs: traj(params, init, xs), (xs,), (dxs,))[1]
    out = traj(params, init, xs)
    cotangent = jax.tree_util.tree_map(jnp.sin, out)
    (transposed,) = jax.jit(lambda ct: jax.linear_transpose(tangent_map, xs)(ct))(cotangent)
    ref = _trajectory_fn(f, jax.lax.scan)
    (expected,) = jax.vjp(lambda xs: ref(params, init, xs), xs)[1](cotangent)
    tree_allclose(transposed, expected, **F64)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
@pytest.mark.parametrize("solver", ["newton", "quasi_newton"])
def test_check_grads_to_second_order(solver, mode):
    f, structure, params, init, xs = _problem("tanh (dense)", T=8, n=3)
    loss = _loss_fn(f, _parallel(SOLVERS[solver](jacobian=structure)))
    jax.test_util.check_grads(
        jax.jit(loss), (params, init, xs), order=2, modes=[mode], atol=1e-5, rtol=1e-5
    )


def test_nested_vmap_of_jvp_and_jit_of_hessian():
    f, _, params, init, _ = _problem("tanh (dense)")
    xs = jax.random.normal(jax.random.PRNGKey(4), (2, 3, T, D))
    dxs = jax.random.normal(jax.random.PRNGKey(5), (2, 3, T, D))

    def per_sequence(scan_fn):
        traj = _trajectory_fn(f, scan_fn)
        jvp = lambda x, dx: jax.jvp(lambda x: traj(params, init, x), (x,), (dx,))
        hess = jax.hessian(lambda x: _loss_fn(f, scan_fn)(params, init, x))
        return jax.vmap(jax.vmap(lambda x, dx: (jvp(x, dx), hess(x))))

    ours = jax.jit(per_sequence(_parallel("newton")))(xs, dxs)
    tree_allclose(ours, jax.jit(per_sequence(jax.lax.scan))(xs, dxs), **F64)


def test_complex_carry_forward_and_second_order():
    n = 3
    k1, k2 = jax.random.split(jax.random.PRNGKey(6))
    lam = 0.9 * jnp.exp(1j * jnp.linspace(0.3, 2.0, n))
    B = jax.random.normal(k1, (n, D)) + 1j * jax.random.normal(k2, (n, D))
    step = lambda h, x: (lam * jnp.tanh(h) + B @ x, jnp.real(h * jnp.conj(h)))
    init = jnp.zeros(n, jnp.complex128)
    xs = jax.random.normal(jax.random.PRNGKey(7), (T, D))
    loss = lambda scan_fn, xs: jnp.sum(jnp.sin(scan_fn(step, init, xs)[1]))

    def derivatives(scan_fn):
        dxs = jnp.cos(xs)
        return (
            jax.jvp(lambda x: scan_fn(step, init, x), (xs,), (dxs,))[1],
            jax.hessian(functools.partial(loss, scan_fn))(xs),
        )

    tree_allclose(
        jax.jit(derivatives, static_argnums=0)(rnnscan.scan),
        jax.jit(derivatives, static_argnums=0)(jax.lax.scan),
        **F64,
    )


@pytest.mark.parametrize("on_failure", ["fallback", "return"])
def test_derivatives_on_the_fallback_path(on_failure):
    """When the parallel solve gives up, the derivatives are those of the exact (fallen back)
    solution; with on_failure="return" they are implicit derivatives at the returned iterate,
    which the flags mark as untrustworthy."""
    f, _, params, init, xs = _problem("tanh (dense)")
    capped = rnnscan.Newton(max_steps=1)
    ours = _loss_fn(f, functools.partial(rnnscan.scan, method=capped, on_failure=on_failure))
    ref = _loss_fn(f, jax.lax.scan)
    derivatives = lambda loss: (
        jax.jvp(lambda x: loss(params, init, x), (xs,), (jnp.cos(xs),))[1],
        jax.hessian(loss, argnums=1)(params, init, xs),
    )
    got = jax.jit(derivatives, static_argnums=0)(ours)
    if on_failure == "fallback":
        tree_allclose(got, jax.jit(derivatives, static_argnums=0)(ref), **F64)
    else:
        sol = rnnscan.solve(
            functools.partial(f, params), init, xs, method=capped, on_failure="return"
        )
        assert not sol.ok
        assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(got))


def test_float32_forward_mode_and_hessian():
    params, init, f = gru(jax.random.PRNGKey(8), 6, D, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(9), (200, D), jnp.float32)

    def derivatives(scan_fn):
        loss = _loss_fn(f, scan_fn)
        traj = _trajectory_fn(f, scan_fn)
        dxs = jnp.cos(xs)
        return (
            jax.jvp(lambda x: traj(params, init, x), (xs,), (dxs,))[1],
            jax.hessian(loss, argnums=1)(params, init, xs),
        )

    ours = jax.jit(derivatives, static_argnums=0)(rnnscan.scan)
    ref = jax.jit(derivatives, static_argnums=0)(jax.lax.scan)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.abs(b).max()))


def test_reverse_scan_forward_mode():
    f, _, params, init, xs = _problem("lstm (pytree carry, dense)")

    def derivatives(scan_fn):
        traj = _trajectory_fn(f, functools.partial(scan_fn, reverse=True))
        return jax.jacfwd(traj, argnums=(1, 2))(params, init, xs)

    tree_allclose(
        jax.jit(derivatives, static_argnums=0)(rnnscan.scan),
        jax.jit(derivatives, static_argnums=0)(jax.lax.scan),
        **F64,
    )


def test_nnx_grad_of_grad_through_rnn():
    """Flax users: nnx.grad of a function of nnx.grad (a gradient-norm penalty)."""
    cell = rn.GRUCell(D, N, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    xs = jax.random.normal(jax.random.PRNGKey(10), (2, T, D), jnp.float64)

    def penalty(method):
        layer = rn.RNN(cell, method=method)

        def loss(layer):
            return jnp.sum(jnp.sin(layer(xs)))

        def grad_norm(layer):
            grads = nnx.grad(loss)(layer)
            return sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads))

        return nnx.to_pure_dict(nnx.jit(nnx.grad(grad_norm))(layer)["cell"])

    tree_allclose(penalty("newton"), penalty("sequential"), **F64)
