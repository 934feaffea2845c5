"""The solvers: small frozen classes holding options, in the style of optimistix."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ._structure import Dense, Structure, as_structure

# Default tolerances on the Newton update, per real dtype: max_t,i |delta| <= atol + rtol |c|.
# float32 cannot get much below ~1e-5 on long, weakly contractive sequences: rounding in the
# parallel scan grows with the number of nearly-undamped steps.
_DEFAULT_TOLERANCES = {
    jnp.dtype("float64"): (1e-10, 1e-10),
    jnp.dtype("float32"): (1e-5, 1e-5),
    jnp.dtype("bfloat16"): (1e-2, 1e-2),
    jnp.dtype("float16"): (1e-3, 1e-3),
}


def default_tolerances(dtype) -> tuple[float, float]:
    """``(rtol, atol)`` for a real dtype."""
    return _DEFAULT_TOLERANCES.get(jnp.dtype(dtype), (1e-5, 1e-5))


@dataclasses.dataclass(frozen=True)
class Method:
    """Base class of the solvers."""

    def resolved(self, dtype, length: int) -> "Method":
        return self


@dataclasses.dataclass(frozen=True)
class Sequential(Method):
    """Plain ``jax.lax.scan``: the reference, O(T) depth."""


@dataclasses.dataclass(frozen=True)
class _Iterative(Method):
    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None
    jacobian: Structure = Dense()

    default_max_steps = 50

    def __post_init__(self):
        object.__setattr__(self, "jacobian", as_structure(self.jacobian))
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 0, got {value!r}")
        if self.max_steps is not None and not (
            isinstance(self.max_steps, int) and self.max_steps >= 1
        ):
            raise ValueError(
                f"{type(self).__name__}: max_steps must be a positive int, got {self.max_steps!r}"
            )

    def resolved(self, dtype, length):
        rtol, atol = default_tolerances(dtype)
        # T + 1 iterations always suffice in exact arithmetic (T to make every step exact,
        # one more to see a zero update), so a larger cap is never needed.
        cap = self.max_steps if self.max_steps is not None else self.default_max_steps
        return dataclasses.replace(
            self,
            rtol=rtol if self.rtol is None else self.rtol,
            atol=atol if self.atol is None else self.atol,
            max_steps=max(1, min(cap, length + 1)),
        )


@dataclasses.dataclass(frozen=True)
class Newton(_Iterative):
    r"""DEER (Lim et al., ICLR 2024): Newton's method on all T steps at once.

    Each iteration linearises the carry update around the current guess, J_t = dF/dc(c_{t-1},
    x_t), and solves the linear recurrence delta_t = J_t delta_{t-1} + (F(c_{t-1}, x_t) - c_t)
    with a parallel scan, then c <- c + delta. Quadratic convergence near the solution;
    typically 3-10 iterations for GRUs.

    Options:
        rtol, atol: stop when max |delta| <= atol + rtol |c| (defaults by dtype:
            1e-10 for float64, 1e-5 for float32).
        max_steps: iteration cap (default 50, never more than T + 1).
        jacobian: the exact structure of the carry Jacobian: ``Dense()`` (default),
            ``Diagonal()`` or ``BlockDiagonal(k)``. Used for both the forward solve and the
            gradient, so it must be exact.
        carry_linear: declare that F is affine in the carry. One Newton step is then exact:
            no loop, no convergence test, 1 iteration reported.
    """

    carry_linear: bool = False


@dataclasses.dataclass(frozen=True)
class QuasiNewton(_Iterative):
    r"""Quasi-DEER (Gonzalez et al., NeurIPS 2024): Newton with diag(J_t) only.

    The forward solve costs O(T n) memory and work per iteration (an elementwise scan); it
    converges more slowly than Newton unless J_t is diagonal, in which case it *is* Newton.
    ``jacobian`` declares the exact structure of the carry Jacobian; the forward pass uses its
    exact diagonal, the gradient uses the whole structure (an approximate adjoint would give
    wrong gradients). Default cap: 200 iterations.

    Convergence is linear, not quadratic: when an update of size u contracts by a factor rho per
    iteration, the error left is about u rho / (1 - rho), so tighten ``rtol``/``atol`` for weakly
    contractive cells if the stopping tolerance must bound the error.
    """

    default_max_steps = 200


@dataclasses.dataclass(frozen=True)
class FixedPoint(_Iterative):
    r"""Jacobi / Picard iteration: c^{k+1}_t = F(c^k_{t-1}, x_t) for all t at once (J_t = 0).

    Exact after at most T iterations; fast only for strongly contractive cells. ``jacobian`` is
    the exact structure used by the gradient. Default cap: 1000 iterations. As for
    :class:`QuasiNewton`, convergence is linear, so the error can exceed the last update by a
    factor of about rho / (1 - rho) for a contraction factor rho.
    """

    default_max_steps = 1000


_BY_NAME = {
    "sequential": Sequential,
    "newton": Newton,
    "quasi_newton": QuasiNewton,
    "fixed_point": FixedPoint,
}


def as_method(method) -> Method:
    if isinstance(method, Method):
        return method
    if isinstance(method, str) and method in _BY_NAME:
        return _BY_NAME[method]()
    raise ValueError(
        f"method must be one of {sorted(_BY_NAME)} or an rnnscan method object "
        f"(rnnscan.Newton(...), ...); got {method!r}"
    )
