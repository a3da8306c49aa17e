"""data.sampler balanced: training patients drawn so that every class is drawn about equally often."""

from collections import Counter

import numpy as np

from lightning_fusion.config import load_config
from lightning_fusion.data.datamodule import MultimodalDataModule
from tests.conftest import small_overrides


def _datamodule(root, sampler):
    overrides = small_overrides(root, **{"data.sampler": sampler, "optim.class_weights": sampler != "balanced"})
    config = load_config(None, overrides | {"model.modalities": ["tabular"], "data.batch_size": 8})
    datamodule = MultimodalDataModule(config.data, ["tabular"])
    datamodule.setup("fit")
    return datamodule


def _drawn(datamodule, epochs):
    """Labels drawn over ``epochs`` epochs of one training loader (Lightning builds it once per run)."""
    loader = datamodule.train_dataloader()
    return Counter(int(label) for _ in range(epochs) for batch in loader for label in batch["label"])


def test_balanced_sampler_draws_classes_equally_often(small_cohort_master):
    datamodule = _datamodule(small_cohort_master, "balanced")
    training = np.bincount(datamodule.datasets["train"].labels)
    assert training.max() / training.min() > 1.3  # the demo's training split is imbalanced to begin with
    drawn = _drawn(datamodule, 40)
    shares = np.array([drawn[k] for k in range(len(training))]) / sum(drawn.values())
    assert np.allclose(shares, 1 / len(training), atol=0.03), shares
    shuffled = _drawn(_datamodule(small_cohort_master, "shuffle"), 1)
    dropped = len(datamodule.datasets["train"]) % 8  # the last partial batch
    assert sum(shuffled.values()) == len(datamodule.datasets["train"]) - dropped
    assert all(training[k] - dropped <= shuffled[k] <= training[k] for k in range(len(training)))
