"""Which ``method="auto"`` layers of a model run their parallel method: the flags that
``rnnscan.train``'s method selection (or any other policy) reads and sets."""

from __future__ import annotations

from collections.abc import Sequence

from flax import nnx

from ._auto import as_auto
from ._layers import RNN

__all__ = ["auto_layers", "get_methods", "set_methods"]


def auto_layers(model: nnx.Module) -> list[RNN]:
    """The ``method="auto"`` :class:`rnnscan.nn.RNN` layers of ``model``, in graph order (the
    order of :func:`set_methods`; for :class:`rnnscan.nn.SequenceClassifier`, block order)."""
    return [
        node
        for _, node in nnx.iter_graph(model)
        if isinstance(node, RNN) and as_auto(node.method) is not None
    ]


def set_methods(model: nnx.Module, parallel: Sequence[bool]) -> None:
    """Set the flag of every ``Auto`` layer of ``model`` (``True``: the parallel method,
    ``False``: ``lax.scan``), in :func:`auto_layers` order. The flags are static: an
    ``nnx.jit`` function of the model compiles each assignment the first time it sees it
    and reuses the program afterwards (``nnx.split`` gives a different graph definition per
    assignment, with the same parameter and state pytrees)."""
    layers = auto_layers(model)
    if len(parallel) != len(layers):
        raise ValueError(
            f"set_methods: got {len(parallel)} flags for the {len(layers)} auto layers of "
            f"{type(model).__name__}"
        )
    for layer, flag in zip(layers, parallel, strict=True):
        layer.parallel_active = bool(flag)


def get_methods(model: nnx.Module) -> list[bool]:
    """The flags of the ``Auto`` layers of ``model`` (``True``: parallel)."""
    return [layer.parallel_active for layer in auto_layers(model)]
