"""Smoke tests of the benchmark suite: the quick configuration at tiny sizes, complete
records, resuming, plots and the report. No speed assertions."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OPTIMIZATION_FLAG

from benchmarks import _config, _report, _results

REPO = Path(__file__).resolve().parent.parent
QUICK = REPO / "configs" / "benchmarks" / "quick.yaml"
TINY = [
    "--set",
    "length=[8]",
    "--set",
    "hidden=[2]",
    "--set",
    "repeats=1",
    "--set",
    "min_repeats=1",
]


def run_benchmarks(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The quick config at T = 8, n = 2, run in two parts: GRU only, then everything with
    --resume (which must skip the GRU cases)."""
    out = tmp_path_factory.mktemp("bench") / "tiny.jsonl"
    first = run_benchmarks(
        "--config", str(QUICK), "--out", str(out), *TINY, "--only", "cell=gru", "--no-progress"
    )
    assert first.returncode == 0, first.stderr
    gru_lines = out.read_text().splitlines()
    second = run_benchmarks(
        "--config", str(QUICK), "--out", str(out), *TINY, "--resume", "--no-progress"
    )
    assert second.returncode == 0, second.stderr
    assert f"({len(gru_lines)} already done)" in second.stderr
    return out, _results.read_records(out)


def expected_cases() -> list[_config.Case]:
    config = _config.load_config(QUICK, TINY[1::2])
    return _config.expand_cases(config)


def test_every_case_has_one_complete_record(tiny_results):
    _, records = tiny_results
    expected = {case.key for case in expected_cases()}
    keys = [record["key"] for record in records]
    assert sorted(keys) == sorted(expected), "each case exactly once (resume skipped the done ones)"
    for record in records:
        assert set(_results.RECORD_FIELDS) <= set(record), record["key"]
        assert record["status"] == "ok", (record["key"], record["reason"])
        assert record["fair"] is True
        timing = record["timing"]
        assert timing["repeats"] == len(timing["times_s"]) >= 1
        assert timing["compile_s"] > 0 and timing["median_s"] > 0
        assert timing["min_s"] <= timing["median_s"] and timing["iqr_s"] >= 0
        assert record["memory"]["xla"]["total_bytes"] > 0
        assert record["memory"]["estimate_bytes"] > 0
        assert "device_peak_bytes" in record["memory"]
        assert record["speedup_vs_sequential"] > 0
        solver = record["solver"]
        assert solver["fell_back"] is False and solver["converged_all"] is True
        provenance = record["provenance"]
        for field in ("date_utc", "device", "versions", "git", "config", "jax_enable_x64"):
            assert field in provenance
        assert provenance["device"]["platform"] == "cpu"
        assert provenance["device"]["device_count"] >= 1
        for library in ("jax", "jaxlib", "flax", "rnnscan", "python"):
            assert provenance["versions"][library]
        assert provenance["config"]["name"] == "quick"
        assert "/work" not in json.dumps(provenance), "no machine paths"


def test_parallel_methods_match_the_sequential_reference(tiny_results):
    _, records = tiny_results
    for record in records:
        case, accuracy = record["case"], record["accuracy"]
        if case["method"] == "sequential":
            assert accuracy == {"reference": "self"}
            assert record["solver"]["iterations_max"] == 0
            continue
        assert accuracy["reference"] == "sequential"
        assert record["solver"]["iterations_max"] >= 1
        if case["mode"] == "forward":
            assert accuracy["max_abs_dev"] < 1e-4, record["key"]
        else:
            assert accuracy["grad_rel_dev"] < 1e-3, record["key"]
            assert accuracy["loss_abs_dev"] < 1e-5, record["key"]


def test_resume_with_nothing_left_runs_nothing(tiny_results):
    out, records = tiny_results
    again = run_benchmarks(
        "--config", str(QUICK), "--out", str(out), *TINY, "--resume", "--no-progress"
    )
    assert again.returncode == 0, again.stderr
    assert f"({len(records)} already done)" in again.stderr
    assert len(_results.read_records(out)) == len(records)


def test_plots_and_report(tiny_results, tmp_path):
    from benchmarks._plot import plot_all

    _, records = tiny_results
    written = plot_all(records, tmp_path)
    names = {path.name for path in written}
    for cell in ("gru", "diag_gru", "min_gru"):
        for kind in ("speedup", "time", "memory"):
            assert f"{kind}-{cell}-B1-float32.png" in names
    assert all(path.stat().st_size > 1000 for path in written)
    text = _report.report(records)
    assert "### Forward pass" in text and "### Training step" in text
    assert "| gru | 2 | 8 | 1 | float32 |" in text


def test_unstable_systems_report_regenerates_the_committed_table(tmp_path):
    """The committed results file, read back through report() and plot(), gives the
    committed markdown table (what the docs quote) and a figure."""
    pytest.importorskip("matplotlib")
    from experiments import unstable_systems

    results = Path(__file__).resolve().parent.parent / "results"
    records = [
        json.loads(line)
        for line in (results / "unstable-systems-cpu-2026-12-03.jsonl").read_text().splitlines()
    ]
    committed = (results / "unstable-systems-cpu-2026-12-03.md").read_text()
    assert "## Unstable, not chaotic\n\n" + unstable_systems.report(records) == committed
    unstable_systems.plot(records, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").stat().st_size > 1000


def test_deer_comparison_in_report():
    ok = {
        "status": "ok",
        "timing": {"median_s": 1.0},
        "solver": {"iterations_max": 3, "fell_back": False},
        "provenance": {},
    }
    records = []
    for method, median in (("sequential", 20.0), ("newton", 1.0)):
        case = _config.Case("gru", 1, 1000, 16, "float32", method, "forward")
        record = copy.deepcopy(ok)
        record.update(key=case.key, reference_key=case.reference_key, case=case.as_dict())
        record["timing"]["median_s"] = median
        records.append(record)
    text = _report.report(records)
    assert "Comparison with the published DEER speed-ups" in text
    assert "| 1,000 | 18× | 1 s (20.0×, 3 it) | 20 s | 41× | not run | not run |" in text


def test_max_minutes_stops_before_any_case(tmp_path):
    from benchmarks._run import run_sweep

    config = _config.load_config(QUICK, TINY[1::2])
    summary = run_sweep(
        config,
        config_path=QUICK,
        overrides=[],
        filters=[],
        out=tmp_path / "none.jsonl",
        resume=False,
        max_minutes=0,
        progress=False,
        verbose=False,
    )
    assert summary["out_of_time"] and summary["left"] == summary["selected"] > 0
    assert not (tmp_path / "none.jsonl").read_text()


def test_config_overrides_filters_and_exclusions():
    config = _config.load_config(
        QUICK, ["length=[1k, 2M]", "repeats=7", "grids.1.hidden=[8]", "cell_options.cprnn.rank=4"]
    )
    assert config["repeats"] == 7
    assert all(grid["length"] == [1000, 2_000_000] for grid in config["grids"])
    assert config["grids"][1]["hidden"] == [8]
    assert config["cell_options"] == {"cprnn": {"rank": 4}}
    cases = _config.expand_cases(config)
    assert not [c for c in cases if c.method == "quasi_newton" and c.hidden == 32], "excluded"
    first_of_problem = {}
    for case in cases:
        first_of_problem.setdefault((case.problem, case.mode), case.method)
    assert set(first_of_problem.values()) == {"sequential"}, "the reference runs first"
    selected = _config.select(
        cases, [_config.parse_filter("cell=min_gru"), _config.parse_filter("length=2M")]
    )
    assert selected and all(c.cell == "min_gru" and c.length == 2_000_000 for c in selected)
    assert _config.parse_size("300k") == 300_000
    with pytest.raises(_config.ConfigError):
        _config.load_config(QUICK, ["methods=[newton, magic]"])
    with pytest.raises(_config.ConfigError):
        _config.parse_filter("colour=red")


def test_devices_axis(tmp_path):
    """``devices`` splits time over local devices: keys stay as before at one device, a
    2-device case matches its sequential reference, and one asking for more devices than
    the machine has is recorded as skipped."""
    config = _config.load_config(QUICK, [*TINY[1::2], "devices=[1,2,4]"])
    cases = _config.expand_cases(config)
    assert {c.devices for c in cases} == {1, 2, 4}
    one = next(c for c in cases if c.devices == 1)
    assert "|D=" not in one.key and one.key in {c.key for c in expected_cases()}
    assert _config.select(cases, [_config.parse_filter("devices=2")])[0].key.endswith("|D=2")

    out = tmp_path / "devices.jsonl"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {OPTIMIZATION_FLAG}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--config", str(QUICK), "--out", str(out)]
        + [*TINY, "--set", "devices=[2,4]", "--only", "cell=gru", "--only", "mode=forward"]
        + ["--only", "method=sequential,newton", "--only", "hidden=2", "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    records = _results.read_records(out)
    by_devices = {}
    for record in records:
        by_devices.setdefault(record["case"]["devices"], []).append(record)
    assert {r["status"] for r in by_devices[4]} == {"skipped"}
    assert {r["status"] for r in by_devices[2]} == {"ok"}
    newton = next(r for r in by_devices[2] if r["case"]["method"] == "newton")
    assert newton["accuracy"]["reference"] == "sequential"
    assert newton["accuracy"]["max_abs_dev"] < 1e-4
