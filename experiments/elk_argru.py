"""ELK's benchmark: the trained autoregressive GRU of Gonzalez, Warrington, Smith & Linderman,
"Towards Scalable and Stable Parallelization of Nonlinear RNNs" (NeurIPS 2024), Figure 4.

``python -m experiments.elk_argru --out R.jsonl [--report R.md] [--plot FIGURE.png]``

The model (public repository lindermanlab/elk, ``experiments/elk_exps_figs_4_7_8``,
``argru_sine_wave_L=10000.eqx``, BSD-3-Clause) is an autoregressive GRU trained on sine waves.
Its packed state is s = [x, h]: the last sample x and the 3 units of the GRU, n = 4. One step
with the standard-normal driver u:

    h' = GRU(input x, hidden h)                  (equinox's GRUCell: reset, update, new gates)
    mu, raw = D (h' + x) + d                     (identity activation, skip connection)
    x' = mu + softplus(raw) u                    (the reparameterised sample)
    s' = [x', h']

(ELK's ``elk.utils.elk_utils.packed_single_step`` over ``elk.models``; ported from reading it.)
Sampling 10,000 steps of it is the paper's hard case: the largest Lyapunov exponent is about
-0.0005 per step, on the edge of chaos, and DEER overflows.

The weights and exact reference trajectories for the paper's seeds 1-3 are not part of this
repository: they are read from the folder ``elk-argru`` (``elk_argru.npz``, see its README),
by default ``../shared/data/elk-argru`` beside the repository, or ``$RNNSCAN_ELK_ARGRU``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SEEDS = (1, 2, 3)
_PREFIX = "param.conditioners[0]."
_CELL = _PREFIX + "seq_model.layers[0].ssm.cell."


def data_dir() -> Path:
    """Where ``elk_argru.npz`` is looked for."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "elk-argru"
    return Path(os.environ.get("RNNSCAN_ELK_ARGRU", default))


def available() -> bool:
    return (data_dir() / "elk_argru.npz").is_file()


class ARGRU(NamedTuple):
    """The weights of the trained model (float32 arrays)."""

    weight_ih: jnp.ndarray  # (9, 1): reset, update, new gates from the input x
    weight_hh: jnp.ndarray  # (9, 3): the same from the hidden state
    bias: jnp.ndarray  # (9,)
    bias_n: jnp.ndarray  # (3,): inside the reset gate's product, as in equinox's GRUCell
    decoder_weight: jnp.ndarray  # (2, 3): mean and raw scale of the next sample
    decoder_bias: jnp.ndarray  # (2,)


class Problem(NamedTuple):
    """One seed: s_t = step(s_{t-1}, drivers[t]) for t = 0..T-1 from ``init``; ``states`` are
    the exact sequential evaluation by ELK's own code."""

    init: jnp.ndarray  # (4,)
    drivers: jnp.ndarray  # (T,)
    states: np.ndarray  # (T, 4)


def load(seed: int, dtype=jnp.float32) -> tuple[ARGRU, Problem]:
    """The model and the problem of one of the paper's seeds (1, 2 or 3)."""
    with np.load(data_dir() / "elk_argru.npz") as data:
        model = ARGRU(
            weight_ih=data[_CELL + "weight_ih"],
            weight_hh=data[_CELL + "weight_hh"],
            bias=data[_CELL + "bias"],
            bias_n=data[_CELL + "bias_n"],
            decoder_weight=data[_PREFIX + "decoder.weight"],
            decoder_bias=data[_PREFIX + "decoder.bias"],
        )
        problem = Problem(
            init=data[f"seed{seed}/init_state"],
            drivers=data[f"seed{seed}/drivers"],
            states=np.asarray(data[f"seed{seed}/states"]),
        )
    model = ARGRU(*(jnp.asarray(a, dtype) for a in model))
    return model, problem._replace(
        init=jnp.asarray(problem.init, dtype), drivers=jnp.asarray(problem.drivers, dtype)
    )


def step(model: ARGRU, s, u):
    """One step of the sampler: packed state ``s = [x, h]`` (4,), driver ``u`` (scalar)."""
    x, h = s[:1], s[1:]
    input_gates = jnp.split(model.weight_ih @ x + model.bias, 3)
    hidden_gates = jnp.split(model.weight_hh @ h, 3)
    reset = jax.nn.sigmoid(input_gates[0] + hidden_gates[0])
    keep = jax.nn.sigmoid(input_gates[1] + hidden_gates[1])
    new = jnp.tanh(input_gates[2] + reset * (hidden_gates[2] + model.bias_n))
    h = new + keep * (h - new)
    mean, raw_scale = model.decoder_weight @ (h + x) + model.decoder_bias
    x = mean + jax.nn.softplus(raw_scale) * u
    return jnp.concatenate([x[None], h])


def scan_step(model: ARGRU):
    """``f(s, u) -> (s', s')`` for ``jax.lax.scan`` and ``rnnscan.solve``."""

    def f(s, u):
        s = step(model, s, u)
        return s, s

    return f
