"""Tests of rnnscan.data: .ts loading, splits, standardisation, download, caching, samples.

No test touches the network: an autouse fixture lets ``urllib.request.urlopen``
open ``file://`` URLs only, and the cache directory points into ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest

import rnnscan.data as rd
from rnnscan.data import (
    ChecksumError,
    DatasetNotFoundError,
    LabelledSeries,
    RemoteArchive,
    Split,
    Standardizer,
    _uea,
    _worm_sample,
)

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, no writes outside tmp_path, no influence from the user's environment."""
    real_urlopen = urllib.request.urlopen

    def guarded(url, *args, **kwargs):
        full = url.full_url if isinstance(url, urllib.request.Request) else str(url)
        if not full.startswith("file:"):
            raise urllib.error.URLError("network access is disabled in the tests")
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)
    for var in (rd.DATA_DIR_ENV, rd.WORM_SAMPLE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(rd.CACHE_DIR_ENV, str(tmp_path / "default-cache"))


def _aeon_data_dir() -> Path:
    aeon = pytest.importorskip("aeon")
    return Path(aeon.__file__).parent / "datasets" / "data"


@pytest.fixture
def basic_motions_dir(tmp_path) -> Path:
    """BasicMotions (a small real UEA problem shipped inside aeon) copied to a flat dir."""
    src = _aeon_data_dir() / "BasicMotions"
    dst = tmp_path / "ts"
    dst.mkdir()
    for split in ("TRAIN", "TEST"):
        shutil.copy(src / f"BasicMotions_{split}.ts", dst / f"BasicMotions_{split}.ts")
    return dst


def _write_ts(path: Path, X: np.ndarray, labels: list[str], declared: list[str]) -> None:
    """A minimal multivariate .ts file; X is (N, C, T)."""
    header = [
        f"@problemName {path.stem.split('_')[0]}",
        "@timeStamps false",
        "@missing false",
        f"@univariate {'true' if X.shape[1] == 1 else 'false'}",
        f"@dimensions {X.shape[1]}",
        "@equalLength true",
        f"@seriesLength {X.shape[2]}",
        f"@classLabel true {' '.join(declared)}",
        "@data",
    ]
    rows = [
        ":".join(",".join(f"{v:.6f}" for v in ch) for ch in x) + f":{lab}"
        for x, lab in zip(X, labels, strict=True)
    ]
    path.write_text("\n".join(header + rows) + "\n")


# ----------------------------------------------------------------------------- .ts files


def test_read_uea_matches_aeon(basic_motions_dir):
    from aeon.datasets import load_from_ts_file

    series = rd.read_uea("BasicMotions", basic_motions_dir)
    X_tr, y_tr, meta = load_from_ts_file(
        str(basic_motions_dir / "BasicMotions_TRAIN.ts"), return_meta_data=True
    )
    X_te, y_te = load_from_ts_file(str(basic_motions_dir / "BasicMotions_TEST.ts"))

    assert isinstance(series, LabelledSeries)
    assert series.X.dtype == np.float32 and series.y.dtype == np.int64
    n_tr, c, t = X_tr.shape
    assert series.X.shape == (n_tr + X_te.shape[0], t, c)  # time-major per sample
    assert series.n_official_train == n_tr
    np.testing.assert_allclose(series.X[:n_tr], X_tr.transpose(0, 2, 1), rtol=1e-6)
    np.testing.assert_allclose(series.X[n_tr:], X_te.transpose(0, 2, 1), rtol=1e-6)
    assert series.class_names == tuple(meta["class_values"])  # declared order
    names = np.array(series.class_names)
    np.testing.assert_array_equal(names[series.y], np.concatenate([y_tr, y_te]))


def test_read_uea_aeon_layout_and_univariate():
    # aeon keeps each problem in <dir>/<Name>/; UnitTest is univariate with labels "1", "2".
    series = rd.read_uea("UnitTest", _aeon_data_dir())
    assert series.X.ndim == 3 and series.num_channels == 1
    assert series.class_names == ("1", "2")


def test_numeric_labels_sorted_numerically(tmp_path):
    rng = np.random.default_rng(0)
    _write_ts(
        tmp_path / "Num_TRAIN.ts", rng.normal(size=(3, 2, 5)), ["10", "2", "1"], ["10", "2", "1"]
    )
    _write_ts(tmp_path / "Num_TEST.ts", rng.normal(size=(2, 2, 5)), ["2", "10"], ["10", "2", "1"])
    series = rd.read_uea("Num", tmp_path)
    assert series.class_names == ("1", "2", "10")
    np.testing.assert_array_equal(series.y, [2, 1, 0, 1, 2])


def test_unequal_length_is_padded_not_truncated():
    """JapaneseVowels (lengths 7..29, shipped in aeon): padded, every value kept."""
    from aeon.datasets import load_from_ts_file

    series = rd.read_uea("JapaneseVowels", _aeon_data_dir())
    folder = _aeon_data_dir() / "JapaneseVowels"
    raw = [*load_from_ts_file(str(folder / "JapaneseVowels_TRAIN.ts"))[0]]
    raw += [*load_from_ts_file(str(folder / "JapaneseVowels_TEST.ts"))[0]]
    assert series.X.shape == (640, max(x.shape[1] for x in raw), 12)
    np.testing.assert_array_equal(series.lengths, [x.shape[1] for x in raw])
    for i in (0, 17, 639):
        n = series.lengths[i]
        np.testing.assert_allclose(series.X[i, :n], raw[i].T, rtol=1e-6)
        assert np.all(series.X[i, n:] == 0)


def test_missing_ts_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=rd.DATA_DIR_ENV) as info:
        rd.load_uea("Nothing", tmp_path)
    assert isinstance(info.value, FileNotFoundError)


def test_data_dir_from_environment(basic_motions_dir, monkeypatch):
    monkeypatch.setenv(rd.DATA_DIR_ENV, str(basic_motions_dir))
    assert len(rd.read_uea("BasicMotions")) == 80


def test_missing_aeon_gives_install_hint(basic_motions_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "aeon", None)
    monkeypatch.setitem(sys.modules, "aeon.datasets", None)
    with pytest.raises(ImportError, match=r"rnnscan\[data\]"):
        rd.read_uea("BasicMotions", basic_motions_dir)


def test_load_uea_official_split_with_validation(basic_motions_dir, tmp_path):
    ds = rd.load_uea("BasicMotions", basic_motions_dir, val_fraction=0.2, cache_dir=tmp_path)
    assert (ds.X_train.shape[0], ds.X_val.shape[0], ds.X_test.shape[0]) == (32, 8, 40)
    assert ds.X_train.shape[1:] == (100, 6) and ds.num_classes == 4
    np.testing.assert_array_equal(ds.split.test, np.arange(40, 80))  # the official test file
    counts = ds.class_counts()
    np.testing.assert_array_equal(counts["val"], [2, 2, 2, 2])  # stratified carve
    np.testing.assert_array_equal(counts["test"], [10, 10, 10, 10])


# ----------------------------------------------------------------------------- splits


def test_split_sizes_formula():
    assert rd.split_sizes(259) == (181, 39, 39)
    assert rd.split_sizes(100) == (70, 15, 15)
    assert rd.split_sizes(43) == (31, 6, 6)
    assert rd.split_sizes(10, (0.5, 0.0, 0.5)) == (5, 0, 5)
    with pytest.raises(ValueError):
        rd.split_sizes(10, (0.5, 0.2, 0.2))


@pytest.mark.parametrize("make", ["random", "stratified"])
def test_pooled_split_259(make):
    y = np.repeat(np.arange(5), [110, 44, 35, 45, 25])  # EigenWorms class counts
    split_fn = (
        (lambda s: rd.random_split(259, seed=s))
        if make == "random"
        else (lambda s: rd.stratified_split(y, seed=s))
    )
    sp = split_fn(0)
    assert sp.sizes == (181, 39, 39)
    assert sp.covers(259)
    assert not (
        set(sp.train) & set(sp.val) or set(sp.train) & set(sp.test) or set(sp.val) & set(sp.test)
    )
    again, other = split_fn(0), split_fn(1)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(sp, part), getattr(again, part))
    assert not np.array_equal(sp.test, other.test)


def test_stratified_split_keeps_proportions():
    rng = np.random.default_rng(0)
    for trial in range(50):
        k = int(rng.integers(2, 7))
        y = rng.integers(0, k, size=int(rng.integers(20, 300)))
        fractions = (0.6, 0.2, 0.2)
        sp = rd.stratified_split(y, fractions, seed=trial)
        assert sp.covers(y.size) and sp.sizes == rd.split_sizes(y.size, fractions)
        for idx, size in zip((sp.train, sp.val, sp.test), sp.sizes, strict=True):
            expected = np.bincount(y, minlength=k) * size / y.size
            assert np.all(np.abs(np.bincount(y[idx], minlength=k) - expected) < 2)


def test_official_split():
    y = np.array([0, 1] * 10 + [0, 1] * 5)
    sp = rd.official_split(y, n_train=20)
    np.testing.assert_array_equal(sp.train, np.arange(20))
    assert sp.val.size == 0
    np.testing.assert_array_equal(sp.test, np.arange(20, 30))
    sp = rd.official_split(y, n_train=20, val_fraction=0.2, seed=3)
    assert sp.sizes == (16, 4, 10) and sp.covers(30)
    np.testing.assert_array_equal(np.bincount(y[sp.val]), [2, 2])


def test_split_rejects_overlap():
    with pytest.raises(ValueError, match="overlap"):
        Split(np.array([0, 1]), np.array([1]), np.array([2]))


# ----------------------------------------------------------------------------- standardisation


def _shifted_series(rng) -> tuple[LabelledSeries, Split]:
    X = rng.normal(size=(30, 50, 3)).astype(np.float32) * [1.0, 5.0, 0.1] + [0.0, 10.0, -3.0]
    X[20:] += 100.0  # held-out parts live somewhere else entirely
    series = LabelledSeries("toy", X, np.arange(30) % 2, ("a", "b"))
    return series, Split(np.arange(20), np.arange(20, 25), np.arange(25, 30))


def test_standardisation_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    series, split = _shifted_series(rng)
    ds = rd.prepare(series, split, standardize="standard")
    train = series.X[:20].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(ds.standardizer.center, train.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.standardizer.scale, train.std(0), rtol=1e-6)
    np.testing.assert_allclose(ds.X_train.mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.X_train.std(axis=(0, 1)), 1.0, atol=1e-4)
    # val/test were transformed with the training statistics, not their own.
    expected = (series.X[25:] - ds.standardizer.center) / ds.standardizer.scale
    np.testing.assert_allclose(ds.X_test, expected, rtol=1e-5, atol=1e-4)
    assert np.all(ds.X_test.mean(axis=(0, 1)) > 5.0)


def test_robust_standardisation_resists_outliers():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 500, 2)).astype(np.float32)
    X[0, :5, 0] = 1000.0  # a few extreme frames, as in EigenWorms
    robust = Standardizer.fit(X, "robust")
    standard = Standardizer.fit(X, "standard")
    assert abs(robust.scale[0] - 1.0) < 0.05 and abs(robust.center[0]) < 0.05
    assert standard.scale[0] > 3.0  # the mean/std fit is dragged by the outliers
    Z = robust(X)
    q25, q50, q75 = np.quantile(Z.reshape(-1, 2), [0.25, 0.5, 0.75], axis=0)
    np.testing.assert_allclose(q50, 0.0, atol=1e-3)
    np.testing.assert_allclose(q75 - q25, rd._standardize.IQR_TO_STD, rtol=1e-3)
    clipped = Standardizer.fit(X, "robust", clip=5.0)(X)
    assert clipped.max() == 5.0 and clipped.dtype == np.float32


def test_constant_channel_does_not_divide_by_zero():
    X = np.ones((4, 10, 2), np.float32)
    X[..., 1] = np.arange(10)
    Z = Standardizer.fit(X)(X)
    assert np.all(np.isfinite(Z)) and np.all(Z[..., 0] == 0.0)


# ----------------------------------------------------------------------------- download


def _zip_problem(src_dir: Path, name: str, zip_path: Path) -> tuple[int, str]:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for split in ("TRAIN", "TEST"):
            zf.write(src_dir / f"{name}_{split}.ts", f"{name}/{name}_{split}.ts")
        zf.writestr(f"{name}/README.txt", "not extracted")
    data = zip_path.read_bytes()
    return len(data), hashlib.sha256(data).hexdigest()


def test_download_verifies_checksum(basic_motions_dir, tmp_path):
    zip_path = tmp_path / "served.zip"
    size, sha = _zip_problem(basic_motions_dir, "BasicMotions", zip_path)
    url = zip_path.as_uri()

    good = rd.download_file(url, tmp_path / "dl" / "ok.zip", size=size, sha256=sha, progress=False)
    assert good.read_bytes() == zip_path.read_bytes()

    bad = tmp_path / "dl" / "bad.zip"
    with pytest.raises(ChecksumError, match="sha256"):
        rd.download_file(url, bad, size=size, sha256="0" * 64, progress=False)
    assert not bad.exists() and not bad.with_name("bad.zip.part").exists()
    with pytest.raises(ChecksumError, match="size"):
        rd.download_file(url, bad, size=size + 1, progress=False)
    assert not bad.exists()


def test_fetch_problem_downloads_and_extracts(basic_motions_dir, tmp_path, monkeypatch):
    zip_path = tmp_path / "served.zip"
    size, sha = _zip_problem(basic_motions_dir, "BasicMotions", zip_path)
    archive = RemoteArchive("BasicMotions", zip_path.as_uri(), size, sha)
    cache = tmp_path / "cache"

    train, test = rd.fetch_problem(archive, cache_dir=cache, progress=False)
    assert train == cache / "uea" / "BasicMotions" / "BasicMotions_TRAIN.ts"
    assert test.read_bytes() == (basic_motions_dir / "BasicMotions_TEST.ts").read_bytes()
    assert sorted(p.name for p in train.parent.iterdir()) == sorted([train.name, test.name])

    # Now present: found without any download.
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    assert rd.fetch_problem(archive, cache_dir=cache) == (train, test)
    ds = rd.load_uea("BasicMotions", cache_dir=cache, cache=False)
    assert ds.X_test.shape == (40, 100, 6)


def test_fetch_problem_rejects_corrupt_archive(basic_motions_dir, tmp_path):
    zip_path = tmp_path / "served.zip"
    size, _ = _zip_problem(basic_motions_dir, "BasicMotions", zip_path)
    archive = RemoteArchive("BasicMotions", zip_path.as_uri(), size, "f" * 64)
    with pytest.raises(ChecksumError, match=archive.url):
        rd.fetch_problem(archive, data_dir=tmp_path / "data", progress=False)
    assert list((tmp_path / "data" / "BasicMotions").iterdir()) == []


def test_fetch_problem_archive_without_the_files(tmp_path):
    zip_path = tmp_path / "served.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("Other_TRAIN.ts", "")
    archive = RemoteArchive("BasicMotions", zip_path.as_uri())  # no checksum to check
    with pytest.raises(DatasetNotFoundError, match="does not contain"):
        rd.fetch_problem(archive, data_dir=tmp_path / "data", progress=False)
    assert list((tmp_path / "data" / "BasicMotions").iterdir()) == []


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def _assert_helpful(message: str, where: Path) -> None:
    archive = rd.EIGENWORMS_ARCHIVE
    for needle in (
        archive.url,
        archive.sha256,
        "EigenWorms_TRAIN.ts",
        "EigenWorms_TEST.ts",
        rd.DATA_DIR_ENV,
        str(where),
    ):
        assert needle in message, needle


def test_eigenworms_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(DatasetNotFoundError, match="failed") as info:
        rd.load_eigenworms(cache_dir=tmp_path, progress=False)
    _assert_helpful(str(info.value), tmp_path / "uea")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing half-written


def test_eigenworms_download_disabled_or_bad_url(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="disabled") as info:
        rd.load_eigenworms(data_dir=tmp_path / "ew", download=False)
    _assert_helpful(str(info.value), tmp_path / "ew")
    with pytest.raises(DatasetNotFoundError):
        rd.load_eigenworms(
            cache_dir=tmp_path, url=(tmp_path / "missing.zip").as_uri(), progress=False
        )


def test_eigenworms_from_local_files(basic_motions_dir, tmp_path):
    # Stand-in files under the EigenWorms names: exercises the local path and the pooled split.
    data = tmp_path / "ew"
    data.mkdir()
    for split in ("TRAIN", "TEST"):
        shutil.copy(basic_motions_dir / f"BasicMotions_{split}.ts", data / f"EigenWorms_{split}.ts")
    ds = rd.load_eigenworms(data_dir=data, cache_dir=tmp_path / "cache")
    assert ds.split_kind == "pooled" and ds.split.sizes == rd.split_sizes(80) == (56, 12, 12)
    assert ds.split.covers(80)


# ----------------------------------------------------------------------------- caching


def test_prepared_arrays_are_cached(basic_motions_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    kwargs = dict(split="pooled", seed=7, standardize="robust", cache_dir=cache)
    first = rd.load_uea("BasicMotions", basic_motions_dir, **kwargs)
    files = list((cache / "prepared").glob("*.npz"))
    assert len(files) == 1
    assert files[0].name.startswith("BasicMotions-pooled-seed7-robust-")

    def fail(*args, **kwargs):
        raise AssertionError("the .ts files were parsed again")

    monkeypatch.setattr(_uea, "_read_pair", fail)
    second = rd.load_uea("BasicMotions", basic_motions_dir, **kwargs)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(first.part(part)[0], second.part(part)[0])
        np.testing.assert_array_equal(first.part(part)[1], second.part(part)[1])
        np.testing.assert_array_equal(getattr(first.split, part), getattr(second.split, part))
    assert second.class_names == first.class_names and second.seed == 7
    np.testing.assert_array_equal(second.standardizer.center, first.standardizer.center)
    assert second.standardizer.method == "robust"

    # Another configuration is another entry (and needs a parse).
    with pytest.raises(AssertionError, match="parsed again"):
        rd.load_uea("BasicMotions", basic_motions_dir, **{**kwargs, "seed": 8})


def test_corrupt_cache_is_rebuilt(basic_motions_dir, tmp_path):
    cache = tmp_path / "cache"
    rd.load_uea("BasicMotions", basic_motions_dir, cache_dir=cache)
    (entry,) = (cache / "prepared").glob("*.npz")
    entry.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        ds = rd.load_uea("BasicMotions", basic_motions_dir, cache_dir=cache)
    assert ds.X_train.shape == (40, 100, 6)
    assert rd._cache.load_cached(entry) is not None  # rewritten


def test_no_cache_writes_nothing(basic_motions_dir, tmp_path):
    rd.load_uea("BasicMotions", basic_motions_dir, cache=False, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


# ----------------------------------------------------------------------------- worm sample


def _worm_sample_or_skip() -> Path:
    try:
        return _worm_sample.find_worm_sample()
    except DatasetNotFoundError:
        pytest.skip(
            "worm_sample.npz not found (expected at ../shared/data/worm-sample/ beside the "
            f"repository, or set {rd.WORM_SAMPLE_ENV}); it is not distributed with rnnscan"
        )


def test_worm_sample_real_file():
    path = _worm_sample_or_skip()
    ws = rd.load_worm_sample()
    assert ws.X.shape == (43, 17984, 6) and ws.X.dtype == np.float32
    assert ws.y.dtype == np.int64 and ws.y.min() == 0 and ws.y.max() == 4
    assert ws.class_names == ("N2", "goa-1", "unc-1", "unc-38", "unc-63")
    assert dict(zip(ws.class_names, ws.class_counts().tolist(), strict=True)) == {
        "N2": 10,
        "goa-1": 9,
        "unc-1": 9,
        "unc-38": 9,
        "unc-63": 6,
    }
    np.testing.assert_array_equal(np.array(ws.class_names)[ws.y], ws.meta["strain"])
    assert np.all(np.isfinite(ws.X)) and np.abs(ws.X).max() < 20
    assert ws.n_official_train is None
    # Explicit directory gives the same file.
    assert len(rd.load_worm_sample(path.parent)) == 43
    ds = rd.prepare(ws, rd.stratified_split(ws.y, seed=0), standardize="robust")
    assert ds.split.sizes == (31, 6, 6) and ds.X_val.shape == (6, 17984, 6)


def test_worm_sample_lookup_and_error(tmp_path, monkeypatch):
    # A small stand-in with the documented layout, found through the environment variable.
    f = tmp_path / "ws" / "worm_sample.npz"
    f.parent.mkdir()
    names = np.array(["", "N2", "goa-1", "unc-1", "unc-38", "unc-63"])
    y = np.array([1, 2, 3, 4, 5, 1])
    np.savez(f, X=np.zeros((6, 8, 6), np.float32), y=y, strain=names[y], label_names=names)
    monkeypatch.setenv(rd.WORM_SAMPLE_ENV, str(f.parent))
    ws = rd.load_worm_sample()
    np.testing.assert_array_equal(ws.y, [0, 1, 2, 3, 4, 0])
    assert ws.class_names[0] == "N2" and ws.X.shape == (6, 8, 6)

    with pytest.raises(DatasetNotFoundError, match=rd.WORM_SAMPLE_ENV) as info:
        rd.load_worm_sample(tmp_path / "nowhere" / "worm_sample.npz")
    assert "nowhere" in str(info.value)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_determinism():
    kwargs = dict(num_series=90, seq_len=300, num_channels=3, num_classes=3, seed=5)
    a, b = rd.make_synthetic(**kwargs), rd.make_synthetic(**kwargs)
    c = rd.make_synthetic(**{**kwargs, "seed": 6})
    assert a.split.sizes == rd.split_sizes(90) and a.split.covers(90)
    assert a.X_train.shape[1:] == (300, 3) and a.X_train.dtype == np.float32
    assert a.num_classes == 3
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(a.part(part)[0], b.part(part)[0])
        np.testing.assert_array_equal(a.part(part)[1], b.part(part)[1])
    assert not np.array_equal(a.X_train, c.X_train)
    counts = np.concatenate([a.y_train, a.y_val, a.y_test])
    assert np.ptp(np.bincount(counts)) <= 1  # balanced
    for part in ("train", "val", "test"):
        per_class = a.class_counts()[part]
        assert np.ptp(per_class) <= 2


def test_synthetic_marker_identifies_the_class():
    T, L = 2000, 12
    s = rd.make_synthetic_series(
        num_series=200, seq_len=T, num_channels=2, num_classes=5, marker_len=L, seed=0
    )
    starts, markers = s.meta["marker_start"], s.meta["marker"]
    assert starts.max() + L <= round(0.1 * T)  # the marker is early ...
    # ... and a matched filter over the early region recovers the class.
    patterns = np.stack([markers[np.flatnonzero(s.y == k)[0]] for k in range(5)])
    for k in range(5):
        assert np.all(markers[s.y == k] == patterns[k])  # one pattern per class
    region = s.X[:, : round(0.1 * T)]
    windows = np.lib.stride_tricks.sliding_window_view(region, L, axis=1)  # (N, W, C, L)
    scores = np.einsum("nwcl,klc->nkw", windows, patterns).max(-1)
    assert np.mean(scores.argmax(-1) == s.y) > 0.95
    # After the marker region there is only noise, unrelated to the class.
    tail = s.X[:, round(0.1 * T) :]
    assert abs(float(tail.mean())) < 0.01 and abs(float(tail.std()) - 1.0) < 0.01


def test_containers_repr_is_short():
    ds = rd.make_synthetic(num_series=20, seq_len=50)
    assert len(repr(ds)) < 200 and "train/val/test=" in repr(ds)
    assert len(repr(rd.make_synthetic_series(num_series=4, seq_len=20))) < 200
