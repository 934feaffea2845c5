"""What the sequential fallback costs when it is not taken, batched or not.

``python -m benchmarks.fallback_cost [--hidden 8] [--length 10000] [--batch 16] [--repeats 20]``

Times a jitted, vmapped Newton solve of a GRU with ``on_failure="fallback"`` (the default: a
conditional that would recompute sequentially if a sequence failed) against
``on_failure="return"`` (no fallback at all), and against ``jax.lax.scan``. If the fallback were
a ``select`` under ``vmap`` it would cost a full sequential scan on every call.
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax
import jax.numpy as jnp
from flax import nnx

import rnnscan

from ._timing import interleaved_times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fallback_cost")
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--length", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    cell = rnnscan.nn.GRUCell(args.hidden, args.hidden, rngs=nnx.Rngs(0))
    h0 = jnp.zeros(args.hidden)
    xs = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.length, args.hidden))

    def batched(run):
        return jax.jit(jax.vmap(lambda x: run(x)[1]))

    programs = {
        "sequential (jax.lax.scan)": batched(lambda x: jax.lax.scan(cell, h0, x)),
        "newton, on_failure='return'": batched(
            lambda x: rnnscan.scan(cell, h0, x, on_failure="return")
        ),
        "newton, on_failure='fallback'": batched(lambda x: rnnscan.scan(cell, h0, x)),
    }
    for fn in programs.values():
        jax.block_until_ready(fn(xs))
    times = interleaved_times(programs, (xs,), args.repeats)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    device = jax.devices()[0]
    print(
        json.dumps(
            {
                "device": f"{device.platform}:{device.device_kind}",
                "jax": jax.__version__,
                "shapes": {"hidden": args.hidden, "length": args.length, "batch": args.batch},
                "dtype": "float32",
                "repeats": args.repeats,
                "median_ms": {name: round(1e3 * t, 3) for name, t in medians.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
