r"""The low-rank recurrent kernel of :class:`GRUCell` and :class:`LSTMCell`.

The g gates' recurrent matrices, stacked as one (n, g n) kernel W_h, are replaced by

.. math::

    W_h = U V^\top, \qquad U \in \mathbb{R}^{n \times r}, \; V \in \mathbb{R}^{g n \times r},

and h W_h is computed as (h U) Vᵀ: the carry is projected to r numbers once, by a
projection U *shared by all gates*, and each gate reads those r numbers through its own
(n, r) block V_k of V. This is the low-rank factorisation with shared factors of Lu,
Sindhwani & Sainath (2016, "Learning compact recurrent neural networks", ICASSP): n r + g n r
recurrent parameters against g n² (fewer whenever r < g n / (g + 1)), and O(n r (g + 1))
work per step against O(g n²). Gate-private projections (W_h,k = U_k V_kᵀ) would cost 2 g n r.

Initialisation: the recurrent initialiser (orthogonal by default) draws U (n, r) and each
gate's V_kᵀ (r, n) on its own, so with orthogonal draws U has orthonormal columns, V_k too,
and each gate's block U V_kᵀ is a partial isometry (r singular values equal to 1): the rank-r
analogue of the full cells' orthogonal gate blocks (at r = n it is orthogonal, with the same
distribution as the full cells' draw).
"""

from __future__ import annotations

import jax
from flax import nnx
from flax.typing import Dtype, Initializer

from ._base import gate_stacked


def check_rank(cell_name: str, rank, hidden_features: int) -> int | None:
    """``rank`` if it is None or an int in 1..hidden_features, else a ValueError naming it."""
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= hidden_features:
        raise ValueError(
            f"{cell_name}: rank must be None (a full recurrent kernel) or an integer with "
            f"1 <= rank <= hidden_features = {hidden_features}, got rank={rank!r}"
        )
    return rank


def low_rank_factors(
    init: Initializer,
    num_gates: int,
    hidden_features: int,
    rank: int,
    param_dtype: Dtype,
    rngs: nnx.Rngs,
) -> tuple[nnx.Param, nnx.Param]:
    """The factors ``(U, V)`` of W_h = U Vᵀ, U (n, r) and V (g n, r), drawn as described in
    the module docstring (U first, then V's g blocks)."""
    n = hidden_features
    U = init(rngs.params(), (n, rank), param_dtype)
    V_t = gate_stacked(init, num_gates)(rngs.params(), (rank, num_gates * n), param_dtype)
    return nnx.Param(U), nnx.Param(V_t.T)


def recurrent_arrays(cell) -> tuple[jax.Array, ...]:
    """The cell's recurrent parameters: ``(W_h,)`` when full, ``(U, V)`` when low-rank."""
    if cell.rank is None:
        return (cell.recurrent_kernel[...],)
    return cell.recurrent_u[...], cell.recurrent_v[...]


def recurrent_product(h: jax.Array, arrays: tuple[jax.Array, ...]) -> jax.Array:
    """h W_h: ``h @ W_h``, or ``(h @ U) @ Vᵀ`` for the factors (never forming U Vᵀ)."""
    if len(arrays) == 1:
        return h @ arrays[0]
    U, V = arrays
    return (h @ U) @ V.T


def effective_recurrent_kernel(cell) -> jax.Array:
    """The effective (n, g n) recurrent kernel: W_h, or the product U Vᵀ."""
    if cell.rank is None:
        return cell.recurrent_kernel[...]
    return cell.recurrent_u[...] @ cell.recurrent_v[...].T
