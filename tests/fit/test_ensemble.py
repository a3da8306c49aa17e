"""Ensembles: ``fit --seeds N`` and ``fit --cv K`` leave one model on their parent run, the mean of their
members' probabilities, which predict, the pyfunc model and the web page use like any model."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lightning_fusion.app import create_app
from lightning_fusion.data.cohort import normalise_patient_id
from lightning_fusion.data.datamodule import modality_arrays
from lightning_fusion.evaluation.threshold import fit_threshold
from lightning_fusion.fit import __main__ as fit_cli
from lightning_fusion.predict import __main__ as predict_cli
from lightning_fusion.predict.ensemble import EnsembleModel
from lightning_fusion.predict.loading import load_model
from tests.conftest import cli_argv, small_overrides

# binary (normal vs ischemia), so that the operating point is fitted; image + clinical table, so that every
# member has its own fitted tabular preprocessing
BINARY = {
    "data.exclude_labels": "[infarction]",
    "evaluation.threshold": "youden",
    "evaluation.explain_patients": 0,
    "trainer.max_epochs": 1,
}


def _fit(cohort, store, *options: str) -> dict:
    overrides = small_overrides(cohort, **BINARY, **{"tracking.artifact_root": str(store / "mlruns")})
    uri = f"sqlite:///{store / 'mlflow.db'}"
    assert fit_cli.main([*options, "--tracking-uri", uri, *cli_argv(overrides)]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = sorted(
        (r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: r.info.run_name,
    )
    return {"uri": uri, "parent": parent, "children": children, "client": client}


@pytest.fixture(scope="module")
def seeds_run(small_cohort_master, tmp_path_factory):
    return _fit(small_cohort_master, tmp_path_factory.mktemp("seeds"), "--seeds", "2")


@pytest.fixture(scope="module")
def cv_run(small_cohort_master, tmp_path_factory):
    return _fit(small_cohort_master, tmp_path_factory.mktemp("cv"), "--cv", "2")


def _member_mean(run: dict) -> pd.DataFrame:
    """Each member run's model loaded on its own (its own fitted preprocessing), its probabilities averaged."""
    frames = [
        load_model(f"runs:/{child.info.run_id}", run["uri"]).predict_dataset().frame.set_index("patient_id")
        for child in run["children"]
    ]
    columns = [c for c in frames[0] if c.startswith("prob_")]
    return sum(frame[columns] for frame in frames) / len(frames)


@pytest.mark.parametrize("which", ["seeds_run", "cv_run"])
def test_an_ensemble_predicts_as_one_model(which, request, tmp_path):
    run = request.getfixturevalue(which)
    parent = run["parent"].info.run_id
    expected = _member_mean(run)
    ensemble = load_model(f"runs:/{parent}", run["uri"])
    assert isinstance(ensemble, EnsembleModel) and len(ensemble.members) == 2
    # the members' tabular preprocessing was fitted on different training patients (cv) and is kept apart
    scalers = [member.preprocessors["tabular"] for member in ensemble.members]
    if which == "cv_run":
        assert scalers[0].state() != scalers[1].state()
    frame = ensemble.predict_dataset().frame.set_index("patient_id")
    assert not frame.empty and set(frame.index) == set(expected.index)
    np.testing.assert_allclose(frame[expected.columns].loc[expected.index], expected, atol=1e-6)
    # every patient trained at least one cv member; the seeds members share one split
    assert set(frame["training_split"]) == ({"train", "val"} if which == "cv_run" else {"train", "val", "test"})

    # predict on the parent run: the same probabilities, decided at the ensemble's threshold
    output = tmp_path / "predictions.csv"
    assert predict_cli.main(["--model", f"runs:/{parent}", "--tracking-uri", run["uri"], "--output", str(output)]) == 0
    predicted = pd.read_csv(output, dtype={"patient_id": str}).set_index("patient_id")
    np.testing.assert_allclose(predicted[expected.columns].loc[expected.index], expected, atol=1e-6)
    threshold = ensemble.operating_point.threshold
    positive = np.where(predicted["prob_ischemia"] >= threshold, "ischemia", "normal")
    assert list(predicted["predicted"]) == list(positive)

    # the pyfunc model logged in the parent (what `mlflow models serve -m runs:/<parent>/model` serves)
    mlflow.set_tracking_uri(run["uri"])
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{parent}/model")
    cohort = ensemble.read_cohort()
    ids = list(expected.index[:5])
    raw = {
        "image": modality_arrays(cohort, "image", ids, ensemble.config.data, None),
        "tabular": cohort.modalities["tabular"].rows(ids).to_numpy(np.float64),
    }
    served = pyfunc.predict(raw)
    np.testing.assert_allclose(served[expected.columns].to_numpy(), expected.loc[ids].to_numpy(), atol=1e-6)
    registered = load_model(f"runs:/{parent}/model", run["uri"])  # the pyfunc's folder (as models:/ gives it)
    np.testing.assert_allclose(registered.predict_arrays(registered.inputs_from_raw(raw)), served[expected.columns])
    metadata = pyfunc.metadata.metadata["lightning_fusion"]
    assert metadata["operating_point"]["threshold"] == pytest.approx(threshold)


def test_the_web_page_predicts_with_an_ensemble(cv_run, tmp_path):
    ensemble = load_model(f"runs:/{cv_run['parent'].info.run_id}", cv_run["uri"])
    root = Path(ensemble.config.data.root)
    folder = sorted(p for p in root.glob("*/*") if p.is_dir() and p.parent.name.lower() != "infarction")[0]
    clinical = pd.read_csv(root / "clinical.csv")
    row = clinical[clinical["patient_id"].map(normalise_patient_id) == normalise_patient_id(folder.name)]
    form = {
        "image": [(io.BytesIO(view.read_bytes()), view.name) for view in sorted(folder.glob("*.png"))],
        "tabular": [(io.BytesIO(row.to_csv(index=False).encode()), "patient.csv")],
    }
    response = create_app(ensemble).test_client().post("/api/predict", data=form, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    expected = ensemble.predict_dataset().frame.set_index("patient_id").loc[normalise_patient_id(folder.name)]
    returned = [body["probabilities"][c] for c in ensemble.classes]
    np.testing.assert_allclose(returned, [expected[f"prob_{c}"] for c in ensemble.classes], atol=1e-6)
    assert body["predicted"] == expected["predicted"]
    assert body["decision"].startswith("ischemia when its probability is at least")
    assert set(body["gradcam"]) == {"image"}  # the members' mean map (here 1x1: a message says so)
    # the drop-one delta of the table (concat: its z-scored input replaced by zeros, in every member's part)
    # is the ensemble's probability minus the ensemble's without it
    cohort, pid = ensemble.read_cohort(), normalise_patient_id(folder.name)
    ids, arrays, _, _ = ensemble.dataset_arrays(cohort)
    one = {m: values[ids.index(pid) : ids.index(pid) + 1] for m, values in arrays.items()}
    target = ensemble.classes.index(body["predicted"])
    with_table = ensemble.predict_arrays(one)[0, target]
    without = ensemble.predict_arrays(one | {"tabular": np.zeros_like(one["tabular"])})[0, target]
    contributions = body["contributions"]
    assert contributions["method"] == "zeros"
    assert contributions["modalities"]["tabular"]["drop_one"] == pytest.approx(with_table - without, abs=1e-6)


def test_predict_refuses_to_explain_an_ensemble_before_predicting(seeds_run, tmp_path, capsys):
    output = tmp_path / "predictions.csv"
    model = f"runs:/{seeds_run['parent'].info.run_id}"
    argv = ["--model", model, "--tracking-uri", seeds_run["uri"], "--output", str(output), "--explain", "1"]
    assert predict_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("data error: --explain: an ensemble of 2 models is not explained as one")
    assert not output.exists()


def test_seeds_members_train_on_one_split_and_the_ensemble_is_tested_once(seeds_run):
    parent, children, client = seeds_run["parent"], seeds_run["children"], seeds_run["client"]
    assert [c.info.run_name for c in children] == ["seed-42", "seed-43"]
    assert [c.data.tags["lf.seed"] for c in children] == ["42", "43"]
    assert all(not any(k.startswith("test/") for k in c.data.metrics) for c in children)  # members never test
    splits = [client.download_artifacts(c.info.run_id, "splits.json") for c in children]
    assert open(splits[0]).read() == open(splits[1]).read()
    assert parent.data.tags["lf.seeds"] == "2" and parent.info.status == "FINISHED"
    assert {"test/auroc", "test/auroc_ci_low", "test/at_threshold/balanced_accuracy"} <= set(parent.data.metrics)
    assert parent.data.params["operating_point.fitted_on"].startswith("validation")
    assert "ensemble of 2 seeds, test balanced_accuracy" in parent.data.tags["mlflow.note.content"]


def test_the_operating_point_is_fitted_on_validation_only_probabilities(seeds_run, cv_run):
    # seeds: the mean of the members' probabilities on the shared validation patients
    ensemble = load_model(f"runs:/{seeds_run['parent'].info.run_id}", seeds_run["uri"])
    val = ensemble.splits["val"]
    frame = ensemble.predict_dataset().frame.set_index("patient_id").loc[val]
    labels = (frame["true"] == "ischemia").to_numpy().astype(int)
    expected = fit_threshold(labels, frame["prob_ischemia"].to_numpy(), "youden", 0.9)
    assert ensemble.operating_point.threshold == pytest.approx(expected)
    # cv: the pooled out-of-fold probabilities
    client, parent = cv_run["client"], cv_run["parent"]
    oof = pd.read_csv(client.download_artifacts(parent.info.run_id, "oof_predictions.csv"))
    expected = fit_threshold(oof["label_index"].to_numpy(), oof["prob_ischemia"].to_numpy(), "youden", 0.9)
    assert float(parent.data.params["operating_point.threshold"]) == pytest.approx(expected)
    assert parent.data.params["operating_point.fitted_on"].startswith("out of fold")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "config error: --seeds needs at least 1 member, got 0\n"),
        (["--seeds", "2", "--tracking.log_checkpoint", "false"], "keeps its members' checkpoints"),
    ],
)
def test_bad_seeds_are_one_line_errors(argv, message, capsys):
    assert fit_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_seeds_and_cv_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        fit_cli.main(["--seeds", "2", "--cv", "3"])
    assert "choose one" in capsys.readouterr().err
