"""Train sequence classifiers on long time series, with RNNs evaluated in parallel over time.

The pipeline behind ``python -m rnnscan.train --config configs/train/eigenworms_gru.yaml``:
an :class:`rnnscan.nn.SequenceClassifier` (any cell, any solver), optax (Adam/AdamW,
global-norm clipping, a schedule), early stopping on validation accuracy with the best
parameters evaluated on the test part, orbax checkpoints from which a killed run
resumes exactly, metrics as JSON lines, and a plot of the curves.

Example::

    from rnnscan.train import load_config, train

    config = load_config("configs/train/worm_sample_small.yaml", ["train.epochs=5"])
    result = train(config)
    result.summary["test"]["accuracy"], result.out_dir

Configs are YAML files of :class:`TrainConfig` sections (``data``, ``model``,
``optim``, ``train``, ``checkpoint``); any key can be overridden
(``load_config(path, ["optim.lr=3e-4", "model.method=sequential"])``, or on the
command line ``--set optim.lr=3e-4`` / ``--optim.lr=3e-4``).

:func:`train_curriculum` (``python -m rnnscan.train.curriculum``) trains a leaky RNN with
trained time constants on N-parity / N-DMS with a growing N, single- or multi-head
(Khajehabdollahi et al., arXiv:2309.12927), and records its timescales at every N.
"""

from ._compilation_cache import use_compilation_cache as use_compilation_cache
from ._config import CheckpointConfig as CheckpointConfig
from ._config import ConfigError as ConfigError
from ._config import DataConfig as DataConfig
from ._config import LoopConfig as LoopConfig
from ._config import ModelConfig as ModelConfig
from ._config import OptimConfig as OptimConfig
from ._config import TrainConfig as TrainConfig
from ._config import apply_overrides as apply_overrides
from ._config import load_config as load_config
from ._curriculum import CURRICULA as CURRICULA
from ._curriculum import CurriculumConfig as CurriculumConfig
from ._curriculum import CurriculumResult as CurriculumResult
from ._curriculum import TimescaleModel as TimescaleModel
from ._curriculum import train_curriculum as train_curriculum
from ._data import cv_split as cv_split
from ._data import epoch_order as epoch_order
from ._data import load_dataset as load_dataset
from ._data import stratified_folds as stratified_folds
from ._loop import CrossValidationResult as CrossValidationResult
from ._loop import TrainResult as TrainResult
from ._loop import cross_validate as cross_validate
from ._loop import train as train
from ._metrics import read_metrics as read_metrics
from ._plot import plot_curves as plot_curves
from ._selector import Decision as Decision
from ._selector import MethodSelector as MethodSelector
from ._warmup import WarmupResult as WarmupResult
from ._warmup import attractor_stats as attractor_stats
from ._warmup import count_attractors as count_attractors
from ._warmup import soft_vaa as soft_vaa
from ._warmup import vaa as vaa
from ._warmup import warmup as warmup

__all__ = [
    "CURRICULA",
    "CheckpointConfig",
    "ConfigError",
    "CrossValidationResult",
    "CurriculumConfig",
    "CurriculumResult",
    "DataConfig",
    "Decision",
    "LoopConfig",
    "MethodSelector",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "TimescaleModel",
    "TrainResult",
    "WarmupResult",
    "apply_overrides",
    "attractor_stats",
    "count_attractors",
    "cross_validate",
    "cv_split",
    "epoch_order",
    "load_config",
    "load_dataset",
    "plot_curves",
    "read_metrics",
    "soft_vaa",
    "stratified_folds",
    "train",
    "train_curriculum",
    "vaa",
    "warmup",
]
