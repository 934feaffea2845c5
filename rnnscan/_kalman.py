r"""The damped (Levenberg–Marquardt) Newton step as parallel Kalman smoothing (ELK).

DEER's Newton step solves the linear recurrence delta_t = J_t delta_{t-1} + r_t exactly
(:func:`~rnnscan._linear_recurrence.linear_recurrence`). Far from the solution, or when the
Jacobians are unstable, that step can be huge. The Levenberg–Marquardt step instead minimises

    sum_t || delta_t - J_t delta_{t-1} - r_t ||^2  +  damping * sum_t || delta_t ||^2,

with delta_{-1} = 0. This is the negative log posterior of a linear-Gaussian state-space
model, so its minimiser is a Kalman smoother's posterior mean, and the Kalman filter and
smoother have associative-scan forms of O(log T) depth:

- S. Särkkä and Á. F. García-Fernández, "Temporal parallelization of Bayesian smoothers",
  IEEE Transactions on Automatic Control 66(1), 2021.
- X. Gonzalez, A. Warrington, J. T. H. Smith and S. W. Linderman, "Towards Scalable and
  Stable Parallelization of Nonlinear RNNs" (ELK), NeurIPS 2024.

The noise is isotropic, so a block-diagonal Jacobian keeps every block of the model
independent: each structure is turned into a batch of independent square blocks (Diagonal:
n scalar blocks, handled elementwise; BlockDiagonal(k): n // k blocks of k x k; Dense: one
block of n x n) and the same scans run on all blocks at once.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, ScalarLike

from ._chunked_recurrence import chunked_associative_scan
from ._structure import BlockDiagonal, Dense, Diagonal, Structure

_HIGHEST = jax.lax.Precision.HIGHEST


class _ScalarBlocks:
    """1 x 1 blocks stored as plain numbers: matrices and vectors are both (..., n)."""

    @staticmethod
    def mm(a, b):
        return a * b

    @staticmethod
    def mv(a, v):
        return a * v

    @staticmethod
    def t(a):
        return a

    @staticmethod
    def sym(a):
        return a

    @staticmethod
    def eye_like(a):
        return jnp.ones_like(a)

    @staticmethod
    def solve(M, B):
        return B / M

    solve_vec = solve


def _gauss_jordan(M, B):
    """X with M X = B for batches of small square M (..., k, k) and B (..., k, m).

    Gauss-Jordan elimination with partial pivoting in plain array operations rather than
    ``jnp.linalg.solve``: on CPU the latter calls LAPACK through a custom call, which was seen
    to deadlock (jaxlib 0.10.2, every thread idle) inside the while loop of a long ELK solve.
    O(k^3) like LU.
    """
    k = M.shape[-1]
    rows = jnp.arange(k).reshape((1,) * (M.ndim - 2) + (k,))  # explicit: strict rank promotion

    def eliminate(j, A):
        column = jax.lax.dynamic_index_in_dim(A, j, axis=-1, keepdims=False)  # (..., k)
        pivot_row = jnp.argmax(jnp.where(rows >= j, jnp.abs(column), -1), axis=-1)[..., None]
        swap = jnp.where(rows == j, pivot_row, jnp.where(rows == pivot_row, j, rows))
        A = jnp.take_along_axis(A, swap[..., None], axis=-2)
        row = jax.lax.dynamic_index_in_dim(A, j, axis=-2, keepdims=True)  # (..., 1, k + m)
        row = row / jax.lax.dynamic_index_in_dim(row, j, axis=-1, keepdims=True)
        factors = jax.lax.dynamic_index_in_dim(A, j, axis=-1, keepdims=True)  # (..., k, 1)
        A = jnp.where((rows == j)[..., None], row, A - factors * row)
        return A

    A = jax.lax.fori_loop(0, k, eliminate, jnp.concatenate([M, B], axis=-1))
    return A[..., k:]


class _MatrixBlocks:
    """k x k blocks: matrices are (..., m, k, k) and vectors (..., m, k)."""

    @staticmethod
    def mm(a, b):
        return jnp.matmul(a, b, precision=_HIGHEST)

    @staticmethod
    def mv(a, v):
        return jnp.einsum("...ij,...j->...i", a, v, precision=_HIGHEST)

    @staticmethod
    def t(a):
        return jnp.swapaxes(a, -1, -2)

    @staticmethod
    def sym(a):
        # Rounding makes products like A C A^T slightly asymmetric, and the asymmetry would
        # compound over the log T levels of the scan.
        return 0.5 * (a + jnp.swapaxes(a, -1, -2))

    @staticmethod
    def eye_like(a):
        return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)

    @staticmethod
    @staticmethod
    def solve(M, B):
        return _gauss_jordan(M, B)

    @staticmethod
    def solve_vec(M, v):
        return _gauss_jordan(M, v[..., None])[..., 0]


def _to_blocks(J, r, structure):
    """``(ops, J_blocks, r_blocks, from_blocks)`` for a structure's stored Jacobians."""
    T, n = r.shape
    if isinstance(structure, Diagonal) or (
        isinstance(structure, BlockDiagonal) and structure.block_size == 1
    ):
        Jb = J if isinstance(structure, Diagonal) else J[..., 0, 0]
        return _ScalarBlocks, Jb, r, lambda d: d
    if isinstance(structure, Dense):
        return _MatrixBlocks, J[:, None], r[:, None], lambda d: d[:, 0]
    if isinstance(structure, BlockDiagonal):
        k = structure.block_size
        structure.validate(n)
        # The strided layout: the flat carry is a (k, n // k) array and block i is column i.
        rb = jnp.swapaxes(r.reshape(T, k, n // k), -1, -2)
        return _MatrixBlocks, J, rb, lambda d: jnp.swapaxes(d, -1, -2).reshape(T, n)
    raise TypeError(f"damped_linear_recurrence: unsupported structure {structure!r}")


def damped_linear_recurrence(
    J: Float[Array, "T ..."],
    r: Float[Array, "T n"],
    damping: ScalarLike,
    structure: Structure,
    update: str = "smoother",
) -> Float[Array, "T n"]:
    r"""The Levenberg–Marquardt step: the minimiser over delta_0..delta_{T-1} of

        sum_t || delta_t - J_t delta_{t-1} - r_t ||^2  +  damping * sum_t || delta_t ||^2,

    with delta_{-1} = 0. Equivalently (L^T L + damping I) delta = L^T r, where
    (L delta)_t = delta_t - J_t delta_{t-1}. ``damping = 0`` gives the Newton (DEER) step
    L^{-1} r, i.e. :func:`~rnnscan._linear_recurrence.linear_recurrence` ``(J, r, structure)``;
    large damping gives the short gradient step L^T r / damping.

    ``update="filter"`` returns the *filtered* means instead: step t minimises the objective
    truncated after t, so it depends on r_0..r_t only (causal; zero residuals up to t give a
    zero step up to t, so a converged prefix stays converged). It is not the minimiser of the
    whole objective, but it is what ELK's reference code takes (Gonzalez et al. 2024), and
    it costs one scan instead of two. ``damping = 0`` is the Newton step here too.

    ``J`` is stored in ``structure``'s layout (``(T, n, n)``, ``(T, n)`` or
    ``(T, n // k, k, k)``, see ``_structure.py``); ``damping`` is a non-negative scalar and
    may be traced. Works under ``jit`` and ``vmap``.

    **State-space model.** The objective is minus the log posterior (up to constants and a
    factor 2) of

        delta_t = J_t delta_{t-1} + r_t + w_t,   w_t ~ N(0, I),   delta_{-1} = 0,
        0       = delta_t + v_t,                 v_t ~ N(0, damping^{-1} I),

    so the minimiser is the posterior mean: the Kalman filter followed by the
    Rauch–Tung–Striebel smoother (the *smoothed* means; the filtered ones are not the
    minimiser). The observation is applied in information form: its precision is
    ``damping``, so ``damping = 0`` is an exact no-op update rather than an infinite variance.

    **Parallel filter** (Särkkä & García-Fernández 2021, Lemmas 7–8). Element t stands for
    p(delta_t | delta_{t-1}, y_t) = N(A delta_{t-1} + b, C) together with the likelihood of
    y_t as a function of delta_{t-1}, exp(-1/2 x^T Z x + eta^T x) at x = delta_{t-1}. With
    a = 1 / (1 + damping) and s = damping / (1 + damping):

        A_t = a J_t,   b_t = a r_t,   C_t = a I,   eta_t = -s J_t^T r_t,   Z_t = s J_t^T J_t,

    and for t = 0, as delta_{-1} = 0 is known, A_0 = 0, eta_0 = 0, Z_0 = 0. Element j after
    element i combine, with M = I + C_i Z_j, as

        A = A_j M^{-1} A_i
        b = A_j M^{-1} (b_i + C_i eta_j) + b_j
        C = A_j M^{-1} C_i A_j^T + C_j
        eta = A_i^T M^{-T} (eta_j - Z_j b_i) + eta_i
        Z = A_i^T M^{-T} Z_j A_i + Z_i.

    The inclusive prefix up to t has b = m_t, C = P_t: the filtered mean and covariance.

    **Parallel smoother** (two-filter form). The smoothed density factors as

        p(delta_t | y_0..y_{T-1})  ∝  N(delta_t; m_t, P_t) * exp(-1/2 x^T Z'_t x + eta'_t^T x),

    where (eta'_t, Z'_t), the likelihood of y_{t+1}..y_{T-1} as a function of delta_t, are the
    eta and Z of the suffix a_{t+1} (x) ... (x) a_{T-1} (zero for t = T-1): the same elements
    and combination rule, scanned in reverse (a parallel form of the backward information
    filter of the classical two-filter smoother). The smoothed mean, the result, is

        delta_t = (I + P_t Z'_t)^{-1} (m_t + P_t eta'_t),

    a local solve with a matrix whose eigenvalues are >= 1. This gives the same means as the
    RTS-form parallel smoother (ibid., Lemmas 9–10), which is not used: its gain
    P_t J_{t+1}^T (J_{t+1} P_t J_{t+1}^T + I)^{-1} needs the unit part of a matrix of size
    up to ~1/damping, which float32 loses (a singular solve, NaN) for small damping and
    unstable J_t. Here P_t only ever meets the future information Z'_t, which is small
    (O(damping T |J|^2)) exactly when P_t can be large, and at ``damping = 0`` every eta, Z is
    exactly zero, so the result is the filtered mean: the Newton step, to rounding.

    Costs: two scans of O(log T) depth; O(T n^3) work for dense J, O(T n k^2) for
    BlockDiagonal(k), and O(T n) elementwise work and memory for Diagonal. Matrix products
    run at ``Precision.HIGHEST``. At ``damping = 0`` the filtered covariances grow like the squared
    products of the J_t, so unstable Jacobians over long sequences can overflow (in float32
    at roughly twice the log-length at which the undamped step itself overflows).

    Reference loop (dense J; the sequential filter and RTS smoother, same means)::

        m, P = zeros(n), zeros((n, n))
        for t in range(T):
            m, P = J[t] @ m + r[t], J[t] @ P @ J[t].T + I   # predict
            G = inv(I + damping * P)                        # observe 0 = delta_t + v_t
            m, P = G @ m, G @ P
            ms[t], Ps[t] = m, P
        delta[T - 1] = ms[T - 1]
        for t in reversed(range(T - 1)):
            E = Ps[t] @ J[t + 1].T @ inv(J[t + 1] @ Ps[t] @ J[t + 1].T + I)
            delta[t] = ms[t] + E @ (delta[t + 1] - J[t + 1] @ ms[t] - r[t + 1])
    """
    ops, Jb, rb, from_blocks = _to_blocks(J, r, structure)
    damping = jnp.asarray(damping, dtype=rb.dtype)
    a = 1 / (1 + damping)
    # s = 1 - a, but written so that it keeps its relative accuracy for tiny damping.
    s = damping * a
    elements = _filter_elements(ops, Jb, rb, a, s)
    combine = functools.partial(_combine_filter, ops)

    scan = _associative_scan()
    _, m, P, _, _ = scan(combine, elements)
    if update == "filter":
        return from_blocks(m)
    # Suffixes a_t (x) ... (x) a_{T-1}; the reversed scan passes the later element first.
    _, _, _, eta, Z = scan(lambda later, earlier: combine(earlier, later), elements, reverse=True)
    # The likelihood of y_{t+1..T-1} as a function of delta_t; nothing after the last step.
    eta = jnp.concatenate([eta[1:], jnp.zeros_like(eta[:1])])
    Z = jnp.concatenate([Z[1:], jnp.zeros_like(Z[:1])])

    delta = ops.solve_vec(ops.eye_like(P) + ops.mm(P, Z), m + ops.mv(P, eta))
    return from_blocks(delta)


def _associative_scan():
    """The prefix scan of the filter's elements: on CPUs the chunked passes, whose program
    does not grow with T (``jax.lax.associative_scan`` compiles its Kalman combine once per
    level: most of ELK's compile time), elsewhere ``jax.lax.associative_scan``."""
    if jax.default_backend() == "cpu":
        return chunked_associative_scan
    return functools.partial(jax.lax.associative_scan, axis=0)


def _filter_elements(ops, J, r, a, s):
    """The filtering elements (A_t, b_t, C_t, eta_t, Z_t) of the model."""
    # delta_{-1} = 0 is known exactly, so J_0 multiplies nothing.
    J = J.at[0].set(0)
    Jt = ops.t(J)
    return (a * J, a * r, a * ops.eye_like(J), -s * ops.mv(Jt, r), s * ops.sym(ops.mm(Jt, J)))


def _combine_filter(ops, earlier, later):
    """Särkkä & García-Fernández (2021), Lemma 8: element ``later`` after ``earlier``."""
    A_i, b_i, C_i, eta_i, Z_i = earlier
    A_j, b_j, C_j, eta_j, Z_j = later
    # M = I + C_i Z_j is not symmetric but has eigenvalues >= 1 (C_i, Z_j are PSD).
    M = ops.eye_like(C_i) + ops.mm(C_i, Z_j)
    X = ops.t(ops.solve(ops.t(M), ops.t(A_j)))  # A_j M^{-1}
    Y = ops.t(ops.solve(M, A_i))  # A_i^T M^{-T}
    A_ij = ops.mm(X, A_i)
    b_ij = ops.mv(X, b_i + ops.mv(C_i, eta_j)) + b_j
    C_ij = ops.sym(ops.mm(ops.mm(X, C_i), ops.t(A_j))) + C_j
    eta_ij = ops.mv(Y, eta_j - ops.mv(Z_j, b_i)) + eta_i
    Z_ij = ops.sym(ops.mm(ops.mm(Y, Z_j), A_i)) + Z_i
    return A_ij, b_ij, C_ij, eta_ij, Z_ij


def linearised_residual(
    J: Float[Array, "T ..."],
    r: Float[Array, "T n"],
    delta: Float[Array, "T n"],
    structure: Structure,
) -> Float[Array, "T n"]:
    r"""r_t - (delta_t - J_t delta_{t-1}) with delta_{-1} = 0: the residual of the linearised
    recurrence after the step ``delta``.

    If r_t = -(c_t - F(c_{t-1}, x_t)) is minus the current residual, the squared norm of this is
    the merit predicted after the step, so an LM trust region can compare the predicted
    decrease ||r||^2 - ||r - L delta||^2 with the actual one. Diagonal: O(T n) work.
    """
    prev = jnp.concatenate([jnp.zeros_like(delta[:1]), delta[:-1]])
    return r - delta + structure.matvec(J, prev)
