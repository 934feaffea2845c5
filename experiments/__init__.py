"""Research experiments built on rnnscan: each a script ``python -m experiments.<name> --config
configs/experiments/<name>.yaml``, writing its results under ``results/``.

Not part of the installed package. Experiments import only public ``rnnscan`` names and share
one small harness (:mod:`experiments.harness`: settings, provenance, the optax fit loop,
writers); the timing suite is ``benchmarks/``.
"""
