"""Orbax checkpoints of the complete training state.

Each checkpoint ``checkpoints/<step>/`` holds three items:

``state``
    the :class:`TrainState` (parameters, the model's other state such as its random
    streams, and the optimiser state, whose step count drives the schedule);
``best``
    the parameters with the best validation accuracy so far (kept in the same
    checkpoint so that the best model and the bookkeeping about it never disagree
    after a crash);
``meta``
    JSON: the loop position (step, epoch, batch within the epoch), early-stopping
    state (best accuracy / loss / step, evaluations without improvement), the
    seed and the accumulated wall time.

Orbax writes each checkpoint to a temporary directory and renames it when complete,
so a process killed mid-write leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


class Checkpointer:
    """A thin wrapper around ``orbax.checkpoint.CheckpointManager``.

    Args:
        directory: where the step directories go (created if needed).
        max_to_keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, best: Any, meta: dict) -> None:
        """Start writing the checkpoint of ``step`` (asynchronously; see :meth:`wait`)."""
        if step in self._manager.all_steps():  # already saved (e.g. a rerun of a finished run)
            return
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            best=ocp.args.StandardSave(best),
            meta=ocp.args.JsonSave(meta),
        )
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, state_like: Any, best_like: Any) -> tuple[Any, Any, dict]:
        """``(state, best, meta)`` of ``step``, with the structure of the given templates."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, (state_like, best_like))
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract[0]),
            best=ocp.args.StandardRestore(abstract[1]),
            meta=ocp.args.JsonRestore(),
        )
        restored = self._manager.restore(step, args=args)
        return restored["state"], restored["best"], dict(restored["meta"])

    def wait(self) -> None:
        """Block until pending asynchronous writes are complete."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
