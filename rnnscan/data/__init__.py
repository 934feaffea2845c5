"""Datasets for long-sequence classification: UEA/UCR problems, EigenWorms, and test data.

All loaders give arrays that are time-major per sample, ``X`` float32 of shape
``(N, T, C)``, with int64 labels ``y`` in ``0 .. K-1`` and the class names kept
alongside.

Loaders
    :func:`load_uea` (any UEA/UCR ``.ts`` problem in a local directory; needs
    ``pip install "rnnscan[data]"`` for aeon), :func:`load_eigenworms` (finds or
    downloads and verifies UEA EigenWorms), :func:`load_worm_sample` (43 real
    worm recordings for offline tests, read from the shared data directory, never
    bundled) and :func:`make_synthetic` (a long-memory marker task generated on
    the fly).
Memory tasks
    :func:`make_parity` / :func:`make_dms` (binary N-parity and
    N-delayed-match-to-sample streams with per-step targets, one or several N)
    and :func:`make_timescale_series` (their one-label-per-series form).
Splits
    :func:`random_split` (the 70 / 15 / 15 protocol of Neural RDE, LEM and DEER:
    181 / 39 / 39 for EigenWorms), :func:`stratified_split`,
    :func:`official_split`, all returning index arrays in a :class:`Split`.
Preprocessing
    :class:`Standardizer` (per-channel mean / std or median / IQR fitted on the
    training part only) and :func:`prepare` (split + standardise a
    :class:`LabelledSeries` into a :class:`Dataset`).
Unequal lengths and missing values
    series of unequal length are zero-padded to the longest with their
    ``lengths`` kept (never truncated); missing values are refused
    (:class:`DataFormatError`, naming the file) or filled, ``missing="zero"`` or
    ``"ffill"``, optionally with observed-mask channels (``missing_mask=True``).

Example::

    from rnnscan.data import load_eigenworms
    ds = load_eigenworms()            # 181 / 39 / 39, standardised, cached
    ds.X_train.shape                  # (181, 17984, 6)

Environment variables: ``RNNSCAN_DATA_DIR`` (``.ts`` files), ``RNNSCAN_CACHE_DIR``
(downloads and prepared arrays, default ``~/.cache/rnnscan``) and
``RNNSCAN_WORM_SAMPLE`` (the worm sample file).
"""

from ._container import Dataset as Dataset
from ._container import LabelledSeries as LabelledSeries
from ._container import prepare as prepare
from ._download import EIGENWORMS_ARCHIVE as EIGENWORMS_ARCHIVE
from ._download import ChecksumError as ChecksumError
from ._download import DatasetNotFoundError as DatasetNotFoundError
from ._download import RemoteArchive as RemoteArchive
from ._download import download_file as download_file
from ._download import fetch_problem as fetch_problem
from ._errors import DataFormatError as DataFormatError
from ._missing import MISSING_POLICIES as MISSING_POLICIES
from ._missing import fill_missing as fill_missing
from ._paths import CACHE_DIR_ENV as CACHE_DIR_ENV
from ._paths import DATA_DIR_ENV as DATA_DIR_ENV
from ._paths import WORM_SAMPLE_ENV as WORM_SAMPLE_ENV
from ._splits import DEFAULT_FRACTIONS as DEFAULT_FRACTIONS
from ._splits import Split as Split
from ._splits import official_split as official_split
from ._splits import random_split as random_split
from ._splits import split_sizes as split_sizes
from ._splits import stratified_split as stratified_split
from ._standardize import Standardizer as Standardizer
from ._synthetic import make_synthetic as make_synthetic
from ._synthetic import make_synthetic_series as make_synthetic_series
from ._timescale_tasks import TIMESCALE_TASKS as TIMESCALE_TASKS
from ._timescale_tasks import BitStreams as BitStreams
from ._timescale_tasks import dms_targets as dms_targets
from ._timescale_tasks import make_dms as make_dms
from ._timescale_tasks import make_parity as make_parity
from ._timescale_tasks import make_timescale_series as make_timescale_series
from ._timescale_tasks import make_timescale_task as make_timescale_task
from ._timescale_tasks import parity_targets as parity_targets
from ._uea import load_eigenworms as load_eigenworms
from ._uea import load_uea as load_uea
from ._uea import make_split as make_split
from ._uea import read_uea as read_uea
from ._worm_sample import load_worm_sample as load_worm_sample

__all__ = [
    "CACHE_DIR_ENV",
    "DATA_DIR_ENV",
    "DEFAULT_FRACTIONS",
    "MISSING_POLICIES",
    "TIMESCALE_TASKS",
    "EIGENWORMS_ARCHIVE",
    "WORM_SAMPLE_ENV",
    "BitStreams",
    "ChecksumError",
    "DataFormatError",
    "Dataset",
    "DatasetNotFoundError",
    "LabelledSeries",
    "RemoteArchive",
    "Split",
    "Standardizer",
    "dms_targets",
    "download_file",
    "fetch_problem",
    "fill_missing",
    "load_eigenworms",
    "load_uea",
    "load_worm_sample",
    "make_dms",
    "make_parity",
    "make_split",
    "make_synthetic",
    "make_synthetic_series",
    "make_timescale_series",
    "make_timescale_task",
    "official_split",
    "parity_targets",
    "prepare",
    "random_split",
    "read_uea",
    "split_sizes",
    "stratified_split",
]
