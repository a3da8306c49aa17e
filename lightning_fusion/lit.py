"""The LightningModule shared by every model: CNN, ANN and fusion differ only in their config.

It stores plain data as hyperparameters (the resolved experiment config as ``to_dict`` gives it,
the modality specs, the class names and training-set class weights), so
``FusionLitModule.load_from_checkpoint(path)`` rebuilds the same network without the YAML file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from lightning_fusion.config import ExperimentConfig, resolve, to_dict
from lightning_fusion.data.kinds import KINDS
from lightning_fusion.errors import ConfigError
from lightning_fusion.losses import training_loss
from lightning_fusion.metrics import per_class_metrics, per_class_names, summary_metrics
from lightning_fusion.models import ModalitySpec, build_model
from lightning_fusion.schedules import build_schedule

CHECKPOINT_KEY = "lightning_fusion"  # our part of a Lightning checkpoint: format version + fitted preprocessing
CHECKPOINT_FORMAT = 1
TTA_SEED = 0  # evaluation.tta's copy k draws its augmentation from a generator seeded TTA_SEED + k


class FusionLitModule(L.LightningModule):
    """Training of a :class:`~lightning_fusion.models.MultimodalClassifier`: ``optim.loss`` (class-weighted by
    default) and ``optim.schedule``.

    Args:
        config: the resolved experiment config, or the same as plain data (``config.to_dict``; what a
            checkpoint holds), which is resolved again.
        specs: modality → ``{"kind": ..., "shape": [...]}`` of one sample.
        classes: class names in label-index order.
        class_weights: per-class loss weights computed from the training split (or ``None``).
    """

    def __init__(
        self,
        config: ExperimentConfig | Mapping[str, Any],
        specs: Mapping[str, Mapping[str, Any]],
        classes: Sequence[str],
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.experiment_config = config if isinstance(config, ExperimentConfig) else resolve(config)
        # plain data only: a checkpoint is read with weights_only=True
        plain = {"config": to_dict(self.experiment_config), "specs": specs, "classes": classes}
        self.save_hyperparameters(plain | {"class_weights": class_weights}, logger=False)
        self.classes = list(classes)
        self.modalities = list(self.experiment_config.model.modalities)
        modality_specs = {m: ModalitySpec(s["kind"], tuple(s["shape"])) for m, s in specs.items()}
        self.model = build_model(self.experiment_config.model, modality_specs, len(self.classes))
        use_weights = self.experiment_config.optim.class_weights and class_weights is not None
        self.register_buffer("class_weight", torch.tensor(class_weights, dtype=torch.float32) if use_weights else None)
        num_classes = len(self.classes)
        self.val_metrics = summary_metrics(num_classes, prefix="val/")
        self.test_metrics = summary_metrics(num_classes, prefix="test/")
        self.test_per_class = per_class_metrics(num_classes)
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self._test_outputs: list[dict[str, torch.Tensor]] = []
        self.test_confusion_matrix: np.ndarray | None = None
        self.test_predictions: dict[str, np.ndarray] | None = None
        # The data module's fitted preprocessing (``preprocessing_state``), kept in checkpoints so a
        # trained model predicts on new patients exactly as on its test set (lightning_fusion.predict.trained_model).
        self.preprocessing: dict[str, dict[str, Any]] = {}
        self.data_splits: dict[str, list[str]] = {}  # the run's split (patient ids), so predict can flag them
        self.run: dict[str, str] = {}  # the MLflow run that trains it ("id"), so ``fit --resume`` finds it
        # The device pipeline's batches arrive as loaded (uint8 images); each kind finishes its own
        # (lightning_fusion.data.kinds.base.ModalityKind.finish_batch) and augments it with its own
        # train-only policy (ModalityKind.batch_augmentation), in training_step only.
        self.kinds = {m: KINDS.get(s["kind"]) for m, s in specs.items()}
        data = self.experiment_config.data
        self.batch_augmentations = {m: kind.batch_augmentation(data) for m, kind in self.kinds.items()}
        self.tta = self.experiment_config.evaluation.tta
        if self.tta and not any(self.batch_augmentations[m] for m in self.modalities):
            raise ConfigError(
                f"evaluation.tta {self.tta} averages augmented copies, but none of {self.modalities} is augmented: "
                "enable data.augment (images), data.signal.augment (signals) or data.tabular.noise (tables), "
                "or set evaluation.tta 0"
            )
        self.channels_last = False  # set by setup() from trainer.channels_last
        self._compiled = False

    # ---------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Memory layout and compilation for the device the Trainer chose (trainer.channels_last, trainer.compile)."""
        options = self.experiment_config.trainer
        cuda = self.trainer.strategy.root_device.type == "cuda"
        wanted = options.channels_last if options.channels_last is not None else cuda
        if wanted and not self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # 4-D weights only: the image encoders' convolutions
        self.channels_last = wanted
        if options.compile and not self._compiled:
            self.model.compile()  # in place: the state_dict keys, so checkpoints, stay the same
            self._compiled = True

    def finish_batch(self, batch: Mapping[str, Any], augment: bool = False) -> dict[str, Any]:
        """The batch with each modality as the network takes it: ``uint8`` images to float, in the model's
        memory layout; with ``augment`` (training only) each modality augmented by its kind's policy.
        Images already finished (the per-sample pipeline, prediction) are not augmented again."""
        finished = dict(batch)
        for modality, kind in self.kinds.items():
            if modality in batch:
                augmentation = self.batch_augmentations[modality] if augment else None
                finished[modality] = kind.finish_batch(batch[modality], augmentation, self.channels_last)
        return finished

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Class logits ``(B, K)`` for a batch dict holding (at least) the model's modalities."""
        batch = self.finish_batch({m: batch[m] for m in self.modalities if m in batch}) | _present(batch)
        return self.model(batch)

    def probabilities(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Class probabilities ``(B, K)``: the softmax of :meth:`forward`, averaged with ``evaluation.tta``
        augmented copies when it is set (the test step, predict, serving and the web page all use it)."""
        return self._with_tta(batch, self(batch).float().softmax(dim=1))

    def _with_tta(self, batch: Mapping[str, Any], probs: torch.Tensor) -> torch.Tensor:
        """``probs`` of the batch as it is, averaged with those of ``evaluation.tta`` augmented copies.

        Copy ``k`` applies one draw of each modality's training augmentation, the same draw to every input
        (its generator is seeded with ``TTA_SEED + k`` for each input), so an input's probabilities do not
        depend on the batch it came in, the process or the call: the test step and predict agree.
        """
        if not self.tta:
            return probs
        finished = self.finish_batch({m: batch[m] for m in self.modalities if m in batch}) | _present(batch)
        device = probs.device
        total = probs
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if device.type == "cuda" else []):
            for k in range(self.tta):
                copy = dict(finished)
                for modality, augmentation in self.batch_augmentations.items():
                    if augmentation is not None and modality in copy:
                        copy[modality] = torch.cat(
                            [_seeded(augmentation, row, TTA_SEED + k) for row in copy[modality].split(1)]
                        )
                total = total + self.model(copy).float().softmax(dim=1)
        return total / (self.tta + 1)

    def _step(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self(batch)
        loss = training_loss(logits.float(), batch["label"], self.class_weight, self.experiment_config.optim)
        return loss, logits.float().softmax(dim=1), batch["label"]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        batch = self.finish_batch(batch, augment=True)
        aux_weight = self.experiment_config.model.aux_loss_weight
        if aux_weight > 0:
            logits, auxiliary = self.model({m: batch[m] for m in self.modalities} | _present(batch), auxiliary=True)
            loss = training_loss(logits.float(), batch["label"], self.class_weight, self.experiment_config.optim)
            aux_loss = self._auxiliary_loss(auxiliary, batch)
            self.log("train/aux_loss", aux_loss, on_step=False, on_epoch=True, batch_size=len(batch["label"]))
            objective = loss + aux_weight * aux_loss
        else:
            loss, _, _ = self._step(batch)
            objective = loss
        if not torch.isfinite(objective):
            raise FloatingPointError(f"non-finite training loss {objective.item()} at epoch {self.current_epoch}")
        # train/loss stays the classification loss, comparable with runs without auxiliary heads
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["label"]))
        return objective

    def _auxiliary_loss(self, auxiliary: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> torch.Tensor:
        """Σ over the auxiliary heads of their class-weighted loss (``optim.loss``), on the samples that have
        the modality."""
        present = batch.get("present") or {}
        total = torch.zeros((), device=batch["label"].device)
        for name, logits in auxiliary.items():
            rows = present.get(name)
            rows = torch.ones_like(batch["label"], dtype=torch.bool) if rows is None else rows.bool()
            if bool(rows.any()):
                target = batch["label"][rows]
                total = total + training_loss(
                    logits[rows].float(), target, self.class_weight, self.experiment_config.optim
                )
        return total

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        loss, probs, target = self._step(batch)
        self.val_metrics.update(probs, target)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(target))
        self.log_dict(self.val_metrics, on_epoch=True, batch_size=len(target))

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        loss, probs, target = self._step(batch)  # the loss of the network's own output; probs with evaluation.tta
        probs = self._with_tta(batch, probs)
        self.test_metrics.update(probs, target)
        self.test_per_class.update(probs, target)
        self.test_confusion.update(probs, target)
        self._test_outputs.append({"index": batch["index"], "probs": probs.detach(), "label": target})
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(target))
        self.log_dict(self.test_metrics, on_epoch=True, batch_size=len(target))

    def predict_step(self, batch: Mapping[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """Class probabilities with the sample ``index`` and true ``label`` (for predictions on a labelled split)."""
        return {"index": batch["index"], "probs": self.probabilities(batch), "label": batch["label"]}

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []

    def on_test_epoch_end(self) -> None:
        self.log_dict(per_class_names(self.test_per_class.compute(), self.classes, "test"))
        self.test_per_class.reset()
        self.test_confusion_matrix = self.test_confusion.compute().cpu().numpy().astype(int)
        self.test_confusion.reset()
        self.test_predictions = self._gather_test_outputs()

    def _gather_test_outputs(self) -> dict[str, np.ndarray]:
        """Test predictions from every process, one row per sample (DDP padding removed)."""
        local = {k: torch.cat([o[k] for o in self._test_outputs]) for k in ("index", "probs", "label")}
        self._test_outputs = []
        gathered = {k: self.all_gather(v) for k, v in local.items()}
        if self.trainer.world_size > 1:
            gathered = {k: v.reshape(-1, *local[k].shape[1:]) for k, v in gathered.items()}
        index = gathered["index"].cpu().numpy()
        _, first = np.unique(index, return_index=True)
        return {k: v.cpu().numpy()[first] for k, v in gathered.items()}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "preprocessing": self.preprocessing,
            "splits": self.data_splits,
            "run": self.run,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        ours = checkpoint.get(CHECKPOINT_KEY, {})
        self.preprocessing, self.data_splits = ours.get("preprocessing", {}), ours.get("splits", {})
        self.run = ours.get("run", {})

    # ---------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.experiment_config.optim
        optimizer_cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
        trainable = [p for p in self.parameters() if p.requires_grad]
        optimizer = optimizer_cls(trainable, lr=optim.lr, weight_decay=optim.weight_decay)
        # the Trainer gives the run's length; plateau needs none, so it also builds outside a Trainer
        schedule = build_schedule(optimizer, optim, self._trainer)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def _seeded(augmentation: Any, row: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return augmentation(row)


def _present(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {"present": batch["present"]} if "present" in batch else {}
