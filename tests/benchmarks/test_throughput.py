"""benchmarks/throughput.py at tiny sizes on the CPU: it runs both paths and reports every field."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "benchmarks" / "throughput.py"
TINY = ["--cpu", "--tiny", "--backbone", "test_resnet", "--fusion-backbone", "test_resnet", "--image-size", "32"]


def _run(tmp_path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / "throughput.json"
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            *TINY,
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "1",
            "--json",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_the_benchmark_reports_both_paths_the_ratio_and_the_loader(tmp_path):
    stdout, data = _run(tmp_path, "--workload", "all")
    assert data["mlflow"] == "off" and "MLflow off" in stdout and "synthetic uint8" in stdout
    assert [r["workload"] for r in data["results"]] == ["resnet50", "fusion"]
    for result in data["results"]:
        for key in ("raw_img_s", "framework_img_s", "loader_img_s", "ratio"):
            assert math.isfinite(result[key]) and result[key] > 0, key
        assert result["ratio"] == pytest.approx(result["framework_img_s"] / result["raw_img_s"])
        assert result["raw_peak_gpu_mib"] is None  # no GPU memory on the CPU
        assert result["settings"]["pipeline"] == "per_sample" and result["settings"]["num_workers"] == 0
    assert "| resnet50: timm test_resnet, 32 px, 3 channels |" in stdout
    assert not list(tmp_path.glob("mlflow.db")) and not list(tmp_path.glob("mlruns"))  # MLflow stayed off


@pytest.mark.slow
def test_the_ablation_has_one_row_per_step(tmp_path):
    stdout, data = _run(tmp_path, "--workload", "resnet50", "--ablate")
    rows = data["results"][0]["ablation"]
    assert [r["step"].split(":")[0] for r in rows][:2] == ["as before", "+ device pipeline"]
    assert rows[0]["settings"]["pipeline"] == "per_sample" and rows[1]["settings"]["pipeline"] == "device"
    assert rows[4]["settings"]["channels_last"] is True
    assert "skipped" in rows[-1]  # torch.compile on the CPU only with --compile
    assert all(math.isfinite(r["img_s"]) for r in rows if "img_s" in r)
    assert "ablation, resnet50" in stdout
