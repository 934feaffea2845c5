import os
import sys

# The tests are many small programs whose time goes to XLA's compiler, not to running them:
# fewer LLVM optimisations make the suite ~1.6x faster (IEEE semantics are unchanged: no
# fast-math). Set before JAX creates its CPU backend; subprocess workers inherit it.
OPTIMIZATION_FLAG = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPTIMIZATION_FLAG}".strip()

import jax  # noqa: E402

# Tests compare float64 runs with tight tolerances; float32 tests ask for float32 explicitly.
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, os.path.dirname(__file__))
