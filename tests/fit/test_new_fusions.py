"""The fusions of issue 17 end to end on the demo layout (32 px): ``fit`` and ``compare`` take them by name;
auxiliary unimodal losses are logged."""

import contextlib
import io

import numpy as np
import pytest

from lightning_fusion.compare import __main__ as compare_cli
from lightning_fusion.fit import __main__ as fit_cli
from tests.conftest import all_runs, cli_argv, small_overrides


@pytest.mark.parametrize(
    "options",
    [
        ["--model.fusion.name", "lmf", "--model.fusion.rank", "2", "--model.aux_loss_weight", "0.5"],
        ["--model.fusion.name", "film"],
        ["--model.fusion.name", "daft", "--model.fusion.stage", "2"],
    ],
    ids=["lmf", "film", "daft"],
)
def test_fit_trains_and_tests_the_new_fusions_by_name(small_cohort, mlflow_store, options):
    argv = cli_argv(small_overrides(small_cohort, **{"trainer.max_epochs": 1})) + options
    with contextlib.redirect_stdout(io.StringIO()):
        assert fit_cli.main(argv) == 0
    (run,) = all_runs(mlflow_store["uri"])
    assert run.info.status == "FINISHED" and run.data.tags["lf.fusion"] == options[1]
    assert np.isfinite(run.data.metrics["test/loss"]) and "test/auroc" in run.data.metrics
    if "--model.aux_loss_weight" in options:  # the auxiliary unimodal losses, logged beside the loss
        assert np.isfinite(run.data.metrics["train/aux_loss"]) and run.data.metrics["train/aux_loss"] > 0
    else:
        assert "train/aux_loss" not in run.data.metrics


def test_compare_takes_the_new_fusions_by_name(small_cohort, mlflow_store):
    overrides = small_overrides(small_cohort, **{"trainer.max_epochs": 1, "tracking.tracking_uri": mlflow_store["uri"]})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert compare_cli.main(["--fusions", "lmf,film,daft", *cli_argv(overrides)]) == 0
    fused = sorted(
        r.data.tags["lf.fusion"] for r in all_runs(mlflow_store["uri"]) if r.data.tags.get("lf.model_kind") == "fusion"
    )
    assert fused == ["daft", "film", "lmf"]
    assert all(f"fusion {name}" in out.getvalue() for name in ("lmf", "film", "daft"))
