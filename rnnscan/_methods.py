"""The solvers: small frozen classes holding options, in the style of optimistix."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ._linear_recurrence import BACKENDS
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
    """Base class of the solvers. ``name`` is the string that selects a solver class
    (``method="newton"``); subclasses without one are not selectable by name."""

    name = None

    def resolved(self, dtype, length: int) -> "Method":
        return self


@dataclasses.dataclass(frozen=True)
class Sequential(Method):
    """Plain ``jax.lax.scan``: the reference, O(T) depth."""

    name = "sequential"


@dataclasses.dataclass(frozen=True)
class SplitSequential(Method):
    """``Sequential`` on a time axis split over devices: the carries by scans, block after
    block, differentiated implicitly in ``jacobian`` like the parallel methods (one linear
    recurrence, in parallel over the blocks) instead of by transposing the scans, whose
    cotangents of closed-over arrays JAX cannot create inside a partly manual
    ``shard_map``. Built by ``solve`` from ``Sequential()``, not by users."""

    jacobian: Structure = Dense()


@dataclasses.dataclass(frozen=True)
class _Iterative(Method):
    rtol: float | None = None
    atol: float | None = None
    max_steps: int | None = None
    jacobian: Structure = Dense()
    give_up: bool = True
    window: int | None = None
    linear_recurrence: str = "auto"

    default_max_steps = 50
    # Whether the forward solve uses only the diagonal of the Jacobian.
    diagonal_only = False
    # Whether iteration k makes step k exact (so T + 1 iterations always suffice).
    exact_prefix = True

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
        if self.linear_recurrence not in BACKENDS:
            raise ValueError(
                f"{type(self).__name__}: linear_recurrence must be one of {BACKENDS}, got "
                f"{self.linear_recurrence!r}"
            )
        if self.linear_recurrence == "pallas" and self.window is not None:
            raise ValueError(
                f"{type(self).__name__}: linear_recurrence='pallas' does not run with a window "
                "yet; use window=None or linear_recurrence='auto'"
            )
        if self.window is not None and not (isinstance(self.window, int) and self.window >= 1):
            raise ValueError(
                f"{type(self).__name__}: window must be None or a positive int, got {self.window!r}"
            )

    def resolved(self, dtype, length):
        rtol, atol = default_tolerances(dtype)
        # T + 1 iterations always suffice in exact arithmetic (T to make every step exact,
        # one more to see a zero update), so a larger cap is never needed.
        cap = self.max_steps if self.max_steps is not None else self.default_max_steps
        window = None if self.window is None or self.window >= length else self.window
        give_up = self.give_up
        if window is None:
            # When T + 1 iterations fit under the cap, exactness of the growing prefix
            # guarantees convergence, so there is nothing to give up on.
            give_up = give_up and (cap < length + 1 or not self.exact_prefix)
            cap = max(1, min(cap, length + 1) if self.exact_prefix else cap)
        else:
            # The cap holds per window position: a window slides at least one step every
            # second iteration, so this many always suffice.
            cap = cap * -(-length // window)
        return dataclasses.replace(
            self,
            rtol=rtol if self.rtol is None else self.rtol,
            atol=atol if self.atol is None else self.atol,
            max_steps=cap,
            window=window,
            give_up=give_up,
        )


_COMMON_OPTIONS = """
    Options of every iterative method:
        rtol, atol: stop when max |delta| <= atol + rtol |c| (defaults by dtype:
            1e-10 for float64, 1e-5 for float32).
        max_steps: iteration cap (never more than T + 1 without a window).
        jacobian: the exact structure of the carry Jacobian: ``Dense()`` (default),
            ``Diagonal()`` or ``BlockDiagonal(k)``, used by the gradient (and by the forward
            solve of the Newton-type methods), so it must be exact.
        give_up: stop early when the solve has evidently failed (iterates diverging, or no
            progress for 8 iterations; see ``RESULTS.diverged`` / ``RESULTS.stalled``), so
            that the fallback runs after a few wasted iterations rather than ``max_steps``.
            Default True.
        window: iterate on ``window`` steps at a time, starting at the first unconverged
            step and sliding on as the prefix converges: memory O(window n^2) for dense
            Jacobians in the forward pass instead of O(T n^2). ``max_steps`` then caps the
            iterations per window position (T / window of them). Default None (all T).
        linear_recurrence: how the linear recurrences of the iterations and of the
            gradient are solved: ``"auto"`` (default; today ``jax.lax.associative_scan``
            everywhere), ``"associative"`` or ``"pallas"`` (the chunked Pallas kernel,
            ``Diagonal()`` and ``BlockDiagonal(k)`` Jacobians, not with a time split or a
            window; not yet measured on a GPU, and slow in interpret mode elsewhere).
"""


@dataclasses.dataclass(frozen=True)
class Newton(_Iterative):
    r"""DEER (Lim et al., ICLR 2024): Newton's method on all T steps at once.

    Each iteration linearises the carry update around the current guess, J_t = dF/dc(c_{t-1},
    x_t), and solves the linear recurrence delta_t = J_t delta_{t-1} + (F(c_{t-1}, x_t) - c_t)
    with a parallel scan, then c <- c + delta. Quadratic convergence near the solution;
    typically 3-10 iterations for GRUs.

    Default cap: 50 iterations. Besides the common options below:

        carry_linear: declare that F is affine in the carry. One Newton step is then exact:
            no loop, no convergence test, 1 iteration reported.
    """

    name = "newton"

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

    name = "quasi_newton"

    default_max_steps = 200
    diagonal_only = True


@dataclasses.dataclass(frozen=True)
class FixedPoint(_Iterative):
    r"""Jacobi / Picard iteration: c^{k+1}_t = F(c^k_{t-1}, x_t) for all t at once (J_t = 0).

    Exact after at most T iterations; fast only for strongly contractive cells. ``jacobian`` is
    the exact structure used by the gradient. Default cap: 1000 iterations. As for
    :class:`QuasiNewton`, convergence is linear, so the error can exceed the last update by a
    factor of about rho / (1 - rho) for a contraction factor rho.
    """

    name = "fixed_point"

    default_max_steps = 1000


@dataclasses.dataclass(frozen=True)
class ELK(_Iterative):
    r"""ELK (Gonzalez, Warrington, Smith, Linderman, NeurIPS 2024): Newton with
    Levenberg-Marquardt damping, for recurrences on which plain Newton diverges.

    Each iteration minimises the linearised merit plus a damping term,

        sum_t || delta_t - J_t delta_{t-1} - r_t ||^2 + lambda sum_t || delta_t ||^2,
        r_t = F(c_{t-1}, x_t) - c_t,

    solved exactly as a linear-Gaussian smoothing problem by a parallel Kalman filter and
    smoother (Särkkä & García-Fernández, 2021; ``_kalman.py``): O(log T) depth, O(T n^3) work
    for dense Jacobians. lambda -> 0 is a Newton (DEER) step; a large lambda takes a short
    step along the gradient of the merit 1/2 sum_t ||r_t||^2.

    With ``adaptive`` (default) the damping is a trust region: a step is accepted only if it
    lowers the merit; lambda shrinks 3x after a step that did at least 3/4 of the decrease
    the linear model predicted, grows 2x after one that did less than 1/4, and 4x after a
    rejected step. Without it, every finite step is taken with the fixed ``damping``, as in
    the paper. Converged when an accepted step and the residual after it are both within
    tolerance. Default cap: 100 iterations (rejected steps count).
    """

    name = "elk"

    damping: float = 1e-3
    adaptive: bool = True

    default_max_steps = 100
    exact_prefix = False

    def __post_init__(self):
        super().__post_init__()
        if not self.damping >= 0:
            raise ValueError(f"{type(self).__name__}: damping must be >= 0, got {self.damping!r}")
        if self.window is not None:
            raise ValueError(f"{type(self).__name__}: window= is not supported (yet)")


@dataclasses.dataclass(frozen=True)
class QuasiELK(ELK):
    r"""Quasi-ELK (Gonzalez et al., NeurIPS 2024): :class:`ELK` with diag(J_t) only, so the
    Kalman filter and smoother are elementwise: O(T n) memory and work per iteration. The
    gradient still uses the declared exact ``jacobian``."""

    name = "quasi_elk"

    diagonal_only = True


for _cls in (Newton, QuasiNewton, FixedPoint, ELK, QuasiELK):
    _cls.__doc__ += _COMMON_OPTIONS

_BY_NAME = {
    cls.name: cls for cls in (Sequential, Newton, QuasiNewton, FixedPoint, ELK, QuasiELK)
}
METHOD_NAMES = tuple(_BY_NAME)


def method_class(name: str) -> type[Method]:
    """The solver class of a method name (``"newton"`` -> :class:`Newton`, ...)."""
    if isinstance(name, str) and name in _BY_NAME:
        return _BY_NAME[name]
    raise ValueError(
        f"method must be one of {sorted(_BY_NAME)} or an rnnscan method object "
        f"(rnnscan.Newton(...), ...); got {name!r}"
    )


def as_method(method) -> Method:
    if isinstance(method, Method):
        return method
    return method_class(method)()
