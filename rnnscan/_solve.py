"""The solve of the carries of a recurrence (``rnnscan._methods.solve``) with its derivatives
(implicit, as a ``jax.custom_jvp``).

Everything here works on flat real carries ``c`` of size n (see ``_flatten.py``) and a step
function ``F(c_prev, x, *consts) -> c`` whose closed-over arrays have been made explicit
(``consts``), so that their derivatives are not silently lost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._implicit import tangent_carries
from ._methods import Method, solve
from ._problem import Recurrence
from ._timeline import Timeline

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
    return solve(method, Recurrence(F, timeline, length, c0, xs, consts), on_failure, guess)


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
