"""benchmarks/memory.py at tiny sizes: every fit runs in its own process and reports its memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "benchmarks" / "memory.py"


@pytest.mark.slow
def test_the_benchmark_measures_each_fit_with_and_without_the_memory_map(tmp_path):
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    work, out = tmp_path / "work", tmp_path / "memory.json"
    tiny = ["--n", "20", "--image-size", "32", "--train-batches", "2", "--no-ddp"]
    command = [sys.executable, str(SCRIPT), *tiny, "--work", str(work)]
    done = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["single"]
    assert sorted((r["memory_map"], r["images"]) for r in rows) == [(False, 20), (False, 80), (True, 20), (True, 80)]
    for row in rows:
        assert row["peak_rss_mib"] >= row["peak_anon_mib"] > 100  # torch alone is more than 100 MiB
        assert row["at_peak_pss"]["Pss"] > 0 and row["samples"] > 1
        assert 0 <= row["test_balanced_accuracy"] <= 1  # the fit really trained and tested
    # the mapped fits wrote one file per split (20 and 80 images), the others none
    assert len(list((work / "cache" / "memory_map").glob("*.npy"))) == 6
    assert "| 80 | on |" in done.stdout and "memory map on: peak RSS" in done.stdout
