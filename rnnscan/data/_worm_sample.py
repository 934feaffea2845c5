"""The worm sample: 43 real *C. elegans* eigenworm recordings for offline tests and demos.

``worm_sample.npz`` holds 43 series of 17,984 steps and 6 channels (the first
17,984 frames at 30 Hz of each recording, projected on 6 eigenworms), in five
classes N2 (10), goa-1 (9), unc-1 (9), unc-38 (9), unc-63 (6) numbered like UEA
EigenWorms. It is *not* UEA EigenWorms (which has 259 series and must be
downloaded) but has the same shape per series, so it exercises exactly the
17,984-step, 6-channel, 5-class path without a download. It comes from André
Brown's Motif_Analysis sample data (MIT licence, MRC 2013; Brown et al., PNAS
2013). There is no official split: use :func:`stratified_split` with a seed.

The file is never bundled with rnnscan. It is looked for, in order, at:

1. the ``path`` argument (the file, or a directory containing it);
2. ``$RNNSCAN_WORM_SAMPLE`` (the file, or a directory containing it);
3. ``../shared/data/worm-sample/worm_sample.npz`` relative to the current
   directory, then relative to the repository root (the directory above the
   ``rnnscan`` package): the layout of the project's CI, with the shared data
   beside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._container import LabelledSeries
from ._download import DatasetNotFoundError
from ._paths import WORM_SAMPLE_ENV

__all__ = ["WORM_SAMPLE_FILE", "find_worm_sample", "load_worm_sample"]

WORM_SAMPLE_FILE = "worm_sample.npz"
_SHARED_RELPATH = Path("..", "shared", "data", "worm-sample", WORM_SAMPLE_FILE)


def _candidates(path: str | os.PathLike[str] | None) -> list[Path]:
    def as_file(p: str | os.PathLike[str]) -> Path:
        p = Path(p).expanduser()
        return p / WORM_SAMPLE_FILE if p.is_dir() else p

    if path is not None:  # an explicit path is the only candidate
        return [as_file(path)]
    out = []
    env = os.environ.get(WORM_SAMPLE_ENV)
    if env:
        out.append(as_file(env))
    repo_root = Path(__file__).resolve().parents[2]
    out += [Path.cwd() / _SHARED_RELPATH, repo_root / _SHARED_RELPATH]
    return out


def find_worm_sample(path: str | os.PathLike[str] | None = None) -> Path:
    """Location of ``worm_sample.npz`` (search order in the module docstring).

    Raises:
        DatasetNotFoundError: not found; the message lists the places searched.
    """
    candidates = _candidates(path)
    for c in candidates:
        if c.is_file():
            return c
    searched = "\n".join(f"  - {c}" for c in dict.fromkeys(candidates))
    raise DatasetNotFoundError(
        f"{WORM_SAMPLE_FILE} not found. Searched:\n{searched}\n"
        f"Pass path=..., or set the environment variable {WORM_SAMPLE_ENV} to the file "
        "(or its directory). The sample is not distributed with rnnscan."
    )


def load_worm_sample(path: str | os.PathLike[str] | None = None) -> LabelledSeries:
    """Load the worm sample as a :class:`LabelledSeries` (no split, no standardisation).

    Returns ``X`` float32 ``(43, 17984, 6)``, ``y`` int64 in ``0 .. 4`` (the file's
    classes 1 .. 5 minus one), ``class_names = ("N2", "goa-1", "unc-1", "unc-38",
    "unc-63")`` and ``meta`` with the per-series ``strain``, ``src_path`` and
    ``full_length`` (length of the untruncated recording).

    A train / val / test dataset in one line::

        ws = load_worm_sample()
        ds = prepare(ws, stratified_split(ws.y, seed=0), split_kind="stratified", seed=0)

    Raises:
        DatasetNotFoundError: the file is not found (see :func:`find_worm_sample`).
    """
    file = find_worm_sample(path)
    with np.load(file, allow_pickle=False) as z:
        X, y = z["X"], z["y"]
        label_names = [str(s) for s in z["label_names"]]
        meta = {k: z[k] for k in ("strain", "src_path", "full_length") if k in z.files}
    if X.ndim != 3 or y.shape != (X.shape[0],):
        raise ValueError(f"{file}: unexpected shapes X {X.shape}, y {y.shape}.")
    num_classes = len(label_names) - 1  # index 0 of label_names is unused
    if y.size and (y.min() < 1 or y.max() > num_classes):
        raise ValueError(f"{file}: labels must lie in 1..{num_classes}.")
    return LabelledSeries(
        name="worm_sample",
        X=X,
        y=y.astype(np.int64) - 1,
        class_names=tuple(label_names[1:]),
        n_official_train=None,
        meta=meta,
    )
