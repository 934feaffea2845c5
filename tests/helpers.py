"""Shared test helpers: tolerant tree comparison and small reference cells."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import rnnscan

TOLERANCES = {jnp.float64: dict(rtol=1e-8, atol=1e-8), jnp.float32: dict(rtol=1e-4, atol=1e-4)}


def tree_allclose(actual, expected, *, rtol, atol) -> None:
    """Assert two pytrees have the same structure and all leaves are close (NaNs equal)."""
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree_util.tree_leaves(expected)
    ):
        np.testing.assert_allclose(
            np.asarray(a),
            np.asarray(b),
            rtol=rtol,
            atol=atol,
            equal_nan=True,
            err_msg=f"at {jax.tree_util.keystr(path)}",
        )


def _normal(key, shape, dtype, scale=1.0):
    return float(scale) * jax.random.normal(key, shape, dtype=dtype)


def tanh_rnn(key, n, d, dtype, gain=0.9):
    """h_t = tanh(W h + U x + b) with W random of spectral scale ``gain``."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = dict(
        W=_normal(k1, (n, n), dtype, gain / np.sqrt(n)),
        U=_normal(k2, (n, d), dtype, 1 / np.sqrt(d)),
        b=_normal(k3, (n,), dtype, 0.1),
    )

    def f(params, h, x):
        h = jnp.tanh(params["W"] @ h + params["U"] @ x + params["b"])
        return h, 2.0 * h[:1]

    return params, jnp.zeros(n, dtype), f


def gru(key, n, d, dtype):
    """The PyTorch-form GRU, written out."""
    ks = jax.random.split(key, 4)
    params = dict(
        Wi=_normal(ks[0], (3, n, d), dtype, 1 / np.sqrt(d)),
        Wh=_normal(ks[1], (3, n, n), dtype, 1 / np.sqrt(n)),
        bi=_normal(ks[2], (3, n), dtype, 0.1),
        bh=_normal(ks[3], (3, n), dtype, 0.1),
    )

    def f(params, h, x):
        gi = params["Wi"] @ x + params["bi"]
        gh = params["Wh"] @ h + params["bh"]
        r = jax.nn.sigmoid(gi[0] + gh[0])
        z = jax.nn.sigmoid(gi[1] + gh[1])
        cand = jnp.tanh(gi[2] + r * gh[2])
        h = (1 - z) * cand + z * h
        return h, h

    return params, jnp.full((n,), 0.1, dtype), f


def lstm(key, n, d, dtype):
    """An LSTM with the (c, h) tuple carry and a dict output."""
    k1, k2 = jax.random.split(key)
    params = dict(
        Wi=_normal(k1, (4 * n, d), dtype, 1 / np.sqrt(d)),
        Wh=_normal(k2, (4 * n, n), dtype, 1 / np.sqrt(n)),
        b=jnp.zeros(4 * n, dtype).at[n : 2 * n].set(1.0),
    )

    def f(params, carry, x):
        c, h = carry
        i, fg, g, o = jnp.split(params["Wi"] @ x + params["Wh"] @ h + params["b"], 4)
        c = jax.nn.sigmoid(fg) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), {"h": h, "c_sum": c.sum()}

    return params, (jnp.zeros(n, dtype), jnp.zeros(n, dtype)), f


def linear(key, n, d, dtype):
    """h_t = A h + B x: affine in the carry."""
    k1, k2 = jax.random.split(key)
    params = dict(
        A=_normal(k1, (n, n), dtype, 0.9 / np.sqrt(n)),
        B=_normal(k2, (n, d), dtype, 1 / np.sqrt(d)),
    )

    def f(params, h, x):
        h = params["A"] @ h + params["B"] @ x
        return h, h

    return params, jnp.ones(n, dtype), f


def diagonal_rnn(key, n, d, dtype):
    """h_t = tanh(a * h + U x): an exactly diagonal carry Jacobian."""
    k1, k2 = jax.random.split(key)
    params = dict(
        a=jax.random.uniform(k1, (n,), dtype, -1.0, 1.0),
        U=_normal(k2, (n, d), dtype, 1 / np.sqrt(d)),
    )

    def f(params, h, x):
        h = jnp.tanh(params["a"] * h + params["U"] @ x)
        return h, h

    return params, jnp.zeros(n, dtype), f


def diagonal_lstm(key, n, d, dtype):
    """An LSTM with elementwise recurrent weights: (c_i, h_i) couple only with each other."""
    k1, k2 = jax.random.split(key)
    params = dict(
        w=jax.random.uniform(k1, (4, n), dtype, -1.0, 1.0),
        U=_normal(k2, (4, n, d), dtype, 1 / np.sqrt(d)),
    )

    def f(params, carry, x):
        c, h = carry
        pre = params["w"] * h[None, :] + params["U"] @ x
        i, fg, g, o = pre
        c = jax.nn.sigmoid(fg + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    return params, (jnp.zeros(n, dtype), jnp.zeros(n, dtype)), f


CELLS = {"tanh": tanh_rnn, "gru": gru, "lstm": lstm, "linear": linear}


def bind(f, params):
    return lambda carry, x: f(params, carry, x)


# Jitted entry points for the tests: eager calls would compile every primitive separately.
_STATIC = dict(
    static_argnums=(0, 3, 4, 5),
    static_argnames=("length", "reverse", "unroll", "method", "on_failure"),
)
jit_solve = jax.jit(rnnscan.solve, **_STATIC)
jit_scan = jax.jit(rnnscan.scan, **_STATIC)
