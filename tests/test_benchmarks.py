"""Smoke test of the benchmark suite: the quick config at tiny sizes, its results file, the
report, the figures and --resume. No speed assertions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set",
    "length=[8, 16]",
    "--set",
    "hidden=[2]",
    "--set",
    "repeats=1",
    "--set",
    "min_repeats=1",
]


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _expected_keys():
    listed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--config", "configs/quick.yaml", *TINY, "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(listed.stdout.split())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.jsonl"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = main(["--config", "configs/quick.yaml", *TINY, "--out", str(out), "--no-progress"])
    finally:
        os.chdir(cwd)
    assert code == 0
    return out


def test_every_case_has_a_complete_record(results):
    records = _records(results)
    keys = {r["key"] for r in records}
    assert keys == _expected_keys() and len(records) == len(keys)
    for r in records:
        assert r["status"] == "ok", (r["key"], r["reason"])
        timing = r["timing"]
        assert timing["compile_s"] > 0 and len(timing["times_s"]) >= 1
        assert timing["median_s"] > 0 and timing["min_s"] <= timing["median_s"]
        assert r["speedup_vs_sequential"] > 0
        assert r["memory"]["xla"]["total_bytes"] > 0
        provenance = r["provenance"]
        assert provenance["device"]["platform"] == "cpu"
        assert {"jax", "jaxlib", "flax", "rnnscan"} <= set(provenance["versions"])
        assert provenance["config"]["name"] == "quick" and provenance["date_utc"]
        assert "commit" in provenance["git"]
        if r["case"]["method"] != "sequential":
            assert r["fair"] and not r["solver"]["fell_back"]
            assert r["solver"]["iterations_max"] >= 1
            deviation = r["accuracy"]
            bound = 1e-4 if r["case"]["mode"] == "forward" else 1e-3
            worst = max(v for k, v in deviation.items() if isinstance(v, float))
            assert worst < bound, (r["key"], deviation)


def test_report_and_figures(results, tmp_path):
    assert main(["report", str(results), "--out", str(tmp_path / "report.md")]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "Forward pass" in report and "Training step" in report
    assert main(["plot", str(results), "--out-dir", str(tmp_path / "figures")]) == 0
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert any(p.name.startswith("speedup-gru") for p in pngs)
    assert all(p.stat().st_size > 1000 for p in pngs)


def test_resume_skips_finished_cases(results, tmp_path):
    partial = tmp_path / "partial.jsonl"
    lines = Path(results).read_text().splitlines()
    partial.write_text("\n".join(lines[:3]) + "\n")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = main(
            [
                "--config",
                "configs/quick.yaml",
                *TINY,
                "--out",
                str(partial),
                "--resume",
                "--no-progress",
            ]
        )
    finally:
        os.chdir(cwd)
    assert code == 0
    keys = [r["key"] for r in _records(partial)]
    assert len(keys) == len(set(keys)) == len(_expected_keys())
