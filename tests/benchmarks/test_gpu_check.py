"""benchmarks/gpu_check.sh --cpu: the GPU check's every step at the smallest sizes, and its summary table."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import PROJECT_ROOT


@pytest.mark.slow
def test_the_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    env = os.environ | {"OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(PROJECT_ROOT / "benchmarks" / "gpu_check.sh"), "--cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = (tmp_path / "out" / "gpu_check.md").read_text()
    steps = [
        "fit (test, explanations, pyfunc logged)",
        "pyfunc model prediction",
        "predict from the run",
        "fit --cv 2",
        "sweep: 4 trials, 2 workers",
        "throughput benchmark",
    ]
    for step in steps:
        assert f"| {step} | ok |" in summary, summary
    assert "| throughput ablation (ResNet-50) | skipped | 0 | GPU only |" in summary
    assert summary in done.stdout  # the table is printed at the end
    assert (tmp_path / "out" / "throughput.json").is_file()
