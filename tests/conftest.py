import os
import sys

# The tests are many small programs whose time goes to XLA's compiler, not to running them:
# fewer LLVM optimisations make the suite ~1.6x faster, skipping LLVM's expensive passes
# another ~14 % (test_transformations' derivative tests: 163 s -> 139 s), and XLA's older
# (elemental) code generator for fusions instead of the MLIR fusion emitters compiles a
# Newton solve's value-and-gradient ~2.7x faster (1.8 s -> 0.7 s, an LSTM cell). IEEE
# semantics are unchanged (no fast-math). Set before JAX creates its CPU backend;
# subprocess workers inherit it.
OPTIMIZATION_FLAG = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
    "--xla_cpu_use_fusion_emitters=false"
)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPTIMIZATION_FLAG}".strip()

# Strict rank promotion, as JAX's own tests and many codebases set it: any implicit broadcast
# between arrays of different rank is an error, so the library must broadcast explicitly to
# run under it. Set before JAX reads its configuration; subprocess workers inherit it.
os.environ["JAX_NUMPY_RANK_PROMOTION"] = "raise"

# Many tests compile the same programs (the jax.lax.scan references, the solver's pieces)
# from fresh closures, which jax.jit's in-memory cache does not share, nor do the two xdist
# workers. A persistent compilation cache, new for each session (the first process, the
# xdist controller, makes it; workers and subprocesses inherit it), serves the repeats:
# test_layers.py ran in 93 s instead of 112 s with it. Never one from an earlier session:
# tests that measure a compile must see it happen.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache_dir = tempfile.mkdtemp(prefix="rnnscan-test-jax-cache-")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

# Tests compare float64 runs with tight tolerances; float32 tests ask for float32 explicitly.
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, os.path.dirname(__file__))
