r"""The diagonal linear recurrence x_t = a_t * x_{t-1} + b_t as a chunked Pallas kernel.

``jax.lax.associative_scan`` solves it in O(log T) rounds, each reading and writing whole
copies of a and b. The physical limit is one read of a and b and one write of x. This module
is the classic reduce-then-scan design, two kernel launches with a small combine between:

1. **Reduce.** A grid of (time chunk, feature block) programs; each runs its chunk of
   ``chunk`` steps sequentially (a loop over rows of its block, features across the
   program) from x = 0, and writes only the chunk's summary: the end state h_c and the
   product of its coefficients P_c = a_{last} ... a_{first}.
2. **Combine.** The carry into chunk c is s_{c-1}, where s_c = P_c * s_{c-1} + h_c: a
   recurrence over T / chunk summaries (``jax.lax.associative_scan``; small).
3. **Scan.** The same grid runs every chunk again, from its carry, writing x.

Traffic: a and b read twice, x written once (5 passes of T n values against the ideal 3).
Derivatives of every order come from ``jax.lax.custom_linear_solve``: the recurrence is the
linear solve (I - L_a) x = b with (L_a x)_t = a_t x_{t-1}, whose transpose is the same
recurrence run backwards with the coefficients shifted by one step (the adjoint), so the
kernels are never differentiated themselves.

Status: written and tested on the CPU in Pallas interpret mode (against
``jax.lax.associative_scan``), **not yet compiled or timed on a GPU**, so
``linear_recurrence(..., backend="auto")`` never picks it; ask for it with
``backend="pallas"``. Off a GPU it runs in interpret mode (slow: for tests only).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

# Time steps per program, and features per program (lanes). Powers of two, as the GPU
# (Triton) lowering requires; untuned until measured on a device.
CHUNK = 256
FEATURE_BLOCK = 128


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _reduce_kernel(a_ref, b_ref, h_ref, p_ref, *, chunk: int):
    def step(t, carry):
        h, p = carry
        a = a_ref[pl.ds(t, 1), :]
        return a * h + b_ref[pl.ds(t, 1), :], a * p

    zeros = jnp.zeros(h_ref.shape, h_ref.dtype)
    h, p = jax.lax.fori_loop(0, chunk, step, (zeros, jnp.ones_like(zeros)))
    h_ref[...] = h
    p_ref[...] = p


def _scan_kernel(a_ref, b_ref, carry_ref, x_ref, *, chunk: int):
    def step(t, h):
        h = a_ref[pl.ds(t, 1), :] * h + b_ref[pl.ds(t, 1), :]
        x_ref[pl.ds(t, 1), :] = h
        return h

    jax.lax.fori_loop(0, chunk, step, carry_ref[...])


@functools.partial(jax.jit, static_argnames=("chunk", "feature_block", "interpret"))
def forward_scan(
    a: jax.Array, b: jax.Array, *, chunk: int, feature_block: int, interpret: bool
) -> jax.Array:
    """x_t = a_t * x_{t-1} + b_t, x_{-1} = 0, for (T, n) arrays; no derivative rules."""
    T, n = b.shape
    L = min(chunk, pl.next_power_of_2(T))
    F = min(feature_block, pl.next_power_of_2(n))
    T_pad, n_pad = _round_up(T, L), _round_up(n, F)
    # Padded steps come after the real ones (a = b = 0 there), so they change nothing before.
    a = jnp.pad(a, ((0, T_pad - T), (0, n_pad - n)))
    b = jnp.pad(b, ((0, T_pad - T), (0, n_pad - n)))
    chunks, blocks = T_pad // L, n_pad // F
    step_block = pl.BlockSpec((L, F), lambda c, j: (c, j))
    summary_block = pl.BlockSpec((1, F), lambda c, j: (c, j))
    summary = jax.ShapeDtypeStruct((chunks, n_pad), b.dtype)
    h, p = pl.pallas_call(
        functools.partial(_reduce_kernel, chunk=L),
        out_shape=(summary, summary),
        grid=(chunks, blocks),
        in_specs=[step_block, step_block],
        out_specs=(summary_block, summary_block),
        interpret=interpret,
    )(a, b)

    def combine(earlier, later):
        (p_i, h_i), (p_j, h_j) = earlier, later
        return p_j * p_i, p_j * h_i + h_j

    ends = jax.lax.associative_scan(combine, (p, h), axis=0)[1]
    carry_in = jnp.concatenate([jnp.zeros_like(ends[:1]), ends[:-1]], axis=0)
    x = pl.pallas_call(
        functools.partial(_scan_kernel, chunk=L),
        out_shape=jax.ShapeDtypeStruct((T_pad, n_pad), b.dtype),
        grid=(chunks, blocks),
        in_specs=[step_block, step_block, summary_block],
        out_specs=step_block,
        interpret=interpret,
    )(a, b, carry_in)
    return x[:T, :n]


def _shift(x: jax.Array, later: bool) -> jax.Array:
    """x_{t-1} (or with ``later`` x_{t+1}) at every t, zero beyond the ends."""
    zero = jnp.zeros_like(x[:1])
    if later:
        return jnp.concatenate([x[1:], zero], axis=0)
    return jnp.concatenate([zero, x[:-1]], axis=0)


def diagonal_linear_recurrence(
    a: jax.Array,
    b: jax.Array,
    *,
    reverse: bool = False,
    interpret: bool | None = None,
    chunk: int = CHUNK,
    feature_block: int = FEATURE_BLOCK,
) -> jax.Array:
    r"""x_t = a_t * x_{t-1} + b_t (``reverse``: x_t = a_t * x_{t+1} + b_t), a and b (T, n),
    by the Pallas kernels above; differentiable to any order, batched by ``jax.vmap``.

    ``interpret`` defaults to True off a GPU. Reference loop::

        x = zeros(n)
        for t in (reversed(range(T)) if reverse else range(T)):
            x = a[t] * x + b[t]
            out[t] = x
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            "diagonal_linear_recurrence: a and b must both have shape (T, n); got "
            f"a {a.shape} and b {b.shape}"
        )
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    scan = functools.partial(
        forward_scan, chunk=chunk, feature_block=feature_block, interpret=interpret
    )

    def run(a, rhs, backwards):
        if backwards:
            return jnp.flip(scan(jnp.flip(a, 0), jnp.flip(rhs, 0)), 0)
        return scan(a, rhs)

    def matvec(x):  # (I - L_a) x
        return x - a * _shift(x, later=reverse)

    def solve(_, rhs):
        return run(a, rhs, reverse)

    def transpose_solve(_, rhs):
        # (L_a^T y)_s = a_{s+1} y_{s+1} (forward; reverse: a_{s-1} y_{s-1}): the recurrence
        # the other way round, with the coefficients shifted by one step.
        return run(_shift(a, later=not reverse), rhs, not reverse)

    return jax.lax.custom_linear_solve(matvec, b, solve, transpose_solve)
