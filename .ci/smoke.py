"""Smoke test of an installed rnnscan (``make dist``): run from outside the checkout.

``python smoke.py wheel|sdist``: the package installed in this venv (not the checkout) imports, its
metadata and ``__version__`` agree, it ships ``py.typed``, and a parallel scan of a Flax
GRU matches ``jax.lax.scan``.
"""

import sys
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import rnnscan

kind = sys.argv[1] if len(sys.argv) > 1 else "installed"
package = Path(rnnscan.__file__).resolve().parent
assert Path(sys.prefix).resolve() in package.parents, f"not the {kind} in {sys.prefix}: {package}"
assert metadata.version("rnnscan") == rnnscan.__version__, (
    metadata.version("rnnscan"),
    rnnscan.__version__,
)
assert (package / "py.typed").is_file(), "py.typed missing"

cell = rnnscan.nn.GRUCell(in_features=3, hidden_features=8, rngs=nnx.Rngs(0))
xs = jax.random.normal(jax.random.PRNGKey(1), (500, 3))
h0 = jnp.zeros(8)
_, ys_seq = jax.lax.scan(cell, h0, xs)
sol = jax.jit(lambda xs: rnnscan.solve(cell, h0, xs))(xs)
deviation = float(jnp.abs(sol.ys - ys_seq).max())
assert bool(sol.converged) and not bool(sol.fell_back), sol.result
assert deviation < 1e-4, deviation
print(
    f"smoke ({kind}): rnnscan {rnnscan.__version__} from {package}, jax {jax.__version__}; "
    f"max |deviation| {deviation:.1e} in {int(sol.iterations)} iterations"
)
