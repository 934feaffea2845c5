r"""Warm-up: pre-train recurrent layers to maximise their reachable multistability.

After Lambrechts, De Geeter, Vecoven, Ernst and Drion (2023), "Warming up recurrent neural
networks to maximise reachable multistability greatly improves learning", Neural Networks
(arXiv:2106.01001), whose reference implementation fixes the details used here.

**Reaching attractors.** For one recurrent cell, B input sequences are drawn (standard normal;
each sequence has a random length in 1..``drive_steps``, so that states along whole
trajectories are sampled), run from the zero carry, and then held at one constant input for a
settling phase (``settle_input="zero"``, the default; or ``"constant"``: one u ~ N(0, I) per
step, the same for the whole batch, as in the paper's reference implementation), after which
the B final states h_1..h_B sit near the attractors
that those inputs reach.

**VAA** (variability amongst attractors), with tolerance ε:

.. math::

    \mathrm{VAA} = \frac{1}{B} \sum_{i=1}^{B}
        \frac{1}{|\{j : \lVert h_i - h_j \rVert < \varepsilon\}|}

in [1/B, 1]: 1/B when every sequence reaches the same attractor, 1 when all B reach
different ones. It counts attractors weighted by how many sequences reach them (B × VAA is
the number of distinct attractors when each is reached equally often).

**VAA\*** (the differentiable surrogate the warm-up ascends) replaces the indicator by

.. math::

    C_{ij} = 1 - \frac{\max(d_{ij} - \varepsilon, 0)}{d_{ij} + \delta}, \qquad
    d_{ij} = \lVert \tanh h_i - \tanh h_j \rVert, \qquad
    \mathrm{VAA}^* = \frac{1}{B} \sum_i \frac{1}{\sum_j C_{ij}}

(δ = 1e-6; C_ij = 1 within ε, ≈ ε / d_ij beyond). The warm-up minimises
(VAA*_l - target)², averaged over the model's recurrent layers l, with Adam (target 0.95, the
paper's), the settling length drawn each step uniformly from 1..min(1 + k·increment,
``settle_steps``) at step k (the paper's curriculum).

Each recurrent layer is warmed up on its own cell, driven by standard-normal inputs of its
input size (the paper drives each layer with the states the data induce through the layers
below; here the layers are driven independently, which needs no data and suits layers that
read normalised inputs, such as those of :class:`rnnscan.nn.SequenceClassifier`).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import rnnscan
from rnnscan._masked import masked_step
from rnnscan._methods import method_class
from rnnscan.nn import resolve_method

__all__ = [
    "WarmupResult",
    "attractor_stats",
    "check_warmup_options",
    "count_attractors",
    "recurrent_cells",
    "soft_vaa",
    "vaa",
    "warmup",
    "warmup_record",
]

_DELTA = 1e-6
SETTLE_INPUTS = ("constant", "zero")


# ----------------------------------------------------------------------------- measures


def _pairwise_distances(states: jax.Array) -> jax.Array:
    diff = states[:, None, :] - states[None, :, :]
    sq = jnp.sum(diff * diff, axis=-1)
    # sqrt has an infinite derivative at 0 (the diagonal, and states that coincide); a
    # distance of exactly 0 contributes no gradient, so differentiate through a safe value.
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def vaa(states: jax.Array, epsilon: float = 1e-4) -> jax.Array:
    """The VAA of B states ``(B, n)``: the mean over i of 1 / #{j : |h_i - h_j| < epsilon}.

    1/B when all states coincide, 1 when all are at least ``epsilon`` apart. Not
    differentiable (a count); see :func:`soft_vaa`."""
    states = _as_states(states, "states")
    close = _pairwise_distances(states) < epsilon
    return jnp.mean(1.0 / jnp.sum(close, axis=-1))


def soft_vaa(states: jax.Array, epsilon: float = 1e-4) -> jax.Array:
    """VAA*: the differentiable VAA of the warm-up (on tanh of the states, with the soft
    closeness C_ij = 1 - relu(d_ij - epsilon) / (d_ij + 1e-6))."""
    states = _as_states(states, "states")
    d = _pairwise_distances(jnp.tanh(states))
    closeness = 1.0 - jax.nn.relu(d - epsilon) / (d + _DELTA)
    return jnp.mean(1.0 / jnp.sum(closeness, axis=-1))


def count_attractors(states, epsilon: float = 1e-4) -> int:
    """The number of groups of states closer than ``epsilon`` (connected components of the
    "closer than epsilon" graph), in NumPy: the number of distinct attractors reached."""
    states = np.asarray(_as_states(jnp.asarray(states), "states"))
    close = np.linalg.norm(states[:, None] - states[None], axis=-1) < epsilon
    label = -np.ones(len(states), int)
    groups = 0
    for start in range(len(states)):
        if label[start] >= 0:
            continue
        stack, label[start] = [start], groups
        while stack:
            i = stack.pop()
            for j in np.flatnonzero(close[i] & (label < 0)):
                label[j] = groups
                stack.append(j)
        groups += 1
    return groups


def _as_states(states, name):
    if states.ndim != 2 or states.shape[0] < 2:
        raise ValueError(f"{name}: expected (B, n) states with B >= 2, got shape {states.shape}")
    return states


# ----------------------------------------------------------------------------- cells


def recurrent_cells(model: nnx.Module) -> list[nnx.RNNCellBase]:
    """The recurrent cells of ``model``: the model itself if it is a cell, else every
    ``nnx.RNNCellBase`` in its graph (the cells of its ``rnnscan.nn.RNN`` /
    ``flax.nnx.RNN`` layers), in graph order."""
    if isinstance(model, nnx.RNNCellBase):
        return [model]
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"model: expected an nnx.Module holding recurrent cells, got {type(model).__name__}"
        )
    cells, seen = [], set()
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.RNNCellBase) and id(node) not in seen:
            seen.add(id(node))
            cells.append(node)
    return cells


def _in_features(cell) -> int:
    d = getattr(cell, "in_features", None)
    if not isinstance(d, int):
        raise ValueError(
            f"model: the cell {type(cell).__name__} has no integer in_features to draw inputs for"
        )
    return d


def _real_dtype(cell):
    dtype = getattr(cell, "carry_dtype", None)
    if dtype is None:
        dtype = getattr(cell, "param_dtype", jnp.float32)
    return jnp.finfo(jnp.dtype(dtype)).dtype  # complex64 -> float32


def _flat_states(carry, batch: int) -> jax.Array:
    parts = []
    for leaf in jax.tree_util.tree_leaves(carry):
        leaf = leaf.reshape(batch, -1)
        parts += [leaf.real, leaf.imag] if jnp.iscomplexobj(leaf) else [leaf]
    return jnp.concatenate(parts, axis=-1)


def _run(cell, carry, xs, mask, method):
    """The final carry of ``cell`` over ``xs`` ``(B, T, d)`` where ``mask`` ``(B, T)`` is set
    (per sequence, with :func:`rnnscan.solve`)."""
    solver = resolve_method(method, cell)

    def one(c, x, m):
        sol = rnnscan.solve(masked_step(cell), c, (x, m), method=solver, on_failure="fallback")
        return sol.final_carry

    return jax.vmap(one)(carry, xs, mask)


def _settled(cell, key, batch, drive_steps, settle_steps, settle_len, settle_input, method):
    """The flat states ``(B, n)`` after driving and settling ``cell`` (``settle_len`` of the
    ``settle_steps`` settling steps applied; a traced int)."""
    d, dtype = _in_features(cell), _real_dtype(cell)
    k_drive, k_len, k_settle = jax.random.split(key, 3)
    carry = cell.initialize_carry((batch, d))
    xs = jax.random.normal(k_drive, (batch, drive_steps, d), dtype)
    lengths = jax.random.randint(k_len, (batch, 1), 1, drive_steps + 1)
    carry = _run(cell, carry, xs, jnp.arange(drive_steps)[None, :] < lengths, method)
    if settle_input == "constant":
        u = jax.random.normal(k_settle, (d,), dtype)
    else:
        u = jnp.zeros((d,), dtype)
    us = jnp.broadcast_to(u, (batch, settle_steps, d))
    on = jnp.broadcast_to(jnp.arange(settle_steps) < settle_len, (batch, settle_steps))
    carry = _run(cell, carry, us, on, method)
    return carry, u


# ----------------------------------------------------------------------------- options


def check_warmup_options(
    *,
    steps: int = 100,
    lr: float = 1e-2,
    batch_size: int = 32,
    drive_steps: int = 100,
    settle_steps: int = 200,
    settle_increment: int = 10,
    settle_input: str = "zero",
    epsilon: float = 1e-4,
    target: float = 0.95,
    method: str = "sequential",
    seed: int = 0,
) -> None:
    """Raise ``ValueError`` naming the option and its value if a warm-up option is invalid."""

    def need(ok, name, expected, value):
        if not ok:
            raise ValueError(f"{name}: expected {expected}, got {value!r}")

    def positive_int(name, value, minimum=1):
        need(
            isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
            name,
            f"an int >= {minimum}",
            value,
        )

    positive_int("steps", steps)
    positive_int("batch_size", batch_size, 2)
    positive_int("drive_steps", drive_steps)
    positive_int("settle_steps", settle_steps)
    positive_int("settle_increment", settle_increment)
    need(isinstance(lr, (int, float)) and lr > 0, "lr", "a positive float", lr)
    need(isinstance(epsilon, (int, float)) and epsilon > 0, "epsilon", "a positive float", epsilon)
    need(
        isinstance(target, (int, float)) and 0 < target <= 1, "target", "a float in (0, 1]", target
    )
    need(settle_input in SETTLE_INPUTS, "settle_input", " | ".join(SETTLE_INPUTS), settle_input)
    try:
        method_class(method)
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"method: expected an rnnscan method name, got {method!r}") from None
    need(isinstance(seed, int), "seed", "an int", seed)


WARMUP_OPTIONS = tuple(
    name for name in check_warmup_options.__kwdefaults__ if name not in ("seed",)
)
"""The options of :func:`warmup` that a ``train.warmup`` config section may set."""


# ----------------------------------------------------------------------------- warm-up


@dataclasses.dataclass
class WarmupResult:
    """What :func:`warmup` returns.

    Attributes:
        model: the warmed-up model (the same object, updated in place).
        history: VAA* before each step, ``(steps, num_layers)``.
        loss: the warm-up loss before each step, ``(steps,)``.
    """

    model: nnx.Module
    history: np.ndarray
    loss: np.ndarray

    @property
    def final_vaa(self) -> np.ndarray:
        """VAA* per layer at the last step."""
        return self.history[-1]


def warmup(
    model: nnx.Module,
    *,
    steps: int = 100,
    lr: float = 1e-2,
    optimizer: optax.GradientTransformation | None = None,
    batch_size: int = 32,
    drive_steps: int = 100,
    settle_steps: int = 200,
    settle_increment: int = 10,
    settle_input: str = "zero",
    epsilon: float = 1e-4,
    target: float = 0.95,
    method: str = "sequential",
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> WarmupResult:
    """Warm up every recurrent layer of ``model`` (a cell, or any ``nnx.Module`` holding
    cells, e.g. a :class:`rnnscan.nn.SequenceClassifier`) by ``steps`` gradient steps on
    (VAA* - target)², in place.

    Args:
        model: a recurrent cell or a module with recurrent layers (see
            :func:`recurrent_cells`); its other parameters are left unchanged.
        steps: gradient steps.
        lr: Adam's learning rate (ignored when ``optimizer`` is given).
        optimizer: an optax transformation to use instead of Adam.
        batch_size: B, the sequences per step (>= 2).
        drive_steps: the longest random input sequence (lengths are uniform in 1..this).
        settle_steps: the longest settling phase (its length at step k is uniform in
            1..min(1 + k * settle_increment, settle_steps)).
        settle_increment: the curriculum's growth of the settling length per step.
        settle_input: ``"zero"`` (default) or ``"constant"`` (one N(0, I) input per step, shared
            by the batch: the paper's reference implementation).
        epsilon: the VAA tolerance ε.
        target: the VAA* the loss pulls each layer towards (0.95 in the paper).
        method: how the recurrences are evaluated (an rnnscan method name, resolved with
            each cell's declared Jacobian structure; ``"sequential"``: ``jax.lax.scan``).
        seed: seeds the inputs and lengths.
        progress: show a tqdm bar.
        callback: called as ``callback(step, vaa_star_per_layer)`` after each step.

    Returns:
        A :class:`WarmupResult` (the model and the VAA* history).

    Raises:
        ValueError: an invalid option (named), or a model without recurrent cells.
    """
    check_warmup_options(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        drive_steps=drive_steps,
        settle_steps=settle_steps,
        settle_increment=settle_increment,
        settle_input=settle_input,
        epsilon=epsilon,
        target=target,
        method=method,
        seed=seed,
    )
    cells = recurrent_cells(model)
    if not cells:
        raise ValueError(f"model: {type(model).__name__} holds no recurrent cells to warm up")
    for cell in cells:
        _in_features(cell)
    tx = optax.adam(lr) if optimizer is None else optimizer
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)

    def loss_fn(params, key, settle_len):
        merged = nnx.merge(graphdef, params, rest)
        values = []
        for cell, k in zip(recurrent_cells(merged), jax.random.split(key, len(cells))):
            carry, _ = _settled(
                cell, k, batch_size, drive_steps, settle_steps, settle_len, settle_input, method
            )
            values.append(soft_vaa(_flat_states(carry, batch_size), epsilon))
        values = jnp.stack(values)
        return jnp.mean((values - target) ** 2), values

    @jax.jit
    def step(params, opt_state, key, settle_len):
        (loss, values), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, key, settle_len)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, values

    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    history, losses = [], []
    bar = tqdm(range(steps), desc="warm-up", disable=not progress, file=sys.stderr, leave=False)
    for k in bar:
        longest = min(1 + k * settle_increment, settle_steps)
        settle_len = int(rng.integers(1, longest + 1))
        key, sub = jax.random.split(key)
        params, opt_state, loss, values = step(params, opt_state, sub, settle_len)
        values = np.asarray(values)
        history.append(values)
        losses.append(float(loss))
        bar.set_postfix(vaa=f"{values.mean():.3f}", refresh=False)
        if callback is not None:
            callback(k, values)
    bar.close()
    nnx.update(model, params)
    return WarmupResult(model, np.stack(history), np.asarray(losses))


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6, 7))
def _measure(graphdef, state, key, batch_size, drive_steps, settle_steps, settle_input, method):
    """The settled states and the states one settling step later (jitted once per cell
    structure and shape)."""
    cell = nnx.merge(graphdef, state)
    carry, u = _settled(
        cell, key, batch_size, drive_steps, settle_steps, settle_steps, settle_input, method
    )
    after, _ = cell(carry, jnp.broadcast_to(u, (batch_size, u.shape[0])))
    return _flat_states(carry, batch_size), _flat_states(after, batch_size)


def attractor_stats(
    model: nnx.Module,
    *,
    batch_size: int = 64,
    drive_steps: int = 100,
    settle_steps: int = 1000,
    settle_input: str = "zero",
    epsilon: float = 1e-4,
    method: str = "sequential",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The (non-differentiable) multistability of each recurrent layer: drive its cell with
    ``batch_size`` random sequences, settle for ``settle_steps`` steps, and report per layer
    ``vaa`` (:func:`vaa`), ``attractors`` (:func:`count_attractors`), ``vaa_star``
    (:func:`soft_vaa`) and ``converged`` (the fraction of states that moved by less than
    ``epsilon`` in one more settling step: the others had not reached their attractor, and
    the counts are then upper bounds)."""
    check_warmup_options(
        batch_size=batch_size,
        drive_steps=drive_steps,
        settle_steps=settle_steps,
        settle_input=settle_input,
        epsilon=epsilon,
        method=method,
        seed=seed,
    )
    cells = recurrent_cells(model)
    if not cells:
        raise ValueError(f"model: {type(model).__name__} holds no recurrent cells")
    stats = []
    keys = jax.random.split(jax.random.key(seed), len(cells))
    for cell, key in zip(cells, keys):
        graphdef, state = nnx.split(cell)
        states, after = _measure(
            graphdef, state, key, batch_size, drive_steps, settle_steps, settle_input, method
        )
        moved = np.linalg.norm(np.asarray(after) - np.asarray(states), axis=-1)
        stats.append(
            {
                "vaa": float(vaa(states, epsilon)),
                "attractors": count_attractors(states, epsilon),
                "vaa_star": float(soft_vaa(states, epsilon)),
                "converged": float(np.mean(moved < epsilon)),
                "batch_size": batch_size,
            }
        )
    return stats


def warmup_record(
    model: nnx.Module, options: dict[str, Any], seed: int, progress: bool
) -> dict[str, Any]:
    """Run the ``train.warmup`` section's warm-up on ``model`` (in place) and describe it as a
    ``metrics.jsonl`` record (``kind: "warmup"``)."""
    import time

    started = time.perf_counter()
    result = warmup(model, seed=seed, progress=progress, **options)
    return {
        "kind": "warmup",
        "step": 0,
        "steps": int(options["steps"]),
        "vaa_star_first": result.history[0].tolist(),
        "vaa_star_last": result.history[-1].tolist(),
        "loss_last": float(result.loss[-1]),
        "time_s": time.perf_counter() - started,
    }
