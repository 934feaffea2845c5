import os
import sys

import jax

# Tests compare float64 runs with tight tolerances; float32 tests ask for float32 explicitly.
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, os.path.dirname(__file__))
