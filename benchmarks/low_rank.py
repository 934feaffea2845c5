"""What a low-rank recurrent kernel (``GRUCell(rank=r)``, W_h = U Vᵀ) saves: parameters and
the forward time of one sequence, against the full GRU.

``python -m benchmarks.low_rank [--hidden 64] [--rank 8] [--length 2000] [--repeats 15]``

Times jitted ``rnnscan.scan`` (the default method, Newton with a dense Jacobian) and
``jax.lax.scan`` on the same inputs for both cells, float32, calls interleaved round by round so
that drifts in machine load hit every program alike; prints medians and quartiles (ms), the
Newton iterations and the parameter counts.
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import rnnscan

from ._timing import interleaved_times


def _count(cell) -> int:
    leaves = jax.tree_util.tree_leaves(nnx.state(cell, nnx.Param))
    return sum(int(np.prod(leaf.shape)) for leaf in leaves)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.low_rank")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--length", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)

    n, d = args.hidden, args.inputs
    cells = {
        "full": rnnscan.nn.GRUCell(d, n, rngs=nnx.Rngs(0)),
        f"rank {args.rank}": rnnscan.nn.GRUCell(d, n, rank=args.rank, rngs=nnx.Rngs(0)),
    }
    h0 = jnp.zeros(n, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(0), (args.length, d), jnp.float32)

    programs, iterations = {}, {}
    for name, cell in cells.items():
        programs[f"{name}, rnnscan.scan"] = jax.jit(lambda x, c=cell: rnnscan.scan(c, h0, x)[1])
        programs[f"{name}, lax.scan"] = jax.jit(lambda x, c=cell: jax.lax.scan(c, h0, x)[1])
        sol = jax.jit(lambda x, c=cell: rnnscan.solve(c, h0, x))(xs)
        iterations[name] = int(sol.iterations)
    for fn in programs.values():
        jax.block_until_ready(fn(xs))
    times = interleaved_times(programs, (xs,), args.repeats)

    record = {
        "shapes": {"hidden": n, "inputs": d, "rank": args.rank, "length": args.length},
        "dtype": "float32",
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "repeats": args.repeats,
        "parameters": {name: _count(cell) for name, cell in cells.items()},
        "newton_iterations": iterations,
        "times_ms": {
            name: {
                "median": 1e3 * statistics.median(ts),
                "quartiles": [1e3 * q for q in np.quantile(ts, [0.25, 0.75])],
            }
            for name, ts in times.items()
        },
    }
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
