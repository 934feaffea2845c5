"""The solve of the carries: the parallel iteration, what happens when it fails, and its
derivatives (implicit, as a ``jax.custom_jvp``).

Everything here works on flat real carries ``c`` of size n (see ``_flatten.py``) and a step
function ``F(c_prev, x, *consts) -> c`` whose closed-over arrays have been made explicit
(``consts``), so that their derivatives are not silently lost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._damped import damped_carries
from ._fallback import lazy_cond
from ._implicit import tangent_carries
from ._iterate import parallel_carries, sequential_carries
from ._methods import ELK, Method, SplitSequential
from ._solution import RESULTS
from ._timeline import Timeline
from ._window import windowed_carries

ON_FAILURE = ("fallback", "raise", "return")


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2, 3, 4))
def solve_carries(
    F: Callable,
    method: Method,
    timeline: Timeline,
    on_failure: str,
    length: int,
    c0,
    xs,
    guess,
    consts,
):
    """All carries c_0..c_{T-1} of c_t = F(c_{t-1}, x_t, *consts), plus the solve's statistics
    ``(iterations, residual, result, fell_back)``.

    Differentiable to any order, in forward and reverse mode, w.r.t. ``c0``, ``xs`` and
    ``consts`` by implicit differentiation (``_implicit.py``); ``guess`` is a warm start and
    has no derivative. ``timeline`` says whether time is split across devices.
    """
    c, iterations, residual, result = _iterate(F, method, timeline, length, c0, xs, consts, guess)
    failed = result != RESULTS.successful
    if on_failure == "fallback":
        c = lazy_cond(
            failed,
            lambda ops: sequential_carries(F, timeline, length, *ops[:-1]),
            lambda ops: ops[-1],
            (c0, xs, consts, c),
        )
        fell_back = failed
    else:
        fell_back = jnp.array(False)
        if on_failure == "raise":
            c = eqx.branched_error_if(c, failed, result, RESULTS.messages())
    return c, (iterations, residual, result, fell_back)


def _iterate(F, method, timeline, length, c0, xs, consts, guess):
    if isinstance(method, SplitSequential):
        c = sequential_carries(F, timeline, length, c0, xs, consts)
        zero = jnp.zeros((), c.dtype)
        return c, jnp.array(0, jnp.int32), zero, jnp.array(RESULTS.successful, jnp.int32)
    if isinstance(method, ELK):
        return damped_carries(F, method, timeline, length, c0, xs, consts, guess)
    if method.window is not None:
        return windowed_carries(F, method, timeline, length, c0, xs, consts, guess)
    return parallel_carries(F, method, timeline, length, c0, xs, consts, guess)


def _zero_tangent(x):
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(jnp.shape(x), dtype=jax.dtypes.float0)


@solve_carries.defjvp
def _solve_carries_jvp(F, method, timeline, on_failure, length, primals, tangents):
    c0, xs, guess, consts = primals
    dc0, dxs, _, dconsts = tangents
    # Calling the solve itself (not its body) keeps this rule differentiable: a derivative
    # of the tangent below meets this custom_jvp again instead of the iterations.
    c, stats = solve_carries(F, method, timeline, on_failure, length, c0, xs, guess, consts)
    dc = tangent_carries(F, method.jacobian, timeline, c0, c, xs, consts, (dc0, dxs, dconsts))
    return (c, stats), (dc, jax.tree_util.tree_map(_zero_tangent, stats))
