"""Per-device memory of a time-split training step at D = 1, 2, 4, 8 devices.

``python -m benchmarks.sharded_memory [--hidden 32] [--length 16384] [--devices 1,2,4,8]
[--out results/sharded-memory-<device>-<date>]``

Compiles (does not run) ``jax.value_and_grad`` of the mean square of the outputs of a GRU
(``rnnscan.nn.GRUCell``, dense Newton, one sequence) w.r.t. its parameters, with the time
axis split over D devices by :func:`rnnscan.sharded_solve`, and records XLA's memory analysis
of the compiled SPMD program: the arguments, outputs and temporaries *of one device*.
Dense Newton holds T n^2 Jacobian entries (and the associative scan's products of them),
so the per-device total should fall about as 1/D.

Without accelerators it runs on forced host CPU devices
(``--xla_force_host_platform_device_count``, set here before JAX starts); with D or more
GPUs it uses them. Writes ``<out>.jsonl`` (one line per D, with provenance) and
``<out>.md`` (the table).
"""

from __future__ import annotations

import os

if "jax" not in __import__("sys").modules:
    # Fake CPU devices for the runs without accelerators; ignored where GPUs are present.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

import rnnscan  # noqa: E402
import rnnscan.nn  # noqa: E402

from . import provenance  # noqa: E402
from ._memory import xla_memory_analysis  # noqa: E402

RESULTS = provenance.REPO_ROOT / "results"


def compiled_step(hidden: int, length: int, devices: int, dtype):
    """The compiled training step of one GRU sequence split over ``devices`` devices."""
    cell = rnnscan.nn.GRUCell(hidden, hidden, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=dtype)
    graphdef, state = nnx.split(cell)
    mesh = Mesh(np.array(jax.devices()[:devices]), ("time",))
    method = rnnscan.Newton()  # GRUCell's Jacobian is dense

    def loss(state, xs):
        cell = nnx.merge(graphdef, state)
        init = cell.initialize_carry((hidden,))
        sol = rnnscan.sharded_solve(cell, init, xs, mesh=mesh, axis="time", method=method)
        return jnp.mean(jnp.square(sol.ys))

    xs = jax.ShapeDtypeStruct((length, hidden), dtype)
    return jax.jit(jax.value_and_grad(loss)).lower(state, xs).compile()


def measure(hidden: int, length: int, devices: list[int], dtype) -> list[dict]:
    device = provenance.device_description()
    versions = provenance.library_versions()
    git = provenance.git_state()
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    records = []
    for D in devices:
        if D > len(jax.devices()):
            records.append({"devices": D, "status": "skipped", "reason": "not enough devices"})
            continue
        analysis = xla_memory_analysis(compiled_step(hidden, length, D, dtype))
        records.append(
            {
                "devices": D,
                "status": "ok",
                "problem": {
                    "cell": "GRUCell",
                    "hidden": hidden,
                    "in_features": hidden,
                    "length": length,
                    "batch": 1,
                    "dtype": jnp.dtype(dtype).name,
                    "method": "newton (dense Jacobian)",
                    "program": "jit(value_and_grad(mean(ys**2))) w.r.t. the cell parameters",
                },
                "memory_per_device": analysis,
                "device": device,
                "versions": versions,
                "git": git,
                "date": date,
            }
        )
        print(f"D={D}: {analysis['total_bytes'] / 1e6:.1f} MB per device", flush=True)
    return records


def markdown(records: list[dict]) -> str:
    ok = [r for r in records if r["status"] == "ok"]
    first = ok[0]
    p, dev, ver = first["problem"], first["device"], first["versions"]
    base = first["memory_per_device"]["total_bytes"]
    lines = [
        f"Per-device XLA memory analysis of one training step ({p['program']}): "
        f"{p['cell']} n = {p['hidden']}, T = {p['length']:,}, batch {p['batch']}, "
        f"{p['dtype']}, {p['method']}, time split over D devices by rnnscan.sharded_solve. "
        f"Device: {dev.get('device_kind')} x {dev.get('device_count')} ({dev.get('platform')}); "
        f"jax {ver.get('jax')}, jaxlib {ver.get('jaxlib')}, flax {ver.get('flax')}; "
        f"{first['date']}.",
        "",
        "| D | arguments | outputs | temporaries | total per device | total x D / total at D=1 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ok:
        m = r["memory_per_device"]
        lines.append(
            f"| {r['devices']} | {m['argument_size_in_bytes'] / 1e6:.2f} MB "
            f"| {m['output_size_in_bytes'] / 1e6:.2f} MB | {m['temp_size_in_bytes'] / 1e6:.1f} MB "
            f"| {m['total_bytes'] / 1e6:.1f} MB | {m['total_bytes'] * r['devices'] / base:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--length", type=int, default=16384)
    parser.add_argument("--devices", default="1,2,4,8")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", default=None, help="output path without suffix")
    args = parser.parse_args(argv)
    devices = [int(d) for d in args.devices.split(",")]
    records = measure(args.hidden, args.length, devices, jnp.dtype(args.dtype))
    if args.out is None:
        tag = provenance.device_tag(records[0]["device"]) if records[0]["status"] == "ok" else "x"
        day = datetime.date.today().isoformat()
        args.out = str(RESULTS / f"sharded-memory-{tag}-{day}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".jsonl").open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    table = markdown(records)
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
