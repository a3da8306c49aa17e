"""The decision threshold of a binary run: fitted on validation predictions only, logged with the run and
its model, and used by predict."""

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from lightning_fusion.config import load_config
from lightning_fusion.demo.medmnist import write_medmnist
from lightning_fusion.evaluation.threshold import fit_threshold
from lightning_fusion.fit.run import fit
from lightning_fusion.predict.loading import load_model


def _flip_test_labels(root):
    path = root / "pneumoniamnist.npz"
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays["test_labels"] = 1 - arrays["test_labels"]
    np.savez_compressed(path, **arrays)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same youden run on a synthetic PneumoniaMNIST file and on a copy whose test labels are flipped."""
    tmp = tmp_path_factory.mktemp("threshold")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    results = {}
    for name in ("original", "flipped"):
        root = write_medmnist(tmp / name, patients=160, seed=4)
        if name == "flipped":
            _flip_test_labels(root)
        overrides = {
            "data.reader": {"name": "medmnist", "classes": ["normal", "pneumonia"]},
            "data.root": str(root),
            "data.image_size": 32,
            "data.augment.enabled": False,  # albumentations draws from its own generator: runs would differ
            "model.modalities": ["image"],
            "model.encoders.image": {"name": "timm", "backbone": "test_resnet", "reduce_channels": None},
            "trainer.max_epochs": 1,
            "trainer.accelerator": "cpu",
            "evaluation.threshold": "youden",
            "evaluation.explain_patients": 0,
            "tracking.tracking_uri": uri,
            "tracking.artifact_root": str(tmp / "mlruns"),
            "tracking.log_model": name == "original",
        }
        results[name] = fit(load_config(None, overrides))
    return {"uri": uri, **results}


@pytest.mark.slow
def test_the_threshold_is_fitted_on_validation_only(runs):
    original, flipped = runs["original"], runs["flipped"]
    val = original.predictions["val"]
    expected = fit_threshold(val.labels, val.probs[:, 1], "youden", 0.9)
    client = MlflowClient(runs["uri"])
    params = {name: client.get_run(r.run_id).data.params for name, r in (("o", original), ("f", flipped))}
    assert float(params["o"]["operating_point.threshold"]) == pytest.approx(expected)
    # other test labels, the same threshold: nothing about the test set went into it
    assert params["f"]["operating_point.threshold"] == params["o"]["operating_point.threshold"]
    assert original.test_metrics["test/threshold"] == pytest.approx(expected)
    # the runs saw different test labels (flipped: AUROC mirrored) through the same model
    assert original.test_metrics["test/auroc"] == pytest.approx(1 - flipped.test_metrics["test/auroc"], abs=1e-6)
    for name in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1"):
        assert f"test/at_0.5/{name}" in original.test_metrics and f"test/at_threshold/{name}" in original.test_metrics


@pytest.mark.slow
def test_predict_and_the_served_model_use_the_runs_threshold(runs):
    run_id = runs["original"].run_id
    threshold = runs["original"].test_metrics["test/threshold"]
    model = load_model(f"runs:/{run_id}", runs["uri"])
    assert model.operating_point.threshold == pytest.approx(threshold)
    frame = model.predict_dataset().frame
    expected = np.where(frame["prob_pneumonia"] >= threshold, "pneumonia", "normal")
    assert list(frame["predicted"]) == list(expected)
    mlflow.set_tracking_uri(runs["uri"])
    served = mlflow.models.get_model_info(f"runs:/{run_id}/model").metadata["lightning_fusion"]
    assert served["operating_point"]["threshold"] == pytest.approx(threshold)
