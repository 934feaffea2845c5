"""What a solve returns: the values, and how the parallel solve went."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


class RESULTS:
    """Result codes of a parallel solve (``Solution.result``)."""

    successful = 0
    max_steps_reached = 1
    nonfinite = 2
    diverged = 3
    stalled = 4

    _messages = {
        0: "successful",
        1: "the parallel solve reached max_steps without converging",
        2: "the parallel solve met non-finite values (NaN/inf in the inputs, parameters or cell)",
        3: "the parallel solve gave up early: its iterates diverged (non-finite, or updates over "
        "1e8 times the scale of the carries, for 3 iterations in a row)",
        4: "the parallel solve gave up early: it stalled (no smaller update or residual for "
        "8 iterations)",
    }

    @classmethod
    def message(cls, code: int) -> str:
        return cls._messages[int(code)]

    @classmethod
    def messages(cls) -> list[str]:
        """Every message, indexed by code."""
        return [cls._messages[code] for code in range(len(cls._messages))]


class Outcome:
    """``converged`` and ``ok`` from the ``result`` and ``fell_back`` fields of a subclass
    (elementwise, so they hold per sequence under ``vmap``)."""

    result: Int[Array, "..."]
    fell_back: Bool[Array, "..."]

    @property
    def converged(self) -> Bool[Array, "..."]:
        """Whether the parallel solve converged."""
        return self.result == RESULTS.successful

    @property
    def ok(self) -> Bool[Array, "..."]:
        """Whether the values are to be trusted (converged, or recomputed exactly)."""
        return jnp.logical_or(self.converged, self.fell_back)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Solution(Outcome):
    """The result of :func:`rnnscan.solve`.

    Attributes:
        final_carry: the carry after the last step (the first step with ``reverse=True``).
        carries: every carry, stacked on a leading time axis aligned with ``xs``:
            ``carries[t]`` is the carry after consuming ``xs[t]``.
        ys: the stacked outputs, as from ``jax.lax.scan``.
        iterations: parallel iterations taken (0 for ``"sequential"``).
        residual: max_t |F(c_{t-1}, x_t) - c_t| of the returned carries (0 when exact).
        result: an ``RESULTS`` code for the *parallel* solve.
        fell_back: whether the returned values come from the sequential fallback (taken when
            the parallel solve failed and ``on_failure="fallback"``).
        lyapunov: with ``solve(..., diagnostics=True)``, the finite-time largest Lyapunov
            exponent (1/T) log ||J_T ... J_1||_2 of the returned carries (natural log per
            step; < 0 predictable, >= 0 chaotic: see ``rnnscan.diagnostics``); else ``None``.

    Under ``jax.vmap`` every field gains the batch axis: each sequence has its own count and
    code. ``converged`` and ``ok`` are conveniences.
    """

    final_carry: Any
    carries: Any
    ys: Any
    iterations: Int[Array, ""]
    residual: Float[Array, ""]
    result: Int[Array, ""]
    fell_back: Bool[Array, ""]
    lyapunov: Float[Array, ""] | None = None
