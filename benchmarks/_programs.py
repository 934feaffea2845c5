"""The functions that are timed: a batched forward pass and a training step, for any method.

Every method runs one sequence at a time and is batched with ``jax.vmap``, the sequential
reference included (``jax.vmap`` of ``jax.lax.scan`` becomes one scan with batched matmuls).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

import rnnscan
import rnnscan.nn

from ._cells import make_cell


@dataclasses.dataclass
class Problem:
    """A cell with its parameters and a batch of random input sequences.

    Attributes:
        graphdef, state: ``nnx.split`` of the cell; ``state`` holds the parameters (arrays).
        xs: inputs of shape ``(batch, length, in_features)``.
        carry_size: the size of the flattened carry (``2 * hidden`` for an LSTM).
        structure, carry_linear: the cell's declared Jacobian structure and linearity.
    """

    cell: str
    hidden: int
    length: int
    batch: int
    dtype: str
    in_features: int
    graphdef: Any
    state: Any
    carry_size: int
    structure: rnnscan.Structure
    carry_linear: bool
    xs: jax.Array | None = None

    @property
    def itemsize(self) -> int:
        return jnp.dtype(self.dtype).itemsize

    def cell_module(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state)


def in_features_for(hidden: int, setting: Any) -> int:
    """Input features per step: the hidden size for ``"same"``, else the configured int."""
    return hidden if setting == "same" else int(setting)


def build_problem(problem: tuple, config: dict[str, Any], *, with_inputs: bool) -> Problem:
    """The cell of ``problem = (cell, hidden, length, batch, dtype)``; with ``with_inputs``
    also the random inputs (on the default device). Deterministic given ``config["seed"]``."""
    name, hidden, length, batch, dtype = problem
    in_features = in_features_for(hidden, config["in_features"])
    cell = make_cell(name, in_features, hidden, dtype, config["seed"], config["cell_options"])
    carry = jax.eval_shape(lambda: cell.initialize_carry((in_features,)))
    carry_size = sum(leaf.size for leaf in jax.tree_util.tree_leaves(carry))
    graphdef, state = nnx.split(cell)
    result = Problem(
        cell=name,
        hidden=hidden,
        length=length,
        batch=batch,
        dtype=dtype,
        in_features=in_features,
        graphdef=graphdef,
        state=state,
        carry_size=carry_size,
        structure=type(cell).jacobian_structure,
        carry_linear=bool(type(cell).carry_linear),
    )
    if with_inputs:
        key = jax.random.key(config["seed"] + 1)
        result.xs = jax.random.normal(key, (batch, length, in_features), jnp.dtype(dtype))
    return result


def resolve(problem: Problem, method: str) -> rnnscan.Method:
    """The method object for the cell, as ``rnnscan.nn.RNN`` resolves a method name;
    ``"<method>_pallas"`` is that method with ``linear_recurrence="pallas"``."""
    if method.endswith("_pallas"):
        base = rnnscan.nn.resolve_method(method.removesuffix("_pallas"), problem.cell_module())
        return dataclasses.replace(base, linear_recurrence="pallas")
    return rnnscan.nn.resolve_method(method, problem.cell_module())


def time_mesh(devices: int) -> Mesh:
    """A ``("data", "time")`` mesh of the first ``devices`` local devices, all along time."""
    return Mesh(np.array(jax.local_devices()[:devices]).reshape(1, devices), ("data", "time"))


def _split_outputs(step, init, xs, method: rnnscan.Method, devices: int):
    """The batch with every sequence's time axis split over ``devices`` devices."""
    batch = xs.shape[0]
    inits = jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (batch,) + leaf.shape), init)
    sol = rnnscan.sharded_solve(
        step, inits, xs, mesh=time_mesh(devices), axis="time", batch_axis="data", method=method
    )
    stats = {"iterations": sol.iterations, "fell_back": sol.fell_back, "converged": sol.converged}
    return sol.ys, stats


def _batched_outputs(graphdef, state, xs, method: rnnscan.Method, devices: int = 1):
    """``(ys, stats)`` for a batch: ys ``(batch, length, hidden)``; stats hold per-sequence
    ``iterations``, ``fell_back`` and ``converged``. ``devices > 1``: the time axis split
    over that many local devices (``rnnscan.sharded_solve``, the sequential method too)."""
    cell = nnx.merge(graphdef, state)
    init = cell.initialize_carry(xs.shape[-1:])
    step = lambda carry, x: cell(carry, x)
    if devices > 1:
        return _split_outputs(step, init, xs, method, devices)

    if isinstance(method, rnnscan.Sequential):

        def one_sequence(x):
            _, ys = jax.lax.scan(step, init, x)
            return ys

        ys = jax.vmap(one_sequence)(xs)
        batch = xs.shape[0]
        stats = {
            "iterations": jnp.zeros((batch,), jnp.int32),
            "fell_back": jnp.zeros((batch,), bool),
            "converged": jnp.ones((batch,), bool),
        }
        return ys, stats

    def one_sequence(x):
        sol = rnnscan.solve(step, init, x, method=method)
        stats = {
            "iterations": sol.iterations,
            "fell_back": sol.fell_back,
            "converged": sol.converged,
        }
        return sol.ys, stats

    return jax.vmap(one_sequence)(xs)


def loss_of_outputs(ys) -> jax.Array:
    """The training loss: the mean square of the outputs (at least float32 precision)."""
    ys = ys.astype(jnp.promote_types(ys.dtype, jnp.float32))
    return jnp.mean(jnp.square(ys))


def make_program(problem: Problem, method: rnnscan.Method, mode: str, devices: int = 1) -> Callable:
    """The function of ``(state, xs)`` to time.

    ``forward`` returns ``(ys, stats)``. ``train`` returns ``(loss, grads, stats)``: the value
    and gradient of :func:`loss_of_outputs` w.r.t. all parameters (``jax.value_and_grad``).
    ``devices``: over how many local devices the time axis is split.
    """
    graphdef = problem.graphdef

    def forward(state, xs):
        return _batched_outputs(graphdef, state, xs, method, devices)

    if mode == "forward":
        return forward

    def loss(state, xs):
        ys, stats = forward(state, xs)
        return loss_of_outputs(ys), stats

    def train(state, xs):
        (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(state, xs)
        return value, grads, stats

    if mode == "train":
        return train
    raise ValueError(f"unknown mode {mode!r}")


def split_outputs(mode: str, outputs) -> tuple[Any, dict[str, jax.Array]]:
    """``(compared, stats)``: what is compared with the sequential reference (``ys`` for the
    forward pass, ``(loss, grads)`` for training) and the solver statistics."""
    if mode == "forward":
        ys, stats = outputs
        return ys, stats
    value, grads, stats = outputs
    return (value, grads), stats
