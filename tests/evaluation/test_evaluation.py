"""The evaluation glue: intervals, calibration, curves, temperature fitted on validation only, the report."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_fusion.config import EvaluationConfig
from lightning_fusion.evaluation.calibration import apply_temperature, fit_temperature
from lightning_fusion.evaluation.report import run_report
from lightning_fusion.evaluation.scoring import evaluate, pr_figure, reliability_figure, roc_figure

CLASSES = ["normal", "ischemia", "infarction"]


def _predictions(n, seed, sharpen=1.0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    logits = (rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[labels]) * sharpen
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return labels, probs / probs.sum(1, keepdims=True)


def test_evaluate_reports_intervals_calibration_and_curves():
    labels, probs = _predictions(60, 0)
    result = evaluate(labels, probs, CLASSES, EvaluationConfig())
    metrics = result.metrics()
    for name in ("accuracy", "balanced_accuracy", "f1_macro", "auroc"):
        interval = result.intervals[name]
        assert interval.low <= interval.value <= interval.high
        assert metrics[f"test/{name}_ci_low"] == interval.low
    assert set(result.curves["roc"]) == set(CLASSES) == set(result.curves["pr"])
    assert "test/temperature" not in metrics
    for build in (roc_figure, pr_figure, reliability_figure):
        assert build(result).axes


def test_temperature_is_fitted_on_validation_only():
    val_labels, val_probs = _predictions(300, 1, sharpen=3.0)
    test_labels, test_probs = _predictions(60, 2, sharpen=3.0)
    config = EvaluationConfig(temperature_scaling=True)
    result = evaluate(test_labels, test_probs, CLASSES, config, val=(val_labels, val_probs))
    assert result.temperature == pytest.approx(fit_temperature(val_labels, val_probs))
    other_test = _predictions(60, 3, sharpen=0.5)
    assert evaluate(*other_test, CLASSES, config, val=(val_labels, val_probs)).temperature == result.temperature
    assert result.calibrated["ece"] != result.ece
    assert result.metrics()["test/temperature"] > 1  # sharpened logits: softened back
    with pytest.raises(ValueError, match="validation predictions"):
        evaluate(test_labels, test_probs, CLASSES, config)
    assert (apply_temperature(test_probs, 2.0).argmax(1) == test_probs.argmax(1)).all()


def test_report_names_the_exclusions_and_embeds_the_figures():
    labels, probs = _predictions(30, 4)
    result = evaluate(labels, probs, CLASSES, EvaluationConfig())
    summary = {
        "dataset": "demo",
        "modalities": ["image", "tabular"],
        "classes": CLASSES,
        "counts": {"train": {c: 8 for c in CLASSES}, "val": {c: 2 for c in CLASSES}, "test": {c: 10 for c in CLASSES}},
        "excluded": {"missing a view": 2},
    }
    html = run_report("demo <fusion>", summary, result.intervals, {"ECE": result.ece}, {"roc.png": b"\x89PNG"}, 0.95)
    assert "demo &lt;fusion&gt;" in html  # escaped
    assert "missing a view" in html and "data:image/png;base64,iVBORw==" in html
    assert str(result.intervals["balanced_accuracy"]) in html and "30 test patients" in html


def test_temperature_scaling_under_ddp_is_refused_before_anything_runs():
    from lightning_fusion.config import load_config
    from lightning_fusion.errors import ConfigError

    with pytest.raises(ConfigError, match="temperature_scaling fits on validation predictions gathered in one process"):
        load_config(None, {"evaluation.temperature_scaling": True, "trainer.devices": 2, "trainer.strategy": "ddp"})
    assert load_config(
        None, {"evaluation.temperature_scaling": True, "trainer.devices": 1}
    ).evaluation.temperature_scaling
