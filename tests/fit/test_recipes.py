"""Training recipes on the real Trainer of a run: the monitored metric picks the checkpoint, weight
averaging validates, saves and tests the averaged weights, the run says how it balances its classes."""

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_fusion.config import OptimConfig, TrainerConfig, load_config
from lightning_fusion.errors import ConfigError
from lightning_fusion.fit.results import class_balance_line, class_balance_tags
from lightning_fusion.fit.trainer import build_trainer
from tests.tiny import TinyModule, loader

# val/loss is best at epoch 1, val/auroc and val/balanced_accuracy at epoch 3
SCRIPTED = {
    0: {"val/loss": 0.9, "val/auroc": 0.60, "val/balanced_accuracy": 0.50},
    1: {"val/loss": 0.5, "val/auroc": 0.70, "val/balanced_accuracy": 0.55},
    2: {"val/loss": 0.6, "val/auroc": 0.75, "val/balanced_accuracy": 0.60},
    3: {"val/loss": 0.7, "val/auroc": 0.90, "val/balanced_accuracy": 0.80},
}


def _trainer(tmp_path, optim=None, **trainer_options):
    options = {"max_epochs": 4, "accelerator": "cpu", "early_stopping_patience": 10} | trainer_options
    return build_trainer(TrainerConfig(**options), CSVLogger(tmp_path), tmp_path / "checkpoints", optim=optim)


@pytest.mark.parametrize(("monitor", "best_epoch"), [("val/loss", 1), ("val/auroc", 3), ("val/balanced_accuracy", 3)])
def test_the_checkpoint_kept_is_the_monitored_metrics_best(tmp_path, monitor, best_epoch):
    trainer, checkpoint = _trainer(tmp_path, monitor=monitor)
    trainer.fit(TinyModule(scripted=SCRIPTED), loader(), loader(seed=1))
    assert checkpoint.best_model_path.endswith(f"best-epoch{best_epoch:02d}.ckpt")
    assert checkpoint.mode == ("min" if monitor == "val/loss" else "max")


def test_early_stopping_watches_the_monitored_metric(tmp_path):
    # val/loss stops improving after epoch 1; with patience 1 on val/loss the run would end at epoch 2
    trainer, _ = _trainer(tmp_path, monitor="val/auroc", early_stopping_patience=1)
    trainer.fit(TinyModule(scripted=SCRIPTED), loader(), loader(seed=1))
    assert trainer.current_epoch == 4  # val/auroc improved every epoch: all 4 ran


def test_unknown_monitor_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'val/auroc'"):
        load_config(None, {"trainer.monitor": "val/aurc"})


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_weight_averaging_validates_saves_and_tests_the_averaged_weights(tmp_path, kind):
    optim = OptimConfig(lr=0.05, weight_averaging=kind, swa_start=0.5)
    module = TinyModule(optim, scripted={epoch: {"val/loss": 1 - 0.1 * epoch} for epoch in range(4)})
    trainer, checkpoint = _trainer(tmp_path, optim=optim)
    trainer.fit(module, loader(), loader(seed=1))
    saved = torch.load(checkpoint.best_model_path, weights_only=True)  # the last epoch: val/loss falls
    averaged, raw = saved["state_dict"]["layer.weight"], saved["current_model_state"]["layer.weight"]
    assert not torch.allclose(averaged, raw)  # the raw weights moved on; the average lags behind
    epoch = saved["epoch"]
    assert torch.equal(module.validated[epoch], averaged)  # the monitored epoch was validated averaged
    trainer.test(module, loader(seed=1), ckpt_path=checkpoint.best_model_path, verbose=False)
    assert torch.equal(module.layer.weight.detach(), averaged)  # the test runs the averaged model


def test_swa_validates_raw_weights_until_its_first_average(tmp_path):
    optim = OptimConfig(lr=0.05, weight_averaging="swa", swa_start=0.5)  # averages from the end of epoch 2
    module = TinyModule(optim)
    trainer, _ = _trainer(tmp_path, optim=optim)
    trainer.fit(module, loader(), loader(seed=1))
    # epochs 0 and 1 validate the raw weights, which change every epoch; never the initial ones
    assert not torch.equal(module.validated[0], module.validated[1])


def test_the_run_says_how_it_balances_an_imbalanced_split():
    config = load_config(None, {})
    tags = class_balance_tags(config, {"normal": 40, "ischemia": 10})
    assert tags == {"lf.class_ratio": "4.00", "lf.imbalanced": "true", "lf.class_balancing": "class_weights"}
    assert "imbalanced" in class_balance_line(tags, {"normal": 40, "ischemia": 10})
    balanced = class_balance_tags(load_config(None, {"optim.class_weights": False}), {"a": 10, "b": 11})
    assert balanced["lf.imbalanced"] == "false" and balanced["lf.class_balancing"] == "none"
