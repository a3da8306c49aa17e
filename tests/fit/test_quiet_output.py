"""Quiet output: a real ``python -m lightning_fusion.fit`` prints our lines, not other libraries' warnings.

It runs in a subprocess, as a user runs it: pytest's own ``filterwarnings`` and its capture of logging
do not apply there, so whatever MLflow, Lightning, torch or torchmetrics print is in the output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_ROOT, small_overrides

# A warning, a tip or a deprecation; a Python warning ("<file>.py:<line>: ...", which Lightning prints
# without its category for any path with "lightning" in it, ours included); a progress bar (stderr is
# not a terminal here, so Lightning's is off and any other is foreign, e.g. MLflow's "Downloading artifacts");
# and the other libraries' INFO lines that lightning_fusion.cli silences.
FOREIGN = re.compile(
    r"warning|\btip\b|deprecat|^\S+\.py:\d+: |\d+%\|"
    r"|MLflow database tables|Experiment with name|checkpoint path at|from the checkpoint at|Validating input example"
    r"|to estimate number of stepping batches",
    re.IGNORECASE,
)


@pytest.mark.slow
def test_fit_prints_no_foreign_lines(small_cohort, mlflow_store, tmp_path):
    overrides = small_overrides(  # the pyfunc model and explanations stay on, as by default
        small_cohort,
        **{
            "trainer.max_epochs": 1,
            "tracking.artifact_root": mlflow_store["artifacts"],
            "data.image_size": 64,  # test_resnet's last feature map is 1x1 at 32 px: Grad-CAM rightly warns
            "optim.schedule": "cosine",  # asks the trainer for its step count, which Lightning announces
        },
    )
    argv = []
    for key, value in overrides.items():
        argv += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "lightning_fusion.fit", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    output = (done.stdout + done.stderr).replace(str(tmp_path), "<tmp>")  # the test's name is in tmp_path
    assert done.returncode == 0, output
    assert "MLflow run " in done.stdout and "predict: python -m lightning_fusion.predict" in done.stdout
    foreign = [line for line in output.splitlines() if FOREIGN.search(line)]
    assert not foreign, "other libraries' lines in the output of fit:\n" + "\n".join(foreign)
    # the logged pyfunc model has its input example (MLflow warns without one)
    client = MlflowClient(mlflow_store["uri"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    files = {f.path for f in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/input_example.json", "model/serving_input_example.json"} <= files
