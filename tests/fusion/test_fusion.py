"""Fusion strategies with presence masks: shapes, gradients, masking (not zero-filling), weights, modality dropout."""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_fusion.config import HeadConfig, load_config
from lightning_fusion.errors import ConfigError
from lightning_fusion.fusion import FUSIONS
from lightning_fusion.fusion.base import Fusion, ModalityWeights
from lightning_fusion.fusion.late import LateWeightedFusionConfig
from lightning_fusion.models import ModalitySpec, MultimodalClassifier, build_model
from tests.test_models import SPECS, SUBSETS

BATCH = 4
MISSING_FUSIONS = FUSIONS.names(supports_missing=True)
# Fusions built from feature widths alone; the conditioning ones (film, daft) also need the image
# encoder they act in (tests/fusion/test_conditioning.py) and run here through build_model only.
VECTOR_FUSIONS = FUSIONS.names(conditions=None)


def _config(modalities, fusion, **overrides):
    data = {
        "model.modalities": modalities,
        "model.fusion": fusion if isinstance(fusion, dict) else {"name": fusion},
        "model.encoders.image.backbone": "test_resnet",
        "model.encoders.signal": {"name": "resnet1d", "widths": [8, 16]},
    }
    data.update(overrides)
    return load_config(None, data).model


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.rand(BATCH, *s.shape, generator=generator) for m, s in SPECS.items()}


def _present(modalities) -> dict[str, torch.Tensor]:
    """Sample 1 lacks the first modality; with 3 modalities sample 2 also lacks the second."""
    present = {m: torch.ones(BATCH, dtype=torch.bool) for m in modalities}
    present[modalities[0]][1] = False
    if len(modalities) >= 3:
        present[modalities[1]][2] = False
    return present


def _features(dims, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {m: torch.randn(BATCH, d, generator=generator) for m, d in dims.items()}


def _fusion(name, dims, num_classes=3, **options):
    config_cls = FUSIONS.metadata(name)["config"]
    return FUSIONS.create(name, dims, num_classes, HeadConfig(), config_cls(**options) if config_cls else None)


DIMS = {"image": 6, "signal": 5, "tabular": 4}
MIXED = {  # sample 0: all; 1: no image; 2: tabular only; 3: no tabular
    "image": torch.tensor([True, False, False, True]),
    "signal": torch.tensor([True, True, False, True]),
    "tabular": torch.tensor([True, True, True, False]),
}


# --------------------------------------------------------------------------------------------------
# Every fusion × modality subset × with/without a missing modality
# --------------------------------------------------------------------------------------------------
def _mask_cases() -> list:
    """(fusion, modalities, missing) cases that exist: enough modalities, and absence only where supported."""
    cases = []
    for fusion in FUSIONS.names():
        meta = FUSIONS.metadata(fusion)
        for modalities in SUBSETS:
            if len(modalities) < meta["min_modalities"] or (meta.get("conditions") and "image" not in modalities):
                continue
            for missing in (False, True):
                if missing and (len(modalities) < 2 or not meta["supports_missing"]):
                    continue  # one modality cannot be missing; concat's refusal is tested below
                label = f"{fusion}-{'+'.join(modalities)}-{'some-missing' if missing else 'all-present'}"
                cases.append(pytest.param(fusion, modalities, missing, id=label))
    return cases


@pytest.mark.parametrize(("fusion", "modalities", "missing"), _mask_cases())
def test_fusion_with_presence_mask(fusion, modalities, missing):
    torch.manual_seed(0)
    model = build_model(_config(modalities, fusion), SPECS, num_classes=3)
    batch = _batch()
    batch["present"] = _present(modalities) if missing else {m: torch.ones(BATCH, dtype=torch.bool) for m in modalities}

    model.train()
    out = model(batch)
    assert out.shape == (BATCH, 3)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    for modality in modalities:
        grads = [p.grad for p in model.encoders[modality].parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), modality
        assert any(g.abs().sum() > 0 for g in grads), f"no gradient reaches the {modality} encoder"

    if not missing:
        return
    # The absent modality's input is ignored for that sample (masked), while a present one matters.
    model.eval()
    absent = modalities[0]
    changed_absent = dict(batch, **{absent: batch[absent].clone()})
    changed_absent[absent][:2] = torch.rand_like(batch[absent][:2]) * 5 - 2  # sample 0 has it, sample 1 not
    changed_present = dict(batch, **{modalities[1]: batch[modalities[1]].clone()})
    changed_present[modalities[1]][1] = torch.rand_like(batch[modalities[1]][1]) * 5 - 2
    with torch.no_grad():
        reference, with_absent_changed, with_present_changed = (
            model(b) for b in (batch, changed_absent, changed_present)
        )
    torch.testing.assert_close(with_absent_changed[1], reference[1], rtol=0, atol=1e-6)
    assert not torch.allclose(with_present_changed[1], reference[1], atol=1e-4), "the test input change is inert"
    assert not torch.allclose(with_absent_changed[0], reference[0], atol=1e-4), "sample 0 has it: it matters there"


@pytest.mark.parametrize("fusion", MISSING_FUSIONS)
def test_a_sample_with_every_modality_absent_is_a_clear_error(fusion):
    present = {m: torch.ones(BATCH, dtype=torch.bool) for m in DIMS}
    for mask in present.values():
        mask[2] = False
    with pytest.raises(ValueError, match=rf"{fusion} fusion: sample\(s\) 2 of the batch have none of the modalities"):
        _fusion(fusion, DIMS)(_features(DIMS), present)


@pytest.mark.parametrize("fusion", VECTOR_FUSIONS)
def test_presence_mask_of_the_wrong_shape_is_a_clear_error(fusion):
    with pytest.raises(ValueError, match=r"present\['image'\] must have shape \(4,\)"):
        _fusion(fusion, DIMS)(_features(DIMS), {"image": torch.ones(BATCH + 1, dtype=torch.bool)})


@pytest.mark.parametrize("fusion", VECTOR_FUSIONS)
def test_a_mask_without_some_modality_counts_it_present_and_ignores_extra_names(fusion):
    fusion_module = _fusion(fusion, DIMS).eval()
    features = _features(DIMS)
    with torch.no_grad():
        reference = fusion_module(features, None)
        partial = fusion_module(features, {"image": torch.ones(BATCH), "ct": torch.zeros(BATCH)})  # 0/1 float too
    torch.testing.assert_close(partial, reference)


def test_concat_with_a_missing_modality_is_a_clear_error():
    model = build_model(_config(["image", "tabular"], "concat"), SPECS, num_classes=3)
    batch = _batch()
    batch["present"] = {"image": torch.ones(BATCH, dtype=torch.bool), "tabular": torch.tensor([1, 1, 0, 1]).bool()}
    with pytest.raises(
        ValueError,
        match=r"concat fusion cannot handle a missing 'tabular' modality \(1 of 4 samples in this batch lack it\); "
        r"drop those patients or use a fusion that supports missing modalities: attention, gated, late_weighted, lmf",
    ):
        model(batch)
    batch["present"]["tabular"][:] = True
    assert model(batch).shape == (BATCH, 3)  # an all-present mask is fine


# --------------------------------------------------------------------------------------------------
# Inspectable gates, attention and weights
# --------------------------------------------------------------------------------------------------
def test_gated_gates_sum_to_one_over_present_modalities():
    fusion = _fusion("gated", DIMS, d=8)
    fusion(_features(DIMS), MIXED)
    gates = fusion.last_gates
    assert gates.shape == (BATCH, 3) and not gates.requires_grad
    mask = torch.stack([MIXED[m] for m in fusion.modalities], dim=1)
    torch.testing.assert_close(gates.sum(dim=1), torch.ones(BATCH))
    assert (gates[~mask] == 0).all() and (gates[mask] > 0).all()
    assert gates[2].tolist() == [0.0, 0.0, 1.0]  # tabular only


@pytest.mark.parametrize("layers", [1, 2])
def test_attention_weights_sum_to_one_over_present_modalities(layers):
    fusion = _fusion("attention", DIMS, d=8, heads=2, layers=layers).eval()
    with torch.no_grad():
        fusion(_features(DIMS), MIXED)
    attention = fusion.last_attention
    assert attention.shape == (BATCH, 2, 3, 3)  # (B, heads, query M, key M)
    key_mask = torch.stack([MIXED[m] for m in fusion.modalities], dim=1)[:, None, None, :].expand_as(attention)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(BATCH, 2, 3))
    assert (attention[~key_mask] == 0).all()


def _hand_mixture(fusion, features, weights, present=None):
    """Σ_m w_m softmax(head_m(f_m)) / Σ_m w_m over each sample's present modalities."""
    rows = []
    for i in range(BATCH):
        used = [m for m in fusion.modalities if present is None or bool(present[m][i])]
        total = sum(weights[m] for m in used)
        rows.append(sum(weights[m] / total * fusion.heads[m](features[m][i : i + 1]).softmax(dim=1)[0] for m in used))
    return torch.stack(rows)


def test_late_weighted_fixed_weights_equal_the_hand_computed_mixture():
    weights = {"image": 2.0, "signal": 1.0, "tabular": 1.0}  # normalised by the fusion
    fusion = _fusion("late_weighted", DIMS, weights="fixed", fixed_weights=weights).eval()
    features = _features(DIMS)
    target = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        for present in (None, MIXED):
            out = fusion(features, present)
            expected = _hand_mixture(fusion, features, weights, present)
            torch.testing.assert_close(out.exp(), expected)
            # log-probabilities: the LightningModule's cross-entropy is the mixture's NLL, its softmax the mixture
            torch.testing.assert_close(out.logsumexp(dim=1), torch.zeros(BATCH), atol=1e-6, rtol=0)
            torch.testing.assert_close(F.cross_entropy(out, target), -expected[range(BATCH), target].log().mean())
            torch.testing.assert_close(out.softmax(dim=1), expected)
    assert fusion.overall_weights() == pytest.approx({"image": 0.5, "signal": 0.25, "tabular": 0.25})
    torch.testing.assert_close(fusion.last_weights[1], torch.tensor([0.0, 0.5, 0.5]))  # MIXED: no image


def test_late_weighted_learned_weights_train_and_are_loggable():
    fusion = _fusion("late_weighted", DIMS)
    assert fusion.overall_weights() == pytest.approx({m: 1 / 3 for m in DIMS})
    out = fusion(_features(DIMS), MIXED)
    F.cross_entropy(out, torch.tensor([0, 1, 2, 1])).backward()
    assert fusion.weight_logits.grad is not None and fusion.weight_logits.grad.abs().sum() > 0
    with torch.no_grad():
        fusion.weight_logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
    weights = fusion.overall_weights()
    assert all(isinstance(w, float) for w in weights.values()) and sum(weights.values()) == pytest.approx(1)
    assert list(weights.values()) == pytest.approx(torch.tensor([0.0, 1.0, 2.0]).softmax(0).tolist())
    with torch.no_grad():
        fusion.eval()
        out = fusion(_features(DIMS), MIXED)
    torch.testing.assert_close(out.exp(), _hand_mixture(fusion, _features(DIMS), weights, MIXED))


def test_late_weighted_weight_zero_modality_alone_is_a_clear_error():
    fusion = _fusion("late_weighted", DIMS, weights="fixed", fixed_weights={"image": 1, "signal": 1, "tabular": 0})
    with pytest.raises(ValueError, match=r"sample\(s\) \[2\] have only modalities with fixed weight 0 present"):
        fusion(_features(DIMS), MIXED)  # sample 2: tabular only


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weights": "fixed"}, r"weights: fixed needs fixed_weights"),
        ({"weights": "fixed", "fixed_weights": {"image": -1, "tabular": 2}}, r"finite and >= 0"),
        ({"weights": "fixed", "fixed_weights": {"image": 0, "tabular": 0}}, r"must not all be 0"),
        ({"fixed_weights": {"image": 1, "tabular": 1}}, r"only used with weights: fixed"),
        ({"weights": "fix"}, r"unknown late-fusion weights mode 'fix'; did you mean 'fixed'"),
    ],
)
def test_late_weighted_options_are_checked_by_config(options, message):
    with pytest.raises(ConfigError, match=rf"model\.fusion: .*{message}"):
        _config(["image", "tabular"], {"name": "late_weighted", **options})


def test_late_weighted_fixed_weights_must_cover_the_modalities():
    config = _config(
        ["image", "tabular"], {"name": "late_weighted", "weights": "fixed", "fixed_weights": {"image": 1.0}}
    )
    with pytest.raises(ValueError, match=r"every modality of the model; missing \['tabular'\]"):
        build_model(config, SPECS, num_classes=3)
    with pytest.raises(ValueError, match=r"unknown modality 'tabluar'; did you mean 'tabular'"):
        FUSIONS.create(
            "late_weighted",
            {"image": 4, "tabular": 4},
            3,
            HeadConfig(),
            LateWeightedFusionConfig("fixed", {"image": 1.0, "tabluar": 1.0}),
        )


def _full_tensor_fusion(fusion, features, present=None):
    """LMF by its definition: W · (z_1 ⊗ ... ⊗ z_M) + b with W = Σ_i λ_i ⊗_m W_m^(i), the product formed in full."""
    rows = []
    for b in range(BATCH):
        zs = []
        for m in fusion.modalities:
            f = features[m][b] if present is None or bool(present[m][b]) else torch.zeros_like(features[m][b])
            zs.append(torch.cat([f, torch.ones(1)]))
        outer = zs[0]
        for z in zs[1:]:
            outer = torch.einsum("...,j->...j", outer, z)  # (D_1+1, ..., D_M+1)
        weight = 0
        for i in range(fusion.options.rank):
            term = fusion.factors[fusion.modalities[0]][i]  # (D_1+1, d)
            for m in fusion.modalities[1:]:
                factor = fusion.factors[m][i]
                term = torch.einsum("...d,jd->...jd", term, factor)
            weight = weight + fusion.rank_weights[i] * term  # (D_1+1, ..., D_M+1, d)
        rows.append(torch.tensordot(outer, weight, dims=outer.ndim) + fusion.bias)
    return torch.stack(rows)


@pytest.mark.parametrize("dims", [{"image": 3, "tabular": 2}, DIMS, DIMS | {"ct": 2}], ids=["2", "3", "4"])
def test_lmf_equals_the_full_tensor_product_through_a_rank_r_weight(dims):
    fusion = _fusion("lmf", dims, rank=3, d=5).double().eval()
    features = {m: f.double() for m, f in _features(dims).items()}
    captured = {}
    fusion.head.register_forward_hook(lambda _m, inputs, _o: captured.update(fused=inputs[0]))
    with torch.no_grad():
        for present in (None, {m: MIXED.get(m, torch.ones(BATCH, dtype=torch.bool)) for m in dims}):
            fusion(features, present)
            torch.testing.assert_close(captured["fused"], _full_tensor_fusion(fusion, features, present))


def test_lmf_rank_sets_the_factor_shapes_and_is_checked():
    fusion = _fusion("lmf", DIMS, rank=7, d=16)
    assert fusion.factors["image"].shape == (7, DIMS["image"] + 1, 16) and fusion.rank_weights.shape == (7,)
    with pytest.raises(ConfigError, match=r"model\.fusion: rank must be >= 1, got 0"):
        _config(["image", "tabular"], {"name": "lmf", "rank": 0})


@pytest.mark.parametrize("fusion", VECTOR_FUSIONS)
def test_bf16_autocast_gives_finite_float_scores(fusion):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _fusion(fusion, DIMS)(_features(DIMS), MIXED if FUSIONS.metadata(fusion)["supports_missing"] else None)
    assert out.shape == (BATCH, 3) and torch.isfinite(out.float()).all()


# --------------------------------------------------------------------------------------------------
# Modality dropout
# --------------------------------------------------------------------------------------------------
class _RecordPresence(nn.Module):
    encode = Fusion.encode  # every encoder on its own input, as a fusion does

    def forward(self, features, present):
        self.present = present
        return torch.zeros(next(iter(features.values())).shape[0], 2)


def _dropout_model(p):
    encoders = {m: nn.Linear(2, 2) for m in ("a", "b", "c")}
    return MultimodalClassifier(encoders, _RecordPresence(), modality_dropout=p)


def test_modality_dropout_never_drops_every_modality_and_is_off_in_eval():
    torch.manual_seed(0)
    model = _dropout_model(0.5).train()
    n = 4000
    batch = {m: torch.randn(n, 2) for m in ("a", "b", "c")}
    given = {"a": torch.ones(n, dtype=torch.bool), "b": torch.ones(n, dtype=torch.bool)}
    given["a"][:100] = False  # absent in the data: stays absent
    model(batch | {"present": given})
    kept = torch.stack([model.fusion.present[m] for m in ("a", "b", "c")], dim=1)
    assert kept.any(dim=1).all()
    assert not kept[:100, 0].any()
    # each modality dropped about p of the time, minus the rescued samples (p^M / M): 0.5 - 0.125 / 3
    assert 0.42 < (~kept[100:]).float().mean() < 0.50

    model(batch)  # no mask given: every modality starts present
    assert torch.stack(list(model.fusion.present.values()), dim=1).any(dim=1).all()

    model.eval()
    model(batch)
    assert model.fusion.present is None
    model(batch | {"present": given})
    assert model.fusion.present is given


def test_modality_dropout_keeps_a_sample_given_with_nothing_present_as_it_is():
    model = _dropout_model(0.9).train()
    batch = {m: torch.randn(3, 2) for m in ("a", "b", "c")}
    nothing = {m: torch.tensor([True, False, True]) for m in ("a", "b", "c")}
    model(batch | {"present": nothing})
    assert not any(bool(model.fusion.present[m][1]) for m in ("a", "b", "c"))


def test_modality_dropout_with_a_real_fusion_trains():
    model = build_model(_config(["image", "signal", "tabular"], "gated", **{"model.modality_dropout": 0.5}), SPECS, 3)
    assert model.modality_dropout == 0.5
    model.train()
    out = model(_batch())
    out.logsumexp(dim=1).sum().backward()
    assert torch.isfinite(out).all()


def test_modality_dropout_needs_a_fusion_that_supports_missing_modalities():
    # a config rule: refused at resolve, before any data (or model) exists
    with pytest.raises(
        ConfigError,
        match=r"model\.modality_dropout 0\.3: model\.fusion 'concat' cannot handle missing modalities.*"
        r"use a fusion that supports them \(attention, gated, late_weighted, lmf\)",
    ):
        _config(["image", "tabular"], "concat", **{"model.modality_dropout": 0.3})


@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_modality_dropout_must_be_a_probability_below_one(p):
    with pytest.raises(ConfigError, match=r"modality_dropout must be in \[0, 1\)"):
        _config(["image", "tabular"], "gated", **{"model.modality_dropout": p})


# --------------------------------------------------------------------------------------------------
# Registry metadata and config checks
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", VECTOR_FUSIONS)
def test_every_fusion_is_a_fusion_named_by_the_registry_with_its_options(fusion):
    module = _fusion(fusion, DIMS)
    assert isinstance(module, Fusion) and module.name == fusion
    assert module.modalities == sorted(DIMS)
    config_cls = FUSIONS.metadata(fusion)["config"]
    assert module.options == (config_cls() if config_cls else None)  # the registered options' defaults


@pytest.mark.parametrize("fusion", VECTOR_FUSIONS)
def test_modality_weights_of_the_last_forward_are_per_sample_and_sum_to_one_over_present(fusion):
    module = _fusion(fusion, DIMS).eval()
    assert module.modality_weights() is None  # no forward yet
    present = MIXED if FUSIONS.metadata(fusion)["supports_missing"] else None
    with torch.no_grad():
        module(_features(DIMS), present)
    weights = module.modality_weights()
    if weights is None:  # concat and early fusion weigh nothing per sample
        assert fusion in ("concat", "early", "lmf")
        return
    assert isinstance(weights, ModalityWeights) and weights.modalities == sorted(DIMS) and weights.source
    assert weights.values.shape == (BATCH, len(DIMS))
    mask = torch.stack([MIXED[m] for m in weights.modalities], dim=1)
    torch.testing.assert_close(weights.values.sum(dim=1), torch.ones(BATCH))
    assert bool((weights.values[~mask] == 0).all())  # an absent modality weighs nothing
    arrays = weights.as_numpy()
    assert list(arrays) == sorted(DIMS) and arrays["image"].shape == (BATCH,)


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_every_fusion_declares_its_metadata_and_documents_itself(fusion):
    meta = FUSIONS.metadata(fusion)
    assert meta["level"] in ("input", "intermediate", "decision")
    assert meta["min_modalities"] >= 1 and isinstance(meta["supports_missing"], bool) and "config" in meta
    doc = sys.modules[FUSIONS.get(fusion).__module__].__doc__
    assert f"Level: {meta['level']}" in doc and "modalit" in doc


@pytest.mark.parametrize("fusion", [n for n in FUSIONS.names() if FUSIONS.metadata(n)["min_modalities"] > 1])
def test_min_modalities_is_enforced_by_config(fusion):
    with pytest.raises(ConfigError, match=rf"model\.fusion: '{fusion}' needs at least 2 modalities, got \['tabular'\]"):
        load_config(None, {"model.modalities": ["tabular"], "model.fusion": {"name": fusion}})


@pytest.mark.parametrize(
    ("fusion", "message"),
    [
        ({"name": "attention", "d": 10, "heads": 4}, r"d \(10\) must be divisible by heads \(4\)"),
        ({"name": "attention", "layers": 0}, r"layers must be >= 1"),
        ({"name": "gated", "d": 0}, r"d must be >= 1"),
        ({"name": "gated", "width": 8}, r"model\.fusion\.width: unknown config key 'width'"),
    ],
)
def test_fusion_options_are_checked_by_config(fusion, message):
    with pytest.raises(ConfigError, match=message):
        _config(["image", "tabular"], fusion)


def test_fusion_options_reach_the_modules():
    attention = {"name": "attention", "d": 16, "heads": 2, "layers": 2}
    model = build_model(_config(["image", "tabular"], attention), SPECS, 3)
    assert len(model.fusion.blocks) == 2 and model.fusion.blocks[0].attention.num_heads == 2
    assert model.fusion.modality_embedding.shape == (2, 16)
    model = build_model(_config(["image", "tabular"], {"name": "gated", "d": 8}), SPECS, 3)
    assert model.fusion.project["image"].out_features == 8


# --------------------------------------------------------------------------------------------------
# Early (input-level) fusion
# --------------------------------------------------------------------------------------------------
def test_early_fusion_stacks_same_kind_inputs_into_one_encoder():
    specs = {
        "ct": ModalitySpec("image", (1, 32, 32)),
        "cxr": ModalitySpec("image", (1, 16, 16)),  # resampled to 32×32 before stacking
        "age": ModalitySpec("vector", (2,)),
        "labs": ModalitySpec("vector", (5,)),
    }
    encoder = {"name": "timm", "backbone": "test_resnet", "reduce_channels": None}
    config = load_config(
        None,
        {
            "model.modalities": ["ct", "cxr", "age", "labs"],
            "model.encoders": {"ct": encoder, "cxr": encoder, "age": {"name": "mlp"}, "labs": {"name": "mlp"}},
            "model.fusion": {"name": "early"},
        },
    ).model
    model = build_model(config, specs, num_classes=4)
    assert set(model.encoders) == {"ct+cxr", "age+labs"}  # one backbone for both images, one MLP for the table
    assert model.merge_inputs.shapes == {"ct+cxr": (2, 32, 32), "age+labs": (7,)}
    batch = {
        "ct": torch.rand(3, 1, 32, 32),
        "cxr": torch.rand(3, 1, 16, 16),
        "age": torch.rand(3, 2),
        "labs": torch.rand(3, 5),
    }
    model.eval()
    logits = model(batch)
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()
    changed = dict(batch, cxr=torch.rand(3, 1, 16, 16))
    assert not torch.allclose(model(changed), logits)  # the resampled CXR really enters the stacked input
    with pytest.raises(ValueError, match="early fusion cannot handle a missing 'cxr' modality"):
        model(batch | {"present": {"cxr": torch.tensor([True, False, True])}})


def test_early_fusion_merges_signals_of_different_lengths():
    specs = {"ecg": ModalitySpec("signal", (12, 100)), "pcg": ModalitySpec("signal", (1, 50))}
    signal = {"name": "resnet1d", "widths": [8, 16]}
    config = load_config(
        None,
        {"model.modalities": ["ecg", "pcg"], "model.encoders": {"ecg": signal, "pcg": signal}, "model.fusion": "early"},
    ).model
    model = build_model(config, specs, num_classes=2)
    assert list(model.encoders) == ["ecg+pcg"] and model.merge_inputs.shapes == {"ecg+pcg": (13, 100)}
    assert model({"ecg": torch.randn(2, 12, 100), "pcg": torch.randn(2, 1, 50)}).shape == (2, 2)
