"""What every research experiment shares, so that each script holds only its question.

- Settings: :func:`setup` reads ``--config FILE --out PREFIX --set key=value`` over the
  experiment's defaults (``benchmarks.settings``) and turns on float64 when the config asks.
- Provenance: :func:`provenance` (device, versions, git commit, date, config; no host names
  or paths), the suite's own record (``benchmarks.provenance``).
- Methods: :func:`method` builds a solver from a config entry through the library's name
  table (``rnnscan.method_class``); :data:`METHOD_NAMES` lists the names.
- Fitting: :func:`train_step` (one optax step of a loss) and :func:`fit` (the timed loop).
- Writing: :func:`write_outputs` (``PREFIX.json`` + ``PREFIX.md``), :func:`append_jsonl` /
  :func:`read_jsonl`, :func:`save_figure`.

Experiments import only public ``rnnscan`` names and this module.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from tqdm import tqdm

import rnnscan
from benchmarks import provenance as _provenance
from benchmarks import settings
from benchmarks._timing import interleaved_times

METHOD_NAMES = rnnscan.METHOD_NAMES
REPO_ROOT = _provenance.REPO_ROOT
RESULTS = REPO_ROOT / "results"


# --- settings and provenance -----------------------------------------------------------------


def setup(prog: str, doc: str | None, defaults: dict[str, Any], argv=None, check=None):
    """``(args, config, out)``: the command line of an experiment, its config (``defaults``,
    the YAML file, the ``--set`` overrides, then ``check(config)`` if given, which raises on a
    bad value) and its output prefix (``--out``, else the config's ``out``, else
    ``results/<prog's last part>-<name>``); float64 enabled when ``config["dtype"]`` asks."""
    args = settings.parse_args(prog, doc, argv)
    config = settings.load_config(defaults, args.config, args.set)
    if check is not None:
        check(config)
    if config.get("dtype") == "float64":
        jax.config.update("jax_enable_x64", True)
    stem = prog.rpartition(".")[2].replace("_", "-")
    return args, config, args.out or config.get("out") or f"results/{stem}-{config['name']}"


def records_parser(prog: str, default_config: str, description: str | None = None):
    """The command line of an experiment that appends JSON lines: ``--config`` (default
    ``default_config``), ``--out R.jsonl``, ``--report R.md``, ``--plot FIGURE.png``; add
    the experiment's own options to it."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=default_config)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--report", type=Path)
    parser.add_argument("--plot", type=Path)
    return parser


def report_and_plot(records, args, heading: str, report: Callable, plot: Callable) -> str:
    """Print ``report(records)``; write it under ``## heading`` to ``--report`` and draw
    ``plot(records, path)`` to ``--plot`` when given."""
    text = report(records)
    print(text)
    if args.report:
        Path(args.report).write_text(f"## {heading}\n\n" + text)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(records, args.plot)
    return text


def provenance(config: dict[str, Any], config_path, overrides=()) -> dict[str, Any]:
    """Where a result comes from (see ``benchmarks.provenance.collect``)."""
    return _provenance.collect(config, config_path or "(defaults)", list(overrides))


def device_line(provenance: dict[str, Any]) -> str:
    """The sentence of a summary that says where it ran: device, CPUs, versions, date."""
    device, versions = provenance["device"], provenance["versions"]
    return (
        f"Device: {device['device_kind']} ({device['platform']}, "
        f"{provenance['system']['cpu_count']} CPUs visible); jax {versions['jax']}, jaxlib "
        f"{versions['jaxlib']}, python {versions['python']}; {provenance['date_utc']}."
    )


def training_run_title(config: dict[str, Any], provenance: dict[str, Any]) -> str:
    """One line naming an ``rnnscan.train`` configuration and where it ran: model, method
    (if the config fixes one), length, dtype, batch, device and jax version."""
    model = config.get("model", {})
    synthetic = config.get("data", {}).get("synthetic", {})
    method = f"method {model['method']}, " if "method" in model else ""
    return (
        f"{config['name']}: {model.get('cell')} {model.get('hidden_features')} x "
        f"{model.get('num_blocks')}, {method}T={synthetic.get('seq_len', '?')}, "
        f"{model.get('dtype')}, batch "
        f"{config.get('train', {}).get('batch_size')}, {provenance['device']['device_kind']}, "
        f"jax {provenance['versions']['jax']}"
    )


# --- methods ---------------------------------------------------------------------------------


def method(spec: str | dict[str, Any]) -> tuple[str, rnnscan.Method | str]:
    """``(label, method)`` of a config entry: a name (``"newton"``: kept as the name, which
    ``rnnscan.nn.RNN`` and ``rnnscan.solve`` resolve; ``"sequential"``: the object), or a
    mapping ``{name: elk, damping: 0.1}`` (the class from ``rnnscan.method_class``, the
    other keys its fields; the label lists them)."""
    if isinstance(spec, str):
        rnnscan.method_class(spec)  # an unknown name fails here, with the known ones
        return spec, rnnscan.Sequential() if spec == "sequential" else spec
    spec = dict(spec)
    name = spec.pop("name")
    label = name + "".join(f", {k}={v}" for k, v in spec.items())
    return label, rnnscan.method_class(name)(**spec)


# --- timing ----------------------------------------------------------------------------------


def interleaved_medians(programs: dict[str, Callable], args, repeats: int) -> dict[str, float]:
    """Median seconds of each program over ``repeats`` rounds, the programs called in turn in
    each round (a drift in the machine's load hits them alike; the suite's
    ``interleaved_times``)."""
    times = interleaved_times(programs, args, repeats)
    return {name: statistics.median(ts) for name, ts in times.items()}


def step_time_summary(times, warmup_steps: int) -> dict[str, Any]:
    """Median and interquartile range of the step times after ``warmup_steps``."""
    timed = np.asarray(times[warmup_steps:])
    return {
        "step_time_median_s": float(np.median(timed)),
        "step_time_iqr_s": [float(np.percentile(timed, 25)), float(np.percentile(timed, 75))],
    }


# --- fitting ---------------------------------------------------------------------------------


def train_step(loss_fn: Callable, optimiser: optax.GradientTransformation) -> Callable:
    """``step(params, opt_state, *batch) -> (params, opt_state, loss, aux)``: one optax update
    of ``loss_fn(params, *batch) -> (loss, aux)`` (not jitted: jit it, or call it inside a
    ``jax.lax.scan``)."""

    def step(params, opt_state, *batch):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, *batch)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    return step


@dataclasses.dataclass
class Fit:
    """What :func:`fit` returns: the trained parameters and optimiser state, and per step the
    loss, the ``aux`` values (as floats) and the wall time; ``compile_s`` when compiled ahead."""

    params: Any
    opt_state: Any
    losses: list[float]
    aux: list[Any]
    step_times_s: list[float]
    compile_s: float | None = None


def fit(
    step: Callable,
    params,
    opt_state,
    batch: tuple | Callable[[int], tuple],
    *,
    steps: int,
    desc: str,
    compile_ahead: bool = False,
    every: int | None = None,
    on_every: Callable[[int, Any], None] | None = None,
    leave: bool = True,
) -> Fit:
    """Run ``steps`` calls of a jitted ``step`` (see :func:`train_step`), each timed to
    completion. ``batch``: the same arguments every step, or a function of the step index
    (0-based) giving them. ``compile_ahead``: lower and compile before the loop (its time in
    ``compile_s``, so no step includes compilation). ``on_every(k, params)`` is called after
    step ``k`` (1-based) every ``every`` steps and after the last one."""
    batch_of = batch if callable(batch) else (lambda _: batch)
    compile_s = None
    if compile_ahead:
        start = time.perf_counter()
        step = step.lower(params, opt_state, *batch_of(0)).compile()
        compile_s = time.perf_counter() - start
    losses, aux, times = [], [], []
    for k in tqdm(range(steps), desc=desc, unit="step", leave=leave):
        start = time.perf_counter()
        outputs = jax.block_until_ready(step(params, opt_state, *batch_of(k)))
        params, opt_state, loss, extra = outputs
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
        aux.append(jax.tree_util.tree_map(float, extra))
        if on_every is not None and ((k + 1) % (every or steps) == 0 or k + 1 == steps):
            on_every(k + 1, params)
    return Fit(params, opt_state, losses, aux, times, compile_s)


def count_params(tree) -> int:
    """The number of values in the arrays of a pytree (e.g. ``nnx.state(model, nnx.Param)``)."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


# --- writing ---------------------------------------------------------------------------------


def write_outputs(out: str | Path, record: dict[str, Any], summary: str, *, indent=1) -> None:
    """``PREFIX.json`` (the record) and ``PREFIX.md`` (the summary), which is also printed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(record, indent=indent) + "\n")
    Path(f"{out}.md").write_text(summary)
    print(summary)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line (a killed run loses at most the case it was running)."""
    with Path(path).open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, *, dpi: int = 120, title: str | None = None) -> None:
    """Save ``fig`` (creating its folder) and close it; with ``title``, first a title that
    ends with the device and the jax version, and a tight layout."""
    if title is not None:
        fig.suptitle(f"{title}, {jax.devices()[0].device_kind}, jax {jax.__version__}")
        fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
