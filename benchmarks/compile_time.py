"""Time to first result: how long each method's program takes to lower and compile.

``python -m benchmarks.compile_time [--config configs/benchmarks/compile_time.yaml]
[--set key=value] [--out PREFIX]``

For every cell x hidden size x length of the config, lowers and compiles (``jax.jit(...).lower(
...).compile()``, the default XLA flags a user gets) the forward pass and the
``value_and_grad`` of a loss of the outputs w.r.t. the cell's parameters and the inputs, for
``jax.lax.scan`` and each rnnscan method, and DEER's own ``seq1d`` when the ``deer`` package is
importable (optional, never a dependency). Each program is compiled in a fresh trace (no
in-memory cache) with the persistent compilation cache off. Reports seconds to lower and to
compile and the size of the optimised HLO (instructions), one JSON line per case, and a
markdown table beside it.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx
from jax.flatten_util import ravel_pytree
from tqdm import tqdm

import rnnscan

from . import provenance
from ._cells import make_cell
from .settings import load_config, parse_args

DEFAULTS = {
    "cells": ["gru", "lstm", "diag_gru"],
    "hidden": [32],
    "length": [4000],
    "dtype": "float32",
    "methods": ["sequential", "newton", "quasi_newton", "fixed_point", "elk", "quasi_elk"],
    "modes": ["forward", "value_and_grad"],
    "repeats": 1,
    "deer": True,
    "out": "results/compile-time.jsonl",
}


def _deer_seq1d():
    """DEER's own solver where installed (``pip install`` from its repository), else None."""
    try:
        from deer import seq1d  # noqa: PLC0415 - optional, never a dependency
    except ImportError:
        return None
    return seq1d


def method_label(spec) -> tuple[str, object]:
    """``(label, method)`` of a config entry: a name, or ``{name: newton, linear_recurrence:
    chunked}`` (the class from ``rnnscan.method_class``, the other keys its fields)."""
    if isinstance(spec, str):
        return spec, spec
    spec = dict(spec)
    name = spec.pop("name")
    label = name + "".join(f", {k}={v}" for k, v in spec.items())
    return label, rnnscan.method_class(name)(**spec)


def _program(cell_name, hidden, length, dtype, method, mode):
    """``(function, args)``: the program of one case, closed over nothing traced."""
    cell = make_cell(cell_name, hidden, hidden, dtype, seed=0, options={})
    graphdef, params = nnx.split(cell)
    xs = jax.random.normal(jax.random.key(1), (length, hidden), dtype)

    def outputs(params, xs):
        cell = nnx.merge(graphdef, params)
        init = cell.initialize_carry(xs.shape[-1:])
        if method == "lax.scan":
            return jax.lax.scan(cell, init, xs)[1]
        if method == "deer.seq1d":
            # seq1d takes one array state: an LSTM's (h, c) pair goes in as one vector.
            flat_init, unflatten = ravel_pytree(init)
            step = lambda h, x, p: ravel_pytree(nnx.merge(graphdef, p)(unflatten(h), x)[0])[0]
            return _deer_seq1d()(step, flat_init, xs, params).value
        return rnnscan.scan(cell, init, xs, method=method)[1]

    if mode == "forward":
        return outputs, (params, xs)
    loss = lambda params, xs: jnp.mean(outputs(params, xs) ** 2)
    return jax.value_and_grad(loss, argnums=(0, 1)), (params, xs)


def _hlo_size(compiled) -> int:
    """Instructions in the optimised HLO module(s)."""
    text = compiled.as_text()
    return sum(
        1 for line in text.splitlines() if " = " in line and not line.lstrip().startswith("//")
    )


def measure(cell, hidden, length, dtype, spec, mode, repeats) -> dict:
    label, method = method_label(spec)
    lower_s, compile_s = [], []
    for _ in range(repeats):
        fn, args = _program(cell, hidden, length, dtype, method, mode)
        start = time.perf_counter()
        lowered = jax.jit(fn).lower(*args)
        middle = time.perf_counter()
        compiled = lowered.compile()
        end = time.perf_counter()
        lower_s.append(middle - start)
        compile_s.append(end - middle)
    return {
        "case": dict(cell=cell, hidden=hidden, length=length, dtype=dtype, method=label, mode=mode),
        "lower_s": statistics.median(lower_s),
        "compile_s": statistics.median(compile_s),
        "hlo_instructions": _hlo_size(compiled),
    }


def report(records: list[dict]) -> str:
    """A markdown table: one row per problem and method, forward and value_and_grad side by side."""
    rows: dict[tuple, dict] = {}
    for r in records:
        c = r["case"]
        key = (c["cell"], c["hidden"], c["length"], c["method"])
        rows.setdefault(key, {})[c["mode"]] = r
    lines = [
        "| cell | n | T | method | forward: compile s | lower s | HLO "
        "| value_and_grad: compile s | lower s | HLO |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (cell, n, T, method), modes in rows.items():
        cells = []
        for mode in ("forward", "value_and_grad"):
            r = modes.get(mode)
            cells += (
                [f"{r['compile_s']:.2f}", f"{r['lower_s']:.2f}", str(r["hlo_instructions"])]
                if r
                else ["-", "-", "-"]
            )
        lines.append(f"| {cell} | {n} | {T} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse_args("python -m benchmarks.compile_time", __doc__, argv)
    config = load_config(DEFAULTS, args.config, args.set)
    # A compile served from the persistent cache would measure nothing.
    jax.config.update("jax_enable_compilation_cache", False)
    methods = ["lax.scan", *config["methods"]]
    if config["deer"] and _deer_seq1d() is not None:
        methods.append("deer.seq1d")
    cases = [
        (cell, hidden, length, method, mode)
        for cell in config["cells"]
        for hidden in config["hidden"]
        for length in config["length"]
        for method in methods
        for mode in config["modes"]
    ]
    out = Path(args.out + ".jsonl" if args.out else config["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = provenance.collect(config, args.config or "(defaults)", args.set)
    records = []
    with out.open("w") as file:
        file.write(json.dumps({"provenance": meta}) + "\n")
        for cell, hidden, length, method, mode in tqdm(cases, desc="compiling"):
            record = measure(cell, hidden, length, config["dtype"], method, mode, config["repeats"])
            records.append(record)
            file.write(json.dumps(record) + "\n")
            file.flush()
    table = report(records)
    out.with_suffix(".md").write_text(
        f"# Compile times ({provenance.device_tag(meta['device'])})\n\n{table}"
    )
    print(table)


if __name__ == "__main__":
    main()
