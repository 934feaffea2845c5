"""The UEA/UCR archive through rnnscan.train: unequal lengths, missing values, errors.

Every ``.ts`` file is written by the tests (``@equalLength false``, ``@missing true``,
``?`` for a missing value), so nothing needs the network or the shared data. The
training runs are tiny (width 4, one block, a few steps, series of <= 24 steps).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rnnscan.data as rd
from rnnscan.data import DataFormatError, Standardizer
from rnnscan.nn import RNN, Bidirectional, GRUCell, SequenceClassifier
from rnnscan.train import __main__ as cli
from rnnscan.train import _steps
from rnnscan.train._buckets import BatchPlan, bucket_lengths
from rnnscan.train._data import batches, epoch_order

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No influence from the user's environment; caches inside tmp_path."""
    for var in (rd.DATA_DIR_ENV, rd.WORM_SAMPLE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(rd.CACHE_DIR_ENV, str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- .ts files


def _value(v: float) -> str:
    return "?" if np.isnan(v) else f"{v:.6g}"


def write_ts(path: Path, series: list[np.ndarray], labels: list[str], classes: list[str]) -> None:
    """A ``.ts`` file of series ``(C, T_i)`` of any lengths; NaN is written as ``?``."""
    lengths = {s.shape[1] for s in series}
    missing = any(np.isnan(s).any() for s in series)
    header = [
        f"@problemName {path.stem.split('_')[0]}",
        "@timeStamps false",
        f"@missing {'true' if missing else 'false'}",
        f"@univariate {'true' if series[0].shape[0] == 1 else 'false'}",
        f"@dimensions {series[0].shape[0]}",
        f"@equalLength {'true' if len(lengths) == 1 else 'false'}",
        *([f"@seriesLength {lengths.pop()}"] if len(lengths) == 1 else []),
        f"@classLabel true {' '.join(classes)}",
        "@data",
    ]
    rows = [
        ":".join(",".join(_value(v) for v in channel) for channel in s) + f":{label}"
        for s, label in zip(series, labels, strict=True)
    ]
    path.write_text("\n".join(header + rows) + "\n")


def make_problem(
    root: Path,
    name: str,
    *,
    n_train: int = 24,
    n_test: int = 16,
    lengths: tuple[int, int] = (6, 24),
    channels: int = 2,
    missing_rate: float = 0.0,
    seed: int = 0,
) -> dict[str, list]:
    """Two-class series of unequal length whose class is the sign of their mean; returns
    what was written (the reference)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for part, n in (("TRAIN", n_train), ("TEST", n_test)):
        labels = [str(i % 2) for i in range(n)]
        series = []
        for label in labels:
            t = int(rng.integers(lengths[0], lengths[1] + 1))
            s = rng.normal(1.0 if label == "1" else -1.0, 1.0, (channels, t))
            s[rng.random(s.shape) < missing_rate] = np.nan
            series.append(s)
        write_ts(root / f"{name}_{part}.ts", series, labels, ["0", "1"])
        written[part] = (series, labels)
    return written


# ----------------------------------------------------------------------------- loading


def test_unequal_lengths_are_padded_with_lengths(tmp_path):
    written = make_problem(tmp_path, "Ragged", n_train=5, n_test=3, lengths=(3, 11))
    series = rd.read_uea("Ragged", tmp_path)
    reference = written["TRAIN"][0] + written["TEST"][0]
    lengths = [s.shape[1] for s in reference]
    assert series.X.shape == (8, max(lengths), 2)
    np.testing.assert_array_equal(series.lengths, lengths)
    for i, s in enumerate(reference):
        np.testing.assert_allclose(series.X[i, : lengths[i]], s.T, rtol=1e-5)  # nothing cut
        assert np.all(series.X[i, lengths[i] :] == 0)
    assert series.n_official_train == 5


def test_standardisation_over_valid_observed_steps_only():
    rng = np.random.default_rng(1)
    X = rng.normal(3.0, 2.0, (4, 10, 2)).astype(np.float32)
    lengths = np.array([10, 3, 7, 5])
    X[1, 1, 0] = np.nan
    X[np.arange(10)[None, :] >= lengths[:, None]] = 1e6  # junk in the padding
    values = np.concatenate([X[i, :n] for i, n in enumerate(lengths)])
    for method in ("standard", "robust"):
        st = Standardizer.fit(X, method, lengths=lengths)
        for c in range(2):
            v = values[:, c][~np.isnan(values[:, c])].astype(np.float64)
            if method == "standard":
                center, scale = v.mean(), v.std()
            else:
                q25, center, q75 = np.quantile(v, [0.25, 0.5, 0.75])
                scale = (q75 - q25) / 1.3489795003921634
            np.testing.assert_allclose([st.center[c], st.scale[c]], [center, scale], rtol=1e-6)
    Z = Standardizer.fit(X, lengths=lengths).transform(X, lengths)
    assert np.all(Z[np.arange(10)[None, :] >= lengths[:, None]] == 0)
    assert np.isnan(Z[1, 1, 0])


def test_missing_values_refused_by_default_naming_file_count_and_option(tmp_path):
    nan = np.nan
    s = [np.array([[1.0, nan, 3.0]]), np.array([[nan, nan]])]
    write_ts(tmp_path / "Gaps_TRAIN.ts", s, ["a", "b"], ["a", "b"])
    write_ts(tmp_path / "Gaps_TEST.ts", [np.array([[1.0, 2.0]])], ["a"], ["a", "b"])
    with pytest.raises(DataFormatError) as info:
        rd.read_uea("Gaps", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "Gaps_TRAIN.ts") in message
    assert "3 missing values" in message and "data.missing=ffill" in message


def test_fill_missing_ffill_zero_and_mask():
    nan = np.nan
    X = np.array(
        [
            [[nan, 1.0], [2.0, nan], [nan, nan], [5.0, 3.0], [9.0, 9.0]],  # length 4
            [[nan, nan], [nan, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],  # length 2
        ],
        np.float32,
    )
    lengths = np.array([4, 2])
    ffill = rd.fill_missing(X, lengths, "ffill", mask=True)
    expected = np.array(
        [
            [[2.0, 1.0], [2.0, 1.0], [2.0, 1.0], [5.0, 3.0], [0.0, 0.0]],  # backfill the start
            [[0.0, 4.0], [0.0, 4.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],  # no value: 0
        ]
    )
    np.testing.assert_array_equal(ffill[..., :2], expected)
    observed = np.array(
        [
            [[0, 1], [1, 0], [0, 0], [1, 1], [0, 0]],
            [[0, 0], [0, 1], [0, 0], [0, 0], [0, 0]],
        ]
    )
    np.testing.assert_array_equal(ffill[..., 2:], observed)
    zero = rd.fill_missing(X, lengths, "zero")
    np.testing.assert_array_equal(zero, np.where(observed == 1, np.nan_to_num(X), 0.0))


def test_load_uea_fills_and_caches_lengths(tmp_path):
    make_problem(tmp_path / "ts", "Holes", missing_rate=0.1)
    kwargs = dict(val_fraction=0.25, missing="ffill", missing_mask=True, cache_dir=tmp_path / "c")
    first = rd.load_uea("Holes", tmp_path / "ts", **kwargs)
    second = rd.load_uea("Holes", tmp_path / "ts", **kwargs)  # from the cache
    assert first.num_channels == 4 and first.variable_length
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(first.part(part)[0], second.part(part)[0])
        np.testing.assert_array_equal(first.lengths(part), second.lengths(part))
        X, lengths = first.part(part)[0], first.lengths(part)
        assert np.all(np.isfinite(X))
        assert np.all(X[np.arange(X.shape[1])[None, :] >= lengths[:, None]] == 0)
    assert len(list((tmp_path / "c" / "prepared").iterdir())) == 1
    # The statistics are those of the observed training values (the reference).
    series = rd.read_uea("Holes", tmp_path / "ts", missing="ffill")
    train = series.X[first.split.train]
    values = np.concatenate([x[:n] for x, n in zip(train, series.lengths[first.split.train])])
    np.testing.assert_allclose(first.standardizer.center, np.nanmean(values, 0), rtol=1e-5)


# ----------------------------------------------------------------------------- the model


def _padded(x, lengths, T, junk=7.0):
    """``x`` padded to ``T`` steps with junk after each series' end."""
    out = jnp.full((x.shape[0], T, x.shape[2]), junk, x.dtype).at[:, : x.shape[1]].set(x)
    return jnp.where((jnp.arange(T)[None, :] < lengths[:, None])[..., None], out, junk)


def test_padding_never_changes_a_prediction():
    """Logits of a padded batch (junk after each end) equal those of each series run alone
    at its own length, for every method; and the outputs of Bidirectional likewise."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 3), jnp.float32)
    lengths = jnp.array([12, 5])

    def classifier(method):
        return SequenceClassifier(
            3, 4, hidden_features=4, num_blocks=1, method=method, on_failure="return",
            rngs=nnx.Rngs(0),
        )  # fmt: skip

    unpadded = nnx.jit(lambda m, x: m(x))
    padded = nnx.jit(lambda m, x, n: m(x, n))
    reference_model = classifier("sequential")  # the same parameters for every method
    reference = jnp.concatenate(
        [unpadded(reference_model, x[:1]), unpadded(reference_model, x[1:, :5])]
    )
    # Series 1 (5 steps) padded to 12 and to 19 steps; one padded length per method keeps
    # the compilations few.
    for method, T in (
        ("sequential", 19),
        ("newton", 12),
        ("quasi_newton", 19),
        ("fixed_point", 12),
    ):
        logits = padded(classifier(method), _padded(x, lengths, T), lengths)
        np.testing.assert_allclose(logits, reference, atol=1e-6, err_msg=f"{method} T={T}")

    def rnn(seed):
        cell = GRUCell(3, 4, rngs=nnx.Rngs(seed))
        return RNN(cell, method="quasi_newton", on_failure="return")

    bi = Bidirectional(rnn(1), rnn(2))
    out = nnx.jit(lambda m, x, n: m(x, seq_lengths=n))(bi, _padded(x, lengths, 19), lengths)
    alone = nnx.jit(lambda m, x: m(x))(bi, x[1:, :5])
    np.testing.assert_allclose(out[1, :5], alone[0], atol=1e-6)


# ----------------------------------------------------------------------------- buckets


def test_buckets_cover_every_series_once_with_fitting_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(7, 30, 101)
    plan = BatchPlan(lengths, 29, batch_size=8, drop_last=False, seed=3, num_buckets=4)
    assert plan.lengths == bucket_lengths(lengths, 4, 29) and plan.lengths[-1] == 29
    assert len(plan.lengths) == 4
    steps = plan.steps_per_epoch(101)
    seen = []
    for position in range(steps):
        batch = plan.batch(101, 1, position)
        assert batch.indices.shape == (8,) and batch.length in plan.lengths  # fixed shapes
        real = batch.indices[batch.weights > 0]
        assert np.all(lengths[batch.indices] <= batch.length)
        seen += real.tolist()
    assert sorted(seen) == list(range(101))
    with pytest.raises(IndexError):
        plan.batch(101, 1, steps)
    # A pure function of (seed, epoch); another epoch, another order.
    again = BatchPlan(lengths, 29, batch_size=8, drop_last=False, seed=3, num_buckets=4)
    assert np.array_equal(again.batch(101, 1, 0).indices, plan.batch(101, 1, 0).indices)
    assert not all(
        np.array_equal(plan.batch(101, 1, p).indices, plan.batch(101, 2, p).indices)
        for p in range(steps)
    )
    # Fewer padded steps than padding every batch to the longest series.
    computed, valid = plan.padded_steps(101)
    one = BatchPlan(lengths, 29, batch_size=8, drop_last=False, seed=3, num_buckets=1)
    computed_one, valid_one = one.padded_steps(101)
    assert valid == valid_one == lengths.sum() and computed < 0.8 * computed_one
    # Evaluation batches: every series once, each in a bucket that holds it.
    eval_seen = []
    for batch in plan.eval_batches(lengths, 101, 16):
        assert np.all(lengths[batch.indices] <= batch.length)
        eval_seen += batch.indices[batch.weights > 0].tolist()
    assert sorted(eval_seen) == list(range(101))


def test_one_bucket_keeps_the_original_batches():
    plan = BatchPlan(None, 50, batch_size=4, drop_last=False, seed=5, num_buckets=4)
    reference = list(batches(epoch_order(10, 5, 2), 4, False))
    assert plan.steps_per_epoch(10) == len(reference) == 3
    for position, expected in enumerate(reference):
        got = plan.batch(10, 2, position)
        assert np.array_equal(got.indices, expected.indices) and got.length is None
        assert np.array_equal(got.weights, expected.weights)


# ----------------------------------------------------------------------------- training


#: A tiny model and run: width 4, one block, sequential, two epochs.
TINY = [
    "data.split=official",
    "data.val_fraction=0.25",
    "model.hidden_features=4",
    "model.num_blocks=1",
    "model.method=sequential",
    "train.batch_size=6",
    "train.eval_batch_size=6",  # val (6 series) and test share one shape per bucket
    "train.epochs=2",
    "train.progress=false",
    "checkpoint.enabled=false",
]


def _sets(overrides: list[str]) -> list[str]:
    return [token for text in overrides for token in ("--set", text)]


def _train_args(root: Path, name: str, out: Path, *extra: str) -> list[str]:
    where = ["--data-dir", str(root), "--out-dir", str(out)]
    return [*where, *_sets([f"data.source=uea:{name}", *TINY]), *extra]


#: Missing values carried forward with a mask, two length buckets (the training test and
#: the suite test use the same data and settings, so the second reuses the compilations).
FILLED = ["data.missing=ffill", "data.missing_mask=true", "data.length_buckets=2"]


def test_cli_trains_unequal_lengths_with_missing_values_in_buckets(tmp_path, capsys):
    make_problem(tmp_path / "ts", "Vowelish", missing_rate=0.05)
    args = _sets(FILLED)
    assert cli.main(_train_args(tmp_path / "ts", "Vowelish", tmp_path / "run", *args)) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["variable_length"] and summary["data"]["channels"] == 4
    assert summary["data"]["length_range"][1] <= 24
    assert summary["test"]["count"] == 16  # every test series evaluated once
    train_records = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    assert len(train_records) == summary["steps"] and summary["steps"] >= 2
    # One compilation per bucket, not per batch (this run's steps were cached last).
    train_step = list(_steps._STEPS_CACHE.values())[-1].train_step
    if hasattr(train_step, "_cache_size"):
        assert train_step._cache_size() == 2


# ----------------------------------------------------------------------------- errors


def _cli_error(capsys, argv: list[str]) -> str:
    try:
        code = cli.main(argv)
    except SystemExit as exit:  # argparse's errors exit (with status 2)
        code = exit.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    out = ["--out-dir", str(tmp_path / "out"), "--set", "train.progress=false"]
    # Missing data directory.
    line = _cli_error(
        capsys, ["--set", "data.source=uea:X", "--data-dir", str(tmp_path / "no"), *out]
    )
    assert str(tmp_path / "no") in line and "does not exist" in line and "--data-dir" in line
    # A truncated .ts file (the last series cut in the middle).
    make_problem(tmp_path / "ts", "Cut", n_train=4, n_test=4)
    train_file = tmp_path / "ts" / "Cut_TRAIN.ts"
    text = train_file.read_text()
    train_file.write_text(text[: text.rindex(":")].rsplit(":", 1)[0])
    line = _cli_error(
        capsys, ["--set", "data.source=uea:Cut", "--data-dir", str(tmp_path / "ts"), *out]
    )
    assert str(train_file) in line and "truncated" in line
    # A file that stops after its header.
    train_file.write_text(text[: text.index("@data") + 6])
    line = _cli_error(
        capsys, ["--set", "data.source=uea:Cut", "--data-dir", str(tmp_path / "ts"), *out]
    )
    assert str(train_file) in line and "no series" in line
    # Infinite values.
    write_ts(
        train_file, [np.array([[1.0, np.inf]]), np.array([[0.0, 1.0]])], ["0", "1"], ["0", "1"]
    )
    line = _cli_error(
        capsys, ["--set", "data.source=uea:Cut", "--data-dir", str(tmp_path / "ts"), *out]
    )
    assert str(train_file) in line and "1 infinite values" in line
    # Missing values with the default data.missing=error.
    make_problem(tmp_path / "ts", "Holes", n_train=4, n_test=4, missing_rate=0.2, seed=1)
    line = _cli_error(
        capsys, ["--set", "data.source=uea:Holes", "--data-dir", str(tmp_path / "ts"), *out]
    )
    assert "Holes_TRAIN.ts" in line and "missing values" in line and "data.missing=ffill" in line
    # Bad configuration: an unknown key, a bad value, a missing or malformed config file.
    line = _cli_error(capsys, ["--set", "data.mising=ffill", *out])
    assert "data.mising" in line and "missing" in line
    line = _cli_error(capsys, ["--set", "data.missing=fill", *out])
    assert "data.missing" in line and "error | zero | ffill" in line
    line = _cli_error(capsys, ["--config", str(tmp_path / "none.yaml")])
    assert "none.yaml" in line
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    line = _cli_error(capsys, ["--config", str(tmp_path / "bad.yaml")])
    assert "YAML" in line
    line = _cli_error(capsys, ["--no-such-flag"])
    assert "--no-such-flag" in line
    # Bad resume directory: absent, or a directory that is not a run.
    line = _cli_error(capsys, ["--resume", str(tmp_path / "nothing")])
    assert "nothing" in line and "does not exist" in line
    line = _cli_error(capsys, ["--resume", str(tmp_path / "ts")])
    assert "config.yaml" in line
    # --debug shows the traceback instead.
    with pytest.raises(DataFormatError):
        cli.main(
            ["--set", "data.source=uea:Holes", "--data-dir", str(tmp_path / "ts"), "--debug", *out]
        )


def test_cli_errors_print_no_traceback_in_a_subprocess(tmp_path):
    """The real command (one process start: the in-process test covers the cases)."""
    make_problem(tmp_path, "Holes", n_train=4, n_test=4, missing_rate=0.2)
    argv = ["--set", "data.source=uea:Holes", "--data-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "rnnscan.train", *argv, "--out-dir", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Holes_TRAIN.ts" in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- the suite


def _ffill_rows(x: np.ndarray) -> np.ndarray:
    """``(C, T)`` with each row's NaN replaced by the last value before (or the first after)."""
    out = x.copy()
    for row in out:
        seen = np.flatnonzero(~np.isnan(row))
        for t in np.flatnonzero(np.isnan(row)):
            before = seen[seen < t]
            row[t] = row[before[-1]] if before.size else row[seen[0]]
    return out


def test_suite_writes_one_table_with_baselines(tmp_path, capsys):
    from rnnscan.train import suite

    make_problem(tmp_path / "ts", "Ragged", missing_rate=0.05)  # as in the training test
    make_problem(tmp_path / "ts" / "Broken", "Broken", n_train=4, n_test=4)
    (tmp_path / "ts" / "Broken" / "Broken_TEST.ts").write_text("@problemName Broken\n@data\n")
    assert suite.find_problems(tmp_path / "ts") == ["Broken", "Ragged"]
    argv = ["--data-dir", str(tmp_path / "ts"), "--out-dir", str(tmp_path / "suite")]
    argv += ["--baselines", "euclidean", *_sets(TINY + FILLED)]
    # Broken's test file is truncated: its row says so and the runner goes on.
    assert suite.main(argv) == 1
    rows = json.loads((tmp_path / "suite" / "results.json").read_text())
    assert [r["problem"] for r in rows] == ["Broken", "Ragged"]
    assert "Broken_TEST.ts" in rows[0]["error"]
    ragged = rows[1]
    assert 0 <= ragged["accuracy"] <= 1 and ragged["wall_s"] > 0
    # The baseline is aeon's 1-NN on the same split (the official training file vs test),
    # on the series as written with the gaps carried forward.
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier
    from aeon.datasets import load_from_ts_file

    def read(part):
        X, y = load_from_ts_file(str(tmp_path / "ts" / f"Ragged_{part}.ts"))
        return [_ffill_rows(x) for x in X], y

    (X_tr, y_tr), (X_te, y_te) = read("TRAIN"), read("TEST")
    knn = KNeighborsTimeSeriesClassifier(distance="euclidean", n_neighbors=1).fit(X_tr, y_tr)
    assert ragged["euclidean_accuracy"] == pytest.approx(np.mean(knn.predict(X_te) == y_te))
    table = (tmp_path / "suite" / "results.md").read_text()
    assert "| Ragged |" in table and "1-NN ED" in table and "error: " in table
    pytest.importorskip("matplotlib")
    assert (tmp_path / "suite" / "results.png").is_file()
