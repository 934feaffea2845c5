"""Training configuration: nested dataclasses, read from YAML, overridable field by field.

A :class:`TrainConfig` has five sections, each a small dataclass:

``data`` (:class:`DataConfig`)
    where the series come from and how they are split and preprocessed;
``model`` (:class:`ModelConfig`)
    the :class:`rnnscan.nn.SequenceClassifier` and its solver;
``optim`` (:class:`OptimConfig`)
    the optax optimiser, gradient clipping and learning-rate schedule;
``train`` (:class:`LoopConfig`)
    seed, batch size, epochs, evaluation and early stopping;
``checkpoint`` (:class:`CheckpointConfig`)
    how often orbax checkpoints are written.

Keys are addressed by dotted paths (``optim.lr``, ``model.cell``). Unknown keys and
values of the wrong type raise :class:`ConfigError` naming the key, with a
suggestion when the key looks like a typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "LoopConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_overrides",
    "config_diff",
    "load_config",
    "parse_override",
]

METHODS = ("sequential", "newton", "quasi_newton", "fixed_point", "auto")
SPLITS = ("stratified", "pooled", "official")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
OPTIMIZERS = ("adam", "adamw")
DTYPES = ("float32", "float64")


class ConfigError(ValueError):
    """A configuration key is unknown, or its value is invalid."""


@dataclass
class DataConfig:
    """Where the series come from, and how they are split and preprocessed.

    Attributes:
        source: ``"worm_sample"`` (43 real worm recordings from the shared data
            directory), ``"eigenworms"`` (UEA EigenWorms; downloaded if absent and
            ``download``), ``"uea:<Name>"`` (any UEA/UCR problem as ``.ts`` files in
            ``data_dir``), ``"synthetic"`` (the long-memory marker task), or ``"parity"`` /
            ``"dms"`` (N-parity / N-delayed match-to-sample: label = the target at the
            last step, :func:`rnnscan.data.make_timescale_series`).
        data_dir: directory of the ``.ts`` files (UEA, EigenWorms) or the worm sample
            file / its directory; ``None``: the loaders' defaults and environment
            variables (``RNNSCAN_DATA_DIR``, ``RNNSCAN_WORM_SAMPLE``).
        cache_dir: download / prepared-array cache (default ``~/.cache/rnnscan``).
        download: allow downloading EigenWorms.
        split: ``"stratified"`` (pool everything, split by ``fractions`` keeping class
            proportions), ``"pooled"`` (pool, plain random split by ``fractions``: the
            181 / 39 / 39 EigenWorms protocol of Neural RDE, LEM and DEER) or
            ``"official"`` (the archive's train / test files, with a stratified
            validation part of ``val_fraction`` of the training file).
        split_seed: seed of the split (and of the synthetic data).
        fractions: train / validation / test fractions of the pooled splits.
        val_fraction: validation fraction carved from the official training file.
        standardize: ``"standard"``, ``"robust"`` or ``None``; per-channel statistics
            fitted on the training part only.
        clip: clip standardised values to ``[-clip, clip]``.
        max_len: keep only the first ``max_len`` steps of every series (``None``: all).
        cv_folds: stratified k-fold cross-validation when ``> 1``: fold ``cv_fold`` is
            the test part, the next fold the validation part, the rest trains.
        cv_fold: the fold of this run; ``None`` with ``cv_folds > 1`` runs every fold
            (:func:`rnnscan.train.cross_validate`).
        synthetic: keyword arguments of :func:`rnnscan.data.make_synthetic_series`
            (``num_series``, ``seq_len``, ``num_channels``, ``num_classes``, ...), or for
            ``parity`` / ``dms`` of :func:`rnnscan.data.make_timescale_series`
            (``num_series``, ``seq_len``, ``n``).
        missing: missing values (``?`` in a ``.ts`` file): ``"error"`` (refuse them,
            naming the file), ``"zero"`` (0 after standardisation: the channel mean)
            or ``"ffill"`` (carry the last observation forward, backfill the start).
        missing_mask: append one observed-mask channel per input channel.
        length_buckets: series of unequal length are batched with series of similar
            length: the training lengths are cut at quantiles into this many buckets,
            each padded to its longest member (one compilation per bucket). 1: every
            batch is padded to the longest series.
    """

    source: str = "worm_sample"
    data_dir: str | None = None
    cache_dir: str | None = None
    download: bool = True
    split: str = "stratified"
    split_seed: int = 0
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    val_fraction: float = 0.15
    standardize: str | None = "standard"
    clip: float | None = None
    max_len: int | None = None
    cv_folds: int = 0
    cv_fold: int | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)
    missing: str = "error"
    missing_mask: bool = False
    length_buckets: int = 1


@dataclass
class ModelConfig:
    """The :class:`rnnscan.nn.SequenceClassifier` and how its RNNs are evaluated.

    Attributes:
        cell: a cell name of :data:`rnnscan.nn.CELLS` (``"gru"``, ``"lstm"``,
            ``"diag_gru"``, ``"min_gru"``, ...).
        hidden_features: width of every layer.
        num_blocks: number of residual RNN blocks.
        method: ``"newton"`` (DEER), ``"quasi_newton"``, ``"fixed_point"``,
            ``"sequential"`` (``jax.lax.scan``) or ``"auto"``: per block, whichever of
            ``auto.parallel`` and the sequential scan is faster, measured while training runs
            and re-checked as it goes (:class:`rnnscan.train.MethodSelector`).
        on_failure: what an unconverged parallel solve does (``"fallback"``: recompute
            sequentially; ``"raise"``; ``"return"``).
        dtype: ``"float32"`` or ``"float64"`` (parameters, computation and inputs).
        rtol, atol, max_iterations: solver tolerances and iteration cap; ``None``:
            rnnscan's defaults for the dtype.
        cell_kwargs: extra keyword arguments of the cell.
        auto: options of ``method: auto``: ``parallel`` (the parallel method, default
            ``"newton"``; the tolerances above apply to it), ``start`` (``"parallel"`` or
            ``"sequential"``) and the :class:`rnnscan.train.MethodSelector` options
            ``window``, ``margin``, ``recheck_every``, ``max_recheck_every``, ``drift``,
            ``fallback_steps``.
    """

    cell: str = "gru"
    hidden_features: int = 32
    num_blocks: int = 5
    method: str = "newton"
    on_failure: str = "fallback"
    dtype: str = "float32"
    rtol: float | None = None
    atol: float | None = None
    max_iterations: int | None = None
    cell_kwargs: dict[str, Any] = field(default_factory=dict)
    auto: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """The optax optimiser: Adam / AdamW, global-norm clipping, a learning-rate schedule.

    Attributes:
        name: ``"adam"`` or ``"adamw"``.
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay (applied to matrices only).
        b1, b2, eps: Adam's moment decay rates and epsilon.
        clip_norm: clip gradients to this global norm first (``None``: no clipping).
        schedule: ``"constant"``, ``"cosine"`` (decay from ``lr`` to ``lr *
            end_lr_factor`` over ``decay_steps``) or ``"warmup_cosine"`` (linear warm-up
            over ``warmup_steps``, then cosine decay).
        warmup_steps: warm-up length for ``"warmup_cosine"``.
        decay_steps: length of the decay; ``None``: the run's total number of steps.
        end_lr_factor: final learning rate as a fraction of ``lr``.
    """

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int | None = None
    end_lr_factor: float = 0.0


@dataclass
class LoopConfig:
    """The training loop: randomness, batches, length, evaluation and early stopping.

    Attributes:
        seed: seeds the parameters and the data order (epoch ``e`` visits the
            training series in ``numpy.random.default_rng([seed, e]).permutation``).
        batch_size: training series per step.
        eval_batch_size: series per evaluation call.
        epochs: maximum number of passes over the training part.
        max_steps: stop after this many steps, if sooner (``None``: no limit).
        drop_last: skip the last, incomplete batch of each epoch; otherwise it is
            padded to ``batch_size`` with zero-weight series (shapes stay static).
        eval_every: evaluate on the validation part every this many steps; ``None``:
            at the end of every epoch. The last step is always evaluated.
        patience: stop when validation accuracy has not improved for this many
            evaluations (ties broken by lower validation loss); ``None``: never.
        progress: show a tqdm progress bar.
        devices: how many devices to use (``None``: every device, of every host after
            ``jax.distributed.initialize``). Each batch is split over them (data
            parallelism; padded with zero-weight series to a multiple of their number)
            and the parameters are replicated.
        sequence_devices: of those, how many split the time axis of every series
            (sequence parallelism): the devices form a ``(devices / sequence_devices) x
            sequence_devices`` mesh with axes ``("data", "time")``. 1: data parallelism
            only.
        warmup: warm up the model's recurrent layers before training, maximising their
            reachable multistability (Lambrechts et al., 2023; :func:`rnnscan.train._warmup
            .warmup`): ``{steps: N, lr: ..., batch_size: ..., drive_steps: ...,
            settle_steps: ..., settle_increment: ..., settle_input: zero | constant,
            epsilon: ..., target: ..., method: ...}``; ``steps`` is required. Empty (the
            default): no warm-up. Seeded by ``seed``.
        lyapunov: in every evaluation, estimate each block's largest Lyapunov exponent
            (``lyapunov_per_block`` in the eval records: the mean over the series; < 0
            predictable, parallel solves cheap; near or above 0, Newton struggles). Costs
            about one Newton iteration per block and evaluation batch.
        warm_start_eval: start every validation batch's parallel solves from its carries at
            the previous evaluation (same results up to the solver tolerance, fewer
            iterations when the weights moved little). Keeps every block's carries of the
            whole validation part on the device: blocks x series x T x carry size values.
    """

    seed: int = 0
    batch_size: int = 4
    eval_batch_size: int = 16
    epochs: int = 100
    max_steps: int | None = None
    drop_last: bool = False
    eval_every: int | None = None
    patience: int | None = None
    progress: bool = True
    devices: int | None = None
    sequence_devices: int = 1
    warmup: dict[str, Any] = field(default_factory=dict)
    lyapunov: bool = False
    warm_start_eval: bool = False


@dataclass
class CheckpointConfig:
    """Orbax checkpoints of the complete training state.

    Attributes:
        enabled: write checkpoints (and resume from them).
        every_steps: write one every this many steps (and always at the end).
        max_to_keep: keep only the newest few.
    """

    enabled: bool = True
    every_steps: int = 50
    max_to_keep: int = 2


@dataclass
class TrainConfig:
    """A whole training run.

    Attributes:
        name: run name (default: the config file's stem).
        out_dir: run directory; ``None``: ``runs/<name>-<timestamp>``. A directory
            holding checkpoints of the same configuration is resumed.
        data, model, optim, train, checkpoint: the sections.
    """

    name: str = "run"
    out_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    # -- conversion ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a nested mapping; unknown keys raise :class:`ConfigError`."""
        config = cls()
        for key, value in _flatten(data):
            _set_path(config, key, value)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The config as a nested dict of plain values (YAML-ready)."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, overrides: Iterable[str] | Mapping[str, Any]) -> TrainConfig:
        """A copy with ``overrides`` applied (see :func:`apply_overrides`)."""
        return apply_overrides(self, overrides)

    # -- checks ----------------------------------------------------------------------

    def validate(self) -> None:
        """Check values that types alone do not catch; raise :class:`ConfigError`."""
        d, m, o, t, c = self.data, self.model, self.optim, self.train, self.checkpoint
        source_ok = d.source in ("worm_sample", "eigenworms", "synthetic", "parity", "dms") or (
            d.source.startswith("uea:") and len(d.source) > 4
        )
        _check(
            source_ok,
            "data.source",
            "worm_sample, eigenworms, uea:<Name>, synthetic, parity or dms",
            d.source,
        )
        _check(d.split in SPLITS, "data.split", " | ".join(SPLITS), d.split)
        _check(
            d.standardize in (None, "standard", "robust"),
            "data.standardize",
            "standard, robust or null",
            d.standardize,
        )
        _check(
            d.max_len is None or d.max_len >= 1, "data.max_len", "a positive int or null", d.max_len
        )
        _check(d.cv_folds == 0 or d.cv_folds >= 3, "data.cv_folds", "0 (off) or >= 3", d.cv_folds)
        _check(
            d.missing in ("error", "zero", "ffill"),
            "data.missing",
            "error | zero | ffill",
            d.missing,
        )
        _check(d.length_buckets >= 1, "data.length_buckets", "a positive int", d.length_buckets)
        if d.cv_fold is not None:
            _check(d.cv_folds > 2, "data.cv_fold", "null unless data.cv_folds >= 3", d.cv_fold)
            _check(0 <= d.cv_fold < d.cv_folds, "data.cv_fold", "in 0 .. cv_folds-1", d.cv_fold)
        if d.synthetic:
            from rnnscan.data import make_synthetic_series, make_timescale_series

            generator = (
                make_timescale_series if d.source in ("parity", "dms") else make_synthetic_series
            )
            known = set(inspect.signature(generator).parameters) - {"seed", "task"}
            for key in d.synthetic:
                if key not in known:
                    raise ConfigError(_unknown_message(f"data.synthetic.{key}", key, known))

        from rnnscan.nn import CELLS

        _check(m.cell in CELLS, "model.cell", " | ".join(sorted(CELLS)), m.cell)
        _check(m.method in METHODS, "model.method", " | ".join(METHODS), m.method)
        _check_auto(m.auto)
        _check(
            m.on_failure in ("fallback", "raise", "return"),
            "model.on_failure",
            "fallback | raise | return",
            m.on_failure,
        )
        _check(m.dtype in DTYPES, "model.dtype", " | ".join(DTYPES), m.dtype)
        for key in ("hidden_features", "num_blocks"):
            _check(getattr(m, key) >= 1, f"model.{key}", "a positive int", getattr(m, key))

        _check(o.name in OPTIMIZERS, "optim.name", " | ".join(OPTIMIZERS), o.name)
        _check(o.schedule in SCHEDULES, "optim.schedule", " | ".join(SCHEDULES), o.schedule)
        _check(o.lr > 0, "optim.lr", "a positive float", o.lr)
        _check(
            o.clip_norm is None or o.clip_norm > 0, "optim.clip_norm", "> 0 or null", o.clip_norm
        )

        for key in ("batch_size", "eval_batch_size", "epochs"):
            _check(getattr(t, key) >= 1, f"train.{key}", "a positive int", getattr(t, key))
        _check(
            t.sequence_devices >= 1, "train.sequence_devices", "a positive int", t.sequence_devices
        )
        for key in ("max_steps", "eval_every", "patience", "devices"):
            value = getattr(t, key)
            _check(value is None or value >= 1, f"train.{key}", "a positive int or null", value)
        _check_warmup(t.warmup)
        _check(
            not (t.lyapunov and t.sequence_devices > 1),
            "train.lyapunov",
            "false with train.sequence_devices > 1 (the estimate runs on one device)",
            t.lyapunov,
        )
        _check(c.every_steps >= 1, "checkpoint.every_steps", "a positive int", c.every_steps)
        _check(c.max_to_keep >= 1, "checkpoint.max_to_keep", "a positive int", c.max_to_keep)


AUTO_KEYS = ("parallel", "start")


def _check_auto(auto: Mapping[str, Any]) -> None:
    """``model.auto``: known keys, and values the selector accepts."""
    from ._selector import MethodSelector

    selector_keys = set(inspect.signature(MethodSelector).parameters) - {
        "num_layers",
        "parallel_name",
    }
    known = selector_keys | set(AUTO_KEYS)
    for key in auto:
        if key not in known:
            raise ConfigError(_unknown_message(f"model.auto.{key}", key, known))
    parallel = auto.get("parallel", "newton")
    _check(
        parallel in METHODS and parallel not in ("auto", "sequential"),
        "model.auto.parallel",
        "newton | quasi_newton | fixed_point",
        parallel,
    )
    try:
        MethodSelector(1, **{k: v for k, v in auto.items() if k in selector_keys})
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.auto: {error}.") from None


def _check_warmup(options: Mapping[str, Any]) -> None:
    """``train.warmup``: known keys, ``steps`` present, values :func:`warmup` accepts."""
    if not options:
        return
    from ._warmup import WARMUP_OPTIONS, check_warmup_options

    for key in options:
        if key not in WARMUP_OPTIONS:
            raise ConfigError(_unknown_message(f"train.warmup.{key}", key, WARMUP_OPTIONS))
    if "steps" not in options:
        raise ConfigError("train.warmup.steps: required when train.warmup is set.")
    try:
        check_warmup_options(**options)
    except ValueError as error:
        raise ConfigError(f"train.warmup.{error}.") from None


def _check(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}.")


# ----------------------------------------------------------------------------- loading


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
) -> TrainConfig:
    """Read a YAML config (``None``: all defaults) and apply ``overrides``.

    Args:
        path: a YAML file with the sections ``data``, ``model``, ``optim``, ``train``,
            ``checkpoint`` and top-level ``name`` / ``out_dir`` (all optional). The
            name defaults to the file's stem.
        overrides: ``"section.key=value"`` strings (values parsed as YAML:
            ``optim.lr=3e-4``, ``model.cell=lstm``, ``data.max_len=null``) or a
            mapping from dotted keys to values.

    Raises:
        ConfigError: an unknown key (the message names it) or an invalid value.
        FileNotFoundError: ``path`` does not exist.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        with path.open() as f:
            loaded = yaml.safe_load(f)
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping at the top level.")
        data = dict(loaded or {})
        data.setdefault("name", path.stem)
    config = TrainConfig.from_dict(data)
    return apply_overrides(config, overrides)


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 3e-4)`` (the value is parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"Override {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-3.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"Override {text!r}: cannot parse the value: {err}") from err
    return key, value


def apply_overrides(
    config: TrainConfig, overrides: Iterable[str] | Mapping[str, Any]
) -> TrainConfig:
    """A validated copy of ``config`` with dotted-key overrides applied.

    ``overrides`` is a mapping ``{"optim.lr": 1e-3}`` or an iterable of
    ``"optim.lr=1e-3"`` strings. A value that is a mapping sets several keys of a
    section at once (``{"model": {"cell": "lstm"}}``).
    """
    config = _copy(config)
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        _set_path(config, key, value)
    config.validate()
    return config


def config_diff(a: TrainConfig, b: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between ``a`` and ``b``."""
    flat_a, flat_b = dict(_flatten(a.to_dict())), dict(_flatten(b.to_dict()))
    return sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k) != flat_b.get(k))


# ----------------------------------------------------------------------------- internals

_OPAQUE_KEYS = (
    "data.synthetic",
    "model.cell_kwargs",
    "model.auto",
    "train.warmup",
)  # dict-valued fields, set whole


def _flatten(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and path not in _OPAQUE_KEYS:
            out += _flatten(value, path)
        else:
            out.append((path, value))
    return out


def _fields(obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _unknown_message(path: str, name: str, known: Iterable[str]) -> str:
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"Unknown config key {path!r}.{hint} Known keys here: {', '.join(known)}."


def _set_path(config: TrainConfig, path: str, value: Any) -> None:
    parts = path.split(".")
    target: Any = config
    for i, name in enumerate(parts):
        fields = _fields(target)
        where = ".".join(parts[: i + 1])
        if name not in fields:
            raise ConfigError(_unknown_message(where, name, fields))
        hint = typing.get_type_hints(type(target))[name]
        is_section = dataclasses.is_dataclass(hint)
        last = i == len(parts) - 1
        if last:
            if is_section:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{where}: expected a mapping of its keys, got {value!r}.")
                for sub_key, sub_value in _flatten(value, prefix=where):
                    _set_path(config, sub_key, sub_value)
                return
            setattr(target, name, _coerce(value, hint, where))
            return
        if not is_section:
            raise ConfigError(f"{where} is a value, not a section: cannot set {path!r}.")
        target = getattr(target, name)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML / CLI value to the field's annotated type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: invalid value {value!r}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _as_float(value)
        if number is not None and number.is_integer():
            return int(number)
    elif hint is float:
        number = _as_float(value)
        if number is not None:
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    elif origin is dict:
        if value is None:
            return {}
        if isinstance(value, Mapping):
            return dict(value)
    else:  # pragma: no cover - every field type is handled above
        return value
    expected = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__}).")


def _as_float(value: Any) -> float | None:
    """Numbers, and strings such as ``"3e-4"`` (which YAML 1.1 reads as strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _copy(config: TrainConfig) -> TrainConfig:
    return TrainConfig.from_dict(config.to_dict())
