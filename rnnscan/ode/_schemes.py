r"""One-step schemes on a grid: y_{k+1} = Phi(y_k; t_k, t_{k+1}).

Explicit Runge-Kutta schemes (Butcher tableau ``a``, ``b``, ``c``) with h = t_{k+1} - t_k:

    K_i = f(t_k + c_i h, y_k + h sum_{j<i} a_ij K_j, u(t_k + c_i h)),   i = 1..s,
    y_{k+1} = y_k + h sum_i b_i K_i,

which is an explicit recurrence y_{k+1} = Phi(y_k, x_k) with x_k = (t_k, t_{k+1}, u_k,
u_{k+1}): exactly what :func:`rnnscan.solve` solves in parallel.

Implicit schemes are given by their step equation G(y_k, y_{k+1}; x_k) = 0 instead (see
``_implicit_solve.py`` for how the global Newton solves all of them at once).

Inputs (a driven ODE): the input signal is sampled on the grid, u_k = u(t_k), and read
between grid points by linear interpolation, u(t_k + c h) = (1 - c) u_k + c u_{k+1}.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

PyTree = Any
# vf(t, y, u) -> dy/dt, with u the (interpolated) input or None.
VectorField = Callable[[Any, PyTree, PyTree], PyTree]


def _real_dtype(leaf):
    return jnp.finfo(jnp.result_type(leaf)).dtype


def _lincomb(y: PyTree, h, coefficients, ks) -> PyTree:
    """y + h sum_j coefficients[j] ks[j], leaf by leaf, in y's dtypes (zero terms skipped)."""
    terms = [(float(a), k) for a, k in zip(coefficients, ks) if a != 0]
    if not terms:
        return y

    def combine(y_leaf, *k_leaves):
        total = sum(a * k for (a, _), k in zip(terms, k_leaves))
        return (y_leaf + h.astype(_real_dtype(y_leaf)) * total).astype(jnp.result_type(y_leaf))

    return jax.tree_util.tree_map(combine, y, *[k for _, k in terms])


def interpolate(u0: PyTree, u1: PyTree, fraction: float) -> PyTree:
    """The input at t_k + fraction h: linear between the samples, exact at the ends."""
    if u0 is None or fraction == 0:
        return u0
    if fraction == 1:
        return u1
    return jax.tree_util.tree_map(lambda a, b: a + fraction * (b - a), u0, u1)


class Scheme:
    """Base class of the one-step schemes of :func:`rnnscan.ode.solve_ivp`."""

    implicit: ClassVar[bool] = False
    name: ClassVar[str] = "scheme"


@dataclasses.dataclass(frozen=True)
class ExplicitRungeKutta(Scheme):
    r"""An explicit Runge-Kutta scheme given by its Butcher tableau.

    ``a[i]`` is row i of the strictly lower-triangular matrix (``len(a[i]) == i``), ``b`` the
    weights, ``c`` the nodes. Consistency (sum_i b_i = 1 and c_i = sum_j a_ij) is checked.
    Subclasses :class:`Euler`, :class:`Heun`, :class:`Midpoint`, :class:`Ralston`,
    :class:`RK4` fill in the classical tableaus.

    Reference loop (one step)::

        h = t1 - t0
        ks = []
        for i in range(s):
            yi = y0 + h * sum(a[i][j] * ks[j] for j in range(i))
            ks.append(f(t0 + c[i] * h, yi, u(t0 + c[i] * h)))
        y1 = y0 + h * sum(b[i] * ks[i] for i in range(s))
    """

    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    c: tuple[float, ...]

    def __post_init__(self):
        s = len(self.b)
        if len(self.a) != s or len(self.c) != s or s == 0:
            raise ValueError(
                f"{type(self).__name__}: the tableau needs len(a) == len(b) == len(c) >= 1, got "
                f"{len(self.a)}, {len(self.b)}, {len(self.c)}"
            )
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(
                    f"{type(self).__name__}: row a[{i}] must have {i} entries (explicit scheme: "
                    f"strictly lower triangular), got {len(row)}"
                )
            if not math.isclose(sum(row), self.c[i], abs_tol=1e-12):
                raise ValueError(
                    f"{type(self).__name__}: c[{i}] = {self.c[i]} but sum(a[{i}]) = {sum(row)}"
                )
        if not math.isclose(sum(self.b), 1.0, abs_tol=1e-12):
            raise ValueError(f"{type(self).__name__}: sum(b) must be 1, got {sum(self.b)}")

    def step(self, vf: VectorField, t0, t1, y0: PyTree, u0: PyTree, u1: PyTree) -> PyTree:
        """y_{k+1} from y_k = ``y0`` over [t0, t1]."""
        h = t1 - t0
        ks = []
        for a_row, c_i in zip(self.a, self.c):
            y_i = _lincomb(y0, h, a_row, ks)
            ks.append(vf(t0 + c_i * h, y_i, interpolate(u0, u1, c_i)))
        return _lincomb(y0, h, self.b, ks)


@dataclasses.dataclass(frozen=True)
class Euler(ExplicitRungeKutta):
    """Forward Euler, order 1: y_{k+1} = y_k + h f(t_k, y_k)."""

    a: tuple[tuple[float, ...], ...] = ((),)
    b: tuple[float, ...] = (1.0,)
    c: tuple[float, ...] = (0.0,)
    name: ClassVar[str] = "euler"


@dataclasses.dataclass(frozen=True)
class Heun(ExplicitRungeKutta):
    """Heun's method (explicit trapezoid), order 2."""

    a: tuple[tuple[float, ...], ...] = ((), (1.0,))
    b: tuple[float, ...] = (0.5, 0.5)
    c: tuple[float, ...] = (0.0, 1.0)
    name: ClassVar[str] = "heun"


@dataclasses.dataclass(frozen=True)
class Midpoint(ExplicitRungeKutta):
    """The explicit midpoint method, order 2."""

    a: tuple[tuple[float, ...], ...] = ((), (0.5,))
    b: tuple[float, ...] = (0.0, 1.0)
    c: tuple[float, ...] = (0.0, 0.5)
    name: ClassVar[str] = "midpoint"


@dataclasses.dataclass(frozen=True)
class Ralston(ExplicitRungeKutta):
    """Ralston's second-order method (minimal error bound among 2-stage order-2 schemes)."""

    a: tuple[tuple[float, ...], ...] = ((), (2 / 3,))
    b: tuple[float, ...] = (0.25, 0.75)
    c: tuple[float, ...] = (0.0, 2 / 3)
    name: ClassVar[str] = "ralston"


@dataclasses.dataclass(frozen=True)
class RK4(ExplicitRungeKutta):
    """The classical fourth-order Runge-Kutta method."""

    a: tuple[tuple[float, ...], ...] = ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
    b: tuple[float, ...] = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
    c: tuple[float, ...] = (0.0, 0.5, 0.5, 1.0)
    name: ClassVar[str] = "rk4"


class ImplicitScheme(Scheme):
    """A one-step scheme given by its step equation G(y_k, y_{k+1}; t_k, t_{k+1}) = 0."""

    implicit: ClassVar[bool] = True

    def residual(self, vf: VectorField, t0, t1, y0, y1, u0, u1) -> PyTree:
        raise NotImplementedError


def _sub(a: PyTree, b: PyTree) -> PyTree:
    return jax.tree_util.tree_map(lambda x, y: x - y, a, b)


@dataclasses.dataclass(frozen=True)
class Trapezoid(ImplicitScheme):
    r"""The trapezoidal rule (Crank-Nicolson), order 2, A-stable:

    G(y_k, y_{k+1}) = y_{k+1} - y_k - h/2 (f(t_k, y_k, u_k) + f(t_{k+1}, y_{k+1}, u_{k+1})).
    """

    name: ClassVar[str] = "trapezoid"

    def residual(self, vf, t0, t1, y0, y1, u0, u1):
        h = t1 - t0
        k0, k1 = vf(t0, y0, u0), vf(t1, y1, u1)
        return _sub(y1, _lincomb(y0, h, (0.5, 0.5), (k0, k1)))


@dataclasses.dataclass(frozen=True)
class ImplicitMidpoint(ImplicitScheme):
    r"""The implicit midpoint rule, order 2, A-stable and symplectic:

    G(y_k, y_{k+1}) = y_{k+1} - y_k - h f(t_k + h/2, (y_k + y_{k+1}) / 2, (u_k + u_{k+1}) / 2).
    """

    name: ClassVar[str] = "implicit_midpoint"

    def residual(self, vf, t0, t1, y0, y1, u0, u1):
        h = t1 - t0
        mid = jax.tree_util.tree_map(lambda a, b: 0.5 * (a + b), y0, y1)
        k = vf(t0 + 0.5 * h, mid, interpolate(u0, u1, 0.5))
        return _sub(y1, _lincomb(y0, h, (1.0,), (k,)))


_BY_NAME: dict[str, type[Scheme]] = {
    "euler": Euler,
    "heun": Heun,
    "midpoint": Midpoint,
    "ralston": Ralston,
    "rk4": RK4,
    "trapezoid": Trapezoid,
    "crank_nicolson": Trapezoid,
    "implicit_midpoint": ImplicitMidpoint,
}

SCHEMES = tuple(sorted(_BY_NAME))


def as_scheme(scheme: str | Scheme) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    if isinstance(scheme, str) and scheme in _BY_NAME:
        return _BY_NAME[scheme]()
    raise ValueError(
        f"scheme must be one of {list(SCHEMES)} or an rnnscan.ode scheme object "
        f"(rnnscan.ode.RK4(), rnnscan.ode.ExplicitRungeKutta(a, b, c), ...); got {scheme!r}"
    )
