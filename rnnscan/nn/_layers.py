"""Sequence layers that run any NNX cell with :func:`rnnscan.solve`."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from .._growth import declared_structure, largest_exponent
from .._masked import masked_step
from .._methods import Method, Newton, Sequential, method_class
from .._scan import solve
from .._sharded_scan import sharded_solve
from .._solution import Outcome, Solution
from .._structure import Dense
from ._auto import Auto, as_auto

Carry = Any


def resolve_method(method: str | Method, cell: nnx.Module) -> Method:
    """The solver for ``cell``: a method name resolved with the cell's declared Jacobian
    structure, or a method object unchanged.

    ``"newton"`` -> ``Newton(jacobian=cell.jacobian_structure, carry_linear=cell.carry_linear)``,
    ``"quasi_newton"`` -> ``QuasiNewton(jacobian=...)``, ``"fixed_point"`` ->
    ``FixedPoint(jacobian=...)`` (and so on for every method name), ``"sequential"`` ->
    ``Sequential()``. A cell without these
    attributes (e.g. ``flax.nnx.GRUCell``) is taken as dense and nonlinear, which is always
    correct, if not always the cheapest.
    """
    if isinstance(method, Method):
        return method
    cls = method_class(method)
    if cls is Sequential:
        return Sequential()
    structure = getattr(cell, "jacobian_structure", Dense())
    if cls is Newton:
        return Newton(jacobian=structure, carry_linear=bool(getattr(cell, "carry_linear", False)))
    return cls(jacobian=structure)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SolverStats(Outcome):
    """How the parallel solves of a batch went: one entry per sequence (the batch's shape).

    Attributes:
        iterations: parallel iterations taken (0 for ``"sequential"``, 1 for a cell that is
            affine in its carry).
        residual: the size of the last update, max |delta|.
        result: an :class:`rnnscan.RESULTS` code for the parallel solve.
        fell_back: whether the values were recomputed sequentially after a failed solve.
        lyapunov: with ``diagnostics=True``, each sequence's finite-time largest Lyapunov
            exponent over its valid steps (see ``rnnscan.Solution.lyapunov``); else ``None``.
        carries: with ``return_carries=True``, every carry, ``(*batch, time, *carry)``
            (aligned with the inputs, batch-major whatever ``time_major`` says): what
            ``guess`` takes to warm-start the next call; else ``None``.
    """

    iterations: Int[Array, "*batch"]
    residual: Float[Array, "*batch"]
    result: Int[Array, "*batch"]
    fell_back: Bool[Array, "*batch"]
    lyapunov: Float[Array, "*batch"] | None = None
    carries: Carry | None = None


class RNN(nnx.Module):
    r"""Runs an RNN cell over sequences, solving for all time steps in parallel.

    A drop-in for ``flax.nnx.RNN`` (same constructor flags and call signature, same results up
    to the solver tolerance) that evaluates the recurrence with :func:`rnnscan.solve` instead
    of a sequential scan. Any NNX cell with the ``RNNCellBase`` interface works, flax's own
    (``nnx.GRUCell``, ``nnx.LSTMCell``, ``nnx.OptimizedLSTMCell``, ``nnx.SimpleCell``)
    included. A method name is resolved with the cell's declared ``jacobian_structure`` and
    ``carry_linear`` (see :func:`resolve_method`), so ``"newton"`` is the cheapest exact
    Newton method for the cell; cells without the attributes are treated as dense.

    Batches are handled by ``jax.vmap`` over the sequences (or one sharded solve of the batch
    with a ``mesh``), so each sequence iterates until it converges and reports its own
    statistics. The cell's parameters enter the solve as arrays
    it closes over, and gradients w.r.t. them (``nnx.grad``) are those of the sequential scan,
    computed by implicit differentiation.

    Padded batches: with ``seq_lengths``, steps ``t >= seq_lengths[b]`` leave the carry
    unchanged (their carry Jacobian is the identity, so the whole padded batch is still one
    solve) and output zeros. The returned carry is the one after the last valid step, as in
    flax. (flax runs the cell on the padding, so outputs at padded steps differ; valid steps
    agree.)

    Cells must be pure functions of ``(carry, x)`` and their parameters: state the cell
    mutates while running (dropout RNG counters, ``sow``) is not carried out of the solve.

    Args:
        cell: the cell, e.g. :class:`rnnscan.nn.GRUCell` or ``flax.nnx.LSTMCell``.
        method: ``"newton"`` (default), ``"quasi_newton"``, ``"fixed_point"``,
            ``"sequential"``, an rnnscan method object (used as given), or ``"auto"`` /
            :class:`rnnscan.nn.Auto` (the parallel method or ``lax.scan``, whichever the
            layer's ``parallel_active`` flag says; :class:`rnnscan.train.MethodSelector` sets
            it from measurements).
        time_major: inputs are ``(time, *batch, features)`` rather than
            ``(*batch, time, features)``.
        return_carry: return ``(final_carry, outputs)`` rather than the outputs.
        reverse: process the sequence from the end (of the valid steps) to the start.
        keep_order: with ``reverse``, return outputs aligned with the inputs rather than in
            processing order.
        unroll: passed to ``jax.lax.scan`` by the ``"sequential"`` method (without a
            mesh), as in ``flax.nnx.RNN``.
        state_axes, broadcast_rngs: accepted for ``flax.nnx.RNN``'s signature, with its
            defaults (``None``) only; other values raise ``ValueError``. The cell runs as a
            pure function of ``(carry, x)`` and its parameters, so it may neither update its
            variables nor draw from its random streams while it runs (no dropout inside
            the cell: ``flax.nnx.RNN`` advances such state from step to step, or with
            ``broadcast_rngs`` reuses one key at every step).
        on_failure: what a solve that does not converge does: ``"fallback"`` (recompute
            sequentially, the default), ``"raise"`` or ``"return"``.
        sow_stats: also sow each call's :class:`SolverStats` as ``nnx.Intermediate`` under
            ``"solver_stats"``, to collect from a whole model with
            ``nnx.capture(model, nnx.Intermediate)``.
        rngs: random stream for ``cell.initialize_carry``, as in ``flax.nnx.RNN`` (``True``
            for a default stream, an ``nnx.Rngs``, or ``False``).
        mesh, time_axis, batch_axis: split the work over the devices of a
            ``jax.sharding.Mesh``: the time axis of every sequence over mesh axis
            ``time_axis`` (sequence parallelism, :func:`rnnscan.sharded_solve`), and the
            sequences over ``batch_axis`` if given (data parallelism; the number of
            sequences must be a multiple of its size). Same results as without a mesh, up
            to the solver tolerance; ``time_axis`` is required with ``mesh``.
    """

    def __init__(
        self,
        cell: nnx.RNNCellBase,
        *,
        method: str | Method | Auto = "newton",
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int | bool = 1,
        state_axes: Any = None,
        broadcast_rngs: Any = None,
        on_failure: Literal["fallback", "raise", "return"] = "fallback",
        sow_stats: bool = False,
        rngs: nnx.Rngs | bool = True,
        mesh: jax.sharding.Mesh | None = None,
        time_axis: str | None = None,
        batch_axis: str | None = None,
    ):
        auto = as_auto(method)
        resolve_method(method if auto is None else auto.parallel, cell)  # fail early
        for flag, value in (("state_axes", state_axes), ("broadcast_rngs", broadcast_rngs)):
            if value is not None:
                raise ValueError(
                    f"rnnscan.nn.RNN: {flag}={value!r} is not supported (only flax's "
                    "default, None): the cell runs as a pure function of (carry, x) and its "
                    "parameters, so it can neither update its variables nor draw random "
                    "numbers (e.g. recurrent dropout) inside the solve"
                )
        if not (isinstance(unroll, bool) or (isinstance(unroll, int) and unroll >= 0)):
            raise ValueError(
                f"rnnscan.nn.RNN: unroll must be a bool or an int >= 0, got {unroll!r}"
            )
        self.unroll = unroll
        if mesh is None and (time_axis is not None or batch_axis is not None):
            raise ValueError("time_axis and batch_axis need a mesh")
        if mesh is not None and time_axis is None:
            raise ValueError("with a mesh, time_axis names the mesh axis that splits the time axis")
        self.mesh = mesh
        self.time_axis = time_axis
        self.batch_axis = batch_axis
        self.cell = cell
        self.method = method
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.on_failure = on_failure
        self.sow_stats = sow_stats
        if auto is not None:
            # Static (part of the graph definition): each assignment compiles once, and a
            # jitted function runs exactly one method, with no run-time switch to pay for.
            self.parallel_active = auto.start == "parallel"
        if rngs is True:
            self.rngs = nnx.RngStream(0, tag="carry")
        elif isinstance(rngs, nnx.Rngs):
            self.rngs = rngs.carry.fork()
        elif rngs is False:
            self.rngs = nnx.data(None)
        else:
            raise TypeError(f"rngs must be an nnx.Rngs or a bool, got {type(rngs).__name__}")

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: Carry | None = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        reverse: bool | None = None,
        keep_order: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
        return_stats: bool = False,
        diagnostics: bool = False,
        guess: Carry | None = None,
        return_carries: bool = False,
    ):
        """Run the cell over ``inputs``.

        Args:
            inputs: ``(*batch, time, *features)`` (or ``(time, *batch, *features)`` with
                ``time_major``), where ``features`` has ``cell.num_feature_axes`` axes.
            initial_carry: the carry to start from, with the batch axes; by default
                ``cell.initialize_carry``'s.
            seq_lengths: ``(*batch,)`` integer lengths of the valid prefix of each sequence.
            return_carry, time_major, reverse, keep_order: override the constructor's flags.
            rngs: random stream for ``cell.initialize_carry``.
            return_stats: also return the :class:`SolverStats`.
            diagnostics: also estimate each sequence's largest Lyapunov exponent
                (``SolverStats.lyapunov``; ``rnnscan.solve(..., diagnostics=True)``), in the
                cell's declared Jacobian structure: about one more Newton iteration's work.
                With a ``mesh`` too (from the carries the split solve returns).
            guess: a warm start for the parallel solve: carries ``(*batch, time, *carry)``
                like ``SolverStats.carries``, e.g. of the same sequences under slightly
                different parameters (the last evaluation's). Not differentiated; the
                result is the same up to the solver tolerance, only the iteration count
                changes. Ignored by ``"sequential"``.
            return_carries: also return every carry in ``SolverStats.carries``.

        Returns:
            ``outputs`` or ``(final_carry, outputs)``; with ``return_stats``, that and the
            stats as a pair.
        """
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        reverse = self.reverse if reverse is None else reverse
        keep_order = self.keep_order if keep_order is None else keep_order

        num_features = self.cell.num_feature_axes
        if inputs.ndim < num_features + 1:
            raise ValueError(
                f"inputs of shape {inputs.shape} have no time axis: expected "
                f"(*batch, time, *features) with {num_features} feature axes"
            )
        # Work batch-major: (*batch, time, *features).
        if time_major:
            inputs = jnp.moveaxis(inputs, 0, inputs.ndim - num_features - 1)
        batch_shape = inputs.shape[: inputs.ndim - num_features - 1]
        length = inputs.shape[len(batch_shape)]
        feature_shape = inputs.shape[len(batch_shape) + 1 :]

        if initial_carry is None:
            if rngs is None:
                rngs = self.rngs
            if isinstance(rngs, nnx.Rngs):
                rngs = rngs.carry.fork()
            initial_carry = self.cell.initialize_carry(batch_shape + feature_shape, rngs)

        # One flat batch axis of N sequences, whatever the placement.
        num_sequences = math.prod(batch_shape)

        def flatten_batch(tree):
            return jax.tree_util.tree_map(
                lambda leaf: leaf.reshape((num_sequences,) + leaf.shape[len(batch_shape) :]), tree
            )

        inputs, initial_carry = flatten_batch(inputs), flatten_batch(initial_carry)
        if seq_lengths is not None:
            seq_lengths = jnp.broadcast_to(jnp.asarray(seq_lengths), batch_shape)
            seq_lengths = seq_lengths.reshape(num_sequences)
        if guess is not None:
            for path, leaf in jax.tree_util.tree_leaves_with_path(guess):
                if jnp.shape(leaf)[: len(batch_shape) + 1] != batch_shape + (length,):
                    raise ValueError(
                        f"RNN: guess{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}; "
                        f"expected (*batch, time, *carry) with batch {batch_shape} and "
                        f"time {length} (like SolverStats.carries)"
                    )
            guess = flatten_batch(guess)

        # A fresh module from the split state: the solve sees a pure step function whose
        # closed-over parameter arrays it can differentiate.
        step = nnx.merge(*nnx.split(self.cell))
        xs = inputs
        if seq_lengths is not None:
            valid = jnp.arange(length)[None, :] < seq_lengths[:, None]
            step, xs = masked_step(step), (inputs, valid)
        method = self._current_method()
        sol = self._solve_batch(step, initial_carry, xs, guess, method, reverse)

        outputs = sol.ys
        if reverse and not keep_order:
            in_order = lambda ys, n: _processing_order(ys, length, n)
            outputs = jax.vmap(in_order)(outputs, seq_lengths)
        lyapunov = None
        if diagnostics:
            exponent = functools.partial(_largest_exponent, step, method, reverse=reverse)
            lyapunov = jax.vmap(exponent)(initial_carry, xs, sol.carries)
            if seq_lengths is not None:
                # Padded steps keep the carry (identity Jacobians, log-norm 0): the product
                # is that of the valid steps, so average over those.
                lyapunov = lyapunov * length / jnp.maximum(seq_lengths, 1)
        carries = sol.carries if return_carries else None
        stats = SolverStats(
            sol.iterations, sol.residual, sol.result, sol.fell_back, lyapunov, carries
        )

        def unflatten_batch(leaf, time_axis=False):
            leaf = leaf.reshape(batch_shape + leaf.shape[1:])
            if time_axis and time_major:
                leaf = jnp.moveaxis(leaf, len(batch_shape), 0)
            return leaf

        final_carry = jax.tree_util.tree_map(unflatten_batch, sol.final_carry)
        outputs = jax.tree_util.tree_map(lambda leaf: unflatten_batch(leaf, True), outputs)
        stats = jax.tree_util.tree_map(unflatten_batch, stats)
        if self.sow_stats:
            self.sow(nnx.Intermediate, "solver_stats", stats)

        result = (final_carry, outputs) if return_carry else outputs
        return (result, stats) if return_stats else result

    def _current_method(self) -> Method:
        """The method this call runs: the fixed one, or for ``Auto`` the parallel method or
        the sequential scan, as :attr:`parallel_active` says."""
        auto = as_auto(self.method)
        if auto is None:
            return resolve_method(self.method, self.cell)
        return resolve_method(auto.parallel, self.cell) if self.parallel_active else Sequential()

    def _solve_batch(self, step, init, xs, guess, method, reverse) -> Solution:
        """The N sequences (leading axis of ``init``, ``xs``, ``guess``) solved where the layer
        runs: ``jax.vmap`` of :func:`rnnscan.solve` on one device, or with a mesh one
        :func:`rnnscan.sharded_solve` (time split over ``time_axis``, the sequences over
        ``batch_axis`` or vmapped on every device). Either way each sequence iterates until
        it converges and has its own statistics."""
        if self.mesh is None:

            def one(init, xs, guess):
                return solve(
                    step,
                    init,
                    xs,
                    reverse=reverse,
                    unroll=self.unroll,
                    method=method,
                    on_failure=self.on_failure,
                    guess=guess,
                )

            return jax.vmap(one)(init, xs, guess)
        return sharded_solve(
            step,
            init,
            xs,
            reverse=reverse,
            mesh=self.mesh,
            axis=self.time_axis,
            batch_axis=self.batch_axis,
            batched=True,
            method=method,
            on_failure=self.on_failure,
            guess=guess,
        )


def _largest_exponent(step, method: Method, init, xs, carries, *, reverse: bool) -> jax.Array:
    """One sequence's finite-time largest Lyapunov exponent along its solved ``carries``, in
    the method's Jacobian structure (else the step's declared one), as
    ``rnnscan.solve(..., diagnostics=True)`` reports it: over the steps in processing
    order."""
    if reverse:
        xs, carries = _flip((xs, carries))
    structure = getattr(method, "jacobian", None) or declared_structure(step)
    return largest_exponent(step, init, xs, carries, structure)


def _flip(tree):
    return jax.tree_util.tree_map(lambda leaf: jnp.flip(leaf, axis=0), tree)


def _processing_order(outputs, length: int, seq_length):
    """Reorder a reversed scan's outputs (aligned with the inputs) into the order they were
    computed: the valid prefix flipped, the padding left in place (flax's ``flip_sequences``
    convention)."""
    t = jnp.arange(length)
    if seq_length is None:
        source = t[::-1]
    else:
        source = jnp.where(t < seq_length, seq_length - 1 - t, t)
    return jax.tree_util.tree_map(lambda leaf: leaf[source], outputs)


def _concatenate(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.concatenate([a, b], axis=-1)


class Bidirectional(nnx.Module):
    """Runs one RNN forwards and one backwards over the sequence and merges their outputs, like
    ``flax.nnx.Bidirectional`` (padding-aware: the backward RNN starts at each sequence's last
    valid step).

    Args:
        forward_rnn, backward_rnn: :class:`RNN` layers (or anything with their call signature).
        merge_fn: combines the two output sequences (default: concatenate the features).
        time_major, return_carry: as for :class:`RNN`.
    """

    def __init__(
        self,
        forward_rnn: RNN,
        backward_rnn: RNN,
        *,
        merge_fn: Callable[[jax.Array, jax.Array], jax.Array] = _concatenate,
        time_major: bool = False,
        return_carry: bool = False,
    ):
        if forward_rnn is backward_rnn:
            warnings.warn(
                "forward_rnn and backward_rnn are the same object, so they share parameters",
                stacklevel=2,
            )
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn
        self.merge_fn = merge_fn
        self.time_major = time_major
        self.return_carry = return_carry

    def __call__(
        self,
        inputs: jax.Array,
        *,
        initial_carry: tuple[Carry, Carry] | None = None,
        seq_lengths: jax.Array | None = None,
        return_carry: bool | None = None,
        time_major: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | None = None,
        return_stats: bool = False,
        diagnostics: bool = False,
    ):
        """Returns ``outputs`` or ``((forward_carry, backward_carry), outputs)``; with
        ``return_stats``, that and ``(forward_stats, backward_stats)`` as a pair
        (``diagnostics``: see :class:`RNN`)."""
        return_carry = self.return_carry if return_carry is None else return_carry
        time_major = self.time_major if time_major is None else time_major
        forward_init, backward_init = (None, None) if initial_carry is None else initial_carry
        common = dict(
            seq_lengths=seq_lengths,
            return_carry=True,
            time_major=time_major,
            rngs=rngs,
            return_stats=True,
            diagnostics=diagnostics,
        )
        (forward_carry, forward_out), forward_stats = self.forward_rnn(
            inputs, initial_carry=forward_init, reverse=False, **common
        )
        (backward_carry, backward_out), backward_stats = self.backward_rnn(
            inputs, initial_carry=backward_init, reverse=True, keep_order=True, **common
        )
        outputs = jax.tree_util.tree_map(self.merge_fn, forward_out, backward_out)
        result = ((forward_carry, backward_carry), outputs) if return_carry else outputs
        return (result, (forward_stats, backward_stats)) if return_stats else result
