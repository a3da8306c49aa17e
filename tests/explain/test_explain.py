"""Explanations: Grad-CAM of image branches, Integrated Gradients of tables, drop-one-modality contributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lightning_fusion.config import load_config, to_dict
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.explain.attributions import tabular_attributions
from lightning_fusion.explain.cam import cam_target_layer, grad_cam, save_png, view_overlays
from lightning_fusion.explain.contributions import modality_contributions
from lightning_fusion.lit import FusionLitModule
from tests.conftest import small_overrides

IMAGE_SIZE = 64  # test_resnet reduces 32x: a 2x2 last feature map (at 32 px it would be 1x1, no spatial information)
# (modalities, fusion): the image-only CNN, the tabular-only ANN, and every fusion of image + tabular
IMAGE_MODELS = [(["image"], "concat"), *[(["image", "tabular"], f) for f in ("concat", "gated", "attention")]]
IMAGE_MODELS += [(["image", "tabular"], "late_weighted"), (["image", "tabular"], "early")]
TABULAR_MODELS = [(["tabular"], "concat"), *IMAGE_MODELS[1:]]
MODEL_IDS = ["+".join(m) + f"-{f}" for m, f in IMAGE_MODELS]
TABULAR_IDS = ["+".join(m) + f"-{f}" for m, f in TABULAR_MODELS]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(small_cohort_master):
    """The small cohort's data module (image + tabular, 64 px) and one validation batch (read-only use)."""
    config = load_config(None, small_overrides(small_cohort_master, **{"data.image_size": IMAGE_SIZE}))
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    return small_cohort_master, datamodule, next(iter(datamodule.val_dataloader()))


def _module(cohort, modalities, fusion, **overrides) -> FusionLitModule:
    """An untrained module (seeded) for ``modalities`` fused by ``fusion`` on the small cohort."""
    root, datamodule, _ = cohort
    settings = {"data.image_size": IMAGE_SIZE, "model.modalities": list(modalities), "model.fusion": fusion}
    config = load_config(None, small_overrides(root, **settings, **overrides))
    specs = {m: {"kind": datamodule.specs[m].kind, "shape": list(datamodule.specs[m].shape)} for m in modalities}
    torch.manual_seed(0)
    return FusionLitModule(to_dict(config), specs, datamodule.classes, datamodule.class_weights)


def _snapshot(module):
    return (
        {k: v.clone() for k, v in module.state_dict().items()},
        [m.training for m in module.modules()],
        [p.grad for p in module.parameters()],
    )


def _assert_untouched(module, snapshot):
    """Same parameters and buffers (no BatchNorm update), same training flags, no gradients left behind."""
    state, flags, grads = snapshot
    for key, value in module.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert [m.training for m in module.modules()] == flags
    assert all(p.grad is g for p, g in zip(module.parameters(), grads, strict=True))


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    maps = maps - maps.amin(dim=(1, 2), keepdim=True)
    return maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-7)


def _hand_grad_cam(module, batch, layer, targets) -> np.ndarray:
    """Grad-CAM from its definition, through the module's own forward on the whole batch dict."""
    module.eval()
    stored = []
    handle = layer.register_forward_hook(lambda _m, _i, out: stored.append(out))
    scores = module(batch | {"image": batch["image"].clone().requires_grad_(True)})
    handle.remove()
    activations = stored[0]
    grads = torch.autograd.grad(scores[torch.arange(len(targets)), targets].sum(), activations)[0]
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1)).detach()
    size = batch["image"].shape[-2:]
    return _minmax(F.interpolate(_minmax(cam)[:, None], size=size, mode="bilinear")[:, 0]).numpy()


# --------------------------------------------------------------------------------------------------
# Grad-CAM
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("modalities", "fusion"), IMAGE_MODELS, ids=MODEL_IDS)
def test_grad_cam_equals_grad_cam_by_hand_through_the_whole_model(cohort, modalities, fusion):
    _, _, batch = cohort
    module = _module(cohort, modalities, fusion).train()
    snapshot = _snapshot(module)
    assert cam_target_layer(module, batch, "image") == "layer4"
    encoder = module.model.encoders["image"]
    n = len(batch["label"])
    cams = []
    for target in range(len(module.classes)):
        cam = grad_cam(module, batch, "image", target=target)
        _assert_untouched(module, snapshot)
        assert cam.shape == (n, IMAGE_SIZE, IMAGE_SIZE) and cam.dtype == np.float32
        assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
        hand = _hand_grad_cam(module, batch, encoder.backbone.layer4, torch.full((n,), target))
        np.testing.assert_allclose(cam, hand, atol=1e-4)
        module.train()
        cams.append(cam)
    assert any(c.max() > 0.99 for c in cams), "every map is empty: no gradient reached the feature map"
    # default target: each sample's predicted class
    with torch.no_grad():
        predicted = module.eval()(batch).argmax(dim=1)
    expected = np.stack([cams[t][i] for i, t in enumerate(predicted)])
    np.testing.assert_allclose(grad_cam(module, batch, "image"), expected)


class _ColourSpots(nn.Module):
    """A timm-like CNN with two filters: channel 0 fires on red pixels, channel 1 on green ones."""

    num_features = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=2, stride=2)
        self.act = nn.ReLU()
        with torch.no_grad():
            self.conv.bias.zero_()
            self.conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]])[:, :, None, None] / 4)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images).mean(dim=(2, 3))


def _spots_module() -> FusionLitModule:
    """Image-only model: logit(red) = mean red response - mean green response, logit(green) the opposite."""
    config = load_config(None, {"model.modalities": ["image"], "model.encoders.image.backbone": "test_resnet"})
    module = FusionLitModule(to_dict(config), {"image": {"kind": "image", "shape": [3, 32, 32]}}, ["green", "red"])
    encoder = module.model.encoders["image"]
    encoder.mean.zero_()
    encoder.std.fill_(1.0)  # raw pixels reach the filters
    encoder.backbone = _ColourSpots()
    module.model.fusion.head = nn.Linear(2, 2)
    with torch.no_grad():
        module.model.fusion.head.weight.copy_(torch.tensor([[-1.0, 1.0], [1.0, -1.0]]))
        module.model.fusion.head.bias.zero_()
    return module


def _quadrant_share(cam: np.ndarray, rows: slice, cols: slice) -> float:
    return float(cam[rows, cols].sum() / cam.sum())


TOP, BOTTOM, LEFT, RIGHT = slice(0, 16), slice(16, 32), slice(0, 16), slice(16, 32)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_grad_cam_peaks_in_the_quadrant_that_holds_the_class_evidence(method):
    module = _spots_module()
    images = torch.zeros(2, 3, 32, 32)
    images[0, 0, 2:10, 20:28] = 1  # sample 0: a big red spot top right (predicted red) ...
    images[0, 1, 22:26, 4:8] = 1  # ... and a small green one bottom left
    images[1, 1, 18:30, 18:30] = 1  # sample 1: a big green spot bottom right (predicted green) ...
    images[1, 0, 4:8, 4:8] = 1  # ... and a small red one top left
    batch = {"image": images}
    with torch.no_grad():
        assert module(batch).argmax(dim=1).tolist() == [1, 0]
    assert cam_target_layer(module, batch, "image") == "act"

    predicted = grad_cam(module, batch, "image", method=method)
    assert _quadrant_share(predicted[0], TOP, RIGHT) > 0.95  # off-diagonal quadrants: a transposed map fails
    assert _quadrant_share(predicted[1], BOTTOM, RIGHT) > 0.95
    assert np.unravel_index(predicted[0].argmax(), predicted[0].shape)[1] >= 16

    other = grad_cam(module, batch, "image", target=[0, 1], method=method)  # the class each sample is not
    assert _quadrant_share(other[0], BOTTOM, LEFT) > 0.95
    assert _quadrant_share(other[1], TOP, LEFT) > 0.95


def test_grad_cam_reaches_a_fully_frozen_model_even_under_inference_mode(cohort):
    _, _, batch = cohort
    module = _module(cohort, ["image", "tabular"], "gated", **{"model.encoders.image.freeze": True})
    reference = [grad_cam(module, batch, "image", target=t) for t in range(len(module.classes))]
    module.requires_grad_(False)  # nothing requires grad, the 1x1 reduce conv neither
    with torch.inference_mode():
        frozen = [grad_cam(module, batch, "image", target=t) for t in range(len(module.classes))]
    assert any(c.max() > 0.99 for c in frozen)
    for a, b in zip(reference, frozen, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert all(p.grad is None and not p.requires_grad for p in module.parameters())


def test_grad_cam_refuses_what_it_cannot_explain(cohort):
    _, _, batch = cohort
    module = _module(cohort, ["image", "tabular"], "concat")
    with pytest.raises(ValueError, match="'tabular' is a vector modality"):
        grad_cam(module, batch, "tabular")
    with pytest.raises(ValueError, match=r"'ct' is not a modality of the model; it has \['image', 'tabular'\]"):
        grad_cam(module, batch, "ct")
    with pytest.raises(ValueError, match="unknown Grad-CAM method 'cam'"):
        grad_cam(module, batch, "image", method="cam")
    with pytest.raises(ValueError, match=r"target class indices must be in \[0, 3\)"):
        grad_cam(module, batch, "image", target=3)
    with pytest.raises(ValueError, match="has no module 'layer9'"):
        grad_cam(module, batch, "image", target_layer="layer9")
    assert grad_cam(module, batch, "image", target_layer="layer3").shape == batch["image"].shape[:1] + (64, 64)


def test_grad_cam_on_a_vision_transformer_names_the_backbone():
    config = load_config(None, {"model.modalities": ["image"], "model.encoders.image.backbone": "test_vit"})
    module = FusionLitModule(to_dict(config), {"image": {"kind": "image", "shape": [3, 32, 32]}}, ["a", "b"])
    with pytest.raises(ValueError, match=r"backbone 'test_vit' is not a CNN \(forward_features gives shape"):
        grad_cam(module, {"image": torch.rand(2, 3, 32, 32)}, "image")


def test_grad_cam_per_modality_is_refused_for_stacked_early_fusion():
    encoder = {"name": "timm", "backbone": "test_resnet", "reduce_channels": None}
    config = load_config(
        None,
        {
            "model.modalities": ["ct", "cxr"],
            "model.encoders": {"ct": encoder, "cxr": encoder},
            "model.fusion": "early",
        },
    )
    specs = {m: {"kind": "image", "shape": [1, 32, 32]} for m in ("ct", "cxr")}
    module = FusionLitModule(to_dict(config), specs, ["a", "b"])
    batch = {"ct": torch.rand(2, 1, 32, 32), "cxr": torch.rand(2, 1, 32, 32)}
    stacked = r"not defined for input-level \(early\) fusion: 'cxr' is stacked with \['ct'\]"
    with pytest.raises(ValueError, match=stacked):
        grad_cam(module, batch, "cxr")


def test_a_one_pixel_feature_map_warns():
    config = load_config(None, {"model.modalities": ["image"], "model.encoders.image.backbone": "test_resnet"})
    module = FusionLitModule(to_dict(config), {"image": {"kind": "image", "shape": [9, 32, 32]}}, ["a", "b"])
    with pytest.warns(UserWarning, match="last feature map is 1x1"):
        cam = grad_cam(module, {"image": torch.rand(2, 9, 32, 32)}, "image")
    assert cam.shape == (2, 32, 32) and (cam == 0).all()


def test_view_overlays_split_views_and_save_as_png(tmp_path):
    cam = np.zeros((8, 8), dtype=np.float32)
    cam[:4] = 1.0  # hot top half
    image = np.zeros((9, 8, 8), dtype=np.float32)
    image[3] = 1.0  # view 1 is pure red
    overlays = view_overlays(image, cam)
    assert len(overlays) == 3 and all(o.shape == (8, 8, 3) and o.dtype == np.uint8 for o in overlays)
    assert not np.array_equal(overlays[0], overlays[1])  # the red view shows through
    assert not np.array_equal(overlays[0][0], overlays[0][7])  # hot and cold rows are drawn differently
    gray = view_overlays(torch.full((1, 8, 8), 0.5), cam)
    rgb = view_overlays(np.full((3, 8, 8), 0.5, dtype=np.float32), cam)
    assert len(gray) == 1 and np.array_equal(gray[0], rgb[0])  # one channel is drawn as gray
    assert len(view_overlays(np.zeros((2, 8, 8)), cam)) == 2 and len(view_overlays(image, cam, views=9)) == 9
    with pytest.raises(ValueError, match="9 channels cannot split into 2 views"):
        view_overlays(image, cam, views=2)
    with pytest.raises(ValueError, match=r"cam must have the image's size \(8, 8\)"):
        view_overlays(image, cam[:4])
    path = save_png(overlays[1], tmp_path / "out" / "view1.png")
    assert np.array_equal(np.asarray(Image.open(path)), overlays[1])
    assert np.asarray(Image.open(save_png(cam, tmp_path / "cam.png"))).tolist() == (cam * 255).astype(np.uint8).tolist()


# --------------------------------------------------------------------------------------------------
# Integrated Gradients
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("modalities", "fusion"), TABULAR_MODELS, ids=TABULAR_IDS)
def test_integrated_gradients_add_up_to_the_score_change_from_the_baseline(cohort, modalities, fusion):
    _, _, batch = cohort
    module = _module(cohort, modalities, fusion).train()
    snapshot = _snapshot(module)
    attributions, delta = tabular_attributions(module, batch, "tabular", return_delta=True)
    _assert_untouched(module, snapshot)
    assert attributions.shape == tuple(batch["tabular"].shape) and np.isfinite(attributions).all()
    module.eval()
    with torch.no_grad():
        scores = module(batch)
        base = module(batch | {"tabular": torch.zeros_like(batch["tabular"])})
    rows = torch.arange(len(scores))
    predicted = scores.argmax(dim=1)
    change = (scores - base)[rows, predicted].numpy()
    assert np.abs(change).max() > 1e-3, "the test is inert: the table does not move the score"
    np.testing.assert_allclose(attributions.sum(axis=1), change, atol=2e-3 + 0.02 * np.abs(change).max())
    np.testing.assert_allclose(delta, attributions.sum(axis=1) - change, atol=1e-4)  # captum's delta is that gap
    assert np.abs(delta).max() < 2e-3 + 0.02 * np.abs(change).max()

    # another class, a probability output, a given baseline row
    baseline = torch.linspace(-1, 1, batch["tabular"].shape[1])
    probabilities = tabular_attributions(module, batch, "tabular", target=0, output="probability", baseline=baseline)
    with torch.no_grad():
        moved = batch | {"tabular": baseline.expand_as(batch["tabular"])}
        expected = (module(batch).softmax(dim=1) - module(moved).softmax(dim=1))[:, 0].numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), expected, atol=1e-3 + 0.02 * np.abs(expected).max())


def test_integrated_gradients_of_an_absent_table_are_zero(cohort):
    _, _, batch = cohort
    module = _module(cohort, ["image", "tabular"], "gated")
    n = len(batch["label"])
    absent = torch.ones(n, dtype=torch.bool)
    absent[1] = False
    attributions = tabular_attributions(module, batch | {"present": {"tabular": absent}}, "tabular")
    assert (attributions[1] == 0).all() and np.abs(attributions[0]).sum() > 0


def test_integrated_gradients_refuse_an_image(cohort):
    _, _, batch = cohort
    with pytest.raises(ValueError, match="'image' is a image modality"):
        tabular_attributions(_module(cohort, ["image", "tabular"], "concat"), batch, "image")


# --------------------------------------------------------------------------------------------------
# Drop one modality
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["concat", "early", "gated", "attention", "late_weighted"])
def test_modality_contributions_equal_the_probabilities_recomputed_by_hand(cohort, fusion):
    _, _, batch = cohort
    module = _module(cohort, ["image", "tabular"], fusion).train()
    snapshot = _snapshot(module)
    masks = fusion not in ("concat", "early")
    n = len(batch["label"])
    given = batch
    if masks:  # sample 1 has no table: dropping the table changes nothing, dropping the image leaves nothing
        flags = torch.ones(n, dtype=torch.bool)
        flags[1] = False
        given = batch | {"present": {"tabular": flags}}
    result = modality_contributions(module, given)
    _assert_untouched(module, snapshot)
    assert result.method == ("mask" if masks else "zeros")

    module.eval()
    rows = torch.arange(n)
    with torch.no_grad():
        full = module(given).softmax(dim=1)
        target = full.argmax(dim=1)
        np.testing.assert_array_equal(result.target, target.numpy())
        np.testing.assert_allclose(result.probability, full[rows, target].numpy(), atol=1e-6)
        for modality, other in (("image", "tabular"), ("tabular", "image")):
            if masks:
                only_other = {modality: torch.zeros(n, dtype=torch.bool), other: torch.ones(n, dtype=torch.bool)}
                without = module(batch | {"present": only_other}).softmax(dim=1)
            else:
                without = module(batch | {modality: torch.zeros_like(batch[modality])}).softmax(dim=1)
            expected = (full - without)[rows, target].numpy()
            if masks:
                assert result.deltas["tabular"][1] == 0 and np.isnan(result.deltas["image"][1])
                keep = np.arange(n) != 1
                np.testing.assert_allclose(result.deltas[modality][keep], expected[keep], atol=1e-6)
            else:
                np.testing.assert_allclose(result.deltas[modality], expected, atol=1e-6)
        assert any(np.abs(d[np.isfinite(d)]).max() > 1e-5 for d in result.deltas.values())

        if not masks:
            assert result.fusion_weights is None and result.weights_source is None
            return
        module(given)  # the fusion's own record of the full batch
        weights = np.stack([result.fusion_weights[m] for m in ("image", "tabular")], axis=1)
        np.testing.assert_allclose(weights.sum(axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(weights[1], [1, 0], atol=1e-6)  # no table: all weight on the image
        fusion_module = module.model.fusion
        if fusion == "gated":
            np.testing.assert_allclose(weights, fusion_module.last_gates.numpy())
        elif fusion == "late_weighted":
            np.testing.assert_allclose(weights, fusion_module.last_weights.numpy())
            assert weights[0].tolist() == pytest.approx(list(fusion_module.overall_weights().values()))
        else:
            assert result.weights_source.startswith("attention received")


def test_modality_contributions_need_two_modalities(cohort):
    _, _, batch = cohort
    with pytest.raises(ValueError, match=r"need a model with >= 2 modalities; this one has \['image'\]"):
        modality_contributions(_module(cohort, ["image"], "concat"), batch)


def test_explain_patients_predicts_in_eval_mode_whatever_mode_fit_left(cohort, tmp_path):
    """fit hands over its module in training mode: the predicted class (the explained target) must be
    the eval-mode one (dropout off, BatchNorm's running statistics), and one patient alone must work."""
    from lightning_fusion.explain.files import explain_patients

    _, datamodule, _ = cohort
    module = _module(cohort, ["image", "tabular"], "concat")
    test = datamodule.datasets["test"]
    arrays = {m: test.arrays[m][:1] for m in module.modalities}
    module.eval()
    expected = explain_patients(module, test.patient_ids[:1], arrays, {}, tmp_path / "eval")["predicted"]
    module.train()
    summary = explain_patients(module, test.patient_ids[:1], arrays, {}, tmp_path / "train")  # BatchNorm of 1
    assert summary["predicted"] == expected and module.training
