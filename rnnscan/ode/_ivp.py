"""``solve_ivp``: an ODE on a given time grid as a recurrence solved in parallel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._flatten import make_flattener
from .._methods import Method, as_method
from .._scan import solve as _solve
from .._solution import RESULTS
from .._solve import ON_FAILURE
from ._implicit_solve import implicit_solve
from ._schemes import Scheme, as_scheme
from ._solution import ODESolution

PyTree = Any


def _keystr(prefix, path):
    return prefix + jax.tree_util.keystr(path)


def check_y0(y0) -> PyTree:
    leaves = jax.tree_util.tree_leaves_with_path(y0)
    if not leaves:
        raise ValueError("y0 has no array leaves: there is no state to integrate")
    for path, leaf in leaves:
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{_keystr('y0', path)} has dtype {dtype}; the state must be floating or "
                "complex (write y0 = jnp.asarray(y0, float))"
            )
    return jax.tree_util.tree_map(jnp.asarray, y0)


def check_grid(ts) -> jax.Array:
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(
            f"ts must be a 1-D array of at least one time (the grid t_0 < t_1 < ... or "
            f"t_0 > t_1 > ...), got shape {ts.shape}"
        )
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        ts = ts.astype(jnp.result_type(float))
    return ts


def check_on_grid(name: str, tree, N: int, template=None) -> None:
    """Every leaf of ``tree`` has a leading axis of length N (and, with a template, the
    template's shape after it)."""
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    if template is not None:
        t_def, g_def = jax.tree_util.tree_structure(template), jax.tree_util.tree_structure(tree)
        if t_def != g_def:
            raise TypeError(f"{name} must have the structure of y0, {t_def}; got {g_def}")
        shapes = [jnp.shape(leaf) for leaf in jax.tree_util.tree_leaves(template)]
    for i, (path, leaf) in enumerate(leaves):
        shape = jnp.shape(leaf)
        expected = None if template is None else (N,) + shapes[i]
        if not shape or shape[0] != N or (expected is not None and shape != expected):
            want = expected if expected is not None else f"({N}, ...)"
            raise ValueError(
                f"{_keystr(name, path)} has shape {shape}; expected {want}: one sample per "
                f"grid point of ts (len(ts) = {N})"
            )


def check_vector_field(vf: Callable, ts, y0, inputs, name: str) -> None:
    """Trace the vector field once and check it returns y0's structure and shapes."""
    u0 = None if inputs is None else jax.tree_util.tree_map(lambda leaf: leaf[0], inputs)
    out = jax.eval_shape(vf, ts[0], y0, u0)
    y_def, out_def = jax.tree_util.tree_structure(y0), jax.tree_util.tree_structure(out)
    if y_def != out_def:
        raise TypeError(
            f"{name} must return dy/dt with the structure of y0, {y_def}; it returned {out_def}"
        )
    for (path, y), o in zip(
        jax.tree_util.tree_leaves_with_path(y0), jax.tree_util.tree_leaves(out)
    ):
        if jnp.shape(y) != o.shape:
            raise ValueError(
                f"{name} returned dy/dt{jax.tree_util.keystr(path)} of shape {o.shape} for a "
                f"state of shape {jnp.shape(y)}"
            )


def grid_inputs(ts, inputs) -> dict:
    """x_k = (t_k, t_{k+1}, u_k, u_{k+1}) for the K = N - 1 steps."""
    xs = {"t0": ts[:-1], "t1": ts[1:]}
    if inputs is not None:
        xs["u0"] = jax.tree_util.tree_map(lambda leaf: leaf[:-1], inputs)
        xs["u1"] = jax.tree_util.tree_map(lambda leaf: leaf[1:], inputs)
    return xs


def with_initial(y0, carries):
    return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b], axis=0), y0, carries)


def solve_ivp(
    f: Callable[..., PyTree],
    y0: PyTree,
    ts: Float[Array, " N"],
    args: PyTree = None,
    *,
    scheme: str | Scheme = "rk4",
    inputs: PyTree = None,
    method: str | Method = "newton",
    on_failure: Literal["fallback", "raise", "return"] = "fallback",
    guess: PyTree = None,
) -> ODESolution:
    r"""Integrate dy/dt = f(t, y, args) on the grid ``ts`` with a fixed one-step scheme,
    solving for all grid values at once (DEER, Lim et al., ICLR 2024).

    A one-step scheme on the grid t_0, ..., t_{N-1} (h_k = t_{k+1} - t_k, increasing or
    decreasing) is a recurrence

        y_{k+1} = Phi(y_k; t_k, t_{k+1}, u_k, u_{k+1}),   k = 0..N-2,

    and for an explicit scheme exactly what :func:`rnnscan.solve` solves: Newton on all
    N - 1 steps together, each iteration one parallel linear scan (``method``), with the
    same guarantees — a failed parallel solve (cap reached, divergence, non-finite values)
    is reported in ``result`` and, by default, recomputed by sequential time stepping
    (``fell_back``). The values equal the sequential integration with the same scheme on the
    same grid to the solver tolerance (1e-10 in float64, 1e-5 in float32, on the Newton
    update). Implicit schemes (``"trapezoid"``, ``"implicit_midpoint"``) stack their step
    equations G(y_k, y_{k+1}) = 0 into one global Newton system instead of solving each step
    inside the recurrence; see ``rnnscan/ode/_implicit_solve.py``.

    Reference loop (what every method computes, up to the solver tolerance)::

        def solve_ivp(f, y0, ts, args=None, scheme=RK4(), inputs=None):
            vf = (lambda t, y, u: f(t, y, args)) if inputs is None else \
                 (lambda t, y, u: f(t, y, args, u))
            ys = [y0]
            for k in range(len(ts) - 1):
                u0, u1 = (None, None) if inputs is None else (inputs[k], inputs[k + 1])
                if scheme.implicit:   # solve G(y_k, y) = 0 for y
                    y = root(lambda y: scheme.residual(vf, ts[k], ts[k+1], ys[-1], y, u0, u1))
                else:
                    y = scheme.step(vf, ts[k], ts[k + 1], ys[-1], u0, u1)
                ys.append(y)
            return ODESolution(ts=ts, ys=stack(ys), ...)

    Arguments:
        f: the vector field ``f(t, y, args) -> dy/dt`` (with ``inputs``:
            ``f(t, y, args, u)``), returning y's structure and shapes (diffrax's ``ODETerm``
            convention).
        y0: the state at ``ts[0]``: a pytree of floating or complex arrays.
        ts: the grid, shape ``(N,)``, strictly monotone (not checked under ``jit``).
        args: passed to ``f``; differentiable (gradients w.r.t. ``args`` work, as do
            gradients w.r.t. arrays ``f`` closes over).
        scheme: ``"euler"``, ``"heun"``, ``"midpoint"``, ``"ralston"``, ``"rk4"``
            (default), ``"trapezoid"`` (= ``"crank_nicolson"``), ``"implicit_midpoint"``, or
            a scheme object (``rnnscan.ode.ExplicitRungeKutta(a, b, c)`` for any explicit
            tableau).
        inputs: an optional input signal sampled on the grid, a pytree of arrays with
            leading axis N (``inputs[k]`` = u(t_k)); read at intermediate stage times by
            linear interpolation within each step. Differentiable.
        method: any rnnscan method: ``"newton"`` (default), ``"quasi_newton"``,
            ``"fixed_point"``, ``"elk"``, ``"quasi_elk"``, ``"sequential"`` or a method
            object (tolerances, cap, Jacobian structure). Implicit schemes run the undamped
            global (quasi-)Newton for ``"elk"`` / ``"quasi_elk"``.
        on_failure: ``"fallback"`` (default), ``"raise"`` or ``"return"``, as in
            :func:`rnnscan.solve`.
        guess: optional warm start for ``ys`` (shape ``(N, ...)`` like ``ODESolution.ys``,
            e.g. the previous training step's solution); not differentiated.

    Returns:
        An :class:`rnnscan.ode.ODESolution`: ``ts``, ``ys`` (``ys[0] = y0``) and the solver
        statistics ``iterations``, ``residual``, ``result``, ``fell_back``.

    Derivatives (any mode, w.r.t. ``y0``, ``args``, ``inputs``, ``ts`` and closed-over
    arrays) are implicit: one linear scan with the step Jacobians at the solution, never
    through the iterations. ``jax.vmap`` over initial conditions (or anything else) works;
    each trajectory iterates until it converges.

    When it pays: the parallel solve does more total work than time stepping (a few Newton
    iterations, each with n x n step Jacobians), so it wins only with parallel hardware and
    long grids of a non-chaotic system. Chaotic or very stiff-for-the-scheme problems make
    Newton diverge or stall; the solve then gives up and falls back (see ``result``).
    """
    scheme = as_scheme(scheme)
    method = as_method(method)
    if on_failure not in ON_FAILURE:
        raise ValueError(f"on_failure must be one of {ON_FAILURE}, got {on_failure!r}")
    if not callable(f):
        raise TypeError(f"f must be callable (the vector field f(t, y, args)), got {type(f)}")
    y0 = check_y0(y0)
    ts = check_grid(ts)
    N = ts.shape[0]
    if inputs is not None:
        check_on_grid("inputs", inputs, N)
        vf = lambda t, y, u: f(t, y, args, u)
    else:
        vf = lambda t, y, u: f(t, y, args)
    check_vector_field(vf, ts, y0, inputs, "f")
    if guess is not None:
        check_on_grid("guess", guess, N, template=y0)
        guess = jax.tree_util.tree_map(lambda leaf: leaf[1:], guess)
    if N == 1:
        return _trivial(ts, y0)
    xs = grid_inputs(ts, inputs)

    if scheme.implicit:
        c0, flatten, unflatten = make_flattener(y0)

        def G(c_prev, c, x):
            g = scheme.residual(
                vf, x["t0"], x["t1"], unflatten(c_prev), unflatten(c), x.get("u0"), x.get("u1")
            )
            return flatten(g)

        flat_guess = None if guess is None else jax.vmap(flatten)(guess)
        carries, iterations, residual, result, fell_back = implicit_solve(
            G, method, on_failure, c0, xs, flat_guess
        )
        carries = jax.vmap(unflatten)(carries)
    else:

        def step(y, x):
            return scheme.step(vf, x["t0"], x["t1"], y, x.get("u0"), x.get("u1")), None

        sol = _solve(step, y0, xs, method=method, on_failure=on_failure, guess=guess)
        carries, iterations, residual = sol.carries, sol.iterations, sol.residual
        result, fell_back = sol.result, sol.fell_back
    return ODESolution(
        ts=ts,
        ys=with_initial(y0, carries),
        iterations=iterations,
        residual=residual,
        result=result,
        fell_back=fell_back,
    )


def _trivial(ts, y0) -> ODESolution:
    real = jnp.finfo(jnp.result_type(*jax.tree_util.tree_leaves(y0))).dtype
    return ODESolution(
        ts=ts,
        ys=jax.tree_util.tree_map(lambda leaf: leaf[None], y0),
        iterations=jnp.array(0, jnp.int32),
        residual=jnp.zeros((), real),
        result=jnp.array(RESULTS.successful, jnp.int32),
        fell_back=jnp.array(False),
    )
