"""The robustness curve (pure), and a masking run end to end: robustness.csv in the run, Shapley values in predict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from lightning_fusion.config import load_config
from lightning_fusion.evaluation.bootstrap import point_metrics
from lightning_fusion.evaluation.report import robustness_section
from lightning_fusion.evaluation.robustness import FRACTIONS, masking_conditions, robustness_curve
from lightning_fusion.fit.run import fit
from lightning_fusion.predict.__main__ import main as predict_main
from tests.conftest import small_overrides

MODALITIES = ["image", "tabular"]


def _informative_model(labels: np.ndarray, noise: np.ndarray):
    """A fake model: the image carries the label, the table only noise; a patient without the image gets noise."""

    def predict(flag_sets):
        out = []
        for flags in flag_sets:
            score = np.where(flags["image"], labels + 0.3 * noise, noise)
            probs = np.stack([1 - score, score], axis=1)
            out.append(probs - probs.min() + 0.01)
        return out

    return predict


def test_conditions_are_nested_seeded_and_keep_a_patients_only_modality():
    present = {"tabular": np.array([True] * 7 + [False] * 3)}  # patients 7-9 have the image only
    conditions = masking_conditions(present, MODALITIES, 10, FRACTIONS, seed=4)
    assert [(c.modality, c.fraction, c.chosen) for c in conditions][:5] == [
        ("image", f, round(f * 10)) for f in FRACTIONS
    ]
    images = [c.present["image"] for c in conditions if c.modality == "image"]
    for fewer, more in zip(images, images[1:]):  # once masked, masked at every larger fraction
        assert not (more & ~fewer).any()
    assert images[0].all() and images[-1].tolist() == [False] * 7 + [True] * 3  # kept: their only modality
    full = conditions[4]
    assert (full.masked, full.kept_only_modality) == (7, 3)
    table = [c for c in conditions if c.modality == "tabular"][-1]
    assert (table.masked, table.kept_only_modality) == (7, 0) and not table.present["tabular"].any()
    assert table.present["image"].all()  # the other modality stays as it was
    again = masking_conditions(present, MODALITIES, 10, FRACTIONS, seed=4)
    assert all(np.array_equal(a.present["image"], b.present["image"]) for a, b in zip(conditions, again))
    other = masking_conditions(present, MODALITIES, 10, FRACTIONS, seed=5)
    assert any(not np.array_equal(a.present["image"], b.present["image"]) for a, b in zip(conditions, other))
    with pytest.raises(ValueError, match=r"fractions must be in \[0, 1\], got \[1.5\]"):
        masking_conditions(present, MODALITIES, 10, [0.5, 1.5])


def test_auroc_falls_as_the_informative_modality_goes_and_not_for_the_other():
    rng = np.random.default_rng(0)
    labels = np.arange(80) % 2
    predict = _informative_model(labels, rng.uniform(size=80))
    rows = robustness_curve(labels, predict, {}, MODALITIES, seed=1)
    assert [(r["modality"], r["fraction"]) for r in rows] == [(m, f) for m in MODALITIES for f in FRACTIONS]
    image = [r["auroc"] for r in rows if r["modality"] == "image"]
    tabular = [r["auroc"] for r in rows if r["modality"] == "tabular"]
    assert image[0] == 1.0 and all(a > b for a, b in zip(image, image[1:]))
    assert abs(image[-1] - 0.5) < 0.15  # nothing left but noise
    assert tabular == [1.0] * len(FRACTIONS)
    everyone = {"image": np.ones(80, bool), "tabular": np.ones(80, bool)}
    assert image[0] == point_metrics(labels, predict([everyone])[0])["auroc"]
    html = robustness_section(rows, b"png")
    assert "kept only modality" in html and "tabular" in html


def test_a_prediction_per_condition_is_required():
    with pytest.raises(ValueError, match="returned 1 probability arrays for 10 conditions"):
        robustness_curve(np.array([0, 1]), lambda sets: [np.ones((2, 2))], {}, MODALITIES)


def test_a_masking_run_has_its_robustness_curve_and_predict_explains_with_shapley_values(
    small_cohort, mlflow_store, tmp_path, capsys
):
    clinical = pd.read_csv(small_cohort / "clinical.csv")
    clinical.drop(clinical.index[::6]).to_csv(small_cohort / "clinical.csv", index=False)  # 1 in 6 without it
    settings = {"model.fusion": "gated", "data.keep_missing_modalities": True, "trainer.max_epochs": 1}
    # the batches as a GPU run gets them (uint8 images finished by the module), here on the CPU
    settings |= {"data.pipeline": "device"}
    # 18 test patients, every class among them: torchmetrics' test/auroc would count a class without a
    # positive as 0, the evaluation package (and the curve) leaves it out
    settings |= {"data.split.train": 0.6, "data.split.val": 0.1, "data.split.test": 0.3, "tracking.log_model": False}
    result = fit(load_config(None, small_overrides(small_cohort, **settings)))
    client = MlflowClient(mlflow_store["uri"])
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"robustness.csv", "robustness.png"} <= artifacts
    curve = pd.read_csv(client.download_artifacts(result.run_id, "robustness.csv", str(tmp_path)))
    assert sorted(zip(curve["modality"], curve["fraction"])) == [(m, f) for m in MODALITIES for f in FRACTIONS]
    start = curve[curve["fraction"] == 0]["auroc"]
    np.testing.assert_allclose(start, result.test_metrics["test/auroc"], atol=1e-5)
    n_test = sum(result.data_summary["counts"]["test"].values())
    no_table = result.data_summary["kept_without"]["tabular"]["test"]
    assert 0 < no_table < n_test
    everyone = curve[curve["fraction"] == 1].set_index("modality")
    # the image stays where it is a patient's only modality; the table goes wherever there is one
    assert everyone.loc["image", ["masked", "kept_only_modality"]].tolist() == [n_test - no_table, no_table]
    assert everyone.loc["tabular", ["masked", "kept_only_modality"]].tolist() == [n_test - no_table, 0]
    report = open(client.download_artifacts(result.run_id, "report.html", str(tmp_path))).read()
    assert "Robustness to a missing modality" in report

    output = tmp_path / "predicted.csv"
    model = f"runs:/{result.run_id}"
    assert (
        predict_main(
            ["--model", model, "--tracking-uri", mlflow_store["uri"], "--output", str(output)] + ["--explain", "4"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "predicted_explanations" / "modality_contributions.csv")
    assert len(table) == 4
    shares = table[[f"shapley_{m}" for m in MODALITIES]].sum(axis=1)
    np.testing.assert_allclose(shares, table["probability"] - table["shapley_baseline"], atol=1e-5)
    train = result.data_summary["counts"]["train"]
    prior = {c: n / sum(train.values()) for c, n in train.items()}
    np.testing.assert_allclose(table["shapley_baseline"], table["class"].map(prior), atol=1e-9)
    missing = pd.read_csv(output).set_index("patient_id").loc[table["patient_id"], "missing"].eq("tabular").to_numpy()
    assert missing.any() and (~missing).any()
    assert (table["shapley_tabular"][missing].abs() < 1e-12).all() and (table["shapley_tabular"][~missing] != 0).all()
    assert "modality Shapley values" in printed and f"{table['patient_id'][0]}: P(" in printed
