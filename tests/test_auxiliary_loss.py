"""``model.aux_loss_weight``: one linear head per modality, its cross-entropy added in training only."""

import pytest
import torch
import torch.nn.functional as F

from lightning_fusion.config import load_config
from lightning_fusion.errors import ConfigError
from lightning_fusion.lit import FusionLitModule
from lightning_fusion.models import build_model
from tests.test_models import SPECS

MODALITIES = ["image", "tabular"]


def _config(fusion="gated", weight=0.5):
    return load_config(
        None,
        {
            "model.modalities": MODALITIES,
            "model.fusion": {"name": fusion},
            "model.encoders.image.backbone": "test_resnet",
            "model.aux_loss_weight": weight,
            "data.augment.enabled": False,
        },
    )


def _batch():
    generator = torch.Generator().manual_seed(0)
    batch = {m: torch.rand(4, *SPECS[m].shape, generator=generator) for m in MODALITIES}
    return batch | {
        "label": torch.tensor([0, 1, 2, 1]),
        "present": {"tabular": torch.tensor([True, True, False, True])},
    }


def test_auxiliary_heads_exist_only_when_weighted_and_never_change_predictions():
    assert build_model(_config(weight=0).model, SPECS, 3).aux_heads is None
    model = build_model(_config().model, SPECS, 3).eval()
    assert sorted(model.aux_heads) == MODALITIES
    batch = _batch()
    with torch.no_grad():
        scores, auxiliary = model(batch, auxiliary=True)
        assert {m: a.shape for m, a in auxiliary.items()} == {m: (4, 3) for m in MODALITIES}
        for head in model.aux_heads.values():
            head.weight.add_(1.0)
        torch.testing.assert_close(model(batch), scores)  # the heads are not used to predict
    with pytest.raises(ValueError, match="auxiliary logits need model.aux_loss_weight > 0"):
        build_model(_config(weight=0).model, SPECS, 3)(batch, auxiliary=True)


@pytest.mark.parametrize("fusion", ["gated", "film"])
def test_training_loss_adds_the_weighted_sum_of_the_unimodal_losses_over_present_samples(fusion):
    torch.manual_seed(0)
    specs = {m: {"kind": SPECS[m].kind, "shape": list(SPECS[m].shape)} for m in MODALITIES}
    class_weights = [1.0, 2.0, 0.5]
    module = FusionLitModule(_config(fusion, weight=0.3), specs, ["a", "b", "c"], class_weights).eval()  # no dropout
    batch = _batch()
    if fusion == "film":  # film takes no missing modality: every sample has the table
        batch["present"]["tabular"][:] = True
    objective = module.training_step(batch, 0)
    with torch.no_grad():
        scores, auxiliary = module.model({m: batch[m] for m in MODALITIES} | {"present": batch["present"]}, True)
    weight = torch.tensor(class_weights)
    rows = batch["present"]["tabular"]
    expected_aux = F.cross_entropy(auxiliary["image"], batch["label"], weight=weight) + F.cross_entropy(
        auxiliary["tabular"][rows], batch["label"][rows], weight=weight
    )
    expected = F.cross_entropy(scores, batch["label"], weight=weight) + 0.3 * expected_aux
    torch.testing.assert_close(objective, expected)
    objective.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.aux_heads.parameters())


def test_aux_loss_weight_must_be_non_negative():
    with pytest.raises(ConfigError, match=r"aux_loss_weight must be >= 0 \(0 turns it off\), got -1"):
        _config(weight=-1)
