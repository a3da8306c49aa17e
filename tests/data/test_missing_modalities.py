"""Keeping patients with a missing modality (``data.keep_missing_modalities``) for fusions that mask it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lightning_fusion.config import load_config, to_dict
from lightning_fusion.data.cohort import normalise_patient_id
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.errors import ConfigError
from lightning_fusion.fit.run import fit
from lightning_fusion.fusion import FUSIONS
from lightning_fusion.lit import FusionLitModule
from tests.conftest import small_overrides

MASKING_FUSIONS = FUSIONS.names(supports_missing=True)


@pytest.fixture
def gappy_cohort(small_cohort):
    """The small cohort with one patient's rest view deleted and two other patients' clinical rows removed."""
    no_view = sorted((small_cohort / "Normal").iterdir())[0]
    (no_view / "Rest QGS AC.png").unlink()
    clinical = pd.read_csv(small_cohort / "clinical.csv")
    no_row = [pid for pid in clinical["patient_id"] if normalise_patient_id(pid) != normalise_patient_id(no_view.name)][
        :2
    ]
    clinical[~clinical["patient_id"].isin(no_row)].to_csv(small_cohort / "clinical.csv", index=False)
    return small_cohort, normalise_patient_id(no_view.name), sorted(normalise_patient_id(p) for p in no_row)


def _datamodule(root, **overrides):
    config = load_config(None, small_overrides(root, **overrides))
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    return config, datamodule


def _where(datamodule, patient):
    for dataset in datamodule.datasets.values():
        if patient in dataset.patient_ids:
            return dataset, dataset.patient_ids.index(patient)
    raise AssertionError(f"{patient} not kept")


def test_default_excludes_patients_lacking_a_modality(gappy_cohort):
    root, no_view, no_row = gappy_cohort
    _, datamodule = _datamodule(root, **{"model.fusion": "gated"})
    excluded = datamodule.summary()["excluded_patients"]
    assert excluded == {"missing a view": [no_view], "no tabular": no_row}


@pytest.mark.parametrize("fusion", MASKING_FUSIONS)
def test_masking_fusions_keep_them_with_presence_flags(gappy_cohort, fusion):
    root, no_view, no_row = gappy_cohort
    _, datamodule = _datamodule(root, **{"model.fusion": fusion, "data.keep_missing_modalities": True})
    summary = datamodule.summary()
    assert summary["excluded_patients"] == {}
    assert {m: sum(c.values()) for m, c in summary["kept_without"].items()} == {"image": 1, "tabular": 2}
    dataset, i = _where(datamodule, no_view)
    sample = dataset[i]
    assert sample["present"] == {"image": torch.tensor(False), "tabular": torch.tensor(True)}
    assert not sample["image"].any()  # a placeholder, never read by the fusion
    for patient in no_row:
        dataset, i = _where(datamodule, patient)
        assert dataset[i]["present"]["tabular"].item() is False and dataset[i]["present"]["image"].item()


def test_fitted_tabular_preprocessing_sees_only_training_patients_with_the_table(gappy_cohort):
    root, _, no_row = gappy_cohort
    _, datamodule = _datamodule(root, **{"model.fusion": "gated", "data.keep_missing_modalities": True})
    train = datamodule.datasets["train"]
    with_table = train.present["tabular"]
    assert with_table.sum() == len(train) - sum(p in train.patient_ids for p in no_row)
    # z-scored on exactly those rows: mean 0 over the training patients that have the table
    assert np.allclose(train.arrays["tabular"][with_table].mean(axis=0), 0, atol=1e-5)


def test_a_gated_fusion_trains_and_tests_with_missing_modalities(gappy_cohort, mlflow_store):
    root, no_view, _ = gappy_cohort
    config = load_config(
        None,
        small_overrides(
            root, **{"model.fusion": "gated", "data.keep_missing_modalities": True, "trainer.max_epochs": 1}
        ),
    )
    result = fit(config)
    assert np.isfinite(result.test_metrics["test/loss"])
    assert sum(result.data_summary["kept_without"]["image"].values()) == 1
    # The trained model predicts the same patients, the absent modalities masked as in training.
    from mlflow.tracking import MlflowClient

    from lightning_fusion.predict.loading import load_model

    root, no_view, no_row = gappy_cohort
    predicted = load_model(f"runs:/{result.run_id}", mlflow_store["uri"]).predict_dataset().frame
    missing = dict(zip(predicted["patient_id"], predicted["missing"]))
    assert missing[no_view] == "image" and all(missing[p] == "tabular" for p in no_row)
    assert sum(bool(m) for m in missing.values()) == 3
    local = MlflowClient(mlflow_store["uri"]).download_artifacts(
        result.run_id, "test_predictions.csv", str(root.parent)
    )
    tested = pd.read_csv(local).set_index("patient_id")
    probs = [c for c in tested.columns if c.startswith("prob_")]
    np.testing.assert_allclose(
        predicted.set_index("patient_id").loc[tested.index, probs].to_numpy(), tested[probs].to_numpy(), atol=1e-5
    )
    # Test metrics per presence pattern, when some test patient lacks a modality
    patterns = {
        p: "image+tabular" if not missing[p] else "tabular" if missing[p] == "image" else "image" for p in tested.index
    }
    artifacts = {a.path for a in MlflowClient(mlflow_store["uri"]).list_artifacts(result.run_id)}
    assert any(p != "image+tabular" for p in patterns.values()), "the split puts no gappy patient in test"
    rows = json.loads(
        Path(
            MlflowClient(mlflow_store["uri"]).download_artifacts(
                result.run_id, "presence_metrics.json", str(root.parent)
            )
        ).read_text()
    )
    assert {r["pattern"]: r["patients"] for r in rows} == dict(Counter(patterns.values()))
    assert "presence_metrics.json" in artifacts


def test_a_kept_patients_prediction_ignores_its_absent_modality(gappy_cohort):
    root, no_view, _ = gappy_cohort
    config, datamodule = _datamodule(root, **{"model.fusion": "attention", "data.keep_missing_modalities": True})
    specs = {m: {"kind": s.kind, "shape": list(s.shape)} for m, s in datamodule.specs.items()}
    module = FusionLitModule(to_dict(config), specs, datamodule.classes).eval()
    dataset, i = _where(datamodule, no_view)
    batch = torch.utils.data.default_collate([dataset[i]])
    before = module(batch)
    batch["image"] = torch.rand_like(batch["image"])  # whatever the placeholder holds
    assert torch.allclose(module(batch), before)


def test_fusions_that_cannot_mask_refuse_to_keep_missing_patients(small_cohort):
    for fusion in sorted(set(FUSIONS) - set(MASKING_FUSIONS)):
        with pytest.raises(ConfigError, match=f"fusion '{fusion}' cannot handle a missing modality"):
            load_config(
                None, small_overrides(small_cohort, **{"model.fusion": fusion, "data.keep_missing_modalities": True})
            )
    # one modality: nothing can be missing, the option is harmless
    load_config(
        None, small_overrides(small_cohort, **{"model.modalities": ["image"], "data.keep_missing_modalities": True})
    )
