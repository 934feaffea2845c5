"""rnnscan.ode against references: closed forms, plain lax.scan loops of the same scheme,
and diffrax on the same grid (values and gradients, float64, tight tolerances).

Kept small (short grids, few parametrisations): every parallel solve compiles for seconds.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from helpers import tree_allclose

import rnnscan
from rnnscan import ode

TIGHT = dict(rtol=1e-9, atol=1e-9)


# --- references -------------------------------------------------------------------------


def explicit_step(name, f, t, y, h):
    """The classical formulas, written out independently of the library's tableaus."""
    if name == "euler":
        return y + h * f(t, y)
    if name == "heun":
        k1 = f(t, y)
        return y + h / 2 * (k1 + f(t + h, y + h * k1))
    if name == "midpoint":
        return y + h * f(t + h / 2, y + h / 2 * f(t, y))
    if name == "ralston":
        k1 = f(t, y)
        k2 = f(t + 2 * h / 3, y + 2 * h / 3 * k1)
        return y + h * (k1 / 4 + 3 * k2 / 4)
    if name == "rk4":
        k1 = f(t, y)
        k2 = f(t + h / 2, y + h / 2 * k1)
        k3 = f(t + h / 2, y + h / 2 * k2)
        k4 = f(t + h, y + h * k3)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    raise ValueError(name)


def reference_loop(name, f, y0, ts):
    """ys on the grid by jax.lax.scan of the written-out scheme (ys[0] = y0)."""

    def step(y, t01):
        y = explicit_step(name, f, t01[0], y, t01[1] - t01[0])
        return y, y

    _, ys = jax.lax.scan(step, y0, jnp.stack([ts[:-1], ts[1:]], axis=1))
    return jnp.concatenate([y0[None], ys])


def implicit_reference(residual, y0, ts, iterations=8):
    """ys of an implicit scheme: each step solved by dense Newton iterations from y_k."""

    def step(y, t01):
        g = lambda y1: residual(t01[0], t01[1], y, y1)
        y1 = y
        for _ in range(iterations):
            y1 = y1 - jnp.linalg.solve(jax.jacfwd(g)(y1), g(y1))
        return y1, y1

    _, ys = jax.lax.scan(step, y0, jnp.stack([ts[:-1], ts[1:]], axis=1))
    return jnp.concatenate([y0[None], ys])


def pendulum(t, y, args):
    """A damped, weakly forced pendulum: non-linear, not chaotic."""
    g, damping = args
    return jnp.stack([y[1], -g * jnp.sin(y[0]) - damping * y[1] + 0.1 * jnp.cos(t)])


PENDULUM_ARGS = (jnp.array(2.0), jnp.array(0.3))
Y0 = jnp.array([1.0, 0.0])
TS = jnp.linspace(0.0, 4.0, 17)


# --- explicit schemes ---------------------------------------------------------------------


def test_schemes_match_the_written_out_formulas():
    """The sequential path is plain time stepping; compare each tableau with its formula."""
    for scheme in ["euler", "heun", "midpoint", "ralston", "rk4"]:
        solve = jax.jit(ode.solve_ivp, static_argnums=0, static_argnames=("scheme", "method"))
        sol = solve(pendulum, Y0, TS, PENDULUM_ARGS, scheme=scheme, method="sequential")
        ref = reference_loop(scheme, lambda t, y: pendulum(t, y, PENDULUM_ARGS), Y0, TS)
        tree_allclose(sol.ys, ref, rtol=1e-13, atol=1e-13)


def test_rk4_newton_linear_system_closed_form():
    """y' = A y: RK4 is y_{k+1} = R(hA) y_k with R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24; and
    the harmonic oscillator's exact solution to O(h^4). Also vmap over initial conditions,
    and the gradient w.r.t. A against the closed form's."""
    A0 = jnp.array([[0.0, 1.0], [-4.0, -0.1]])
    ts = jnp.linspace(0.0, 3.0, 31)
    h = ts[1] - ts[0]
    y0s = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, -2.0]])

    def closed_form(A, y0):
        Z = h * A
        R = jnp.eye(2) + Z + Z @ Z / 2 + Z @ Z @ Z / 6 + Z @ Z @ Z @ Z / 24
        powers = jax.lax.scan(lambda P, _: (R @ P, R @ P), jnp.eye(2), None, length=30)[1]
        return jnp.concatenate([y0[None], powers @ y0])

    def loss(solve, A, y0s):
        ys = jax.vmap(lambda y0: solve(A, y0))(y0s)
        return jnp.sum(jnp.sin(ys)), ys

    def ours(A, y0):
        sol = ode.solve_ivp(lambda t, y, A: A @ y, y0, ts, A, scheme="rk4")
        return sol.ys, sol

    def loss_ours(A, y0s):
        ys, sols = jax.vmap(lambda y0: ours(A, y0))(y0s)
        return jnp.sum(jnp.sin(ys)), sols

    (_, sol), grads = jax.jit(jax.value_and_grad(loss_ours, argnums=(0, 1), has_aux=True))(A0, y0s)
    assert bool(jnp.all(sol.converged)) and not bool(jnp.any(sol.fell_back))
    assert bool(jnp.all(sol.iterations <= 3))  # linear: one Newton step, one to confirm
    (_, expected), expected_grads = jax.jit(
        jax.value_and_grad(lambda A, y0s: loss(closed_form, A, y0s), argnums=(0, 1), has_aux=True)
    )(A0, y0s)
    tree_allclose(sol.ys, expected, **TIGHT)
    tree_allclose(grads, expected_grads, **TIGHT)
    # The exact flow exp(tA) y0, to the scheme's accuracy.
    exact = np.stack([scipy.linalg.expm(t * np.asarray(A0)) for t in ts]) @ np.asarray(y0s[0])
    np.testing.assert_allclose(sol.ys[0], exact, atol=1e-3)


def test_other_methods_match_time_stepping():
    """Quasi-Newton and fixed point on a contractive, nearly diagonal system with RK4: values
    and implicit gradients (exact Jacobians, whatever the forward method). Newton is tested
    throughout; ELK / quasi-ELK go down the same rnnscan.solve path as every explicit
    scheme (tested in the core's suite; they compile for 5-15 s each)."""
    W = jnp.array([[0.0, 0.3, -0.2], [0.1, 0.0, 0.2], [-0.3, 0.1, 0.0]])
    f = lambda t, y, W: -y + jnp.tanh(W @ y) + jnp.sin(t)
    ts = jnp.linspace(0.0, 2.0, 9)
    y0 = jnp.array([1.0, -0.5, 0.2])

    def loss_ours(y0, W):
        sols = [ode.solve_ivp(f, y0, ts, W, method=m) for m in ("quasi_newton", "fixed_point")]
        return sum(jnp.sum(sol.ys**2) for sol in sols), sols

    def loss_ref(y0, W):
        ys = reference_loop("rk4", lambda t, y: f(t, y, W), y0, ts)
        return 2 * jnp.sum(ys**2), ys

    (_, sols), grads = jax.jit(jax.value_and_grad(loss_ours, (0, 1), has_aux=True))(y0, W)
    (_, ref), expected = jax.jit(jax.value_and_grad(loss_ref, (0, 1), has_aux=True))(y0, W)
    for sol in sols:
        assert bool(sol.converged) and not bool(sol.fell_back)
        tree_allclose(sol.ys, ref, rtol=1e-8, atol=1e-8)
    tree_allclose(grads, expected, rtol=1e-7, atol=1e-7)


def test_driven_ode_inputs_pytree_state_and_gradients():
    """A driven ODE with a pytree state: inputs sampled on the grid, linearly interpolated at
    the stage times; values and gradients w.r.t. inputs, y0 and args against a written-out
    RK4 loop."""
    ts = jnp.linspace(0.0, 2.0, 21)
    us = jnp.stack([jnp.sin(3 * ts), jnp.cos(ts)], axis=1)  # (N, 2)

    def f(t, y, k, u):
        return {"x": -k * y["x"] + u[0] * jnp.tanh(y["v"]), "v": u[1] - 0.5 * y["v"] ** 3}

    y0 = {"x": jnp.array([0.5, -0.2]), "v": jnp.array(0.3)}
    k = jnp.array([1.0, 2.0])

    def reference(y0, k, us):
        def step(y, x):
            t0, t1, u0, u1 = x
            h = t1 - t0
            um = (u0 + u1) / 2
            vf = lambda t, y, u: f(t, y, k, u)
            add = lambda y, a, d: jax.tree_util.tree_map(lambda p, q: p + a * q, y, d)
            k1 = vf(t0, y, u0)
            k2 = vf(t0 + h / 2, add(y, h / 2, k1), um)
            k3 = vf(t0 + h / 2, add(y, h / 2, k2), um)
            k4 = vf(t1, add(y, h, k3), u1)
            y = jax.tree_util.tree_map(
                lambda p, a, b, c, d: p + h / 6 * (a + 2 * b + 2 * c + d), y, k1, k2, k3, k4
            )
            return y, y

        _, ys = jax.lax.scan(step, y0, (ts[:-1], ts[1:], us[:-1], us[1:]))
        return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)

    ours = lambda y0, k, us: ode.solve_ivp(f, y0, ts, k, inputs=us).ys

    def loss(fn):
        def value(y0, k, us):
            ys = fn(y0, k, us)
            return sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree_util.tree_leaves(ys)), ys

        return jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2), has_aux=True))

    (_, ys), grads = loss(ours)(y0, k, us)
    (_, expected), expected_grads = loss(reference)(y0, k, us)
    tree_allclose(ys, expected, **TIGHT)
    tree_allclose(grads, expected_grads, **TIGHT)


# --- implicit schemes ---------------------------------------------------------------------


def test_trapezoid_linear_closed_form_and_gradient():
    """Trapezoid on y' = A y (stiff: eigenvalues -1 and -500, h = 0.1): y_{k+1} =
    (I - hA/2)^{-1} (I + hA/2) y_k; values and gradients w.r.t. A and y0 (reverse mode)."""
    A0 = jnp.array([[-1.0, 2.0], [0.0, -500.0]])
    ts = jnp.linspace(0.0, 2.0, 21)
    h = ts[1] - ts[0]
    y0 = jnp.array([1.0, 1.0])

    def closed_form(A, y0):
        eye = jnp.eye(2)
        R = jnp.linalg.solve(eye - h / 2 * A, eye + h / 2 * A)
        powers = jax.lax.scan(lambda P, _: (R @ P, R @ P), eye, None, length=20)[1]
        return jnp.concatenate([y0[None], powers @ y0])

    ours = lambda A, y0: ode.solve_ivp(lambda t, y, A: A @ y, y0, ts, A, scheme="trapezoid")

    def loss(A, y0):
        ys = closed_form(A, y0)
        return jnp.sum(ys**2), ys

    def loss_ours(A, y0):
        sol = ours(A, y0)
        return jnp.sum(sol.ys**2), sol

    (_, sol), grads = jax.jit(jax.value_and_grad(loss_ours, (0, 1), has_aux=True))(A0, y0)
    (_, expected), expected_grads = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(A0, y0)
    assert bool(sol.converged) and not bool(sol.fell_back)
    tree_allclose(sol.ys, expected, **TIGHT)
    tree_allclose(grads, expected_grads, **TIGHT)


def test_implicit_midpoint_nonlinear_vmap_and_gradient():
    """Implicit midpoint on the pendulum, batched over initial conditions: values against a
    sequential per-step Newton, forward-mode derivatives w.r.t. args against autodiff of
    that loop."""

    def residual(args):
        def G(t0, t1, y, y1):
            h = t1 - t0
            return y1 - y - h * pendulum(t0 + h / 2, (y + y1) / 2, args)

        return G

    y0s = jnp.array([[1.0, 0.0], [-0.5, 0.8]])
    tangent = (jnp.array(1.0), jnp.array(-2.0))

    def ours(args):
        return jax.vmap(
            lambda y0: ode.solve_ivp(pendulum, y0, TS, args, scheme="implicit_midpoint")
        )(y0s)

    def reference(args):
        return jax.vmap(lambda y0: implicit_reference(residual(args), y0, TS))(y0s)

    sol, dsol = jax.jit(lambda a: jax.jvp(ours, (a,), (tangent,)))(PENDULUM_ARGS)
    expected, dexpected = jax.jit(lambda a: jax.jvp(reference, (a,), (tangent,)))(PENDULUM_ARGS)
    assert bool(jnp.all(sol.converged)) and not bool(jnp.any(sol.fell_back))
    tree_allclose(sol.ys, expected, **TIGHT)
    tree_allclose(dsol.ys, dexpected, rtol=1e-8, atol=1e-8)


# --- failure: chaotic and stiff -------------------------------------------------------------


def lorenz(t, y, args):
    x, v, z = y
    return jnp.stack([10.0 * (v - x), x * (28.0 - z) - v, x * v - 8.0 / 3.0 * z])


def test_chaotic_lorenz_gives_up_and_falls_back():
    """Lorenz over 6 time units (~5 Lyapunov times): Newton cannot converge in parallel; it
    says so and the answer is the sequential integration."""
    ts = jnp.arange(601) * 0.01
    y0 = jnp.array([1.0, 1.0, 1.0])
    sol = jax.jit(lambda y0: ode.solve_ivp(lorenz, y0, ts))(y0)
    assert int(sol.result) != rnnscan.RESULTS.successful and bool(sol.fell_back)
    assert bool(sol.ok) and int(sol.iterations) < 10
    ref = jax.jit(lambda y0: reference_loop("rk4", lambda t, y: lorenz(t, y, None), y0, ts))(y0)
    tree_allclose(sol.ys, ref, rtol=1e-6, atol=1e-6)  # chaos amplifies rounding ~1e6 times


def test_stiff_van_der_pol_trapezoid_falls_back():
    """Van der Pol, mu = 10, trapezoid with h = 0.1 over a relaxation oscillation: the global
    Newton diverges, says so, and the per-step sequential solve answers (each step equation
    is well posed here: h mu / 2 < 1)."""

    def vdp(t, y, mu):
        return jnp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    ts = jnp.arange(201) * 0.1
    y0 = jnp.array([2.0, 0.0])
    mu = 10.0
    sol = jax.jit(lambda y0: ode.solve_ivp(vdp, y0, ts, mu, scheme="trapezoid"))(y0)
    assert int(sol.result) != rnnscan.RESULTS.successful and bool(sol.fell_back)

    def G(t0, t1, y, y1):
        return y1 - y - (t1 - t0) / 2 * (vdp(t0, y, mu) + vdp(t1, y1, mu))

    expected = jax.jit(lambda y0: implicit_reference(G, y0, ts, iterations=20))(y0)
    tree_allclose(sol.ys, expected, **TIGHT)


# --- diffrax ----------------------------------------------------------------------------------


def test_diffeqsolve_matches_diffrax():
    """Values and gradients w.r.t. y0 and args against diffrax.diffeqsolve on the same grid
    (SaveAt(ts=ts), StepTo(ts); diffrax differentiates through its steps directly). Tsit5
    only (FSAL, 7 stages): diffrax compiles slowly, and every explicit solver goes through the
    same init/step code."""
    diffrax = pytest.importorskip("diffrax")
    solver = diffrax.Tsit5()
    term = diffrax.ODETerm(pendulum)

    def ours(y0, args):
        return ode.diffeqsolve(term, solver, TS, y0, args).ys

    def theirs(y0, args):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            TS[0],
            TS[-1],
            None,
            y0,
            args,
            saveat=diffrax.SaveAt(ts=TS),
            stepsize_controller=diffrax.StepTo(TS),
        )
        return sol.ys

    def loss(fn):
        def value(y0, args):
            ys = fn(y0, args)
            return jnp.sum(jnp.sin(ys)), ys

        return jax.jit(jax.value_and_grad(value, argnums=(0, 1), has_aux=True))

    (_, ys), grads = loss(ours)(Y0, PENDULUM_ARGS)
    (_, expected), expected_grads = loss(theirs)(Y0, PENDULUM_ARGS)
    tree_allclose(ys, expected, **TIGHT)
    tree_allclose(grads, expected_grads, **TIGHT)


def test_diffeqsolve_refuses_implicit_and_stateful_solvers():
    diffrax = pytest.importorskip("diffrax")
    term = diffrax.ODETerm(pendulum)
    with pytest.raises(ValueError, match="implicit"):
        ode.diffeqsolve(term, diffrax.Kvaerno3(), TS, Y0, PENDULUM_ARGS)
    with pytest.raises(ValueError, match="keeps state"):
        ode.diffeqsolve(term, diffrax.ReversibleHeun(), TS, Y0, PENDULUM_ARGS)
    with pytest.raises(TypeError, match="diffrax solver"):
        ode.diffeqsolve(term, "tsit5", TS, Y0, PENDULUM_ARGS)


# --- errors and packaging ---------------------------------------------------------------------


def test_errors_name_the_bad_argument():
    f = lambda t, y, args: -y
    with pytest.raises(ValueError, match="scheme must be one of"):
        ode.solve_ivp(f, Y0, TS, scheme="rk5")
    with pytest.raises(ValueError, match="ts must be a 1-D array"):
        ode.solve_ivp(f, Y0, TS[:, None])
    with pytest.raises(ValueError, match=r"inputs has shape \(5, 1\)"):
        ode.solve_ivp(lambda t, y, a, u: -y, Y0, TS, inputs=jnp.zeros((5, 1)))
    with pytest.raises(ValueError, match=r"guess has shape \(16, 2\); expected \(17, 2\)"):
        ode.solve_ivp(f, Y0, TS, guess=jnp.zeros((16, 2)))
    with pytest.raises(TypeError, match="must return dy/dt with the structure of y0"):
        ode.solve_ivp(lambda t, y, a: (y, y), Y0, TS)
    with pytest.raises(ValueError, match="of shape \\(3,\\) for a state of shape \\(2,\\)"):
        ode.solve_ivp(lambda t, y, a: jnp.zeros(3), Y0, TS)
    with pytest.raises(TypeError, match="y0 has dtype int"):
        ode.solve_ivp(f, jnp.array([1, 2]), TS)
    with pytest.raises(ValueError, match="strictly lower triangular"):
        ode.ExplicitRungeKutta(a=((), (0.5, 0.5)), b=(0.5, 0.5), c=(0.0, 1.0))
    one = ode.solve_ivp(f, Y0, TS[:1])
    assert one.ys.shape == (1, 2)


def test_import_without_diffrax():
    """``import rnnscan`` and solve_ivp work with diffrax unavailable; diffeqsolve says what
    to install."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["diffrax"] = None  # any import of diffrax now fails
        import jax.numpy as jnp
        import rnnscan
        sol = rnnscan.ode.solve_ivp(lambda t, y, a: -y, jnp.ones(2), jnp.linspace(0, 1, 5),
                                    method="sequential")
        assert sol.ys.shape == (5, 2)
        try:
            rnnscan.ode.diffeqsolve(None, None, jnp.linspace(0, 1, 5), jnp.ones(2))
        except ImportError as err:
            assert "pip install" in str(err)
        else:
            raise AssertionError("no ImportError")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
