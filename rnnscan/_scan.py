"""The public entry points: ``solve`` and its ``jax.lax.scan``-shaped twin ``scan``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from ._closure import closure_convert
from ._flatten import (
    carry_dtype,
    check_step_function,
    concrete,
    make_flattener,
    sequence_length,
)
from ._growth import declared_structure, largest_exponent
from ._methods import Method, as_method
from ._solution import RESULTS, Solution
from ._solve import ON_FAILURE, solve_carries
from ._timeline import WHOLE, Timeline

Carry = Any
PyTree = Any


def _flip(tree):
    return jax.tree_util.tree_map(lambda leaf: jnp.flip(leaf, axis=0), tree)


def _statistics(dtype) -> dict:
    """The statistics of a solve that needed no iteration."""
    return dict(
        iterations=jnp.array(0, jnp.int32),
        residual=jnp.zeros((), dtype),
        result=jnp.array(RESULTS.successful, jnp.int32),
        fell_back=jnp.array(False),
    )


def _statistics_dtype(init):
    """The carry's real dtype, or the default float one for carries that have none."""
    inexact = [
        jnp.finfo(jnp.result_type(leaf)).dtype
        for leaf in jax.tree_util.tree_leaves(init)
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)
    ]
    return jnp.result_type(*inexact) if inexact else jnp.result_type(float)


def _sequential_solution(f, init, xs, length, reverse, unroll) -> Solution:
    def step(carry, x):
        carry, y = f(carry, x)
        return carry, (carry, y)

    final_carry, (carries, ys) = jax.lax.scan(
        step, init, xs, length=length, reverse=reverse, unroll=unroll
    )
    return Solution(
        final_carry=final_carry, carries=carries, ys=ys, **_statistics(_statistics_dtype(init))
    )


def _map_solution(f, init, xs, length) -> Solution:
    """An empty carry: nothing couples the steps, so the outputs are a parallel map."""
    if jax.tree_util.tree_leaves(xs):
        ys = jax.vmap(lambda x: f(init, x)[1])(xs)
    else:
        y = f(init, xs)[1]
        ys = jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (length,) + leaf.shape), y)
    return Solution(final_carry=init, carries=init, ys=ys, **_statistics(jnp.result_type(float)))


def _check_unroll(unroll):
    """``jax.lax.scan``'s rule, for every method (only ``"sequential"`` uses it)."""
    concrete(unroll, "unroll", "`int` or `bool`")
    if not (isinstance(unroll, bool) or (isinstance(unroll, (int, np.integer)) and unroll >= 0)):
        raise ValueError(f"unroll must be a bool or a non-negative int, got {unroll!r}")


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
    axis_name: Any = None,
    diagnostics: bool = False,
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
    - ``"elk"`` / ``"quasi_elk"`` (Gonzalez et al., NeurIPS 2024): Levenberg-Marquardt
      steps, each solved by a parallel Kalman smoother, with trust-region damping.
    - ``"sequential"``: ``jax.lax.scan`` itself, the reference.

    Every iterative method gives up early (``RESULTS.diverged`` / ``RESULTS.stalled``) when
    its iterates diverge or stop improving, so that the fallback runs after a few wasted
    iterations, and can iterate on a sliding ``window`` of steps (see the method classes).

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
        unroll: passed to ``jax.lax.scan`` by the ``"sequential"`` method (accepted and
            checked as ``jax.lax.scan`` checks it by every method, so that a
            ``jax.lax.scan`` call site can switch by changing its name).
        method: ``"newton"`` (default), ``"quasi_newton"``, ``"fixed_point"``, ``"elk"``,
            ``"quasi_elk"``,
            ``"sequential"`` or a method object.
        on_failure: ``"fallback"`` (default), ``"raise"`` or ``"return"``.
        guess: optional warm start for the carries (stacked like ``Solution.carries``), e.g.
            the solution of the previous training step; not differentiated through.
        axis_name: the name of a mesh axis that splits the time axis, for calls inside
            ``jax.shard_map`` (like the ``axis_name`` of ``jax.lax.psum``); see below.
        diagnostics: also estimate the largest Lyapunov exponent along the returned carries
            (``Solution.lyapunov``), from the carry Jacobians at every step in the method's
            declared structure (or ``f.jacobian_structure``, else dense) and one parallel
            reduction of their product: about the cost of one more Newton iteration. Not
            available with ``axis_name``.

    Returns:
        A :class:`rnnscan.Solution` with the carries, outputs and statistics.

    Time split across devices (``axis_name``): inside ``jax.shard_map`` over a mesh whose axis
    ``axis_name`` (D devices) splits the time axis of ``xs`` (and ``guess``) into contiguous
    blocks — device d holds steps d T_loc .. (d + 1) T_loc - 1 — each device passes its own
    block, and ``init`` is the same on every device. Every method, structure and
    derivative then works on the whole sequence of T = D T_loc steps: per iteration each
    device linearises and solves its block, the D block summaries (A_block, b_block) of the
    linear recurrence are all-gathered and combined with the same associative operator,
    and each block is fixed up with the state it really starts from; the carry crosses
    block boundaries by ``ppermute``; convergence, non-finite values and the fallback are
    decided over the whole sequence (the fallback runs the blocks one after the other).
    Returned: ``carries`` and ``ys`` are the local blocks (``shard_map`` ``out_specs``
    ``P(axis_name)``), ``final_carry`` the carry after the last step of the whole sequence
    and the statistics those of the whole solve, the same on every device (``P()``).
    ``reverse=True`` runs from the last device's last step to device 0's first, with the
    blocks where they are (no data moves between devices; ``final_carry`` is then the
    carry after global step 0). ``length``, when ``xs`` is ``None``, is the local block
    length T_loc, and the iteration cap T + 1 counts the global T. Gradients w.r.t. a
    replicated ``init`` or closed-over parameters come out summed over devices by
    ``shard_map``'s transpose, i.e. correct for the whole sequence.
    :func:`rnnscan.sharded_solve` / :func:`rnnscan.sharded_scan` do the ``shard_map``
    (and padding of T to a multiple of D) for you.
    """
    method = as_method(method)
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if not isinstance(diagnostics, bool):
        raise TypeError(f"diagnostics must be a bool, got {diagnostics!r}")
    _check_unroll(unroll)
    T = sequence_length(xs, length)
    init = jax.tree_util.tree_map(jnp.asarray, init)
    if method.exact and axis_name is None and not diagnostics:
        # jax.lax.scan itself: every carry it accepts (integer, boolean, PRNG keys too).
        return _sequential_solution(f, init, xs, T, reverse, unroll)
    init, _ = check_step_function(f, init, xs)
    if not jax.tree_util.tree_leaves(init):
        if diagnostics:
            raise ValueError("diagnostics=True: the carry is empty, there is no dynamics to probe")
        return _map_solution(f, init, xs, T)
    carry_dtype(init)
    if axis_name is not None:
        if diagnostics:
            raise ValueError(
                "diagnostics=True is not available for a time split across devices "
                f"(axis_name={axis_name!r}): solve the sequence on one device to estimate "
                "its Lyapunov exponent"
            )
        return _split_solution(f, init, xs, T, reverse, method, on_failure, guess, axis_name)
    if reverse:
        xs = _flip(xs)
        guess = None if guess is None else _flip(guess)

    if method.exact or T == 0:
        sol = _sequential_solution(f, init, xs, T, False, unroll)
    else:
        sol = _parallel_solution(f, init, xs, T, method, on_failure, guess)
    if diagnostics:
        structure = getattr(method, "jacobian", None) or declared_structure(f)
        lyapunov = largest_exponent(f, init, xs, sol.carries, structure)
        sol = dataclasses.replace(sol, lyapunov=lyapunov)

    if reverse:
        sol = dataclasses.replace(sol, carries=_flip(sol.carries), ys=_flip(sol.ys))
    return sol


def _split_solution(f, init, xs, T, reverse, method, on_failure, guess, axis_name) -> Solution:
    """:func:`solve` on this device's block of a time axis split over ``axis_name``.

    Reverse runs on a mirrored :class:`Timeline` (the arrays stay in their order, every
    time-axis operation runs the other way), so no block has to move between devices."""
    try:
        jax.lax.axis_size(axis_name)
    except NameError as err:
        raise ValueError(
            f"axis_name={axis_name!r} is not an axis bound here: rnnscan.solve/scan with "
            "axis_name must be called inside jax.shard_map over a mesh with that axis "
            "splitting the time axis of xs (or use rnnscan.sharded_scan, which does it)"
        ) from err
    timeline = Timeline(axis_name, reverse=reverse)
    if T == 0:
        return _split_sequential_solution(f, init, xs, T, timeline)
    method = method.on_split_time(declared_structure(f))
    return _parallel_solution(f, init, xs, T, method, on_failure, guess, timeline)


def _split_sequential_solution(f, init, xs, T, timeline: Timeline) -> Solution:
    """The ``"sequential"`` method on a split time axis: the blocks one after the other
    (``Timeline.sequential``), then the outputs from the exact carries in one parallel
    pass."""
    carries = timeline.sequential(lambda c, x: f(c, x)[0], init, xs, T)
    c_prev = timeline.shift(init, carries)
    ys = jax.vmap(lambda c, x: f(c, x)[1])(c_prev, xs)
    return Solution(
        final_carry=timeline.last(carries),
        carries=carries,
        ys=ys,
        **_statistics(carry_dtype(init)),
    )


def _parallel_solution(
    f, init, xs, T, method, on_failure, guess, timeline: Timeline = WHOLE
) -> Solution:
    c0, flatten, unflatten = make_flattener(init)
    # The cap T + 1 is about the whole sequence: T is this device's block when time is split.
    method = method.resolved(c0.dtype, T * timeline.devices(), structure=declared_structure(f))
    method.jacobian.validate(c0.shape[0])
    timeline = dataclasses.replace(timeline, backend=getattr(method, "linear_recurrence", "auto"))

    def F(c, x):
        return flatten(f(unflatten(c), x)[0])

    x_first = jax.tree_util.tree_map(lambda leaf: leaf[0], xs)
    F_converted, consts = closure_convert(F, c0, x_first, timeline.varying)
    if guess is not None:
        guess = jax.lax.stop_gradient(_flatten_guess(guess, init, flatten, T))

    carries, (iterations, residual, result, fell_back) = solve_carries(
        F_converted, method, timeline, on_failure, T, c0, xs, guess, consts
    )
    c_prev = timeline.shift(c0, carries)
    ys = jax.vmap(lambda c, x: f(unflatten(c), x)[1])(c_prev, xs)
    carries_tree = jax.vmap(unflatten)(carries)
    return Solution(
        final_carry=timeline.last(carries_tree),
        carries=carries_tree,
        ys=ys,
        iterations=iterations,
        residual=residual,
        result=result,
        fell_back=fell_back,
    )


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
    axis_name: Any = None,
) -> tuple[Carry, PyTree]:
    r"""A parallel drop-in for ``jax.lax.scan``: returns ``(final_carry, ys)``.

    Same arguments and semantics as ``jax.lax.scan(f, init, xs, length, reverse)``, evaluated
    by the parallel ``method`` (default ``"newton"``, DEER); see :func:`rnnscan.solve` for the
    maths, the options, the statistics and the guarantees. Switching a model from
    ``jax.lax.scan`` to ``rnnscan.scan`` gives the same numbers up to the solver tolerance;
    when a parallel solve fails to converge the exact sequential result is returned
    (``on_failure="fallback"``). Use :func:`rnnscan.solve` to see iteration counts.
    ``method="sequential"`` is the call ``jax.lax.scan(f, init, xs, length, reverse,
    unroll)`` itself: the same program, the same errors (``guess`` is ignored).

    ``axis_name``: inside ``jax.shard_map`` with the time axis of ``xs`` split over that mesh
    axis, ``ys`` is this device's block and ``final_carry`` the global last carry, on every
    device (see :func:`rnnscan.solve`; :func:`rnnscan.sharded_scan` does the ``shard_map``).

    Reference loop::

        def scan(f, init, xs, length=None, reverse=False):
            carry, ys = init, []
            for x in (reversed(xs) if reverse else xs):
                carry, y = f(carry, x)
                ys.append(y)
            return carry, stack(ys[::-1] if reverse else ys)
    """
    if axis_name is None and as_method(method).exact:
        # "sequential" is the call it replaces, verbatim: the same program, the same errors.
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
        return jax.lax.scan(f, init, xs, length, reverse, unroll)
    sol = solve(
        f,
        init,
        xs,
        length,
        reverse,
        unroll,
        method=method,
        on_failure=on_failure,
        guess=guess,
        axis_name=axis_name,
    )
    return sol.final_carry, sol.ys
