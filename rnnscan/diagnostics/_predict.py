r"""Will a parallel solve pay? Features of the Jacobian products and a calibrated predictor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._flatten import carry_dtype, sequence_length
from .._growth import declared_structure
from .._methods import Method, Newton, as_method
from .._stopping import DIVERGENCE_FACTOR
from .._structure import Diagonal, Structure
from ._lyapunov import (
    _guard_finite,
    _Trajectory,
    dyadic_growth,
    trajectory,
)

Carry = Any
PyTree = Any


class Features(eqx.Module):
    """What the predictor reads off the trajectory (all natural-log, per-step units).

    Attributes:
        lyapunov: the largest Lyapunov exponent lambda_1, as its finite-time estimate
            (1/T) log ||J_T ... J_1||_2 (the top of the reduction tree that gives ``growth``).
        growth: G(2^j), j = 0..floor(log2 T'): the largest log-norm of a product of 2^j
            consecutive Jacobians over the aligned windows of that length (the finite-time
            exponents times the window length, at their worst along the sequence).
        amplification: log a = max(0, max_j G(2^j)): how much the worst window amplifies a
            perturbation before it starts to decay (0 for a contraction in every step).
        log_sensitivity: log S, S = sum_{k >= 0} max_t ||J_{t+k} ... J_{t+1}|| (G
            interpolated linearly between the dyadic lengths): a bound on
            ||(I - L_J)^{-1}||, the inverse of the residual Jacobian of the parallel problem
            (Gonzalez et al., 2025), whose conditioning decides Newton's convergence.
        guess_amplification: log a of the Jacobians at the parallel solvers' first guess
            c_t = F(c_0, x_t) instead of along the trajectory (inf if they are not finite):
            how much Newton's first linearisation amplifies the first residual.
    """

    lyapunov: Float[Array, ""]
    growth: Float[Array, " levels"]
    amplification: Float[Array, ""]
    log_sensitivity: Float[Array, ""]
    guess_amplification: Float[Array, ""]


def _log_sensitivity(G: jax.Array) -> jax.Array:
    """log sum_{k=0}^{K} exp(G(k)) with G(0) = 0 and G linear between k = 2^j and 2^{j+1}."""
    # k = 0 contributes 1; segment j covers k in [2^j, 2^{j+1}) with G from G_j to G_{j+1}.
    lengths = 2.0 ** jnp.arange(G.shape[0] - 1, dtype=G.dtype)
    g0, g1 = G[:-1], G[1:]
    d = g1 - g0
    # log( L * e^{g0} * (e^{d} - 1) / d ), stable for d -> 0 and both signs.
    small = jnp.abs(d) < 1e-6
    d_safe = jnp.where(small, 1.0, d)
    log_ratio = jnp.where(
        small,
        d / 2,
        jnp.where(
            d > 0,
            d + jnp.log(-jnp.expm1(-d_safe)) - jnp.log(jnp.abs(d_safe)),
            jnp.log(-jnp.expm1(d_safe)) - jnp.log(jnp.abs(d_safe)),
        ),
    )
    terms = jnp.log(lengths) + g0 + log_ratio
    last = G[-1] + jnp.log(2.0 ** (G.shape[0] - 1))  # the last level, counted once
    return jax.nn.logsumexp(jnp.concatenate([jnp.zeros((1,), G.dtype), terms, last[None]]))


def features(
    f: Callable,
    init: Carry,
    xs: PyTree = None,
    length: int | None = None,
    reverse: bool = False,
    *,
    carries: Carry | None = None,
    jacobian: Structure | str | None = None,
    max_length: int | None = None,
) -> Features:
    """The :class:`Features` of ``f`` along its trajectory (the first ``max_length`` steps)."""
    name = "parallelizability"
    traj = trajectory(
        f, init, xs, length, reverse, carries, jacobian, name, max_length, at_guess=True
    )
    return _features(traj)


@jax.jit  # one program per shape, whatever f is (see _lyapunov._exponents)
def _features(traj: _Trajectory) -> Features:
    name = "parallelizability"
    G, whole = dyadic_growth(traj, power_iterations=16)
    guess_G, _ = dyadic_growth(traj, power_iterations=16, jacobians=traj.guess_jacobians)
    guess_amplification = jnp.maximum(0.0, jnp.max(guess_G))
    out = Features(
        lyapunov=whole / traj.length,
        growth=G,
        amplification=jnp.maximum(0.0, jnp.max(G)),
        log_sensitivity=_log_sensitivity(G),
        guess_amplification=jnp.where(jnp.isnan(guess_amplification), jnp.inf, guess_amplification),
    )
    # Only the trajectory must be finite: a first guess that overflows predicts divergence.
    return eqx.tree_at(
        lambda o: (o.lyapunov, o.growth, o.amplification, o.log_sensitivity),
        out,
        tuple(
            _guard_finite(leaf, traj, name)
            for leaf in (out.lyapunov, out.growth, out.amplification, out.log_sensitivity)
        ),
    )


# ---------------------------------------------------------------------------------------------
# The predictor

# Constants of the predictor (see ``parallelizability``), calibrated by experiments/lyapunov.py
# on the "calibration" problems of configs/experiments/lyapunov.yaml (float64); see
# docs/diagnostics.md.
NEWTON_BASE = 4.0  # iterations of the quadratic phase
NEWTON_SCALE = 0.75  # N = base + scale * S ** power
NEWTON_POWER = 0.5
# Above this log S, plain Newton (DEER) diverged or stalled on every calibration problem.
NEWTON_MAX_LOG_SENSITIVITY = 6.05
# Above this log a at the first guess, Newton's first update is amplified by more than the
# factor of the solvers' divergence rule (``_stopping.DIVERGENCE_FACTOR``): not fitted.
NEWTON_MAX_GUESS_AMPLIFICATION = float(np.log(DIVERGENCE_FACTOR))
# Initial error scale of Jacobi / quasi-Newton (their first guess is F(c_0, x_t) for all t).
FIXED_POINT_E0 = 1.0
# Above this amplification log a, the solvers' early give-up (no smaller update for 8
# iterations) stopped fixed-point / dense quasi-Newton iterations on every calibration problem.
FIXED_POINT_MAX_AMPLIFICATION = 2.0
QUASI_NEWTON_MAX_AMPLIFICATION = 1.4


def _crossing(G: jax.Array, level: jax.Array, T: int) -> jax.Array:
    """The smallest k in [1, T] with G(k) <= level (G linear in k between dyadic k = 2^j,
    G(0) = 0, extrapolated with the last level's slope), or inf if there is none."""
    k = jnp.concatenate([jnp.zeros((1,), G.dtype), 2.0 ** jnp.arange(G.shape[0], dtype=G.dtype)])
    g = jnp.concatenate([jnp.zeros((1,), G.dtype), G])
    below = g[1:] <= level
    idx = jnp.argmax(below)  # the first segment [k_idx, k_idx+1] ending below the level
    k0, k1, g0, g1 = k[idx], k[idx + 1], g[idx], g[idx + 1]
    drop = jnp.where(g0 > g1, g0 - g1, 1.0)
    frac = jnp.where(g0 > g1, (g0 - level) / drop, 1.0)
    kc = k0 + jnp.clip(frac, 0.0, 1.0) * (k1 - k0)
    slope = G[-1] / k[-1]
    safe = jnp.where(slope < 0, slope, -1.0)
    beyond = jnp.where(slope < 0, k[-1] + (level - G[-1]) / safe, jnp.inf)
    kc = jnp.where(jnp.any(below), kc, beyond)
    return jnp.where(kc <= T, jnp.maximum(kc, 1.0), jnp.inf)


def predict_iterations(
    growth,
    amplification,
    log_sensitivity,
    guess_amplification,
    method: Method,
    structure: Structure,
    T: int,
) -> jax.Array:
    """Predicted iterations of the resolved ``method`` on T steps; inf when it is not
    expected to converge within its cap (see :func:`parallelizability`)."""
    # Newton's model wherever the iteration uses the exact Jacobian (quasi-Newton on a
    # diagonal one is Newton); the linear-convergence model for the diagonal approximation
    # and for the fixed point (no Jacobian).
    fixed_point = method.forward_structure is None
    approximate = fixed_point or (method.diagonal_only and not isinstance(structure, Diagonal))
    if not approximate:
        n_iter = NEWTON_BASE + NEWTON_SCALE * jnp.exp(NEWTON_POWER * log_sensitivity)
        converges = jnp.logical_and(
            log_sensitivity <= NEWTON_MAX_LOG_SENSITIVITY,
            guess_amplification <= NEWTON_MAX_GUESS_AMPLIFICATION,
        )
        n_iter = jnp.where(converges, n_iter, jnp.inf)
    else:
        tol = method.atol + method.rtol  # the stopping test for carries of scale ~1
        k = _crossing(growth, jnp.log(tol / FIXED_POINT_E0), T)
        limit = FIXED_POINT_MAX_AMPLIFICATION if fixed_point else QUASI_NEWTON_MAX_AMPLIFICATION
        n_iter = jnp.where(amplification <= limit, k + 1.0, jnp.inf)
    n_iter = jnp.minimum(n_iter, T + 1.0)  # Newton's exact prefix: T + 1 always suffice
    return jnp.where(n_iter <= method.max_steps, n_iter, jnp.inf)


_SUPPORTED = ("newton", "quasi_newton", "fixed_point")
# Assumption for the GPU break-even (not measured here: no GPU was available): one parallel
# iteration over T steps costs about as much as this many sequential steps (small n).
GPU_STEPS_PER_ITERATION = 250.0


class Parallelizability(eqx.Module):
    r"""What :func:`parallelizability` found. Array fields gain a batch axis under
    ``jax.vmap``; :attr:`summary` and :meth:`iterations_for` are for concrete reports.

    Attributes:
        lyapunov: the largest Lyapunov exponent lambda_1 (natural log per step).
        predictable: lambda_1 < -0.01 and log S <= 6.05: the parallel problem along the
            trajectory is well conditioned, the regime where a parallel solve can pay
            (Gonzalez et al., 2025). Newton from its default first guess can still diverge
            (``expected_newton_iterations`` is then inf and the summary says why).
        expected_newton_iterations: predicted iterations of ``rnnscan.Newton()`` (default
            cap and tolerances for this dtype and T); inf where it should not converge.
        expected_iterations: the same for the ``method`` asked about.
        amplification: log a = max(0, max_k G(k)), the largest growth of a perturbation over
            any window.
        log_sensitivity: log S, S = sum_k max_t ||J_{t+k} ... J_{t+1}||.
        guess_amplification: log a at the parallel solvers' first guess c_t = F(c_0, x_t).
        growth: G(2^j) for j = 0..floor(log2 T), the largest log-norm of a product of 2^j
            consecutive Jacobians (over the aligned windows).
        method: the method's name; max_steps: its resolved iteration cap; length: T;
        structure: the Jacobian structure used; dtype: the carry's real dtype.
    """

    lyapunov: Float[Array, "*batch"]
    predictable: Bool[Array, "*batch"]
    expected_newton_iterations: Float[Array, "*batch"]
    expected_iterations: Float[Array, "*batch"]
    amplification: Float[Array, "*batch"]
    log_sensitivity: Float[Array, "*batch"]
    guess_amplification: Float[Array, "*batch"]
    growth: Float[Array, "*batch levels"]
    method: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    length: int = eqx.field(static=True)
    structure: Structure = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def iterations_for(self, method: str | Method) -> Float[Array, "*batch"]:
        """The predicted iterations of another method (``"newton"``, ``"quasi_newton"``,
        ``"fixed_point"`` or a method object) from the same features: no new estimate."""
        resolved = _check_method(method).resolved(
            jnp.dtype(self.dtype), self.length, structure=self.structure
        )

        def fn(g, a, s, ga):
            return predict_iterations(g, a, s, ga, resolved, self.structure, self.length)

        for _ in range(jnp.ndim(self.lyapunov)):
            fn = jax.vmap(fn)
        return fn(self.growth, self.amplification, self.log_sensitivity, self.guess_amplification)

    @property
    def summary(self) -> str:
        """A readable verdict (one line per sequence when batched)."""
        values = [
            np.atleast_1d(np.asarray(v)).ravel()
            for v in (
                self.lyapunov,
                self.expected_iterations,
                self.predictable,
                self.guess_amplification,
            )
        ]
        return "\n".join(
            _summary_line(*row, self.method, self.max_steps, self.length) for row in zip(*values)
        )

    def __str__(self) -> str:
        return self.summary


def _summary_line(lle, iters, predictable, guess_amplification, method, cap, T) -> str:
    lle, iters, guess_amplification = float(lle), float(iters), float(guess_amplification)
    if predictable:
        kind = "predictable"
    else:
        kind = "chaotic" if lle > 0.01 else "too close to chaos"
    head = f"LLE = {lle:+.3f} per step ({kind})"
    if (
        not np.isfinite(iters)
        and predictable
        and (guess_amplification > NEWTON_MAX_GUESS_AMPLIFICATION)
    ):
        return (
            f"{head}, but parallel {method} is not expected to converge from its first guess "
            f"F(c_0, x_t), along which perturbations grow by up to e^{guess_amplification:.0f}; "
            "a warm start (guess=) closer to the solution may converge, else use the "
            "sequential scan (method='sequential')."
        )
    if not np.isfinite(iters):
        return (
            f"{head}: parallel {method} is not expected to converge within its cap of {cap} "
            f"iterations on T = {T}; use the sequential scan (method='sequential')."
        )
    gpu_T = iters * GPU_STEPS_PER_ITERATION
    return (
        f"{head}: parallel {method} should converge in ~{iters:.0f} iterations on T = {T}; "
        f"sequential is the better choice on CPU, and below T ~ {gpu_T:,.0f} on a GPU "
        f"(assuming one parallel iteration costs ~{GPU_STEPS_PER_ITERATION:.0f} sequential "
        "steps there; measure with benchmarks/)."
    )


def _check_method(method) -> Method:
    message = (
        "parallelizability: method must be 'newton', 'quasi_newton', 'fixed_point' or an "
        f"rnnscan.Newton / QuasiNewton / FixedPoint object; got {method!r}"
    )
    if isinstance(method, str) and method not in _SUPPORTED:
        raise ValueError(message)
    method = as_method(method)
    if method.name not in _SUPPORTED:
        raise ValueError(message)
    return method


def parallelizability(
    f: Callable[[Carry, PyTree], tuple[Carry, PyTree]],
    init: Carry,
    xs: PyTree = None,
    length: int | None = None,
    reverse: bool = False,
    *,
    method: str | Method = "newton",
    carries: Carry | None = None,
    jacobian: Structure | str | None = None,
    max_length: int | None = None,
) -> Parallelizability:
    r"""Predict whether, and in how many iterations, a parallel solve of ``f`` converges.

    Arguments ``f, init, xs, length, reverse`` as for :func:`rnnscan.solve`. The estimate
    reads the carry Jacobians J_t along the trajectory (computed by ``jax.lax.scan``, or the
    ``carries`` you pass, e.g. ``rnnscan.solve(...).carries``):

    - G(k) = max_t log ||J_{t+k} ... J_{t+1}||_2 for windows of k = 1, 2, 4, ..., 2^L <= T
      steps (over the aligned windows, from a reduction tree of Jacobian products: depth
      log2 T, work about half a parallel scan of a Newton iteration), linear in k in
      between; from it the amplification log a = max(0, max_k G(k)) and the sensitivity
      S = sum_{k>=0} exp(G(k));
    - lambda_1, the largest Lyapunov exponent, as (1/T) log ||J_T ... J_1||_2 from the top
      of the same tree (the finite-time estimate ``rnnscan.solve(..., diagnostics=True)``
      reports; :func:`lyapunov_exponents` runs the QR method instead, at the cost of a
      sequential scan of T matrix products).

    S bounds ||(I - L_J)^{-1}||, the inverse of the Jacobian of the residual
    r_t = c_t - F(c_{t-1}, x_t) of the whole parallel problem (L_J puts J_t below the
    diagonal): Newton's convergence is governed by its conditioning, which Gonzalez et al.
    (2025) relate to lambda_1 (S ~ a / (1 - exp(lambda_1)) when ||J products|| <= a
    exp(lambda_1 k)). The windowed maximum G also sees what the average lambda_1 hides: a
    sequence that contracts on average but amplifies perturbations over some windows (a
    tanh RNN near its edge of chaos needs many more iterations than a GRU with the same
    lambda_1).

    The predictor (constants calibrated on ``experiments/lyapunov.py``, see
    docs/diagnostics.md for the measured error):

    - Newton (and quasi-Newton with a diagonal Jacobian, where it *is* Newton):
      N = 4 + 0.75 sqrt(S); not expected to converge (inf) when log S > 6.05 (every
      calibration problem beyond it diverged or stalled), or when the amplification at the
      first guess c_t = F(c_0, x_t) exceeds log 1e8: Newton's first linearisation then
      amplifies the first residual by more than the factor at which the solvers' divergence
      rule gives up (not fitted; a warm start ``guess=`` is not what is predicted).
    - Fixed point (Jacobi), from its error recursion e^{k+1}_t = J_t e^k_{t-1} (linearised):
      after k iterations the error is at most max_t ||J_{t} ... J_{t-k+1}|| e_0, so
      N = 1 + min{k : G(k) <= log(tol / e_0)} with tol = atol + rtol and e_0 = 1; inf when
      log a > 2 (the update grows for so long that the solver's give-up rule stops it).
    - Dense quasi-Newton: the fixed-point formula, inf when log a > 1.4.
    - Every method: at most T + 1 (after k iterations the first k steps are exact), inf
      above the method's resolved ``max_steps``.

    ``predictable`` is lambda_1 < -0.01 and log S <= 6.05 (the conditioning along the
    trajectory, whatever the first guess).

    Cost: one ``jax.lax.scan`` (none with ``carries``), the Jacobians along it and at the
    first guess (two Newton linearisations) and a reduction tree over each (half a
    parallel scan; the 2-norms by power iteration on the few largest windows of every level
    only; float64 products formed in float32): below the Newton solve it predicts
    (measured in docs/diagnostics.md). ``max_length`` estimates
    from the first ``max_length`` steps only (cheaper; lambda_1 is then a prefix average
    and the window maxima can only be lower, so predictions are optimistic on sequences
    whose later part is harder), while the cap and the T + 1 bound use the whole T.

    Reference (what the predictor computes, in numpy)::

        J = [jacobian(F, c[t - 1], x[t]) for t in range(T)]
        G = [max(log(norm(prod(J[i * 2**j:(i + 1) * 2**j]), 2)) for i in range(T // 2**j))
             for j in range(floor(log2(T)) + 1)]
        lle = log(norm(prod(J), 2)) / T
        S = sum(exp(interpolate(G, k)) for k in range(T + 1))
        a0 = max(0, max(G computed the same way from J at c_t = F(c_0, x_t)))
        N = min(4 + 0.75 * sqrt(S), T + 1) if log(S) <= 6.05 and a0 <= log(1e8) else inf

    Arguments:
        method: ``"newton"`` (default), ``"quasi_newton"``, ``"fixed_point"`` or an
            ``rnnscan.Newton`` / ``QuasiNewton`` / ``FixedPoint`` object (its ``max_steps``,
            ``rtol`` and ``atol`` are used).
        carries: the trajectory, stacked like ``rnnscan.Solution.carries``.
        jacobian: the Jacobian structure (default: ``f.jacobian_structure``, else dense).
        max_length: estimate on this prefix of the sequence.

    Returns:
        A :class:`Parallelizability` report; ``print(report)`` gives its summary.
    """
    method = _check_method(method)
    T = sequence_length(xs, length)
    if max_length is not None and not (
        isinstance(max_length, (int, np.integer)) and max_length >= 1
    ):
        raise ValueError(
            f"parallelizability: max_length must be a positive int, got {max_length!r}"
        )
    feat = features(
        f,
        init,
        xs,
        length,
        reverse,
        carries=carries,
        jacobian=jacobian,
        max_length=max_length,
    )
    structure = declared_structure(f, jacobian)
    dtype = carry_dtype(init)
    resolved = method.resolved(dtype, T, structure=structure)
    args = (feat.growth, feat.amplification, feat.log_sensitivity, feat.guess_amplification)
    expected = predict_iterations(*args, resolved, structure, T)
    expected_newton = predict_iterations(
        *args, Newton().resolved(dtype, T, structure=structure), structure, T
    )
    return Parallelizability(
        lyapunov=feat.lyapunov,
        predictable=jnp.logical_and(
            feat.lyapunov < -0.01, feat.log_sensitivity <= NEWTON_MAX_LOG_SENSITIVITY
        ),
        expected_newton_iterations=expected_newton,
        expected_iterations=expected,
        amplification=feat.amplification,
        log_sensitivity=feat.log_sensitivity,
        guess_amplification=feat.guess_amplification,
        growth=feat.growth,
        method=method.name,
        max_steps=int(resolved.max_steps),
        length=T,
        structure=structure,
        dtype=str(jnp.dtype(dtype)),
    )
