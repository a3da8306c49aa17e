"""Two-phase transfer learning as a Lightning callback: warm the head up on a frozen backbone, then fine-tune.

:class:`BackboneWarmup` acts on every :class:`~lightning_fusion.encoders.image.TimmImageEncoder`
whose options set ``warmup_epochs: E > 0``:

* phase 1 (epochs ``0 .. E-1``): the whole backbone is frozen before the optimizer is built, so
  ``configure_optimizers`` (which takes ``requires_grad`` parameters only) trains the head, the
  other encoders and the encoder's 1×1 ``reduce`` conv; the frozen BatchNorm layers stay in eval mode;
* phase 2 (from epoch ``E``): the layer groups ``>= unfreeze_from`` (all of them when it is null)
  become trainable and join the optimizer as a new parameter group, learning rate
  ``optim.lr × finetune_lr_factor`` (named ``finetune-<modality>`` in the logged learning rates).
  The learning-rate schedule covers it too: ReduceLROnPlateau lowers every group, the new one
  included, and the other schedules (lightning_fusion.schedules) scale it from its own rate on.

Early stopping must not end the run inside the warm-up: ``training.build_trainer`` sets
``min_epochs = E + 1``, and at the unfreeze this callback gives early stopping a fresh patience
(its wait count and a pending stop are cleared; the best score is kept), so phase 2 gets its
``early_stopping_patience`` epochs to beat phase 1.

Multi-process DDP is refused: DDP registers the parameters that need gradients when it wraps the
model, so parameters unfrozen later would train on each process's own gradients, never averaged
(Lightning-AI/pytorch-lightning#20340). Use ``warmup_epochs: 0`` (a fixed ``unfreeze_from``) there.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BaseFinetuning, EarlyStopping
from torch.optim import Optimizer

from lightning_fusion.encoders.image import TimmImageEncoder
from lightning_fusion.encoders.transfer import freeze_backbone, freeze_before

log = logging.getLogger(__name__)


class BackboneWarmup(BaseFinetuning):
    """Freeze the backbones of encoders with ``warmup_epochs > 0``, unfreeze them when their warm-up ends."""

    def __init__(self) -> None:
        super().__init__()
        self._base_lr: float | None = None
        self._unfrozen: set[str] = set()
        self._unfroze_now = False

    @staticmethod
    def encoders(module: L.LightningModule) -> dict[str, TimmImageEncoder]:
        """Module name → timm encoder, for every encoder with a warm-up."""
        return {
            name: m
            for name, m in module.named_modules()
            if isinstance(m, TimmImageEncoder) and m.options.warmup_epochs > 0
        }

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":  # testing a checkpoint needs no freezing
            return
        if trainer.world_size > 1:
            raise RuntimeError(
                "warmup_epochs (two-phase fine-tuning) does not work with multi-process DDP: parameters "
                "unfrozen after DDP wraps the model are never synchronised. Use one device, or warmup_epochs: 0 "
                "with a fixed unfreeze_from"
            )
        super().setup(trainer, pl_module, stage)  # calls freeze_before_training, before configure_optimizers

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self._unfrozen.clear()
        for encoder in self.encoders(pl_module).values():
            freeze_backbone(encoder)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        # optim.lr; else the first group's rate now (the optimizer is built and no scheduler has stepped).
        experiment = getattr(pl_module, "experiment_config", None)
        lr = experiment.optim.lr if experiment is not None else trainer.optimizers[0].param_groups[0]["lr"]
        self._base_lr = float(lr)
        for name, encoder in self.encoders(pl_module).items():
            if encoder.options.warmup_epochs >= trainer.max_epochs:
                log.warning(
                    "%s: warmup_epochs %d >= max_epochs %d, so its backbone stays frozen for the whole run",
                    name,
                    encoder.options.warmup_epochs,
                    trainer.max_epochs,
                )

    def finetune_function(self, pl_module: L.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        for name, encoder in self.encoders(pl_module).items():
            options = encoder.options
            if name in self._unfrozen or epoch < options.warmup_epochs:
                continue
            start = freeze_before(encoder, options.unfreeze_from or 0, fine=options.fine_groups)
            in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
            params = [p for p in encoder.parameters() if p.requires_grad and id(p) not in in_optimizer]
            base_lr = self._base_lr if self._base_lr is not None else optimizer.param_groups[0]["lr"]
            lr = base_lr * options.finetune_lr_factor
            if params:  # a resumed run already has them (BaseFinetuning restores the groups)
                optimizer.add_param_group({"params": params, "lr": lr, "name": f"finetune-{name.rsplit('.', 1)[-1]}"})
            self._unfrozen.add(name)
            self._unfroze_now = True
            log.info(
                "epoch %d: %s unfreezes its backbone from layer group %d (%d tensors, lr %.3g)",
                epoch,
                name,
                start,
                len(params),
                lr,
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unfroze_now = False
        super().on_train_epoch_start(trainer, pl_module)  # calls finetune_function
        if self._unfroze_now:
            self._restart_early_stopping(trainer)

    @staticmethod
    def _restart_early_stopping(trainer: Any) -> None:
        """Give the fine-tuning phase a fresh patience (the best score so far is kept)."""
        stopping = [cb for cb in trainer.callbacks if isinstance(cb, EarlyStopping)]
        for callback in stopping:
            callback.wait_count = 0
        if stopping:
            trainer.should_stop = False
