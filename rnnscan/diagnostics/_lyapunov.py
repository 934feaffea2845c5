r"""Lyapunov exponents of a recurrence along its trajectory.

For a carry update c_t = F(c_{t-1}, x_t) with carry Jacobians J_t = dF/dc(c_{t-1}, x_t), a
perturbation of the carry at step s is carried to step t by the product
J_t J_{t-1} ... J_{s+1}. Its growth rates are the Lyapunov exponents

    lambda_i = lim_{T -> inf} (1/T) log sigma_i(J_T ... J_1),     lambda_1 >= lambda_2 >= ...

(natural log per step; sigma_i the singular values). The trajectory is a fixed sequence of
carries (computed here by ``jax.lax.scan``, or passed in, e.g. ``rnnscan.solve(...).carries``)
and the Jacobians are computed at every step at once (one ``jax.vmap``, in the structure the
step function declares), so only the tangent propagation is sequential.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._flatten import carry_dtype, check_step_function, make_flattener, sequence_length
from .._growth import declared_structure, dyadic_products, spectral_log_norm
from .._structure import BlockDiagonal, Diagonal, Structure

Carry = Any
PyTree = Any

_HIGHEST = jax.lax.Precision.HIGHEST
# Up to this many columns the per-step QR is a hand-written Gram-Schmidt (no LAPACK call per
# step, which is slow inside a scan on CPU and worse on a GPU); above, jnp.linalg.qr.
_GRAM_SCHMIDT_MAX_COLUMNS = 16


# ---------------------------------------------------------------------------------------------
# The trajectory and its Jacobians


class _Trajectory(eqx.Module):
    """The flat carries before every step and the Jacobians there, in processing order."""

    structure: Structure = eqx.field(static=True)
    n: int = eqx.field(static=True)
    length: int = eqx.field(static=True)
    jacobians: jax.Array  # (T, n, n) / (T, n) / (T, n // b, b, b)
    finite: jax.Array  # () bool: carries and Jacobians all finite
    # The Jacobians at the parallel solvers' first guess c_t = F(c_0, x_t), if asked for.
    guess_jacobians: jax.Array | None = None


def _check_carries(carries, init, T: int, name: str):
    carries_def = jax.tree_util.tree_structure(carries)
    init_def = jax.tree_util.tree_structure(init)
    if carries_def != init_def:
        raise TypeError(
            f"{name}: carries must have the carry's pytree structure {init_def} with a leading "
            f"time axis (like rnnscan.Solution.carries); got {carries_def}"
        )
    for (path, c), leaf in zip(
        jax.tree_util.tree_leaves_with_path(carries), jax.tree_util.tree_leaves(init)
    ):
        expected = (T,) + jnp.shape(leaf)
        if jnp.shape(c) != expected:
            raise ValueError(
                f"{name}: carries{jax.tree_util.keystr(path)} has shape {jnp.shape(c)}; "
                f"expected {expected} (the carry's shape with a leading time axis of T = {T}, "
                "aligned with xs as in rnnscan.Solution.carries)"
            )


def trajectory(
    f,
    init,
    xs,
    length,
    reverse,
    carries,
    jacobian,
    name: str,
    max_length: int | None = None,
    at_guess: bool = False,
) -> _Trajectory:
    """Check the arguments, run (or take) the trajectory and compute its Jacobians (and, with
    ``at_guess``, those at the parallel solvers' first guess, a parallel map of ``f``)."""
    if not callable(f):
        raise TypeError(f"{name}: f must be callable, got {type(f).__name__}")
    T = sequence_length(xs, length)
    if T == 0:
        raise ValueError(
            f"{name}: the sequence is empty (T = 0 steps); Lyapunov exponents need at least "
            "one step (and are only meaningful over many)"
        )
    carry_dtype(init)
    init = jax.tree_util.tree_map(jnp.asarray, init)
    init, _ = check_step_function(f, init, xs)
    structure = declared_structure(f, jacobian)
    c0, flatten, unflatten = make_flattener(init)
    n = c0.shape[0]
    structure.validate(n)
    if carries is not None:
        _check_carries(carries, init, T, name)

    def flip(tree):
        return jax.tree_util.tree_map(lambda leaf: jnp.flip(leaf, axis=0), tree)

    if reverse:  # process in the order the recurrence runs
        xs = flip(xs)
        carries = None if carries is None else flip(carries)
    if max_length is not None and max_length < T:  # a prefix of the trajectory
        xs = jax.tree_util.tree_map(lambda leaf: leaf[:max_length], xs)
        carries = (
            None
            if carries is None
            else jax.tree_util.tree_map(lambda leaf: leaf[:max_length], carries)
        )
        T = max_length

    def F(c, x):
        return flatten(f(unflatten(c), x)[0])

    if carries is None:
        flat = jax.lax.scan(lambda c, x: (F(c, x),) * 2, c0, xs, length=T)[1]
    else:
        flat = jax.vmap(flatten)(carries)
    no_inputs = xs is None or not jax.tree_util.tree_leaves(xs)

    def jacobians(carries):
        """dF/dc at the carry before every step, for ``carries`` after every step."""
        c_prev = jnp.concatenate([c0[None], carries[:-1]], axis=0)
        if no_inputs:
            return jax.vmap(lambda c: structure.jacobian(lambda c: F(c, xs), c)[1])(c_prev)
        return jax.vmap(lambda c, x: structure.jacobian(lambda c: F(c, x), c)[1])(c_prev, xs)

    Js = jacobians(flat)
    finite = jnp.logical_and(jnp.all(jnp.isfinite(flat)), jnp.all(jnp.isfinite(Js)))
    guess_Js = None
    if at_guess:  # as Recurrence.first_guess (without a warm start)
        if no_inputs:
            guess = jnp.broadcast_to(F(c0, xs), (T,) + c0.shape)
        else:
            guess = jax.vmap(lambda x: F(c0, x))(xs)
        guess_Js = jacobians(guess)
    return _Trajectory(structure, n, T, Js, finite, guess_Js)


def _guard_finite(values, traj: _Trajectory, name: str):
    return eqx.error_if(
        values,
        jnp.logical_not(traj.finite),
        f"{name}: the trajectory is not finite (NaN/inf in the carries or their Jacobians); "
        "Lyapunov exponents are defined only along a finite trajectory",
    )


# ---------------------------------------------------------------------------------------------
# QR (Benettin / Shimada-Nagashima) for the k leading exponents


def _orthonormalize(Z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(Q, log|diag R|)`` of the thin QR of ``Z`` (..., n, k), batched over leading axes.

    Classical Gram-Schmidt with one re-orthogonalisation (CGS2: orthogonal to working
    precision) for k <= 16, one column per iteration of a ``lax.fori_loop`` (so the program,
    and its compile time, does not grow with k); else ``jnp.linalg.qr``. A column that
    vanishes (a Jacobian of lower rank) gives log|R_ii| = log(tiny) instead of -inf or NaN."""
    tiny = jnp.finfo(Z.dtype).tiny
    k = Z.shape[-1]
    if k > _GRAM_SCHMIDT_MAX_COLUMNS:
        Q, R = jnp.linalg.qr(Z)
        r = jnp.abs(jnp.diagonal(R, axis1=-2, axis2=-1))
        return Q, jnp.log(jnp.maximum(r, tiny))
    axis = Z.ndim - 1

    def column(j, carry):
        Q, logs = carry  # the columns j, j + 1, ... of Q are still zero
        v = jax.lax.dynamic_index_in_dim(Z, j, axis, keepdims=False)
        for _ in range(2):
            coefficients = jnp.einsum("...ik,...i->...k", Q, v, precision=_HIGHEST)
            v = v - jnp.einsum("...ik,...k->...i", Q, coefficients, precision=_HIGHEST)
        norm = jnp.maximum(jnp.sqrt(jnp.sum(v * v, axis=-1)), tiny)
        Q = jax.lax.dynamic_update_index_in_dim(Q, v / norm[..., None], j, axis)
        logs = jax.lax.dynamic_update_index_in_dim(logs, jnp.log(norm), j, axis - 1)
        return Q, logs

    logs = jnp.zeros(Z.shape[:-2] + (k,), Z.dtype)
    return jax.lax.fori_loop(0, k, column, (jnp.zeros_like(Z), logs))


def _random_orthonormal(key, shape, dtype) -> jax.Array:
    # Once, outside the scan: jnp.linalg.qr reads the random matrix once, where the
    # Gram-Schmidt loop would make XLA inline the (large) normal sampler into every use.
    return jnp.linalg.qr(jax.random.normal(key, shape, dtype))[0]


def step_growth(traj: _Trajectory, k: int, key: PRNGKeyArray) -> jax.Array:
    """Per-step log growth rates log|R_t,ii| of the k leading directions, shape (T, k) for a
    dense Jacobian; for diagonal and block-diagonal ones, of *every* direction (T, n): those
    exponents decouple, so all of them cost no more than the leading k."""
    Js, structure, dtype = traj.jacobians, traj.structure, traj.jacobians.dtype
    if isinstance(structure, Diagonal):
        tiny = jnp.finfo(dtype).tiny
        return jnp.log(jnp.maximum(jnp.abs(Js), tiny))
    if isinstance(structure, BlockDiagonal):
        m, b = Js.shape[1], Js.shape[2]
        Q0 = jnp.broadcast_to(_random_orthonormal(key, (b, b), dtype), (m, b, b))
    else:
        Q0 = _random_orthonormal(key, (traj.n, k), dtype)

    def step(Q, J):
        Q, logr = _orthonormalize(jnp.matmul(J, Q, precision=_HIGHEST))
        return Q, logr

    _, logr = jax.lax.scan(step, Q0, Js)
    return logr.reshape(traj.length, -1)  # block: (T, m * b)


def _check_k(k, n, name):
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"{name}: k must be a positive int, got {k!r}")
    if k > n:
        raise ValueError(
            f"{name}: k={k} exponents asked for, but the (flattened, real) carry has only "
            f"n = {n} entries, so there are only {n} Lyapunov exponents"
        )


def _check_transient(transient, T, name):
    if not (isinstance(transient, (int, np.integer)) and 0 <= transient < T):
        raise ValueError(
            f"{name}: transient must be an int in [0, T) = [0, {T}), got {transient!r}"
        )


def lyapunov_exponents(
    f: Callable[[Carry, PyTree], tuple[Carry, PyTree]],
    init: Carry,
    xs: PyTree = None,
    length: int | None = None,
    reverse: bool = False,
    *,
    k: int = 1,
    carries: Carry | None = None,
    jacobian: Structure | str | None = None,
    transient: int = 0,
    key: PRNGKeyArray | None = None,
) -> Float[Array, " k"]:
    r"""The ``k`` largest Lyapunov exponents of the recurrence ``f`` along its trajectory
    from ``init``: natural log per step, largest first.

    The arguments ``f, init, xs, length, reverse`` are those of ``jax.lax.scan`` /
    :func:`rnnscan.scan`. With carry Jacobians J_t = dF/dc(c_{t-1}, x_t) along the trajectory,

        lambda_i = (1/T') sum_{t >= transient} log |R_t[i, i]|,   Q_t R_t = J_t Q_{t-1},

    the QR ("standard") method of Benettin et al. (1980) and Shimada & Nagashima (1979),
    re-orthonormalising after every step: Q_0 is a random orthonormal n x k matrix, Q_t R_t
    the thin QR of J_t Q_{t-1} (T' = T - transient). ``exp(lambda_1)`` is the average factor by
    which the most amplified perturbation of the carry grows per step; lambda_1 < 0 means
    perturbations (and the errors of a parallel solve) die out.

    Cost: the trajectory by one ``jax.lax.scan`` (none when ``carries`` is given), all T
    Jacobians in one parallel pass in the declared structure (n JVPs per step for ``Dense``,
    1 for ``Diagonal``, b for ``BlockDiagonal(b)``), then a sequential scan of the small QR
    steps: O(T n^2 k) for dense, and for diagonal Jacobians no scan at all,
    lambda = sorted mean_t log |J_t,ii| in O(T n) (block-diagonal: a QR of every b x b block,
    O(T n b^2)). That is less than one Newton iteration of :func:`rnnscan.solve`
    (n JVPs per step plus a parallel scan of T n x n matrix products). Memory: the T Jacobians,
    as in the solve.

    Finite-T bias: the estimate is a time average over T' steps. It contains the alignment
    transient of Q_0, a bias of order log(n) / T' (the random start has a component of
    about 1/sqrt(n) on the leading direction), and the transient of the trajectory
    itself; with random inputs the finite-time exponents also fluctuate by O(1/sqrt(T')).
    Skip the first ``transient`` steps to remove the first two. Exponents below log(tiny) of
    the dtype (a Jacobian of lower rank) come out as about log(tiny) (-87 in float32, -708
    in float64) rather than -inf. Complex carries are flattened to (real, imaginary) parts,
    so their exponents are those of the real 2n-dimensional map.

    Reference loop (numpy)::

        def lyapunov_exponents(f, init, xs, k=1):
            c, Q = flatten(init), np.linalg.qr(np.random.randn(n, k))[0]
            total = np.zeros(k)
            for x in xs:
                J = jacobian(lambda c: F(c, x))(c)  # dF/dc at the carry before the step
                Q, R = np.linalg.qr(J @ Q)
                total += np.log(np.abs(np.diag(R)))
                c = F(c, x)
            return np.sort(total / len(xs))[::-1]

    Arguments:
        f: the step function ``f(carry, x) -> (carry, y)``, as for ``jax.lax.scan``.
        init: the initial carry (any pytree of floating or complex arrays).
        xs: the inputs, with a leading time axis, or ``None`` with ``length``.
        length: the number of steps when ``xs`` is ``None``.
        reverse: run from the last step to the first, as in ``jax.lax.scan``.
        k: how many exponents, 1 <= k <= n (the size of the flattened carry).
        carries: the trajectory, if you have it: the carries after every step stacked on a
            leading time axis aligned with ``xs`` (``rnnscan.solve(...).carries`` or the
            carries ``jax.lax.scan`` collected); it is then not recomputed.
        jacobian: the structure of the carry Jacobian (``rnnscan.Dense()``,
            ``rnnscan.Diagonal()``, ``rnnscan.BlockDiagonal(b)`` or a name); default: ``f``'s
            ``jacobian_structure`` attribute (an ``rnnscan.nn`` cell's), else dense. It must
            be exact, as for the solvers.
        transient: leave the growth of the first ``transient`` steps out of the average.
        key: the PRNG key of the random start Q_0 (default ``jax.random.PRNGKey(0)``).

    Returns:
        An array of shape ``(k,)`` in the carry's real dtype, largest exponent first.

    Raises:
        ValueError / TypeError: for an empty sequence, ``k`` outside [1, n], carries of the
            wrong structure or shape, a bad ``transient`` or a bad step function (named).
        equinox's runtime error (also under ``jax.jit``): when the trajectory or its
            Jacobians are not finite.

    Works under ``jax.jit`` (with ``k``, ``transient`` and ``reverse`` static) and
    ``jax.vmap`` (over ``init``, ``xs``, ``carries`` and closed-over parameters).
    """
    name = "lyapunov_exponents"
    traj = trajectory(f, init, xs, length, reverse, carries, jacobian, name)
    _check_k(k, traj.n, name)
    _check_transient(transient, traj.length, name)
    key = jax.random.PRNGKey(0) if key is None else key
    return _exponents(traj, key, k=int(k), transient=int(transient))


# What follows the trajectory reads f only through its Jacobians, so it is one jitted program
# per shape: an eager call compiles it once (instead of every operation separately) and
# later calls reuse it whatever f is; under an outer jax.jit it is inlined.


@functools.partial(jax.jit, static_argnames=("k", "transient"))
def _exponents(traj: _Trajectory, key: PRNGKeyArray, *, k: int, transient: int) -> jax.Array:
    growth = step_growth(traj, k, key)
    exponents = jnp.mean(growth[transient:], axis=0)
    exponents = -jnp.sort(-exponents)[:k]
    return _guard_finite(exponents, traj, "lyapunov_exponents")


# ---------------------------------------------------------------------------------------------
# Finite-time exponents over windows


def window_log_norms(traj: _Trajectory, window: int, iterations: int, key) -> jax.Array:
    """log ||J_{s+w} ... J_{s+1}||_2 for the ``T // window`` consecutive windows, by power
    iteration on (P^T P) with renormalisation after every step (no over/underflow)."""
    structure, Js = traj.structure, traj.jacobians
    W = traj.length // window
    Js = Js[: W * window].reshape((W, window) + Js.shape[1:])
    Js = jnp.swapaxes(Js, 0, 1)  # (window, W, ...): scan over the steps of all windows at once
    if isinstance(structure, Diagonal):
        tiny = jnp.finfo(Js.dtype).tiny
        return jnp.max(jnp.sum(jnp.log(jnp.maximum(jnp.abs(Js), tiny)), axis=0), axis=-1)

    def normalize(v):
        norm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))
        norm = jnp.maximum(norm, jnp.finfo(v.dtype).tiny)
        return v / norm, jnp.log(norm[..., 0])

    def forward(v):
        def step(carry, J):
            v, total = carry
            v, log_norm = normalize(structure.matvec(J, v))
            return (v, total + log_norm), None

        return jax.lax.scan(step, (v, jnp.zeros(v.shape[:-1], v.dtype)), Js)[0]

    def backward(u):
        def step(u, J):
            return normalize(structure.matvec(structure.transpose(J), u))[0], None

        return jax.lax.scan(step, u, Js, reverse=True)[0]

    v = normalize(jax.random.normal(key, (W, traj.n), Js.dtype))[0]
    v = jax.lax.fori_loop(0, iterations, lambda _, v: backward(forward(v)[0]), v)
    return forward(v)[1]


def finite_time_lyapunov_exponents(
    f: Callable[[Carry, PyTree], tuple[Carry, PyTree]],
    init: Carry,
    xs: PyTree = None,
    length: int | None = None,
    reverse: bool = False,
    *,
    window: int,
    carries: Carry | None = None,
    jacobian: Structure | str | None = None,
    power_iterations: int = 4,
    key: PRNGKeyArray | None = None,
) -> Float[Array, " windows"]:
    r"""The largest finite-time Lyapunov exponent of every window of ``window`` steps:

        lambda_w(j) = (1/w) log || J_{(j+1) w} ... J_{j w + 1} ||_2,    j = 0 .. T // w - 1

    (natural log per step; the steps of a last partial window are left out). Where the
    global exponent of :func:`lyapunov_exponents` is an average over the whole sequence, these
    say how perturbations grow *locally*: a sequence with lambda_1 < 0 can still have windows
    that amplify (lambda_w(j) > 0), and those are what slow a parallel solve down.
    ``max_j lambda_w(j)`` bounds the growth over any window (up to the window alignment);
    lambda_w -> lambda_1 as w -> inf.

    Computed in parallel over the windows: the norm of each window's Jacobian product by
    ``power_iterations`` rounds of power iteration on P^T P (each a forward pass with J_t
    and a backward pass with J_t^T, renormalised after every step), from a random start, so
    an estimate from below that converges at rate (sigma_2 / sigma_1)^2 per round; cost
    O((2 p + 1) T n^2) for dense Jacobians. Exact and O(T n) for diagonal Jacobians
    (lambda_w(j) = max_i (1/w) sum_t log |J_t,ii|).

    Reference loop (numpy)::

        for j in range(T // w):
            P = np.eye(n)
            for t in range(j * w, (j + 1) * w):
                P = J[t] @ P
            out[j] = np.log(np.linalg.norm(P, 2)) / w

    Arguments as for :func:`lyapunov_exponents`, and ``window`` (1 <= window <= T), the
    window length w, and ``power_iterations``.
    """
    name = "finite_time_lyapunov_exponents"
    traj = trajectory(f, init, xs, length, reverse, carries, jacobian, name)
    if not (isinstance(window, (int, np.integer)) and 1 <= window <= traj.length):
        raise ValueError(f"{name}: window must be an int in [1, T = {traj.length}], got {window!r}")
    if not (isinstance(power_iterations, (int, np.integer)) and power_iterations >= 0):
        raise ValueError(f"{name}: power_iterations must be an int >= 0, got {power_iterations!r}")
    key = jax.random.PRNGKey(0) if key is None else key
    return _finite_time_exponents(traj, key, window=int(window), iterations=int(power_iterations))


@functools.partial(jax.jit, static_argnames=("window", "iterations"))
def _finite_time_exponents(
    traj: _Trajectory, key: PRNGKeyArray, *, window: int, iterations: int
) -> jax.Array:
    out = window_log_norms(traj, window, iterations, key) / window
    return _guard_finite(out, traj, "finite_time_lyapunov_exponents")


# ---------------------------------------------------------------------------------------------
# Growth of Jacobian products over dyadic windows (a parallel reduction tree)


def dyadic_growth(
    traj: _Trajectory, power_iterations: int = 8, candidates: int = 8, jacobians=None
) -> tuple[jax.Array, jax.Array]:
    """``(G, whole)``: G[j] = max_i log ||J_{(i+1) 2^j} ... J_{i 2^j + 1}||_2 over the aligned
    windows of 2^j steps (j = 0 .. floor(log2 T)), and whole = log ||J_T ... J_1||_2.

    One reduction tree (``_growth.dyadic_products`` with ``whole=True``: work 2 T n^3 for
    dense Jacobians, half a parallel scan of a Newton iteration; 2 T n for diagonal; depth
    log2 T) gives both: the first T // 2^j products of level j are the aligned windows, and
    the last level is the whole product. Only the maximum per level is wanted, so the power
    iteration runs on the ``candidates`` windows of each level with the largest Frobenius
    norm, an upper bound on the 2-norm (||P||_2 <= ||P||_F): any other window's 2-norm is
    below theirs unless the top ``candidates`` bounds all exceed the level's largest 2-norm.
    Diagonal Jacobians need no matrix products: a window's log 2-norm is max_i of the sum
    of log |J_t,ii| over its steps (exact, O(T n)).

    Float64 products are formed in float32 (after normalising every Jacobian in float64,
    the log scales kept in float64): the log 2-norms need ~1e-5 accuracy, not 1e-16, and
    small float32 matrix products run ~3x faster on a CPU. ``jacobians`` replaces
    ``traj.jacobians`` (e.g. ``traj.guess_jacobians``)."""
    structure, T = traj.structure, traj.length
    Js = traj.jacobians if jacobians is None else jacobians
    levels = range(T.bit_length())  # j = 0 .. floor(log2 T)
    if isinstance(structure, Diagonal):
        logs = jnp.log(jnp.maximum(jnp.abs(Js), jnp.finfo(Js.dtype).tiny))
        sums, G = logs, [jnp.max(logs)]
        for _ in levels[1:]:  # the windows of the next level: sums over adjacent pairs
            pairs = sums.shape[0] // 2
            sums = sums[0 : 2 * pairs : 2] + sums[1 : 2 * pairs : 2]
            G.append(jnp.max(sums))
        return jnp.stack(G), jnp.max(jnp.sum(logs, axis=0))
    compute_dtype = jnp.float32 if Js.dtype == jnp.float64 else None
    products, scales = dyadic_products(structure, Js, whole=True, compute_dtype=compute_dtype)
    picked, picked_scales = [], []
    for j in levels:
        P, s = products[j][: T >> j], scales[j][: T >> j]
        if P.shape[0] > candidates:
            axes = tuple(range(1, P.ndim))
            frobenius = 0.5 * jnp.log(jnp.sum(P * P, axis=axes))
            top = jax.lax.top_k(s + frobenius, candidates)[1]
            P, s = P[top], s[top]
        picked.append(P)
        picked_scales.append(s)
    picked.append(products[-1])
    picked_scales.append(scales[-1])
    # One power iteration over every level's candidates at once: one program, not one a level.
    log_norms = jnp.concatenate(picked_scales) + spectral_log_norm(
        structure, jnp.concatenate(picked), traj.n, power_iterations
    )
    ends = np.cumsum([s.shape[0] for s in picked_scales])
    G = jnp.stack([jnp.max(log_norms[e - s.shape[0] : e]) for s, e in zip(picked_scales, ends)])
    return G[:-1], G[-1]
