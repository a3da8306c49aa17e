"""Training losses: focal reduces to cross-entropy at gamma 0 (weights and smoothing included)."""

import pytest
import torch
import torch.nn.functional as F

from lightning_fusion.config import OptimConfig, load_config
from lightning_fusion.errors import ConfigError
from lightning_fusion.losses import training_loss


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_focal_at_gamma_zero_is_torch_cross_entropy(smoothing, weighted):
    generator = torch.Generator().manual_seed(0)
    logits, target = torch.randn(9, 3, generator=generator), torch.tensor([0, 1, 2, 2, 1, 0, 0, 0, 1])
    weight = torch.tensor([0.5, 2.0, 1.3]) if weighted else None
    focal = training_loss(logits, target, weight, OptimConfig(loss="focal", focal_gamma=0.0, label_smoothing=smoothing))
    expected = F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing)
    assert float(focal) == pytest.approx(float(expected), rel=1e-6)
    plain = training_loss(logits, target, weight, OptimConfig(label_smoothing=smoothing))
    assert float(plain) == pytest.approx(float(expected), rel=1e-6)


def test_focal_discounts_confidently_right_samples_more_than_wrong_ones():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])  # the first right and confident, the second wrong
    target = torch.tensor([0, 0])
    per_sample = [
        float(training_loss(logits[i : i + 1], target[i : i + 1], None, OptimConfig(loss="focal", focal_gamma=2.0)))
        / float(F.cross_entropy(logits[i : i + 1], target[i : i + 1]))
        for i in range(2)
    ]
    assert per_sample[0] < 0.001 and per_sample[1] > 0.9  # (1 - p)^2: ~0.0003 and ~0.96


def test_label_smoothing_changes_the_loss():
    logits, target = torch.tensor([[3.0, -3.0]]), torch.tensor([0])
    assert float(training_loss(logits, target, None, OptimConfig(label_smoothing=0.2))) > float(
        training_loss(logits, target, None, OptimConfig())
    )


def test_unknown_loss_suggests_the_closest():
    with pytest.raises(ConfigError, match="optim.loss.*did you mean 'focal'"):
        load_config(None, {"optim.loss": "focall"})
