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
    JSON: the :class:`LoopState`, the loop position (step, epoch, batch within the
    epoch), early-stopping state (best accuracy / loss / step, evaluations without
    improvement), the seed, the accumulated wall time and the method selector's state.

Orbax writes each checkpoint to a temporary directory and renames it when complete,
so a process killed mid-write leaves the previous checkpoint as the latest one. A run
directory's checkpoints are resumed only by a configuration that computes the same thing
(:func:`prepare_run_dir`).
"""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import jax

import rnnscan.train._hosts as _hosts

from ._config import ConfigError, TrainConfig, config_diff, load_config

__all__ = ["RESUMABLE_CHANGES", "Checkpointer", "LoopState", "prepare_run_dir", "resolve_out_dir"]

#: Keys that may change when a run is resumed (they do not change what is computed,
#: except that a longer run with a decaying schedule decays more slowly).
RESUMABLE_CHANGES = frozenset(
    {
        "name",
        "out_dir",
        "train.epochs",
        "train.max_steps",
        "train.patience",
        "train.progress",
        "train.eval_batch_size",
        "checkpoint.enabled",
        "checkpoint.every_steps",
        "checkpoint.max_to_keep",
        "data.data_dir",
        "data.cache_dir",
        "data.download",
    }
)


@dataclasses.dataclass
class LoopState:
    """Loop position and early-stopping state: the ``meta`` item of a checkpoint."""

    seed: int
    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of the current epoch already done
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    evals_since_improvement: int = 0
    stopped_early: bool = False
    wall_time_s: float = 0.0
    selector: dict[str, Any] | None = None  # MethodSelector.state_dict() (method: auto)
    warned_parallel: bool = False  # the once-per-run warning that parallel stopped paying

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> LoopState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})


def resolve_out_dir(config: TrainConfig, suffix: str = "") -> Path:
    """``config.out_dir``, or ``runs/<name><suffix>-<timestamp>`` (process 0's time, in
    a multi-process run)."""
    if config.out_dir is not None:
        return Path(config.out_dir)
    now = datetime.fromtimestamp(_hosts.broadcast_int(int(datetime.now().timestamp())))
    stamp = now.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.name}{suffix}-{stamp}"


def prepare_run_dir(out_dir: Path, config: TrainConfig) -> None:
    """Create the run directory; refuse to resume a run of another configuration.

    In a multi-process run every process checks, then process 0 writes ``config.yaml``,
    and every process must then see it (one directory on a shared file system)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_path = out_dir / "config.yaml"
    checkpoints = out_dir / "checkpoints"
    has_checkpoints = checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    if saved_path.exists() and has_checkpoints:
        saved = load_config(saved_path)
        changed = [k for k in config_diff(saved, config) if k not in RESUMABLE_CHANGES]
        if changed:
            raise ConfigError(
                f"{out_dir} holds checkpoints of a run with another configuration "
                f"(differences: {', '.join(changed)}). Resume it with the same settings "
                "or choose another out_dir."
            )
    if _hosts.process_count() == 1:
        saved_path.write_text(config.to_yaml())
        return
    _hosts.barrier("rnnscan-run-dir-checked")  # every process has read what was there
    text = config.to_yaml()
    if _hosts.is_primary():
        tmp = saved_path.with_name(f".config.yaml.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, saved_path)
    _hosts.barrier("rnnscan-run-dir-written")
    shared = saved_path.is_file() and saved_path.read_text() == text
    if not _hosts.all_processes(shared):
        raise ConfigError(
            f"out_dir {out_dir}: not every process sees the config.yaml that process 0 wrote "
            "there; a run over several processes needs one run directory on a file system "
            "that every process shares (the same path on every host)"
        )


class Checkpointer:
    """A thin wrapper around ``orbax.checkpoint.CheckpointManager``.

    Args:
        directory: where the step directories go (created if needed).
        max_to_keep: how many of the newest checkpoints to keep.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self._max_to_keep = max_to_keep
        self._opened = None

    @property
    def _manager(self):
        # Made, and orbax imported (~0.15 s), on first use: a fresh run reaches its first
        # step without either.
        if self._opened is None:
            ocp = _orbax()
            options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True)
            self._opened = ocp.CheckpointManager(self.directory, options=options)
        return self._opened

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None``."""
        if not self.directory.is_dir() or not any(self.directory.iterdir()):
            return None
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, best: Any, meta: dict) -> None:
        """Start writing the checkpoint of ``step`` (asynchronously; see :meth:`wait`)."""
        if step in self._manager.all_steps():  # already saved (e.g. a rerun of a finished run)
            return
        ocp = _orbax()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            best=ocp.args.StandardSave(best),
            meta=ocp.args.JsonSave(meta),
        )
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int, state_like: Any, best_like: Any) -> tuple[Any, Any, dict]:
        """``(state, best, meta)`` of ``step``, with the structure of the given templates."""
        ocp = _orbax()
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
        if self._opened is not None:
            self._opened.wait_until_finished()

    def close(self) -> None:
        if self._opened is not None:
            self._opened.wait_until_finished()
            self._opened.close()


def _orbax():
    import orbax.checkpoint as ocp  # noqa: PLC0415 - imported when a checkpoint is first used

    return ocp
