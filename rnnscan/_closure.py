"""Closure conversion: the arrays a step function closes over, made explicit arguments."""

from __future__ import annotations

import jax
import jax.extend


def closure_convert(F, c, x, prepare=lambda tree: tree):
    """``(F_converted, consts)`` with ``F_converted(c, x, *consts) == F(c, x)``.

    Like ``jax.closure_convert``, but hoists *every* traced value that ``F`` closes over, not
    only the differentiable ones: the custom VJP and the vmap rule of the fallback must not
    close over batched tracers (e.g. per-sequence integer lengths under ``vmap``).

    ``prepare`` is applied to ``(c, x)`` before tracing and before every call: a time-split
    solve marks both device-varying, because a replayed jaxpr does not re-insert the type
    casts that tracing inserts, so it must be called with the types it was traced with
    (the replicated ``c0`` and the varying carries would otherwise meet in one jaxpr).
    """
    c, x = prepare((c, x))
    closed = jax.make_jaxpr(F)(c, x)
    is_traced = [isinstance(const, jax.core.Tracer) for const in closed.consts]
    traced = [const for const, t in zip(closed.consts, is_traced) if t]
    fixed = [const for const, t in zip(closed.consts, is_traced) if not t]

    def F_converted(c, x, *traced_values):
        c, x = prepare((c, x))
        traced_iter, fixed_iter = iter(traced_values), iter(fixed)
        consts = [next(traced_iter) if t else next(fixed_iter) for t in is_traced]
        run = jax.extend.core.jaxpr_as_fun(jax.extend.core.ClosedJaxpr(closed.jaxpr, consts))
        return run(*jax.tree_util.tree_leaves((c, x)))[0]

    return F_converted, traced
