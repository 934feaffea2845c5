"""The public entry points: ``solve`` and its ``jax.lax.scan``-shaped twin ``scan``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.extend
import jax.numpy as jnp

from ._flatten import carry_dtype, check_step_function, make_flattener, sequence_length
from ._methods import Method, Sequential, as_method
from ._solution import RESULTS, Solution
from ._solve import ON_FAILURE, solve_carries

Carry = Any
PyTree = Any


def _flip(tree):
    return jax.tree_util.tree_map(lambda leaf: jnp.flip(leaf, axis=0), tree)


def _sequential_solution(f, init, xs, length, unroll) -> Solution:
    def step(carry, x):
        carry, y = f(carry, x)
        return carry, (carry, y)

    final_carry, (carries, ys) = jax.lax.scan(step, init, xs, length=length, unroll=unroll)
    zero = jnp.zeros((), carry_dtype(init))
    return Solution(
        final_carry=final_carry,
        carries=carries,
        ys=ys,
        iterations=jnp.array(0, jnp.int32),
        residual=zero,
        result=jnp.array(RESULTS.successful, jnp.int32),
        fell_back=jnp.array(False),
    )


def solve(
    f: Callable[[Carry, PyTree], tuple[Carry, PyTree]],
    init: Carry,
    xs: PyTree = None,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    *,
    method: str | Method = "newton",
    on_failure: Literal["fallback", "raise", "return"] = "fallback",
    guess: Carry | None = None,
) -> Solution:
    r"""Evaluate the recurrence of ``jax.lax.scan(f, init, xs, length, reverse)`` by solving
    for all carries at once, and report how the solve went.

    With carry update F and output G, ``f(c, x) = (F(c, x), G(c, x))``, the carries are the
    solution of the T equations c_t = F(c_{t-1}, x_t), t = 0..T-1, c_{-1} = ``init``. The
    parallel methods iterate on all c_t together:

    - ``"newton"`` (DEER, Lim et al., ICLR 2024): with J_t = dF/dc(c_{t-1}, x_t) at the current
      guess, solve the linear recurrence delta_t = J_t delta_{t-1} + F(c_{t-1}, x_t) - c_t by
      a parallel associative scan (O(log T) depth) and set c <- c + delta.
    - ``"quasi_newton"`` (Gonzalez et al., NeurIPS 2024): the same with diag(J_t), O(T n).
    - ``"fixed_point"``: c_t <- F(c_{t-1}, x_t) for all t at once (Jacobi).
    - ``"sequential"``: ``jax.lax.scan`` itself, the reference.

    Each iteration makes at least one more step exact, so T + 1 iterations always suffice in
    exact arithmetic; in practice Newton takes 3-10 on GRUs. Iteration stops when
    max |delta| <= atol + rtol |c| (defaults 1e-10 in float64, 1e-5 in float32). Outputs are
    computed once from the converged carries, y_t = G(c_{t-1}, x_t), in one parallel pass.
    Method objects (:class:`rnnscan.Newton`, ...) set tolerances, the iteration cap and the
    structure of the carry Jacobian (dense, diagonal, block-diagonal).

    Reference loop (what every method computes, up to the solver tolerance)::

        def solve(f, init, xs, length=None, reverse=False):
            T = length if xs is None else len(leading axis of xs)
            xs = [x_t for t in range(T)]               # reversed order if reverse
            carry, carries, ys = init, [], []
            for x in xs:
                carry, y = f(carry, x)
                carries.append(carry); ys.append(y)
            # stacked; with reverse, flipped back so carries[t] and ys[t] belong to xs[t]
            return Solution(final_carry=carry, carries=stack(carries), ys=stack(ys), ...)

    Guarantees:
        - Never a silent wrong answer. A parallel solve that did not converge (iteration cap
          reached, or non-finite values met) sets ``result``; with ``on_failure="fallback"``
          (default) the carries are then recomputed exactly by ``jax.lax.scan`` and
          ``fell_back`` is set. The fallback is a real conditional even under ``jax.vmap``
          (it runs only when some sequence in the batch failed), so it costs nothing when not
          taken. ``"raise"`` raises an error at run time instead (also under ``jit``);
          ``"return"`` returns the unconverged iterate with the flag set.
        - Derivatives of every kind and order (``jax.grad``, ``jax.vjp``, ``jax.jvp``,
          ``jax.jacfwd``, ``jax.jacrev``, ``jax.hessian``, ``jax.linearize``) w.r.t. ``init``,
          ``xs`` and every array ``f`` closes over, by implicit differentiation (a
          ``jax.custom_jvp``): the tangent of the carries solves one linear recurrence with
          the exact Jacobians at the solution, dc_t = J_t dc_{t-1} + (dF/dx) dx_t +
          (dF/dtheta) dtheta, and reverse mode is its transpose (one reverse linear scan),
          never backpropagation through the iterations.
        - Works under ``jax.jit`` and ``jax.vmap`` (each sequence iterates until it converges,
          with its own statistics). Non-finite iterates are reset to the previous iterate.

    Arguments:
        f: the step function ``f(carry, x) -> (carry, y)``, as for ``jax.lax.scan``. The carry
            is any pytree of floating or complex arrays whose structure, shapes and dtypes
            ``f`` keeps.
        init: the initial carry.
        xs: a pytree of arrays with a common leading time axis, or ``None`` with ``length``.
        length: the number of steps; required when ``xs`` is ``None``.
        reverse: run from the last step to the first, as in ``jax.lax.scan``.
        unroll: passed to ``jax.lax.scan`` by the ``"sequential"`` method (accepted by every
            method, so that a ``jax.lax.scan`` call site can switch by changing its name).
        method: ``"newton"`` (default), ``"quasi_newton"``, ``"fixed_point"``,
            ``"sequential"`` or a method object.
        on_failure: ``"fallback"`` (default), ``"raise"`` or ``"return"``.
        guess: optional warm start for the carries (stacked like ``Solution.carries``), e.g.
            the solution of the previous training step; not differentiated through.

    Returns:
        A :class:`rnnscan.Solution` with the carries, outputs and statistics.
    """
    method = as_method(method)
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    T = sequence_length(xs, length)
    carry_dtype(init)
    init = jax.tree_util.tree_map(jnp.asarray, init)
    check_step_function(f, init, xs)
    if reverse:
        xs = _flip(xs)
        guess = None if guess is None else _flip(guess)

    if isinstance(method, Sequential) or T == 0:
        sol = _sequential_solution(f, init, xs, T, unroll)
    else:
        sol = _parallel_solution(f, init, xs, T, method, on_failure, guess)

    if reverse:
        sol = dataclasses.replace(sol, carries=_flip(sol.carries), ys=_flip(sol.ys))
    return sol


def _parallel_solution(f, init, xs, T, method, on_failure, guess) -> Solution:
    c0, flatten, unflatten = make_flattener(init)
    method = method.resolved(c0.dtype, T)
    method.jacobian.validate(c0.shape[0])

    def F(c, x):
        return flatten(f(unflatten(c), x)[0])

    x_first = jax.tree_util.tree_map(lambda leaf: leaf[0], xs)
    F_converted, consts = _closure_convert(F, c0, x_first)
    if guess is not None:
        guess = jax.lax.stop_gradient(_flatten_guess(guess, init, flatten, T))

    carries, (iterations, residual, result, fell_back) = solve_carries(
        F_converted, method, on_failure, T, c0, xs, guess, consts
    )
    c_prev = jnp.concatenate([c0[None], carries[:-1]], axis=0)
    ys = jax.vmap(lambda c, x: f(unflatten(c), x)[1])(c_prev, xs)
    carries_tree = jax.vmap(unflatten)(carries)
    return Solution(
        final_carry=jax.tree_util.tree_map(lambda leaf: leaf[-1], carries_tree),
        carries=carries_tree,
        ys=ys,
        iterations=iterations,
        residual=residual,
        result=result,
        fell_back=fell_back,
    )


def _closure_convert(F, c, x):
    """``(F_converted, consts)`` with ``F_converted(c, x, *consts) == F(c, x)``.

    Like ``jax.closure_convert``, but hoists *every* traced value that ``F`` closes over, not
    only the differentiable ones: the custom VJP and the vmap rule of the fallback must not
    close over batched tracers (e.g. per-sequence integer lengths under ``vmap``).
    """
    closed = jax.make_jaxpr(F)(c, x)
    is_traced = [isinstance(const, jax.core.Tracer) for const in closed.consts]
    traced = [const for const, t in zip(closed.consts, is_traced) if t]
    fixed = [const for const, t in zip(closed.consts, is_traced) if not t]

    def F_converted(c, x, *traced_values):
        traced_iter, fixed_iter = iter(traced_values), iter(fixed)
        consts = [next(traced_iter) if t else next(fixed_iter) for t in is_traced]
        run = jax.extend.core.jaxpr_as_fun(jax.extend.core.ClosedJaxpr(closed.jaxpr, consts))
        return run(*jax.tree_util.tree_leaves((c, x)))[0]

    return F_converted, traced


def _flatten_guess(guess, init, flatten, T):
    guess_def, init_def = jax.tree_util.tree_structure(guess), jax.tree_util.tree_structure(init)
    if guess_def != init_def:
        raise TypeError(f"guess must have the carry's structure {init_def}, got {guess_def}")
    for (path, g), c in zip(
        jax.tree_util.tree_leaves_with_path(guess), jax.tree_util.tree_leaves(init)
    ):
        if jnp.shape(g) != (T,) + jnp.shape(c):
            raise ValueError(
                f"guess{jax.tree_util.keystr(path)} has shape {jnp.shape(g)}; expected "
                f"{(T,) + jnp.shape(c)} (the carry's shape with a leading time axis of {T})"
            )
    return jax.vmap(flatten)(guess)


def scan(
    f: Callable[[Carry, PyTree], tuple[Carry, PyTree]],
    init: Carry,
    xs: PyTree = None,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    *,
    method: str | Method = "newton",
    on_failure: Literal["fallback", "raise", "return"] = "fallback",
    guess: Carry | None = None,
) -> tuple[Carry, PyTree]:
    r"""A parallel drop-in for ``jax.lax.scan``: returns ``(final_carry, ys)``.

    Same arguments and semantics as ``jax.lax.scan(f, init, xs, length, reverse)``, evaluated
    by the parallel ``method`` (default ``"newton"``, DEER); see :func:`rnnscan.solve` for the
    maths, the options, the statistics and the guarantees. Switching a model from
    ``jax.lax.scan`` to ``rnnscan.scan`` gives the same numbers up to the solver tolerance;
    when a parallel solve fails to converge the exact sequential result is returned
    (``on_failure="fallback"``). Use :func:`rnnscan.solve` to see iteration counts.

    Reference loop::

        def scan(f, init, xs, length=None, reverse=False):
            carry, ys = init, []
            for x in (reversed(xs) if reverse else xs):
                carry, y = f(carry, x)
                ys.append(y)
            return carry, stack(ys[::-1] if reverse else ys)
    """
    sol = solve(f, init, xs, length, reverse, method=method, on_failure=on_failure, guess=guess)
    return sol.final_carry, sol.ys
