"""Checks of rnnscan._distributed on 8 fake CPU devices, run in a subprocess.

The device count is fixed when JAX initialises, and the rest of the suite must see one
device, so ``tests/test_distributed.py`` runs this script in its own process. It checks
everything, prints each failure to stderr and exits 1 if there was any.

Run by hand: ``python tests/_distributed_worker.py``.
"""

import os

# Optimisation level 0: these tiny programs compile about twice as fast, and the results
# are still IEEE arithmetic (no fast math), so the tight tolerances hold.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import functools  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from rnnscan._distributed import (  # noqa: E402
    global_all,
    global_any,
    global_max,
    global_positions,
    global_sum,
    last_carry,
    linear_recurrence_sharded,
    sequential_sharded,
    shift_sharded,
)
from rnnscan._linear_recurrence import linear_recurrence  # noqa: E402
from rnnscan._structure import BlockDiagonal, Dense, Diagonal  # noqa: E402

# T = 8 gives one step per device at D = 8.
T, N, BATCH = 8, 4, 3
RTOL, ATOL = 1e-10, 1e-12
AX = "t"
# A batch axis (vmap inside shard_map) compiles slowly: one structure per D > 1.
VMAP_CASES = ((2, "diagonal"), (4, "block2"), (8, "dense"))
STRUCTURES = {"dense": Dense(), "diagonal": Diagonal(), "block2": BlockDiagonal(2)}

failures: list[str] = []


def check(name, actual, expected, rtol=RTOL, atol=ATOL):
    for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
        try:
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol)
        except AssertionError as err:
            failures.append(f"{name}: {err}")
            return


def guarded(name, fn, *args):
    try:
        fn(*args)
    except Exception:
        failures.append(f"{name} raised:\n{traceback.format_exc()}")


def random_A(structure, key, shape_prefix=(T,)):
    # Spectral radius about 0.8 per step keeps products over T steps well scaled.
    if isinstance(structure, Dense):
        return 0.8 * jax.random.normal(key, (*shape_prefix, N, N)) / np.sqrt(N)
    if isinstance(structure, Diagonal):
        return jax.random.uniform(key, (*shape_prefix, N), minval=-1.2, maxval=1.2)
    k = structure.block_size
    return 0.8 * jax.random.normal(key, (*shape_prefix, N // k, k, k)) / np.sqrt(k)


def to_dense(structure, A):
    """A per step as an (n, n) matrix, built from the storage layout independently of the
    structure's own matvec."""
    A = np.asarray(A)
    if isinstance(structure, Dense):
        return A
    if isinstance(structure, Diagonal):
        return np.stack([np.diag(a) for a in A])
    k = structure.block_size
    m = N // k
    out = np.zeros((A.shape[0], N, N))
    for i in range(m):  # unit i couples the flat entries r * m + i
        idx = np.arange(k) * m + i
        out[:, idx[:, None], idx[None, :]] = A[:, i]
    return out


@jax.jit
def loop_reference(A_dense, b):
    """(forward, reverse) solutions by a plain sequential loop over dense matrices."""

    def step(x, ab):
        x = jnp.dot(ab[0], x, precision=jax.lax.Precision.HIGHEST) + ab[1]
        return x, x

    x0 = jnp.zeros(b.shape[-1], b.dtype)
    return tuple(jax.lax.scan(step, x0, (A_dense, b), reverse=r)[1] for r in (False, True))


def sharded(mesh, f, in_specs, out_specs, **opts):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **opts)


def both_sharded(A, b, structure):
    return tuple(linear_recurrence_sharded(A, b, structure, AX, reverse=r) for r in (False, True))


def both_single(A, b, structure):
    return tuple(linear_recurrence(A, b, structure, reverse=r) for r in (False, True))


def values_and_grads(fn, A, b, w, wrt_A):
    """fn(A, b) and the gradient of sum(w * fn(A, b)) w.r.t. b (and A), in one jit."""

    def run(A, b, w):
        if wrt_A:
            out, vjp = jax.vjp(fn, A, b)
            return out, vjp(w)
        out, vjp = jax.vjp(lambda b: fn(A, b), b)
        return out, vjp(w)

    return jax.jit(run)(A, b, w)


# One compilation per structure for the references, shared by every D.
single_cache = {}


def single_reference(structure, A, b, w, wrt_A):
    key = (structure, wrt_A)
    if key not in single_cache:
        fn = lambda A, b: both_single(A, b, structure)
        single_cache[key] = jax.jit(lambda A, b, w: values_and_grads(fn, A, b, w, wrt_A))
    return single_cache[key](A, b, w)


def check_linear(D, mesh, key):
    for sname, structure in STRUCTURES.items():
        kA, kb, kw, key = jax.random.split(key, 4)
        A = random_A(structure, kA)
        b = jax.random.normal(kb, (T, N))
        w = tuple(jax.random.normal(kw, (2, T, N)))

        split_fn = functools.partial(both_sharded, structure=structure)
        split = sharded(mesh, split_fn, (P(AX), P(AX)), (P(AX), P(AX)))
        # Gradients compile slowly on CPU: w.r.t. A only with the most blocks.
        wrt_A = D == 8
        got, got_grads = values_and_grads(split, A, b, w, wrt_A)
        want, want_grads = single_reference(structure, A, b, w, wrt_A)
        loops = loop_reference(to_dense(structure, A), b)
        for i, rname in enumerate(("forward", "reverse")):
            tag = f"D={D} {sname} {rname}"
            check(f"{tag} vs linear_recurrence", got[i], want[i])
            check(f"{tag} vs loop", got[i], loops[i])
        check(f"D={D} {sname} grad wrt {'(A, b)' if wrt_A else 'b'}", got_grads, want_grads)

        if (D, sname) in VMAP_CASES:
            # A batch axis inside the shard_map, time still split.
            kA, kb, key = jax.random.split(key, 3)
            Ab = random_A(structure, kA, (BATCH, T))
            bb = jax.random.normal(kb, (BATCH, T, N))
            specs = (P(None, AX), P(None, AX))
            batched = jax.vmap(split_fn)
            got = jax.jit(sharded(mesh, batched, specs, specs))(Ab, bb)
            want = jax.jit(jax.vmap(functools.partial(both_single, structure=structure)))(Ab, bb)
            check(f"D={D} {sname} vmap", got, want)

    if D == 4:
        # Without the varying-manual-axes type checks.
        structure = Diagonal()
        A = random_A(structure, key)
        b = jnp.ones((T, N))
        fn = lambda A, b: linear_recurrence_sharded(A, b, structure, AX)
        got = jax.jit(sharded(mesh, fn, (P(AX), P(AX)), P(AX), check_vma=False))(A, b)
        check(f"D={D} check_vma=False", got, loop_reference(to_dense(structure, A), b)[0])


def tanh_step(c, x):
    W = jnp.array([[0.5, -0.3, 0.2, 0.0], [0.1, 0.4, -0.6, 0.3], [-0.2, 0.0, 0.7, 0.1]])
    W = jnp.concatenate([W, -W[:1]], axis=0)
    return jnp.tanh(jnp.dot(W, c, precision="highest") + x)


def sequential_values_and_grads(fn, c0, xs, w):
    """fn(c0, xs) and the gradient of sum(w * fn(c0, xs)) w.r.t. (c0, xs)."""
    out, vjp = jax.vjp(fn, c0, xs)
    return out, vjp(w)


@jax.jit
def sequential_reference(c0, xs, w):
    fn = lambda c0, xs: jax.lax.scan(lambda c, x: (tanh_step(c, x),) * 2, c0, xs)[1]
    return sequential_values_and_grads(fn, c0, xs, w)


def check_carries(D, mesh, key):
    k0, kx, kc, kw = jax.random.split(key, 4)
    c0 = jax.random.normal(k0, (N,))
    xs = jax.random.normal(kx, (T, N))
    c = jax.random.normal(kc, (T, N))

    def shifts(c0, c):
        return (
            shift_sharded(c0, c, AX),
            shift_sharded(c0, c, AX, reverse=True),
            shift_sharded((c0, 2 * c0), (c, 2 * c), AX),
        )

    f = jax.jit(sharded(mesh, shifts, (P(), P(AX)), (P(AX), P(AX), P(AX))))
    fwd, rev, tree = f(c0, c)
    want_fwd = jnp.concatenate([c0[None], c[:-1]])
    check(f"D={D} shift", fwd, want_fwd, rtol=0, atol=0)
    check(f"D={D} shift reverse", rev, jnp.concatenate([c[1:], c0[None]]), rtol=0, atol=0)
    check(f"D={D} shift pytree", tree, (want_fwd, 2 * want_fwd), rtol=0, atol=0)

    w = jax.random.normal(kw, (T, N))
    want = sequential_reference(c0, xs, w)
    for opts in ({}, {"check_vma": False}) if D == 4 else ({},):
        seq = lambda c0, xs: sequential_sharded(tanh_step, c0, xs, AX)
        fs = sharded(mesh, seq, (P(), P(AX)), P(AX), **opts)
        got = jax.jit(sequential_values_and_grads, static_argnums=0)(fs, c0, xs, w)
        check(f"D={D} sequential {opts}", got[0], want[0])
        check(f"D={D} sequential grad wrt (c0, xs) {opts}", got[1], want[1])

    def reductions(c):
        return (
            last_carry(c, AX),
            last_carry({"a": c, "b": c[:, :2]}, AX),
            global_all(c > -10.0, AX),
            global_all(c > 0.0, AX),
            global_any(c > 0.0, AX),
            global_any(c > 10.0, AX),
            global_max(c, AX),
            global_sum(c, AX),
            global_positions(c.shape[0], AX),
        )

    specs = (P(),) * 8 + (P(AX),)
    got = jax.jit(sharded(mesh, reductions, P(AX), specs))(c)
    want = (
        c[-1],
        {"a": c[-1], "b": c[-1, :2]},
        True,
        bool(jnp.all(c > 0)),
        bool(jnp.any(c > 0)),
        False,
        jnp.max(c),
        jnp.sum(c),
        jnp.arange(T),
    )
    check(f"D={D} last_carry, global reductions, positions", got, want)

    # A NaN on a device other than the last must not leak into last_carry.
    c_nan = c.at[0].set(jnp.nan)
    lc = jax.jit(sharded(mesh, lambda c: last_carry(c, AX), P(AX), P()))(c_nan)
    check(f"D={D} last_carry with a NaN elsewhere", lc, c[-1], rtol=0, atol=0)


def main():
    devices = jax.devices()
    assert len(devices) == 8, devices
    key = jax.random.PRNGKey(0)
    for D in (1, 2, 4, 8):
        mesh = Mesh(np.array(devices[:D]), (AX,))
        key, k1, k2 = jax.random.split(key, 3)
        guarded(f"D={D} linear", check_linear, D, mesh, k1)
        guarded(f"D={D} carries", check_carries, D, mesh, k2)
    for f in failures:
        print(f, file=sys.stderr)
    print(f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
