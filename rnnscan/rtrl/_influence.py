r"""The compressed influence matrix of an element-wise cell: which parameters move which units.

RTRL carries the influence S_t = dc_t/dθ (the carry's sensitivity to every parameter). For
a cell whose carry Jacobian is ``Diagonal()`` or ``BlockDiagonal(k)`` it is block-sparse:
view the flat carry (size N) as ``(k, m)``, unit j being the k entries ``[:, j]``; if a
parameter entry moves only unit j's next carry, it moves only unit j's carry at every later
step (unit j reads only its own block of the last carry). So each unit keeps only the
derivatives with respect to its *own* parameters: S is stored as ``(N, Q)`` with Q the number
of parameters per unit, not ``(N, P)`` with P all of them.

Which entry belongs to which unit is read off the cell itself, once, by *probing*: at two
random points (random carry, random input, the parameters plus Gaussian noise) one
vector-Jacobian product per unit j, with a cotangent on unit j's block of the next carry,
gives every parameter entry (and carry entry) that moves unit j. Each parameter entry then
is one of

- **per-unit**: it moves exactly one unit. Unit j's own entries of a leaf, in flat order,
  are the leaf's columns; units with fewer entries are padded (the padding stays zero);
- **shared**: it moves several units. It gets a dense column of its own (N entries), which
  keeps RTRL exact at a cost of N per shared entry (none of rnnscan's element-wise cells has
  one);
- **read-out**: it moves no unit (an output layer inside the cell): its gradient is the
  direct one, with no influence at all.

The same probe checks the declared structure: a unit whose next carry reads another unit's
carry raises. Probing at random points finds the structural dependencies unless a derivative
vanishes by accident at both points (probability zero for analytic cells).

The *dense* plan treats the whole carry as one unit (k = N, m = 1): S holds dc/dθ for every
parameter that moves the carry, which is classic RTRL (Williams and Zipser, 1989) for any cell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._linear_recurrence import linear_recurrence
from .._structure import BlockDiagonal, Dense, Diagonal, Structure

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True, eq=False)
class InfluencePlan:
    """Static description of a compressed influence: hashable, so it can sit in a pytree's
    metadata (jit treats two equal plans as the same program).

    Attributes:
        structure: the carry Jacobian's structure (``Dense()`` for a dense plan).
        block: k, the carry entries per unit; units: m, the number of units (k m = N).
        unit_index: per parameter leaf, an int array ``(m, p)``: the flat indices of unit
            j's own entries, padded with the leaf's size.
        shared_index: per parameter leaf, the flat indices of its shared entries.
        leaf_sizes: the sizes of the parameter leaves.
    """

    structure: Structure
    block: int
    units: int
    unit_index: tuple[np.ndarray, ...]
    shared_index: tuple[np.ndarray, ...]
    leaf_sizes: tuple[int, ...]

    @property
    def carry_size(self) -> int:
        return self.block * self.units

    @property
    def unit_columns(self) -> int:
        return sum(index.shape[1] for index in self.unit_index)

    @property
    def shared_columns(self) -> int:
        return sum(index.shape[0] for index in self.shared_index)

    @property
    def columns(self) -> int:
        """Q: the influence's columns, per-unit first, then shared."""
        return self.unit_columns + self.shared_columns

    def _key(self):
        arrays = self.unit_index + self.shared_index
        return (
            self.structure,
            self.block,
            self.units,
            self.leaf_sizes,
            tuple((a.shape, a.tobytes()) for a in arrays),
        )

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, InfluencePlan) and self._key() == other._key()

    # ---------------------------------------------------------------- the per-step pieces

    def immediate(self, step_carry, params, c: jax.Array) -> jax.Array:
        r"""B = ∂c'/∂θ of one step (the carry held fixed), compressed to ``(N, Q)``.

        Per-unit columns by k vector-Jacobian products: the cotangent that is 1 on row r of
        every unit gives Σ_j ∂c'[r, j]/∂θ, whose entries at unit j's own parameters are
        ∂c'[r, j]/∂θ_j alone (no other unit reads them). Shared columns by one JVP each.
        ``step_carry(params, c)`` is the step's next flat carry."""
        k, m = self.block, self.units
        value, vjp = jax.vjp(lambda p: step_carry(p, c), params)
        rows = jnp.repeat(jnp.eye(k, dtype=value.dtype), m, axis=1)  # (k, N)
        (grads,) = jax.vmap(vjp)(rows)
        leaves = jax.tree_util.tree_leaves(grads)
        parts = [
            jnp.take(leaf.reshape(k, -1), index, axis=1, mode="fill", fill_value=0)
            for leaf, index in zip(leaves, self.unit_index)
        ]  # each (k, m, p)
        B = jnp.concatenate(parts, axis=-1).reshape(k * m, self.unit_columns)
        if self.shared_columns:
            tangents = self._shared_tangents(params)
            _, jvp = jax.linearize(lambda p: step_carry(p, c), params)
            B = jnp.concatenate([B, jax.vmap(jvp)(tangents).T], axis=-1)
        return B

    def _shared_tangents(self, params):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        s, start, out = self.shared_columns, 0, []
        for leaf, index in zip(leaves, self.shared_index):
            t = np.zeros((s, leaf.size), np.dtype(leaf.dtype))
            t[start + np.arange(index.size), index] = 1
            start += index.size
            out.append(jnp.asarray(t).reshape((s,) + leaf.shape))
        return jax.tree_util.tree_unflatten(treedef, out)

    def propagate(self, J: jax.Array, S: jax.Array) -> jax.Array:
        """J S: the carry Jacobian (stored in ``structure``) applied to every column."""
        return jax.vmap(self.structure.matvec, in_axes=(None, 1), out_axes=1)(J, S)

    def solve(self, J: jax.Array, B: jax.Array) -> jax.Array:
        """S_t = J_t S_{t-1} + B_t for t = 0..W-1 from S_{-1} = 0, in parallel over t by
        rnnscan's linear recurrence: ``J`` ``(W, batch, ...)`` in ``structure``, ``B``
        ``(W, batch, N, Q)``. For (block-)diagonal J every (sample, column) pair is a set of
        units of its own, so the columns join the units of one recurrence of size
        ``batch N Q`` (J repeated per column); a dense J is solved column by column."""
        W, batch, N, Q = B.shape
        k, m = self.block, self.units
        if isinstance(self.structure, Dense):

            def one_column(J_b, b):
                return linear_recurrence(J_b, b, self.structure)

            per_sample = jax.vmap(one_column, in_axes=(None, 2), out_axes=2)
            return jax.vmap(per_sample, in_axes=(1, 1), out_axes=1)(J, B)
        # (W, batch, k, m, Q) -> (W, k, batch m Q): the strided layout of k-blocks.
        b = B.reshape(W, batch, k, m, Q).transpose(0, 2, 1, 3, 4).reshape(W, -1)
        if isinstance(self.structure, Diagonal):
            A = jnp.broadcast_to(J.reshape(W, batch, 1, m, 1), (W, batch, 1, m, Q))
            A = A.transpose(0, 2, 1, 3, 4).reshape(W, -1)
            structure = Diagonal()
        else:  # J: (W, batch, m, k, k), one block per unit, the same for every column
            A = jnp.broadcast_to(J[:, :, :, None], (W, batch, m, Q, k, k)).reshape(W, -1, k, k)
            structure = BlockDiagonal(k)
        S = linear_recurrence(A, b, structure)
        return S.reshape(W, k, batch, m, Q).transpose(0, 2, 1, 3, 4).reshape(W, batch, N, Q)

    def contract(self, u: jax.Array, S: jax.Array) -> jax.Array:
        """u · S per unit: ``(m, Q)``, the gradient in compressed form of a loss whose
        cotangent on the flat carry is ``u`` (batched over any leading axes, summed)."""
        k, m = self.block, self.units
        u = u.reshape(-1, k, m)
        S = S.reshape(-1, k, m, S.shape[-1])
        return jnp.einsum("brj,brjq->jq", u, S, precision=_HIGHEST)

    def expand(self, compressed: jax.Array, template):
        """The compressed gradient ``(m, Q)`` as a pytree like ``template`` (the parameters)."""
        leaves, treedef = jax.tree_util.tree_flatten(template)
        out, col = [], 0
        for leaf, index in zip(leaves, self.unit_index):
            p = index.shape[1]
            flat = jnp.zeros(leaf.size, compressed.dtype)
            flat = flat.at[index].add(compressed[:, col : col + p], mode="drop")
            out.append(flat)
            col += p
        shared = compressed[:, self.unit_columns :].sum(axis=0)
        col = 0
        for i, index in enumerate(self.shared_index):
            out[i] = out[i].at[index].add(shared[col : col + index.size])
            col += index.size
        out = [flat.reshape(leaf.shape).astype(leaf.dtype) for flat, leaf in zip(out, leaves)]
        return jax.tree_util.tree_unflatten(treedef, out)


def unit_layout(structure: Structure, size: int, dense: bool, name: str) -> tuple[int, int]:
    """``(k, m)`` for a cell's structure, or the refusal of a dense one."""
    if dense:
        return size, 1
    if isinstance(structure, Diagonal):
        return 1, size
    if isinstance(structure, BlockDiagonal):
        structure.validate(size)
        return structure.block_size, size // structure.block_size
    raise ValueError(
        f"rnnscan.rtrl: {name} declares jacobian_structure={structure!r}; exact RTRL is "
        f"cheap only for Diagonal() and BlockDiagonal(k) cells (influence O(n * parameters per "
        f"unit)). Pass dense=True for classic dense RTRL: influence memory O(n * P) "
        f"(P = all parameters, O(n^3) for a GRU) and O(n^2 * P) work per step."
    )


def probe(
    step, params, size: int, x_example, structure: Structure, dense: bool, name: str
) -> InfluencePlan:
    """Read which parameter entries move which units off the cell (see the module docstring).
    Runs eagerly (under ``jax.ensure_compile_time_eval`` when called while tracing)."""
    k, m = unit_layout(structure, size, dense, name)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    concrete = not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)
    # The parameters' own values help a cell that is only defined near them; under a trace
    # (a jit of the caller) only their shapes are known, and noise alone stands in, and the
    # probe runs eagerly all the same (slower: its constants are folded one by one).
    base = [np.asarray(leaf) if concrete else np.zeros(leaf.shape, leaf.dtype) for leaf in leaves]
    dtype = jnp.dtype(jnp.result_type(*[leaf.dtype for leaf in leaves]))
    context = contextlib.nullcontext() if concrete else jax.ensure_compile_time_eval()
    try:
        with context:
            points, weights = _random_points(base, size, x_example, k, dtype)
            count, owner, foreign, bad = _probe_jit(step, treedef, points, size, weights, k, m)
            count, owner = np.asarray(count), np.asarray(owner)
            foreign, bad = int(foreign), bool(bad)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as err:
        raise ValueError(
            f"rnnscan.rtrl: probing {name}'s parameter structure needs the values of its "
            f"non-parameter variables, which are traced here: call rtrl.init (or "
            f"sequence_gradient) once outside jax.jit first, whose probe is then reused"
        ) from err
    if bad:
        raise FloatingPointError(
            f"rnnscan.rtrl: probing {name}'s parameter structure at random points gave "
            f"non-finite derivatives"
        )
    if foreign >= 0:
        raise ValueError(
            f"rnnscan.rtrl: {name} declares jacobian_structure={structure!r}, but unit "
            f"{foreign}'s next carry reads other units' carries: its Jacobian is not "
            f"(block-)diagonal in the flat carry's strided layout"
        )
    unit_index, shared_index, start = [], [], 0
    for leaf in leaves:
        size_leaf = int(np.prod(leaf.shape))
        c, o = count[start : start + size_leaf], owner[start : start + size_leaf]
        start += size_leaf
        mine = [np.flatnonzero((c == 1) & (o == j)) for j in range(m)]
        p = max((len(e) for e in mine), default=0)
        index = np.full((m, p), size_leaf, np.int32)
        for j, entries in enumerate(mine):
            index[j, : len(entries)] = entries
        unit_index.append(index)
        shared_index.append(np.flatnonzero(c > 1).astype(np.int32))
    return InfluencePlan(
        Dense() if dense else structure,
        k,
        m,
        tuple(unit_index),
        tuple(shared_index),
        tuple(int(np.prod(leaf.shape)) for leaf in leaves),
    )


def _random_points(base, size, x_example, k, dtype):
    """Two random points (parameters plus noise, carry, input) and the cotangent weights,
    drawn with NumPy: no random-number program to compile."""
    rng = np.random.default_rng(20240507)
    points = []
    for _ in range(2):
        params = [
            (b + 0.5 * (1 + np.abs(b)) * rng.standard_normal(b.shape)).astype(b.dtype) for b in base
        ]
        c = (0.5 * rng.standard_normal(size)).astype(dtype)
        x = jax.tree_util.tree_map(
            lambda leaf: rng.standard_normal(leaf.shape).astype(leaf.dtype), x_example
        )
        points.append((params, c, x))
    return points, rng.uniform(0.5, 1.5, k).astype(dtype)


@functools.partial(jax.jit, static_argnums=(0, 1, 3, 5, 6))
def _probe_jit(step, treedef, points, size, weights, k, m):
    """``(count, owner, foreign, bad)``: per parameter entry the number of units it moves and
    the last of them; the first unit whose next carry reads another unit's (or -1); whether
    a derivative was not finite. One VJP per unit and point, in a ``lax.scan`` over units."""
    vjps = []
    for params, c, x in points:
        tree = jax.tree_util.tree_unflatten(treedef, params)
        _, vjp = jax.vjp(lambda p, c, x=x: step(p, c, x)[0], tree, c)
        vjps.append(vjp)
    dtype = weights.dtype
    base = points[0][0]
    total = sum(b.size for b in base)
    rows = jnp.arange(k) * m

    def unit(state, j):
        count, owner, foreign, bad = state
        cot = jnp.zeros(size, dtype).at[rows + j].set(weights)
        moved_params = jnp.zeros(total, bool)
        moved_carry = jnp.zeros(size, bool)
        for vjp in vjps:
            g_params, g_carry = vjp(cot)
            flat = jnp.concatenate([jnp.ravel(g) for g in jax.tree_util.tree_leaves(g_params)])
            bad = bad | ~jnp.all(jnp.isfinite(flat)) | ~jnp.all(jnp.isfinite(g_carry))
            moved_params = moved_params | (flat != 0)
            moved_carry = moved_carry | (g_carry != 0)
        own = jnp.zeros(size, bool).at[rows + j].set(True)
        foreign = jnp.where((foreign < 0) & jnp.any(moved_carry & ~own), j, foreign)
        count = count + moved_params.astype(jnp.int32)
        owner = jnp.where(moved_params, j, owner)
        return (count, owner, foreign, bad), None

    init = (
        jnp.zeros(total, jnp.int32),
        jnp.full(total, -1, jnp.int32),
        jnp.int32(-1),
        jnp.asarray(False),
    )
    (count, owner, foreign, bad), _ = jax.lax.scan(unit, init, jnp.arange(m, dtype=jnp.int32))
    return count, owner, foreign, bad


_PLANS: dict[Any, InfluencePlan] = {}


def cached_plan(key, build) -> InfluencePlan:
    """One probe per cell graph, parameter shapes and carry layout (jit retraces and repeated
    eager calls reuse it)."""
    try:
        hash(key)
    except TypeError:
        return build()
    if key not in _PLANS:
        if len(_PLANS) > 64:
            _PLANS.clear()
        _PLANS[key] = build()
    return _PLANS[key]
