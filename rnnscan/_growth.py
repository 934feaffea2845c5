r"""How fast perturbations of the carry grow: products of carry Jacobians, in parallel.

A perturbation of the carry before step s reaches step t multiplied by the product
J_t J_{t-1} ... J_{s+1} of the carry Jacobians J_t = dF/dc(c_{t-1}, x_t). Its log-norm over
the whole sequence, divided by T, is the finite-time estimate of the largest Lyapunov
exponent,

    lambda_1 ~ (1/T) log ||J_T ... J_1||_2,

which the parallel methods' conditioning follows (Gonzalez, Kozachkov, Zoltowski, Clarkson
and Linderman, "Predictability enables parallelization of nonlinear state space models",
2025): lambda_1 < 0 predictable and cheap, lambda_1 > 0 chaotic and not worth it.

The products are built by a reduction tree (adjacent pairs, log2 T levels), each kept
normalised with its log scale apart so that nothing over- or underflows: the same work as one
parallel scan of a Newton iteration (2 T n^3 dense, 2 T n diagonal, 2 T n k^2 for blocks of
k), at O(log T) depth. The finite-T bias is O(1/T) (the log of the constant in
||J_T ... J_1|| ~ C exp(lambda_1 T)); ``rnnscan.diagnostics.lyapunov_exponents`` runs the
QR method when more than the leading exponent, or its convergence, matters.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._flatten import make_flattener
from ._structure import Dense, Diagonal, Structure, as_structure


def declared_structure(f: Callable, jacobian: Structure | str | None = None) -> Structure:
    """The Jacobian structure of ``f``: ``jacobian`` if given, else the one ``f`` declares as
    its ``jacobian_structure`` attribute (every rnnscan.nn cell does), else ``Dense()``."""
    if jacobian is None:
        jacobian = getattr(f, "jacobian_structure", None)
        if jacobian is None:
            return Dense()
    return as_structure(jacobian)


def _normalize(P: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(P / scale, log scale)`` per product, scale = max |entry| (a leading batch axis)."""
    axes = tuple(range(1, P.ndim))
    tiny = jnp.finfo(P.dtype).tiny
    scale = jnp.maximum(jnp.max(jnp.abs(P), axis=axes, keepdims=True), tiny)
    return P / scale, jnp.log(scale.reshape(P.shape[0]))


def dyadic_products(
    structure: Structure, jacobians: jax.Array, *, whole: bool = False, compute_dtype=None
) -> tuple[list[jax.Array], list[jax.Array]]:
    """``(products, log_scales)`` per level of the reduction tree over ``jacobians`` (T, ...).

    Level j holds the normalised products J_{(i+1) 2^j} ... J_{i 2^j + 1} of the aligned
    windows of 2^j steps (later @ earlier; ``structure.compose``) and their log scales, so
    product = P * exp(s). With ``whole=True`` an unpaired last window is carried up a level
    instead of dropped, so the last level is the product of all T Jacobians (the levels below
    then also hold shorter, trailing windows). With ``compute_dtype`` the products are formed
    in that dtype after every Jacobian is normalised in its own (so nothing overflows on the
    cast), while the log scales stay in the Jacobians' dtype."""
    P, s = _normalize(jacobians)
    if compute_dtype is not None:
        P = P.astype(compute_dtype)
    products, scales = [P], [s]
    while P.shape[0] >= 2:
        W = P.shape[0] // 2
        later, earlier = P[1 : 2 * W : 2], P[0 : 2 * W : 2]
        s_pair = s[1 : 2 * W : 2] + s[0 : 2 * W : 2]
        P, ds = _normalize(structure.compose(later, earlier))
        s = s_pair + ds
        if whole and products[-1].shape[0] % 2:
            P = jnp.concatenate([P, products[-1][-1:]])
            s = jnp.concatenate([s, scales[-1][-1:]])
        products.append(P)
        scales.append(s)
    return products, scales


def spectral_log_norm(structure: Structure, P: jax.Array, n: int, iterations: int) -> jax.Array:
    """log ||P||_2 of a batch of (normalised) matrices in ``structure``, by power iteration
    on P^T P from a fixed start (a lower bound; exact for diagonal)."""
    tiny = jnp.finfo(P.dtype).tiny
    if isinstance(structure, Diagonal):
        return jnp.log(jnp.maximum(jnp.max(jnp.abs(P), axis=-1), tiny))
    W = P.shape[0]
    start = 1.0 + 0.1 * jnp.sin(jnp.arange(1, n + 1, dtype=P.dtype))
    v = jnp.broadcast_to(start, (W, n))

    def normalize(v):
        return v / jnp.maximum(jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True)), tiny)

    v = jax.lax.fori_loop(
        0,
        iterations,
        lambda _, v: normalize(structure.matvec(structure.transpose(P), structure.matvec(P, v))),
        normalize(v),
    )
    Pv = structure.matvec(P, v)
    return jnp.log(jnp.maximum(jnp.sqrt(jnp.sum(Pv * Pv, axis=-1)), tiny))


def product_exponent(
    structure: Structure, jacobians: jax.Array, n: int, power_iterations: int = 8
) -> jax.Array:
    """(1/T) log ||J_T ... J_1||_2 of the stacked ``jacobians`` (T, ...): the finite-time
    estimate of the largest Lyapunov exponent (exact for diagonal Jacobians)."""
    T = jacobians.shape[0]
    products, scales = dyadic_products(structure, jacobians, whole=True)
    whole = spectral_log_norm(structure, products[-1], n, power_iterations)[0]
    return (scales[-1][0] + whole) / T


def largest_exponent(f: Callable, init, xs, carries, structure: Structure) -> jax.Array:
    """The finite-time largest Lyapunov exponent of ``f`` along the trajectory ``carries``
    (stacked like ``Solution.carries``, in processing order), from the carry Jacobians at
    every step (one ``vmap``, in ``structure``). Not differentiated; NaN for T = 0."""
    carries = jax.lax.stop_gradient(carries)
    c0, flatten, unflatten = make_flattener(init)
    flat = jax.vmap(flatten)(carries)
    T = flat.shape[0]
    if T == 0:
        return jnp.full((), np.nan, c0.dtype)
    c_prev = jnp.concatenate([c0[None], flat[:-1]], axis=0)

    def jacobian(c, x):
        return structure.jacobian(lambda c: flatten(f(unflatten(c), x)[0]), c)[1]

    if xs is None or not jax.tree_util.tree_leaves(xs):
        Js = jax.vmap(lambda c: jacobian(c, xs))(c_prev)
    else:
        Js = jax.vmap(jacobian)(c_prev, xs)
    return product_exponent(structure, Js, c0.shape[0])
