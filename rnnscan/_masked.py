r"""The step of a padded sequence: the step function where a step is valid, the identity
elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._structure import Dense

Carry = Any
PyTree = Any


def masked_step(
    f: Callable[[Carry, PyTree], tuple[Carry, PyTree]],
) -> Callable[[Carry, tuple[PyTree, jax.Array]], tuple[Carry, PyTree]]:
    r"""``f`` on ``(x, valid)``: applied where ``valid``, elsewhere the carry is kept and the
    output is zero.

    .. math::

        c_t = \begin{cases} F(c_{t-1}, x_t) & \text{valid}_t \\ c_{t-1} & \text{else}
        \end{cases}, \qquad
        y_t = \begin{cases} G(c_{t-1}, x_t) & \text{valid}_t \\ 0 & \text{else} \end{cases}

    A kept carry is an identity step: its Jacobian is the identity (exact in every structure,
    and affine), it is exact as soon as the step before it is, and its update equals the one
    before it. So padding changes neither the iteration count, nor the convergence test,
    nor the carries of the valid steps, and the last carry of a padded sequence is that of
    its valid steps (with ``reverse`` the padding runs first and keeps ``init``). The step
    declares ``f``'s Jacobian structure (dense if ``f`` declares none): the identity fits
    every one.

    Reference::

        def step(carry, x_and_valid):
            x, valid = x_and_valid
            new_carry, y = f(carry, x)
            if not valid:
                return carry, zeros_like(y)
            return new_carry, y
    """

    def step(carry, x_and_valid):
        x, valid = x_and_valid
        new_carry, y = f(carry, x)
        new_carry = jax.tree_util.tree_map(lambda a, b: jnp.where(valid, a, b), new_carry, carry)
        y = jax.tree_util.tree_map(lambda a: jnp.where(valid, a, jnp.zeros_like(a)), y)
        return new_carry, y

    step.jacobian_structure = getattr(f, "jacobian_structure", Dense())
    return step
