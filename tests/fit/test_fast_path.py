"""A short fit on the CPU through the device pipeline, as a GPU would run it: uint8 batches from loader
workers, converted and augmented by the LightningModule in training only, channels-last model."""

from __future__ import annotations

import math

import torch
from mlflow.tracking import MlflowClient

from lightning_fusion.config import load_config
from lightning_fusion.data.batch_transforms import BatchAugment
from lightning_fusion.fit.run import fit
from tests.conftest import small_overrides


def test_a_fit_through_the_device_pipeline_trains_and_augments_training_batches_only(
    small_cohort, mlflow_store, monkeypatch
):
    augmented = []
    original = BatchAugment.__call__

    def spy(self, images):
        augmented.append((images.dtype, tuple(images.shape), torch.is_grad_enabled()))
        return original(self, images)

    monkeypatch.setattr(BatchAugment, "__call__", spy)
    overrides = {
        "data.pipeline": "device",
        "data.num_workers": 1,  # batches cross a worker process as uint8 tensors
        "trainer.channels_last": True,
        "trainer.max_epochs": 2,
        "evaluation.explain_patients": 0,
        "tracking.log_model": False,
    }
    config = load_config(None, small_overrides(small_cohort, **overrides))
    result = fit(config)

    train_patients = sum(result.data_summary["counts"]["train"].values())
    steps_per_epoch = train_patients // config.data.batch_size  # drop_last: more than one batch per epoch
    assert len(augmented) == 2 * steps_per_epoch  # once per training step; never in validation or test
    assert all(dtype == torch.float32 and shape[1:] == (9, 32, 32) for dtype, shape, _ in augmented)
    assert all(grad for _, _, grad in augmented)  # inside training_step

    run = MlflowClient(mlflow_store["uri"]).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    losses = [m.value for m in MlflowClient(mlflow_store["uri"]).get_metric_history(result.run_id, "train/loss")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert 0.0 <= result.test_metrics["test/balanced_accuracy"] <= 1.0
    assert run.data.params["data.pipeline"] == "device"
