"""``compare --subsets``: one model per modality subset, each modality's Shapley value in the parent run."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lightning_fusion.compare import __main__ as compare_cli
from lightning_fusion.compare.subsets import modality_shapley, subset_plans
from lightning_fusion.config import EvaluationConfig, evolve, load_config
from lightning_fusion.errors import ConfigError
from tests.conftest import all_runs, cli_argv, small_overrides

SHAPLEY_ARTIFACTS = {"shapley.csv", "subset_scores.csv", "shapley.md", "shapley.png", "report.html"}


def _runs(uri):
    return MlflowClient(uri), all_runs(uri)


@pytest.fixture(scope="module")
def compared_subsets(tmp_path_factory, small_cohort_master):
    """One ``compare --subsets`` on the 60-patient cohort (image + clinical table), 1 epoch per model."""
    tmp = tmp_path_factory.mktemp("subsets")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = small_overrides(
        small_cohort_master,
        **{
            "trainer.max_epochs": 1,
            "data.split.train": 0.6,  # 12 test patients: every class among them
            "data.split.val": 0.2,
            "data.split.test": 0.2,
            "evaluation.bootstrap_resamples": 1000,
            "tracking.artifact_root": str(tmp / "mlruns"),
        },
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = compare_cli.main(["--subsets", "--tracking-uri", uri, *cli_argv(overrides)])
    client, runs = _runs(uri)
    parent = next(r for r in runs if r.data.tags.get("lf.compare") == "true")
    return {"code": code, "out": out.getvalue(), "client": client, "runs": runs, "parent": parent}


def test_one_child_run_per_non_empty_subset(compared_subsets):
    assert compared_subsets["code"] == 0
    parent, runs = compared_subsets["parent"], compared_subsets["runs"]
    assert parent.data.tags["lf.subsets"] == "true" and parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 1 + len(children)
    assert sorted((r.data.tags["lf.modalities"], r.data.tags["lf.fusion"]) for r in children) == [
        ("image", "none"),
        ("image,tabular", "concat"),  # the experiment's own fusion on the subset
        ("tabular", "none"),
    ]


def test_logged_shapley_values_add_up_to_the_whole_above_chance(compared_subsets):
    client, parent = compared_subsets["client"], compared_subsets["parent"]
    metrics = parent.data.metrics
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "comparison.csv")).set_index("model")
    whole = table.loc["fusion concat (image+tabular)"]
    chance = {"auroc": 0.5, "balanced_accuracy": 1 / 3}  # 3 classes: a constant prediction recalls one of them
    for metric, level in chance.items():
        values = [metrics[f"shapley/{m}/{metric}"] for m in ("image", "tabular")]
        assert sum(values) == pytest.approx(whole[metric] - level, abs=2e-4)  # 4-decimal rounding of each
        for m in ("image", "tabular"):
            low, high = metrics[f"shapley/{m}/{metric}_ci_low"], metrics[f"shapley/{m}/{metric}_ci_high"]
            assert low <= metrics[f"shapley/{m}/{metric}"] <= high
    subsets = pd.read_csv(client.download_artifacts(parent.info.run_id, "subset_scores.csv")).set_index("subset")
    assert list(subsets.index) == ["∅", "image", "tabular", "image+tabular"]
    assert subsets.loc["∅", "auroc"] == 0.5
    assert subsets.loc["image", "auroc"] == pytest.approx(table.loc["cnn (image)", "auroc"], abs=1e-4)


def test_shapley_artifacts_report_and_printed_table(compared_subsets):
    client, parent, out = compared_subsets["client"], compared_subsets["parent"], compared_subsets["out"]
    assert SHAPLEY_ARTIFACTS <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    per_modality = pd.read_csv(client.download_artifacts(parent.info.run_id, "shapley.csv"))
    assert list(per_modality["modality"]) == ["image", "tabular"]
    assert open(client.download_artifacts(parent.info.run_id, "shapley.png"), "rb").read(4) == b"\x89PNG"
    report = open(client.download_artifacts(parent.info.run_id, "report.html")).read()
    assert "<h2>Modality value (Shapley)</h2>" in report and "Soenksen" in report and "chance level" in report
    assert "| modality | Shapley auroc | Shapley balanced_accuracy |" in out
    assert "| image+tabular | fusion concat (image+tabular) |" in out
    assert "Modality value" in client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]


def test_six_modalities_or_fusions_with_subsets_are_refused_before_any_run(small_cohort, mlflow_store, capsys):
    six = ["image", "tabular", "a", "b", "c", "d"]
    overrides = small_overrides(small_cohort, **{"model.modalities": f"[{','.join(six)}]"})
    encoders = {"image": {"name": "timm", "backbone": "test_resnet"}} | {m: {"name": "mlp"} for m in six[1:]}
    assert compare_cli.main(["--subsets", *cli_argv(overrides | {"model.encoders": encoders})]) == 2
    err = capsys.readouterr().err
    assert "63 models" in err and "at most 5 modalities" in err
    assert compare_cli.main(["--subsets", "--fusions", "gated", *cli_argv(small_overrides(small_cohort))]) == 2
    assert "--model.fusion" in capsys.readouterr().err
    assert _runs(mlflow_store["uri"])[1] == []


def test_subset_plans_use_the_experiments_fusion_on_every_larger_subset():
    modalities = ["image", "tabular", "labs"]
    config = load_config(
        None,
        {
            "model.modalities": modalities,
            "model.encoders": {"image": {"name": "timm"}, "tabular": {"name": "mlp"}, "labs": {"name": "mlp"}},
            "model.fusion": {"name": "lmf", "rank": 3},
        },
    )
    plans = subset_plans(config)
    assert [name for name, _ in plans] == [
        "fusion lmf (image+tabular)",
        "fusion lmf (image+labs)",
        "fusion lmf (tabular+labs)",
        "fusion lmf (image+tabular+labs)",
    ]
    for name, plan in plans:
        assert "+".join(plan.model.modalities) in name
        assert all(plan.model.encoders[m] == config.model.encoders[m] for m in plan.model.modalities)
        assert plan.model.fusion.name == "lmf" and plan.model.fusion.options.rank == 3
    with pytest.raises(ConfigError, match=r"conditions an image encoder, and the subset \['tabular', 'labs'\]"):
        subset_plans(evolve(config, {"model.fusion": {"name": "film"}}))  # refused before any model trains
    with pytest.raises(ConfigError, match="at most 5"):
        subset_plans(
            load_config(
                None,
                {
                    "model.modalities": [f"m{i}" for i in range(6)],
                    "model.encoders": {f"m{i}": {"name": "mlp"} for i in range(6)},
                },
            )
        )


def _model(modalities, probs, patient_ids, labels):
    from lightning_fusion.compare.results import ComparedModel
    from lightning_fusion.fit.results import Predictions

    return ComparedModel(
        name="+".join(modalities),
        kind="fusion" if len(modalities) > 1 else "cnn",
        fusion="concat",
        modalities=list(modalities),
        how="trained",
        run_id="",
        metrics={},
        intervals={},
        test=Predictions(np.asarray(patient_ids), np.asarray(labels), np.asarray(probs)),
        seconds=0.0,
    )


def test_modality_shapley_reads_each_models_subset_and_needs_the_same_patients():
    labels = np.arange(20) % 2
    good, bad = np.eye(2)[labels] * 0.8 + 0.1, np.full((20, 2), 0.5)
    ids = [f"p{i:02d}" for i in range(20)]
    evaluation = EvaluationConfig(bootstrap_resamples=1000)
    models = [_model(["a"], good, ids, labels), _model(["b"], bad, ids, labels), _model(["a", "b"], good, ids, labels)]
    shapley = modality_shapley(models, ["a", "b"], evaluation)
    assert shapley.values["auroc"]["a"].value == pytest.approx(0.5) and shapley.values["auroc"]["b"].value == 0
    with pytest.raises(RuntimeError, match=r"no subset model for \[\['a', 'b'\]\]"):
        modality_shapley(models[:2], ["a", "b"], evaluation)
    shuffled = [*models[:2], _model(["a", "b"], good, ids[::-1], labels)]
    with pytest.raises(RuntimeError, match="other patients"):
        modality_shapley(shuffled, ["a", "b"], evaluation)
