"""Spectral diagnostics of weight matrices: the normalised SVD entropy of Li et al. (2023)."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def svd_entropy(matrix: ArrayLike) -> Float[Array, "*batch"]:
    r"""Normalised SVD entropy of a matrix, or of each matrix in a batch ``(..., M, N)``
    (Li, Cornford, Ghosh & Richards, "Learning better with Dale's Law: A Spectral
    Perspective", NeurIPS 2023):

    .. math::

        H = -\frac{1}{\log K} \sum_{i=1}^{K} \bar\sigma_i \log \bar\sigma_i,
        \qquad \bar\sigma_i = \frac{\sigma_i}{\sum_j \sigma_j},

    over the K = min(M, N) singular values σ_i (for the paper's square n x n recurrent
    matrices K = n). H lies in [0, 1]: 1 when all singular values are equal (e.g. an
    orthogonal matrix, or any multiple of one), 0 when one singular value carries everything
    (a rank-1 matrix); Li et al. find that a low H at initialisation (a dispersed, multimodal
    singular-value spectrum) predicts poor learning. Terms with σ̄_i = 0 count 0
    (lim x log x = 0). H is invariant to scaling the matrix.

    Conventions: the **zero matrix** (every σ_i = 0, σ̄ undefined) gets H = 0, the value of
    the other degenerate, rank <= 1 case; its gradient there is zero. A matrix with K = 1
    (one row or one column) has no spectrum to spread and is rejected.

    Args:
        matrix: a real or complex array of shape ``(..., M, N)`` with min(M, N) >= 2.

    Returns:
        H, of shape ``(...)`` (a scalar for one matrix), in the matrix's floating dtype (its
        real counterpart for complex input; float for integer input).

    Raises:
        ValueError: if ``matrix`` has fewer than 2 dimensions or min(M, N) < 2.
    """
    matrix = jnp.asarray(matrix)
    if matrix.ndim < 2:
        raise ValueError(
            f"svd_entropy: matrix must have shape (..., M, N) with at least 2 dimensions, "
            f"got shape {matrix.shape}"
        )
    K = min(matrix.shape[-2:])
    if K < 2:
        raise ValueError(
            f"svd_entropy: matrix needs at least 2 singular values (min(M, N) >= 2), got shape "
            f"{matrix.shape}"
        )
    if not jnp.issubdtype(matrix.dtype, jnp.inexact):
        matrix = matrix.astype(jnp.result_type(float))
    sigma = jnp.linalg.svd(matrix, compute_uv=False)
    total = jnp.sum(sigma, axis=-1, keepdims=True)
    nonzero = total > 0
    p = sigma / jnp.where(nonzero, total, 1)
    positive = p > 0
    safe_p = jnp.where(positive, p, 1)
    plogp = jnp.where(positive, p * jnp.log(safe_p), 0)
    entropy = -jnp.sum(plogp, axis=-1) / jnp.asarray(math.log(K), sigma.dtype)
    return jnp.where(nonzero[..., 0], entropy, jnp.zeros((), sigma.dtype))
