"""The hot loop: the linear recurrence x_t = A_t x_{t-1} + b_t, solved in parallel.

Everything else in rnnscan reaches it through :func:`linear_recurrence`, so a faster
implementation can replace the body without touching the solvers: ``backend="pallas"``
runs the chunked Pallas kernel of ``_pallas_recurrence.py`` (diagonal and block-diagonal
Jacobians; not yet measured on a GPU, so ``"auto"`` does not choose it).
"""

from __future__ import annotations

import jax
from jaxtyping import Array, Float

from ._chunked_recurrence import chunked_linear_recurrence
from ._structure import BlockDiagonal, Diagonal, Structure

BACKENDS = ("auto", "associative", "chunked", "pallas")


def resolve_backend(backend: str, structure: Structure | None = None) -> str:
    """``"auto"``: the chunked passes on CPUs, where they compile 2-3x faster than the
    associative scan and run as fast or faster (2-core CPU, Newton on a GRU, n = 8-128:
    0.6-1.0x the associative scan's time forward, 0.8-1.1x with the gradient); the
    associative scan on accelerators, where the chunked passes have not been measured.
    (``structure`` is accepted for rules that depend on it; none does today.)"""
    if backend not in BACKENDS:
        raise ValueError(f"linear_recurrence: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "chunked" if jax.default_backend() == "cpu" else "associative"
    return backend


def linear_recurrence(
    A: Float[Array, "T ..."],
    b: Float[Array, "T n"],
    structure: Structure,
    *,
    reverse: bool = False,
    backend: str = "auto",
) -> Float[Array, "T n"]:
    r"""Solve x_t = A_t x_{t-1} + b_t for t = 0..T-1 with x_{-1} = 0 (or, with ``reverse``,
    x_t = A_t x_{t+1} + b_t for t = T-1..0 with x_T = 0).

    A nonzero initial state x_init is folded in by the caller: b_0 <- b_0 + A_0 x_init.

    Uses ``jax.lax.associative_scan`` on pairs (A, b) with the associative operator
    (A_i, b_i) . (A_j, b_j) = (A_j A_i, A_j b_i + b_j) (element j after element i):
    O(log T) depth; O(T n^3) work for dense A, O(T n) for diagonal A. Matrix products run at
    ``Precision.HIGHEST`` (TF32 on GPUs would ruin Newton's accuracy).

    ``backend``: ``"associative"`` (the above), ``"chunked"`` (three sequential passes over
    ~sqrt(T) chunks, vectorised over the chunks: a program whose size does not grow with T,
    depth ~3 sqrt(T); ``_chunked_recurrence.py``), ``"pallas"`` (``Diagonal()`` and
    ``BlockDiagonal(k)``: a chunked reduce-then-scan Pallas kernel, differentiable to any
    order; interpret mode, slow, off a GPU) or ``"auto"`` (:func:`resolve_backend`:
    ``"chunked"`` on CPUs, else ``"associative"``).

    Reference loop::

        x = zeros(n)
        for t in (reversed(range(T)) if reverse else range(T)):
            x = A[t] @ x + b[t]
            out[t] = x
    """

    backend = resolve_backend(backend, structure)
    if backend == "chunked":
        return chunked_linear_recurrence(A, b, structure, reverse=reverse)
    if backend == "pallas":
        if not isinstance(structure, Diagonal | BlockDiagonal):
            raise NotImplementedError(
                f"linear_recurrence: backend='pallas' has kernels for Diagonal() and "
                f"BlockDiagonal(k) only, not {structure!r}; use backend='associative'"
            )
        from ._pallas_recurrence import pallas_linear_recurrence

        return pallas_linear_recurrence(A, b, structure, reverse=reverse)
    return linear_recurrence_with_products(A, b, structure, reverse=reverse)[1]


def linear_recurrence_with_products(
    A: Float[Array, "T ..."],
    b: Float[Array, "T n"],
    structure: Structure,
    *,
    reverse: bool = False,
) -> tuple[Float[Array, "T ..."], Float[Array, "T n"]]:
    r"""``(P, x)``: the solution x of :func:`linear_recurrence` and the running products of A,
    P_t = A_t A_{t-1} ... A_0 (with ``reverse``, P_t = A_t A_{t+1} ... A_{T-1}), stored in
    ``structure`` like A.

    P_t is the sensitivity of x_t to the initial state: starting from x_init instead of 0
    gives x_t + P_t x_init (with ``reverse``, from x_T = x_init). The associative scan forms
    P anyway, so returning it is free; the time-split solver (``_distributed.py``) uses it
    to correct each block for the state it actually starts from.

    Reference loop::

        x, P = zeros(n), I
        for t in (reversed(range(T)) if reverse else range(T)):
            x, P = A[t] @ x + b[t], A[t] @ P
            out_x[t], out_P[t] = x, P
    """

    def combine(earlier, later):
        A_i, b_i = earlier
        A_j, b_j = later
        return structure.compose(A_j, A_i), structure.matvec(A_j, b_i) + b_j

    return jax.lax.associative_scan(combine, (A, b), reverse=reverse, axis=0)
