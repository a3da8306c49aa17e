"""Transfer learning: timm layer groups, partial freezing, frozen BatchNorm, the two-phase callback, the layers CLI."""

import math
import re
from types import SimpleNamespace

import lightning as L
import pytest
import timm
import torch
from lightning.pytorch.callbacks import EarlyStopping
from mlflow.tracking import MlflowClient
from torch import nn

import lightning_fusion.fit.run as training
from lightning_fusion import layers as layers_cli
from lightning_fusion.config import load_config, to_dict
from lightning_fusion.encoders.image import TimmImageEncoder, TimmImageEncoderConfig
from lightning_fusion.encoders.transfer import (
    apply_frozen_norm_modes,
    freeze_before,
    layer_groups,
    resolve_unfreeze_point,
)
from lightning_fusion.errors import ConfigError
from lightning_fusion.fit.warmup import BackboneWarmup
from lightning_fusion.lit import FusionLitModule
from tests.conftest import small_overrides

# One small model per family; densenet121 is the smallest DenseNet timm has.
FAMILIES = ["test_resnet", "mobilenetv3_small_050", "densenet121", "test_efficientnet"]
BN = nn.modules.batchnorm._BatchNorm


def _encoder(backbone: str, **options) -> TimmImageEncoder:
    torch.manual_seed(0)
    return TimmImageEncoder((9, 32, 32), TimmImageEncoderConfig(backbone=backbone, **options))


def _group_of(encoder: nn.Module) -> dict[str, int]:
    return {name: g.index for g in layer_groups(encoder) for name in g.parameter_names}


def _bn_stats(encoder: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in encoder.named_buffers() if n.endswith(("running_mean", "running_var"))}


# --------------------------------------------------------------------------------------------------
# Layer groups
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fine", [False, True], ids=["coarse", "fine"])
@pytest.mark.parametrize("backbone", [*FAMILIES, "mobilenetv1_100"])
def test_groups_are_ordered_and_cover_every_parameter_exactly_once(backbone, fine):
    with torch.device("meta"):  # structure only: no memory, no init time
        model = timm.create_model(backbone, num_classes=0)
    groups = layer_groups(model, fine=fine)
    assert len(groups) >= 3 and [g.index for g in groups] == list(range(len(groups)))
    assert groups[0].name == "stem"
    names = [n for g in groups for n in g.parameter_names]
    params = dict(model.named_parameters())
    assert len(names) == len(set(names)) and set(names) == set(params)  # every parameter, once
    assert [g.param_count for g in groups] == [sum(params[n].numel() for n in g.parameter_names) for g in groups]
    assert all(g.param_count > 0 for g in groups)
    # Ordered input → output: along the model's own (definition) order, the group index never goes back.
    index = {n: g.index for g in groups for n in g.parameter_names}
    order = [index[n] for n in params]
    assert order == sorted(order)
    # Each module name covers only its own group's parameters.
    for group in groups:
        for module in group.module_names:
            under = [n for n in params if n == module or n.startswith(module + ".")]
            assert under and {index[n] for n in under} == {group.index}


def test_fine_groups_split_the_coarse_ones():
    with torch.device("meta"):
        model = timm.create_model("mobilenetv3_small_050", num_classes=0)
    coarse, fine = layer_groups(model), layer_groups(model, fine=True)
    assert len(fine) > len(coarse)
    assert [m for g in coarse for m in g.module_names][:2] == ["conv_stem", "bn1"]
    assert coarse[-1].module_names == ("conv_head",)  # unmatched by timm's matcher: the last group


def test_encoder_groups_hold_the_backbone_and_not_the_reduce_conv():
    encoder = _encoder("test_resnet")
    groups = layer_groups(encoder)
    grouped = {n for g in groups for n in g.parameter_names}
    assert grouped == {n for n, _ in encoder.named_parameters() if n.startswith("backbone.")}
    assert {n for n, _ in encoder.named_parameters()} - grouped == {"reduce.weight", "reduce.bias"}
    assert groups[1].module_names == ("backbone.layer1",)


def test_layer_groups_need_a_timm_model():
    with pytest.raises(TypeError, match="neither a timm model nor an encoder with a timm .backbone"):
        layer_groups(nn.Linear(3, 3))


# --------------------------------------------------------------------------------------------------
# Where unfreezing starts
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "n_groups", "start"),
    [
        (0, 5, 0),  # everything trains
        (3, 5, 3),
        (5, 5, 5),  # nothing trains
        (-1, 5, 4),  # the last group only
        (-5, 5, 0),
        (0.5, 5, 2),  # floor(2.5)
        (0.75, 6, 4),  # the last quarter, rounded up to whole groups: 4 and 5
        (0.75, 8, 6),  # exactly the last quarter
        (0.99, 5, 4),  # at least one group trains
        (0.01, 5, 0),
        (0.29, 100, 29),  # 0.29 × 100 is 28.999… in floating point
    ],
)
def test_unfreeze_points_resolve_as_documented(value, n_groups, start):
    assert resolve_unfreeze_point(value, n_groups) == start


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (6, ValueError, r"unfreeze_from 6 is out of range for 5 layer groups: use a group index 0\.\.5"),
        (-6, ValueError, r"out of range.*-5\.\.-1 from the end"),
        (1.0, ValueError, r"strictly between 0 and 1.*for a group index write an int"),
        (0.0, ValueError, r"strictly between 0 and 1"),
        (1.5, ValueError, r"strictly between 0 and 1"),
        (math.nan, ValueError, r"strictly between 0 and 1"),
        (True, TypeError, r"a group index \(int\) or a fraction of depth \(float\), got True"),
        ("3", TypeError, r"got '3'"),
    ],
)
def test_bad_unfreeze_points_are_clear_errors(value, error, match):
    with pytest.raises(error, match=match):
        resolve_unfreeze_point(value, 5)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"unfreeze_from": 9},
            r"model\.encoders\.image: unfreeze_from 9 is out of range.*test_resnet has 5 coarse layer groups; "
            r"list them with python -m lightning_fusion\.layers test_resnet",
        ),
        ({"unfreeze_from": 1.5}, r"model\.encoders\.image: unfreeze_from 1\.5: a fraction of depth"),
        ({"freeze": True, "unfreeze_from": 2}, r"freeze: true freezes the whole backbone but unfreeze_from is 2"),
        ({"freeze": True, "warmup_epochs": 2}, r"warmup_epochs 2 unfreezes the backbone.*freeze: true keeps it"),
        ({"warmup_epochs": -1}, r"warmup_epochs must be >= 0, got -1"),
        ({"finetune_lr_factor": 0}, r"finetune_lr_factor must be > 0, got 0"),
    ],
)
def test_bad_transfer_options_name_the_option(options, match):
    overrides = {"model.encoders.image.backbone": "test_resnet"}
    overrides.update({f"model.encoders.image.{k}": v for k, v in options.items()})
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_fractions_and_indices_through_the_config():
    def image(value):
        config = load_config(
            None, {"model.encoders.image.backbone": "test_resnet", "model.encoders.image.unfreeze_from": value}
        )
        return config.model.encoders["image"].options.unfreeze_from

    assert image(0.75) == 0.75 and isinstance(image(0.75), float)
    assert image(-1) == -1
    assert image(1.0) == 1 and isinstance(image(1.0), int)  # documented: 1.0 is read as the group index 1


# --------------------------------------------------------------------------------------------------
# Freezing
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unfreeze_from", [0, 1, -1, 0.5])
@pytest.mark.parametrize("backbone", FAMILIES)
def test_unfreezing_from_n_trains_exactly_the_groups_from_n(backbone, unfreeze_from):
    encoder = _encoder(backbone, unfreeze_from=unfreeze_from)
    groups = layer_groups(encoder)
    start = resolve_unfreeze_point(unfreeze_from, len(groups))
    params = dict(encoder.named_parameters())
    for group in groups:
        assert {params[n].requires_grad for n in group.parameter_names} == {group.index >= start}, group.name
    assert encoder.reduce.weight.requires_grad  # new, randomly initialised: always trains


def test_freeze_freezes_the_whole_backbone_and_its_batchnorm():
    encoder = _encoder("test_resnet", freeze=True).train()
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    assert all(p.requires_grad for p in encoder.reduce.parameters())
    assert not any(m.training for m in encoder.backbone.modules() if isinstance(m, BN))


@pytest.mark.parametrize("backbone", FAMILIES)
def test_training_changes_only_unfrozen_groups_and_frozen_batchnorm_keeps_its_statistics(backbone):
    encoder = _encoder(backbone, unfreeze_from=-2)
    group_of = _group_of(encoder)
    start = len(layer_groups(encoder)) - 2
    encoder.train()
    norms = {n: m for n, m in encoder.named_modules() if isinstance(m, BN)}
    frozen_norms = {n for n, m in norms.items() if not m.weight.requires_grad}
    assert frozen_norms and frozen_norms != set(norms)
    assert {n for n, m in norms.items() if not m.training} == frozen_norms  # eval inside a training model
    before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    stats = _bn_stats(encoder)
    # A naive optimizer over *all* parameters: frozen ones get no gradient, so not even weight decay moves them.
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-2, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        optimizer.zero_grad()
        encoder(torch.rand(4, 9, 32, 32, generator=generator)).square().mean().backward()
        optimizer.step()
    changed = {n for n, p in encoder.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, g in group_of.items() if g < start}
    assert not changed & frozen
    assert {group_of[n] for n in changed if n in group_of} == {start, start + 1}  # both unfrozen groups learn
    assert "reduce.weight" in changed
    moved = {n.rsplit(".", 1)[0] for n, v in _bn_stats(encoder).items() if not torch.equal(v, stats[n])}
    assert not moved & frozen_norms  # frozen BatchNorm statistics unchanged in train mode
    assert moved == set(norms) - frozen_norms  # trained BatchNorm layers update theirs
    encoder.eval().train()  # Lightning toggles modes around validation; the frozen ones stay in eval
    assert {n for n, m in norms.items() if not m.training} == frozen_norms


def test_refreezing_and_unfreezing_moves_batchnorm_modes_with_it():
    encoder = _encoder("test_resnet", unfreeze_from=3).train()
    assert not encoder.backbone.layer2[0].bn1.training
    freeze_before(encoder, 0)
    assert all(m.training for m in encoder.modules() if isinstance(m, BN))
    freeze_before(encoder, 5)
    assert not any(m.training for m in encoder.modules() if isinstance(m, BN))
    encoder.eval()
    freeze_before(encoder, 0)
    assert not any(m.training for m in encoder.modules())  # an eval model stays in eval


def test_batchnorm_without_affine_parameters_follows_its_block():
    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False))
    model = nn.Sequential(block, nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4, affine=False))).train()
    block[0].weight.requires_grad_(False)
    block[0].bias.requires_grad_(False)
    apply_frozen_norm_modes(model)
    assert not model[0][1].training and model[1][1].training


# --------------------------------------------------------------------------------------------------
# Two-phase fine-tuning with Lightning
# --------------------------------------------------------------------------------------------------
class _Probe(L.Callback):
    """The image encoder before training and after every epoch, and the optimizer's parameter groups."""

    def __init__(self):
        self.start = None
        self.epochs = []

    @staticmethod
    def _state(pl_module):
        encoder = pl_module.model.encoders["image"]
        return {"params": {n: p.detach().clone() for n, p in encoder.named_parameters()}, "stats": _bn_stats(encoder)}

    def on_train_start(self, trainer, pl_module):
        self.start = self._state(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            encoder = pl_module.model.encoders["image"]
            self._eval_norms = {n for n, m in encoder.named_modules() if isinstance(m, BN) and not m.training}

    def on_train_epoch_end(self, trainer, pl_module):
        groups = [(g.get("name"), g["lr"]) for g in trainer.optimizers[0].param_groups]
        self.epochs.append({**self._state(pl_module), "eval_norms": self._eval_norms, "groups": groups})


def test_two_phase_fit_warms_the_head_up_then_fine_tunes_from_n(small_cohort, mlflow_store, monkeypatch):
    warmup, unfreeze_from, lr, factor = 2, 3, 1e-3, 0.1
    probe = _Probe()
    build = training.build_trainer

    def build_with_probe(*args, **kwargs):
        trainer, checkpoint = build(*args, **kwargs)
        trainer.callbacks.append(probe)
        return trainer, checkpoint

    monkeypatch.setattr(training, "build_trainer", build_with_probe)
    image = {"warmup_epochs": warmup, "unfreeze_from": unfreeze_from, "finetune_lr_factor": factor}
    overrides = small_overrides(
        small_cohort,
        **{f"model.encoders.image.{k}": v for k, v in image.items()},
        **{"trainer.max_epochs": 3, "trainer.early_stopping_patience": 0, "optim.lr": lr, "optim.plateau_patience": 9},
    )
    result = training.fit(load_config(None, overrides))

    # Early stopping (patience 0) may not end the run inside the warm-up: min_epochs = warm-up + 1.
    assert len(probe.epochs) == 3
    encoder_groups = layer_groups(_encoder("test_resnet"))
    group_of = {n: g.index for g in encoder_groups for n in g.parameter_names}
    norm_group = {n.rsplit(".", 1)[0]: group_of[n.rsplit(".", 1)[0] + ".weight"] for n in probe.start["stats"]}
    previous = probe.start
    for state in probe.epochs[:warmup]:  # phase 1: the backbone is frozen; the head and the reduce conv train
        assert all(torch.equal(state["params"][n], previous["params"][n]) for n in group_of)
        assert all(torch.equal(state["stats"][n], previous["stats"][n]) for n in state["stats"])
        assert not torch.equal(state["params"]["reduce.weight"], previous["params"]["reduce.weight"])
        assert state["groups"] == [(None, lr)]
        assert state["eval_norms"] == set(norm_group)  # every backbone BatchNorm in eval while training
        previous = state
    phase2 = probe.epochs[warmup]  # phase 2: groups >= unfreeze_from train, at lr × factor
    changed = {n for n in group_of if not torch.equal(phase2["params"][n], previous["params"][n])}
    assert {group_of[n] for n in changed} == set(range(unfreeze_from, len(encoder_groups)))
    assert phase2["groups"] == [(None, lr), ("finetune-image", pytest.approx(lr * factor))]
    assert phase2["eval_norms"] == {n for n, g in norm_group.items() if g < unfreeze_from}
    moved = {n.rsplit(".", 1)[0] for n in phase2["stats"] if not torch.equal(phase2["stats"][n], previous["stats"][n])}
    assert moved == {n for n, g in norm_group.items() if g >= unfreeze_from}
    metrics = MlflowClient(mlflow_store["uri"]).get_run(result.run_id).data.metrics
    assert metrics["lr-AdamW/finetune-image"] == pytest.approx(lr * factor)
    assert math.isfinite(result.test_metrics["test/loss"])


def test_plateau_scheduler_lowers_the_added_parameter_group_too():
    config = load_config(
        None,
        {
            "model.modalities": ["image"],
            "model.encoders.image": {
                "name": "timm",
                "backbone": "test_resnet",
                "warmup_epochs": 1,
                "unfreeze_from": -1,
            },
            "optim.plateau_patience": 0,
        },
    )
    module = FusionLitModule(to_dict(config), {"image": {"kind": "image", "shape": [9, 32, 32]}}, ["a", "b"])
    callback = BackboneWarmup()
    callback.freeze_before_training(module)
    configured = module.configure_optimizers()  # requires_grad parameters only: no backbone
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    backbone = module.model.encoders["image"].backbone
    assert not {id(p) for p in backbone.parameters()} & {id(p) for g in optimizer.param_groups for p in g["params"]}
    callback.finetune_function(module, 0, optimizer)
    assert len(optimizer.param_groups) == 1  # still warming up
    callback.finetune_function(module, 1, optimizer)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-4])
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(p) for p in backbone.layer4.parameters()}
    for loss in (1.0, 2.0):  # no improvement at patience 0: every group is lowered
        scheduler.step(loss)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-4, 5e-5])


def test_unfreezing_restarts_early_stopping_patience():
    stopping = EarlyStopping(monitor="val/loss", patience=2)
    stopping.wait_count = 5
    trainer = SimpleNamespace(callbacks=[stopping], should_stop=True)
    BackboneWarmup._restart_early_stopping(trainer)
    assert stopping.wait_count == 0 and trainer.should_stop is False


def test_build_trainer_adds_the_warmup_only_when_an_encoder_asks(tmp_path):
    def callbacks(**image):
        overrides = {"model.encoders.image.backbone": "test_resnet", "trainer.accelerator": "cpu"}
        overrides.update({f"model.encoders.image.{k}": v for k, v in image.items()})
        config = load_config(None, overrides)
        trainer, _ = training.build_trainer(config.trainer, SimpleNamespace(), tmp_path, config.model)
        return trainer

    plain = callbacks(unfreeze_from=2)
    assert not any(isinstance(c, BackboneWarmup) for c in plain.callbacks) and plain.fit_loop.min_epochs is None
    warm = callbacks(warmup_epochs=3)
    assert any(isinstance(c, BackboneWarmup) for c in warm.callbacks) and warm.fit_loop.min_epochs == 4


def test_warmup_refuses_multi_process_ddp():
    with pytest.raises(RuntimeError, match="does not work with multi-process DDP"):
        BackboneWarmup().setup(SimpleNamespace(world_size=2), None, "fit")


# --------------------------------------------------------------------------------------------------
# The layers CLI
# --------------------------------------------------------------------------------------------------
def test_layers_cli_prints_the_groups(capsys):
    assert layers_cli.main(["mobilenetv1_100"]) == 0
    out = capsys.readouterr().out
    assert "mobilenetv1_100: 6 coarse (stages) layer groups, 3,206,976 backbone parameters" in out
    assert "  0  stem" in out and "conv_stem, bn1" in out
    assert re.search(r"\n +5 +blocks\.4 +1,593,856 +1,593,856 \(49\.7%\) +blocks\.4\n", out)
    assert re.search(r"\n +1 +blocks\.0 +2,528 +3,206,048 \(99\.9%\)", out)
    assert "0.75 -> 4" in out
    assert layers_cli.main(["densenet121", "--fine", "--in-chans", "9"]) == 0
    out = capsys.readouterr().out
    assert "densenet121: 60 fine (blocks) layer groups" in out and "in_chans=9" in out


def test_layers_cli_unknown_model_suggests_names(capsys):
    assert layers_cli.main(["mobilenet_v1"]) == 2
    assert "unknown timm backbone 'mobilenet_v1'; did you mean 'mobilenetv1_100'" in capsys.readouterr().err
