"""End-to-end checks of time-split solves on 8 fake CPU devices, run in a subprocess.

``rnnscan.solve(..., axis_name=...)`` inside ``jax.shard_map``, ``rnnscan.sharded_solve`` /
``sharded_scan``, ``rnnscan.nn.RNN`` with a mesh and a short data- and sequence-parallel
training run, each against the one-device answer (``jax.lax.scan``, or the same model
without a mesh): values and gradients, float64, tight tolerances.

The device count is fixed when JAX initialises and the rest of the suite must see one
device, so ``tests/test_sharded.py`` runs this script in its own process. It prints each
failure to stderr and exits 1 if there was any. Run by hand:
``python tests/_sharded_worker.py [group ...]`` (groups: core, extras, nn, train).
"""

import os

# Optimisation level 0: these tiny programs compile about twice as fast, and the results
# are still IEEE arithmetic (no fast math), so the tight tolerances hold.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import helpers  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import rnnscan  # noqa: E402

TOL = dict(rtol=1e-8, atol=1e-9)
N, DIN = 4, 3
CELLS = {
    "tanh": (helpers.tanh_rnn, rnnscan.Dense()),
    "gru": (helpers.gru, rnnscan.Dense()),
    "lstm": (helpers.lstm, rnnscan.Dense()),
    "diagonal_rnn": (helpers.diagonal_rnn, rnnscan.Diagonal()),
    "diagonal_lstm": (helpers.diagonal_lstm, rnnscan.BlockDiagonal(2)),
}
METHODS = {"newton": rnnscan.Newton, "quasi_newton": rnnscan.QuasiNewton}
METHODS["fixed_point"] = rnnscan.FixedPoint

# (devices, cell, method, reverse, T): every cell, structure, method, direction and device
# count, T both divisible by the device count and not, each case with values and gradients.
CASES = [
    (1, "gru", "newton", False, 13),
    (2, "diagonal_rnn", "quasi_newton", True, 16),
    (2, "lstm", "newton", False, 13),
    (4, "tanh", "fixed_point", True, 16),
    (4, "diagonal_lstm", "newton", False, 13),
    (8, "gru", "quasi_newton", True, 13),
    (8, "diagonal_lstm", "fixed_point", True, 16),
]

failures: list[str] = []


def check(name, actual, expected, **tol):
    tol = tol or TOL
    la, le = jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)
    if len(la) != len(le):
        failures.append(f"{name}: {len(la)} leaves, expected {len(le)}")
        return
    for a, e in zip(la, le):
        try:
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), equal_nan=True, **tol)
        except AssertionError as err:
            failures.append(f"{name}: {err}")
            return


def expect(name, condition):
    if not bool(condition):
        failures.append(f"{name}: expected to hold")


def guarded(name, fn, *args):
    started = time.perf_counter()
    try:
        fn(*args)
    except Exception:
        failures.append(f"{name} raised:\n{traceback.format_exc()}")
    print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)


def time_mesh(D):
    return Mesh(np.array(jax.devices()[:D]), ("t",))


def problem(cell, T, key=0):
    params, init, f = CELLS[cell][0](jax.random.PRNGKey(key), N, DIN, jnp.float64)
    init = jax.tree_util.tree_map(lambda leaf: leaf + 0.1, init)
    xs = jax.random.normal(jax.random.PRNGKey(key + 1), (T, DIN))
    return params, init, f, xs


def weights_like(tree, key):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(key), len(leaves))
    return treedef.unflatten([jax.random.normal(k, jnp.shape(x)) for k, x in zip(keys, leaves)])


def loss_of(scan_fn, f, weights):
    """A scalar of the final carry and every output, as a function of (params, init, xs)."""

    def loss(params, init, xs):
        final, ys = scan_fn(lambda c, x: f(params, c, x), init, xs)
        terms = jax.tree_util.tree_map(lambda a, w: jnp.sum(a * w), (final, ys), weights)
        return sum(jax.tree_util.tree_leaves(terms))

    return loss


def lax_scan(reverse):
    return lambda step, init, xs: jax.lax.scan(step, init, xs, reverse=reverse)


def values_and_grads(loss, params, init, xs):
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(params, init, xs)


def check_case(D, cell, method_name, reverse, T):
    params, init, f, xs = problem(cell, T)
    final, ys = jax.lax.scan(lambda c, x: f(params, c, x), init, xs)
    weights = weights_like((final, ys), 7)
    method = METHODS[method_name](jacobian=CELLS[cell][1])
    mesh = time_mesh(D)

    def sharded(step, init, xs):
        return rnnscan.sharded_scan(
            step, init, xs, mesh=mesh, axis="t", reverse=reverse, method=method
        )

    got = values_and_grads(loss_of(sharded, f, weights), params, init, xs)
    want = values_and_grads(loss_of(lax_scan(reverse), f, weights), params, init, xs)
    check(f"D={D} {cell} {method_name} reverse={reverse} T={T}: loss, grads", got, want)


def check_inside_shard_map():
    """axis_name in the user's own shard_map: local blocks, global final carry and stats."""
    D, T = 8, 16
    params, init, f, xs = problem("tanh", T)
    step = lambda c, x: f(params, c, x)
    mesh = time_mesh(D)
    specs = rnnscan.Solution(P(), P("t"), P("t"), P(), P(), P(), P())
    for reverse in (False, True):
        for method in ("newton", "sequential"):

            def local(xs, reverse=reverse, method=method):
                return rnnscan.solve(step, init, xs, reverse=reverse, method=method, axis_name="t")

            sol = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("t"), out_specs=specs))(xs)
            one = jax.jit(lambda xs, r=reverse: rnnscan.solve(step, init, xs, reverse=r))(xs)
            final, ys = jax.lax.scan(step, init, xs, reverse=reverse)
            tag = f"axis_name inside shard_map, reverse={reverse}, {method}"
            check(f"{tag}: values", (sol.final_carry, sol.ys), (final, ys))
            if method == "newton":
                check(f"{tag}: carries", sol.carries, one.carries)
                expect(f"{tag}: same iterations as one device", sol.iterations == one.iterations)
                expect(f"{tag}: converged", sol.converged & ~sol.fell_back)

    def scan_local(xs):
        return rnnscan.scan(step, init, xs, axis_name="t")

    out = jax.jit(jax.shard_map(scan_local, mesh=mesh, in_specs=P("t"), out_specs=(P(), P("t"))))(
        xs
    )
    check("rnnscan.scan with axis_name", out, jax.lax.scan(step, init, xs))

    try:
        rnnscan.solve(step, init, xs, axis_name="t")
    except ValueError as err:
        expect("axis_name outside shard_map: the message says so", "shard_map" in str(err))
    else:
        failures.append("axis_name outside shard_map: no error")


def check_fallback_and_nan():
    params, init, f, xs = problem("gru", 13)
    step = lambda c, x: f(params, c, x)
    final, ys = jax.lax.scan(step, init, xs)
    weights = weights_like((final, ys), 3)
    mesh = time_mesh(4)
    once = rnnscan.Newton(max_steps=1)

    def solve(xs, method=once):
        return rnnscan.sharded_solve(step, init, xs, mesh=mesh, axis="t", method=method)

    sol = jax.jit(solve)(xs)
    expect("Newton(max_steps=1) on 4 devices: not converged", ~sol.converged)
    expect("Newton(max_steps=1) on 4 devices: fell back", sol.fell_back)
    check("Newton(max_steps=1) on 4 devices: values", (sol.final_carry, sol.ys), (final, ys))

    def sharded(step_, init_, xs_):
        return rnnscan.sharded_scan(step_, init_, xs_, mesh=mesh, axis="t", method=once)

    got = values_and_grads(loss_of(sharded, f, weights), params, init, xs)
    want = values_and_grads(loss_of(lax_scan(False), f, weights), params, init, xs)
    check("Newton(max_steps=1) on 4 devices: grads", got, want)

    bad = xs.at[9].set(jnp.nan)
    mesh8 = time_mesh(8)
    sol = jax.jit(
        lambda xs: rnnscan.sharded_solve(step, init, xs, mesh=mesh8, axis="t", on_failure="return")
    )(bad)
    one = jax.jit(lambda xs: rnnscan.solve(step, init, xs, on_failure="return"))(bad)
    expect("NaN input on 8 devices: flagged nonfinite", sol.result == rnnscan.RESULTS.nonfinite)
    expect("NaN input on 8 devices: steps before it finite", jnp.all(jnp.isfinite(sol.ys[:9])))
    expect("NaN input on 8 devices: iterations as one device", sol.iterations == one.iterations)
    check("NaN input on 8 devices: steps before it, as one device", sol.ys[:9], one.ys[:9])
    sol = jax.jit(lambda xs: rnnscan.sharded_solve(step, init, xs, mesh=mesh8, axis="t"))(bad)
    expect("NaN input on 8 devices, fallback: fell back", sol.fell_back)
    check("NaN input on 8 devices, fallback", sol.ys, jax.lax.scan(step, init, bad)[1])


def check_forward_mode():
    params, init, f, xs = problem("lstm", 13)
    mesh = time_mesh(4)
    tangents = weights_like((params, init, xs), 11)

    def run(scan_fn):
        def fn(params, init, xs):
            return scan_fn(lambda c, x: f(params, c, x), init, xs)

        return jax.jit(lambda p, t: jax.jvp(fn, p, t))((params, init, xs), tangents)

    for reverse in (False, True):

        def sharded(step, init, xs, reverse=reverse):
            return rnnscan.sharded_scan(step, init, xs, mesh=mesh, axis="t", reverse=reverse)

        check(f"jax.jvp on 4 devices, reverse={reverse}", run(sharded), run(lax_scan(reverse)))


def check_sequential_method():
    params, init, f, xs = problem("gru", 13)
    final, ys = jax.lax.scan(lambda c, x: f(params, c, x), init, xs, reverse=True)
    weights = weights_like((final, ys), 5)

    def sharded(step, init, xs):
        return rnnscan.sharded_scan(
            step, init, xs, mesh=time_mesh(4), axis="t", reverse=True, method="sequential"
        )

    got = values_and_grads(loss_of(sharded, f, weights), params, init, xs)
    want = values_and_grads(loss_of(lax_scan(True), f, weights), params, init, xs)
    check('method="sequential" on 4 devices, reverse: loss, grads', got, want)


def check_data_and_sequence_mesh():
    """A 2 x 4 (data x time) mesh: 4 sequences, each split over 4 devices in time."""
    B, T = 4, 13
    params, h0, f, _ = problem("gru", T)
    xs = jax.random.normal(jax.random.PRNGKey(5), (B, T, DIN))
    init = h0[None, :] + 0.1 * jax.random.normal(jax.random.PRNGKey(6), (B, N))
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "time"))
    final, ys = jax.vmap(lambda i, x: jax.lax.scan(lambda c, x_: f(params, c, x_), i, x))(init, xs)
    weights = weights_like((final, ys), 9)

    def sharded(step, init, xs):
        return rnnscan.sharded_scan(step, init, xs, mesh=mesh, axis="time", batch_axis="data")

    def batched_lax(step, init, xs):
        return jax.vmap(lambda i, x: jax.lax.scan(step, i, x))(init, xs)

    got = values_and_grads(loss_of(sharded, f, weights), params, init, xs)
    want = values_and_grads(loss_of(batched_lax, f, weights), params, init, xs)
    check("2 x 4 data x time mesh, batch 4, T=13: loss, grads", got, want)
    sol = jax.jit(
        lambda xs: rnnscan.sharded_solve(
            lambda c, x: f(params, c, x), init, xs, mesh=mesh, axis="time", batch_axis="data"
        )
    )(xs)
    expect("2 x 4 mesh: per-sequence statistics", sol.iterations.shape == (B,))
    expect("2 x 4 mesh: ys sharded over both axes", len(sol.ys.sharding.device_set) == 8)

    try:
        rnnscan.sharded_scan(f, init[:3], xs[:3], mesh=mesh, axis="time", batch_axis="data")
    except ValueError as err:
        expect("batch not a multiple of the data axis: message", "multiple" in str(err))
    else:
        failures.append("batch not a multiple of the data axis: no error")


def check_nn():
    from flax import nnx

    import rnnscan.nn as rn

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "time"))
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 13, DIN))
    lengths = jnp.array([13, 7, 1, 10])
    cells = {
        "GRUCell": rn.GRUCell(DIN, N, rngs=nnx.Rngs(0), dtype=jnp.float64, param_dtype=jnp.float64),
        "DiagLSTMCell": rn.DiagLSTMCell(
            DIN, N, rngs=nnx.Rngs(1), dtype=jnp.float64, param_dtype=jnp.float64
        ),
    }
    options = {"GRUCell": dict(seq_lengths=lengths), "DiagLSTMCell": dict(reverse=True)}
    for name, cell in cells.items():
        kw = options[name]

        def loss(model, kw=kw):
            (carry, y), stats = model(x, return_carry=True, return_stats=True, **kw)
            terms = jax.tree_util.tree_map(lambda a: jnp.sum(jnp.sin(a)), (carry, y))
            return sum(jax.tree_util.tree_leaves(terms)), (carry, y, stats.iterations)

        step = nnx.jit(nnx.value_and_grad(loss, has_aux=True))
        (_, want), want_grads = step(rn.RNN(cell))
        split = rn.RNN(cell, mesh=mesh, time_axis="time", batch_axis="data")
        (_, got), got_grads = step(split)
        check(f"nn.RNN({name}) on a 2 x 4 mesh {sorted(kw)}: values", got[:2], want[:2])
        check(f"nn.RNN({name}) on a 2 x 4 mesh: parameter grads", got_grads, want_grads)
        expect(f"nn.RNN({name}) on a 2 x 4 mesh: iterations", jnp.all(got[2] == want[2]))

        def exponents(model, kw=kw):
            return model(x, return_stats=True, diagnostics=True, **kw)[1].lyapunov

        run = nnx.jit(exponents)
        check(f"nn.RNN({name}) on a 2 x 4 mesh: Lyapunov exponents", run(split), run(rn.RNN(cell)))


def check_train():
    """Short runs of rnnscan.train on 8 devices (8 data-parallel; 2 data x 4 sequence)
    match the run on 1 device; so does ``method: auto`` on 2 x 4 devices when it switches a
    stalling block (Newton capped at one iteration, so every solve falls back) to the
    sequential scan after its first step."""
    from rnnscan.train import load_config, train

    base = {
        "data.source": "synthetic",
        "data.synthetic": {"num_series": 24, "seq_len": 30, "num_channels": 2, "num_classes": 2},
        "model.cell": "gru",
        "model.hidden_features": 4,
        "model.num_blocks": 1,
        "model.dtype": "float64",
        "train.batch_size": 8,
        "train.eval_batch_size": 8,
        "train.max_steps": 3,
        "train.epochs": 1,
        "train.progress": False,
        "checkpoint.enabled": False,
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        stalling_auto = {
            "model.method": "auto",
            "model.max_iterations": 1,
            "model.auto": {"window": 20, "fallback_steps": 1, "start": "parallel"},
        }
        layouts = {
            "1 device": dict(devices=1),
            "8 x 1": {},
            "2 x 4": dict(sequence_devices=4),
            "2 x 4 auto": dict(sequence_devices=4),
        }
        for name, devices in layouts.items():
            overrides = {**base, **{f"train.{k}": v for k, v in devices.items()}}
            if name.endswith("auto"):
                overrides.update(stalling_auto)
            overrides["out_dir"] = os.path.join(tmp, name.replace(" ", "_"))
            results[name] = train(load_config(None, overrides))
        # (records are read from the run directory, which goes with tmp)
        auto_records = results["2 x 4 auto"].records
    methods = [r["methods"] for r in auto_records if r["kind"] == "train"]
    expect(
        f"auto on 2 x 4 devices switched after one step (ran {methods})",
        methods == [["newton"], ["sequential"]],
    )
    one = results["1 device"]
    for name in ("8 x 1", "2 x 4", "2 x 4 auto"):
        run = results[name]
        tag = f"training on {name} devices"
        expect(f"{tag}: the run used 8 devices", run.summary["devices"] == 8)
        check(f"{tag}: final parameters", run.final_params, one.final_params)
        check(f"{tag}: test loss", run.summary["test"]["loss"], one.summary["test"]["loss"])


GROUPS = {
    "core": [
        (f"D={D} {cell} {method} reverse={rev} T={T}", check_case, D, cell, method, rev, T)
        for D, cell, method, rev, T in CASES
    ],
    "extras": [
        ("axis_name inside shard_map", check_inside_shard_map),
        ("fallback and NaN", check_fallback_and_nan),
        ("forward mode", check_forward_mode),
        ("sequential method", check_sequential_method),
        ("2 x 4 mesh", check_data_and_sequence_mesh),
    ],
    "nn": [("nn.RNN with a mesh", check_nn)],
    "train": [("training on 8 devices", check_train)],
}


def main(groups):
    assert len(jax.devices()) == 8, jax.devices()
    for group in groups:
        for name, fn, *args in GROUPS[group]:
            guarded(name, fn, *args)
    for f in failures:
        print(f, file=sys.stderr)
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(GROUPS)))
