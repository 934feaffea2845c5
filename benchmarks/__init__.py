"""rnnscan benchmark suite: parallel methods against ``jax.lax.scan``.

Run ``python -m benchmarks --config configs/benchmarks/quick.yaml`` (see
``python -m benchmarks --help``).
Every case is one (cell, hidden size, sequence length, batch, dtype, method, mode) and becomes
one JSON line in ``results/``; ``python -m benchmarks report`` and
``python -m benchmarks plot`` read those files back.
"""
