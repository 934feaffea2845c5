r"""Online RTRL: the carry and its compressed influence, advanced one step at a time.

With c_t = F(c_{t-1}, x_t; θ), the influence S_t = dc_t/dθ obeys

.. math::

    S_t = J_t S_{t-1} + B_t, \qquad J_t = \partial F / \partial c_{t-1}, \quad
    B_t = \partial F / \partial \theta, \qquad S_{-1} = 0,

and the gradient of any loss ℓ(c_t) is (dℓ/dc_t) S_t, of a loss ℓ(y_t) on the step's output
y_t = G(c_{t-1}, x_t; θ) it is (∂ℓ/∂y_t)(∂G/∂c_{t-1} S_{t-1} + ∂G/∂θ): exact, online, with
memory independent of the sequence length (Williams and Zipser, 1989). For element-wise cells
J_t is (block-)diagonal and S_t block-sparse (``_influence.py``), so a step costs k JVPs (J_t),
k VJPs (B_t) and O(N k Q) arithmetic, and S_t holds N Q numbers (Q: parameters per unit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Float

from .._structure import Dense
from ._cell import FunctionalCell, functional_cell, merge_batch, split_batch
from ._influence import InfluencePlan, cached_plan, probe, unit_layout


@dataclasses.dataclass(frozen=True)
class RTRLState:
    """The state of online RTRL: the cell's carry and its compressed influence.

    Attributes:
        carry: the cell's carry, as the cell takes it (with any leading batch axes).
        influence: ``(*batch, N, Q)``: dc/dθ with N the flat carry's size (complex entries
            as real and imaginary parts) and Q the influence columns (parameters per unit,
            plus one per shared parameter); constant in the sequence length.
        plan: which parameter entry each column holds for each unit (static metadata).
    """

    carry: Any
    influence: Float[Array, "*batch N Q"]
    plan: InfluencePlan


jax.tree_util.register_dataclass(
    RTRLState, data_fields=["carry", "influence"], meta_fields=["plan"]
)


def prepare(cell, carry, x_example, dense: bool, caller: str, *, batched_input: bool = True):
    """``(FunctionalCell, InfluencePlan)``: the cell split, its plan probed (once per cell graph
    and shapes; see ``_influence.py``). ``x_example``: one step's input, batched like the
    carry when ``batched_input``, else one sample's (or None: zeros of ``in_features``)."""
    fc = functional_cell(cell, carry, caller)
    structure = getattr(cell, "jacobian_structure", Dense())
    name = type(cell).__name__
    unit_layout(structure, fc.size, dense, name)  # refuse before probing
    if x_example is None:
        if not hasattr(cell, "in_features"):
            raise ValueError(f"{caller}: {name} has no in_features; pass example_input")
        x_sample = jax.ShapeDtypeStruct((cell.in_features,), fc.dtype)
    elif batched_input:
        x_sample = jax.tree_util.tree_map(
            lambda leaf: jax.ShapeDtypeStruct(
                jnp.shape(leaf)[len(fc.batch_shape) :], jnp.result_type(leaf)
            ),
            x_example,
        )
    else:
        x_sample = jax.tree_util.tree_map(
            lambda leaf: jax.ShapeDtypeStruct(jnp.shape(leaf), jnp.result_type(leaf)), x_example
        )
    x_zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), x_sample)
    graphdef, rest = nnx.split(cell, nnx.Param, ...)[0::2]
    leaves = jax.tree_util.tree_leaves(fc.params)
    # Other variables (masks, constants) may decide which entries move which units: their
    # values join the key when known.
    rest_leaves = jax.tree_util.tree_leaves(rest)
    rest_key = tuple(
        (jnp.shape(leaf), str(jnp.result_type(leaf)))
        if isinstance(leaf, jax.core.Tracer)
        else (jnp.shape(leaf), np.asarray(leaf).tobytes())
        for leaf in rest_leaves
    )
    key = (
        graphdef,
        rest_key,
        tuple((leaf.shape, jnp.result_type(leaf)) for leaf in leaves),
        fc.size,
        jnp.dtype(fc.dtype),
        jax.tree_util.tree_structure(x_sample),
        tuple((s.shape, s.dtype) for s in jax.tree_util.tree_leaves(x_sample)),
        dense,
    )

    def build():
        return probe(fc.step, fc.params, fc.size, x_zeros, structure, dense, name)

    return fc, cached_plan(key, build)


def advance(fc: FunctionalCell, plan: InfluencePlan, params, c, S, x):
    """One sample's step: ``(c_t, y_t, S_t)`` from ``(c_{t-1}, S_{t-1})``."""
    c_new, J = plan.structure.jacobian(lambda c: fc.step(params, c, x)[0], c)
    y = fc.step(params, c, x)[1]
    B = plan.immediate(lambda p, c: fc.step(p, c, x)[0], params, c)
    return c_new, y, plan.propagate(J, S) + B


def batched_advance(fc, plan, params, c, S, xs):
    """:func:`advance` over the ``(B, ...)`` samples."""
    return jax.vmap(lambda c, S, x: advance(fc, plan, params, c, S, x))(c, S, xs)


def output_vjp(fc: FunctionalCell, params, c, xs, loss: Callable[[Any], jax.Array]):
    """``(ℓ, dℓ/dθ direct, dℓ/dc_{t-1})`` of ``ℓ = loss(y_t)`` with y_t the batch's outputs
    (batch shape restored) of the step from the flat carries ``c`` ``(B, N)``."""

    def total(params, c):
        _, y = jax.vmap(fc.step, in_axes=(None, 0, 0))(params, c, xs)
        value = loss(split_batch(y, fc.batch_shape))
        if jnp.shape(value) != ():
            raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(value)}")
        return value

    value, vjp = jax.vjp(total, params, c)
    g_params, u = vjp(jnp.ones_like(value))
    return value, g_params, u


def init(
    cell: nnx.Module, carry: Any, *, dense: bool = False, example_input: Any = None
) -> RTRLState:
    """Start online RTRL from ``carry`` with zero influence (the carry does not depend on the
    parameters yet).

    Args:
        cell: an rnnscan cell (or any ``nnx`` module with the RNN-cell interface) whose
            ``jacobian_structure`` is ``Diagonal()`` or ``BlockDiagonal(k)``.
        carry: the starting carry, with any leading batch axes (every sample has its own
            influence; gradients are summed over the batch).
        dense: allow a ``Dense()`` cell: classic RTRL, influence ``O(N P)`` memory (P: all
            parameters that move the carry; O(n^3) for a GRU) and O(N^2 P) work per step.
            Without it a dense cell is refused.
        example_input: one step's input (batched like ``carry``) when the cell's input is not
            an array of ``in_features``; only its shape and dtype are read.

    Call it outside ``jax.jit`` or inside: the cell's parameter structure is probed once per
    cell graph and shapes (``rnnscan/rtrl/_influence.py``), at random points.
    """
    fc, plan = prepare(cell, carry, example_input, dense, "rtrl.init")
    S = jnp.zeros(fc.batch_shape + (fc.size, plan.columns), fc.dtype)
    return RTRLState(carry, S, plan)


def _unpack(cell, state: RTRLState, caller: str):
    if not isinstance(state, RTRLState):
        raise TypeError(f"{caller}: state must be an RTRLState (from rtrl.init), got {type(state)}")
    fc = functional_cell(cell, state.carry, caller)
    plan = state.plan
    if fc.size != plan.carry_size or len(jax.tree_util.tree_leaves(fc.params)) != len(
        plan.leaf_sizes
    ):
        raise ValueError(f"{caller}: state was made by rtrl.init for a different cell")
    c = fc.flat_carry(state.carry)
    S = state.influence.reshape(fc.batch, fc.size, plan.columns)
    return fc, plan, c, S


def step(cell: nnx.Module, state: RTRLState, x: Any) -> tuple[RTRLState, Any]:
    """One step of the cell, carrying the influence along: ``(state, y)`` as the cell's
    ``(carry, y)``. ``x`` is batched like the carry."""
    fc, plan, c, S = _unpack(cell, state, "rtrl.step")
    xs = merge_batch(x, len(fc.batch_shape))
    c_new, y, S_new = batched_advance(fc, plan, fc.params, c, S, xs)
    influence = S_new.reshape(state.influence.shape)
    return RTRLState(fc.carry(c_new), influence, plan), split_batch(y, fc.batch_shape)


def gradient(cell: nnx.Module, state: RTRLState, dloss_dcarry: Any) -> nnx.State:
    """The exact gradient dℓ/dθ of a loss ℓ of the current carry, given dℓ/dcarry (a pytree
    like the carry, e.g. ``jax.grad`` of ℓ): (dℓ/dc_t) S_t, summed over the batch.

    Returns an ``nnx.State`` with the structure of ``nnx.state(cell, nnx.Param)`` (what
    ``nnx.grad`` gives), ready for an optax optimiser. A loss on the cell's *output* y_t (when
    y_t is not the carry, or the cell has read-out parameters) needs :func:`step_value_and_grad`.
    """
    fc, plan, c, S = _unpack(cell, state, "rtrl.gradient")
    u = fc.flat_cotangent(c, dloss_dcarry)
    return plan.expand(plan.contract(u, S), fc.params)


def step_value_and_grad(
    cell: nnx.Module, state: RTRLState, x: Any, loss_fn: Callable[[Any], jax.Array]
) -> tuple[RTRLState, Any, jax.Array, nnx.State]:
    """One step with the exact gradient of a loss on its output: ``(state, y, loss, grads)``
    with ``loss = loss_fn(y)`` and ``grads`` = dloss/dθ through the whole history
    (an ``nnx.State`` like ``nnx.grad``'s), read-out parameters included."""
    fc, plan, c, S = _unpack(cell, state, "rtrl.step_value_and_grad")
    xs = merge_batch(x, len(fc.batch_shape))
    value, direct, u = output_vjp(fc, fc.params, c, xs, loss_fn)
    through = plan.expand(plan.contract(u, S), fc.params)
    grads = jax.tree_util.tree_map(jnp.add, direct, through)
    c_new, y, S_new = batched_advance(fc, plan, fc.params, c, S, xs)
    new_state = RTRLState(fc.carry(c_new), S_new.reshape(state.influence.shape), plan)
    return new_state, split_batch(y, fc.batch_shape), value, grads
