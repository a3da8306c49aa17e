"""One modality as the only input of a trained model: what every explanation method differentiates.

The samples' other modalities and presence flags stay as given; the module runs in eval mode and
every submodule's training flag and every parameter's ``.grad`` are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_fusion.data.kinds import KINDS

Target = int | Sequence[int] | np.ndarray | torch.Tensor | None


# --------------------------------------------------------------------------------------------------
# One modality as the only input
# --------------------------------------------------------------------------------------------------
class ModalityFunction(nn.Module):
    """The module's output ``(B, K)`` as a function of ``batch[modality]`` alone, the rest of the batch held fixed.

    ``forward(inputs)`` uses the fixed part stored at construction; ``forward(inputs, *fixed)`` takes
    it as tensors in :attr:`fixed` order instead (how captum passes ``additional_forward_args``,
    repeated along the batch axis for each integration step). When the classifier encodes every
    modality separately (no input-level fusion), the other modalities' encoder features are computed
    once here, so only the explained modality's encoder and the fusion run per call; with input-level
    (early) fusion, or a fusion that conditions one encoder on the others (film, daft), the raw inputs
    are kept and the whole model runs. Meant for eval mode (this is
    ``MultimodalClassifier.forward`` without modality dropout).
    """

    def __init__(self, module: nn.Module, batch: Mapping[str, Any], modality: str) -> None:
        super().__init__()
        self.module = module
        self.modality = modality
        model = module.model
        self.encoded = model.merge_inputs is None and not model.fusion.conditions_encoders
        present = batch.get("present") or {}
        keys: list[tuple[str, str]] = []
        fixed: list[torch.Tensor] = []
        with torch.no_grad():
            for other in module.modalities:
                if other == modality:
                    continue
                value = model.encoders[other](batch[other]) if self.encoded else batch[other]
                keys.append(("input", other))
                fixed.append(value)
        for name, flags in present.items():
            keys.append(("present", name))
            fixed.append(flags)
        self.keys = keys
        self.fixed: tuple[torch.Tensor, ...] = tuple(fixed)

    def forward(self, inputs: torch.Tensor, *fixed: torch.Tensor) -> torch.Tensor:
        fixed = fixed or self.fixed
        if len(fixed) != len(self.keys):
            raise ValueError(f"expected {len(self.keys)} fixed tensors ({self.keys}), got {len(fixed)}")
        for (_, name), value in zip(self.keys, fixed, strict=True):
            if value.shape[0] != inputs.shape[0]:
                raise ValueError(f"{name!r}: {value.shape[0]} fixed rows for {inputs.shape[0]} {self.modality!r} rows")
        given = {name: value for (role, name), value in zip(self.keys, fixed, strict=True) if role == "input"}
        present = {name: value for (role, name), value in zip(self.keys, fixed, strict=True) if role == "present"}
        if not self.encoded:
            return self.module(given | {self.modality: inputs} | ({"present": present} if present else {}))
        model = self.module.model
        features = given | {self.modality: model.encoders[self.modality](inputs)}
        return model.fusion(features, present or None)


@contextmanager
def inspecting(module: nn.Module) -> Iterator[None]:
    """Eval mode with autograd on; restores every submodule's training flag and every parameter's ``.grad``."""
    flags = [(m, m.training) for m in module.modules()]
    grads = [(p, p.grad) for p in module.parameters()]
    module.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for submodule, flag in flags:
            submodule.training = flag
        for parameter, grad in grads:
            parameter.grad = grad


def model_inputs(module: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The model's modalities (and ``present``) from ``batch``: fresh copies on the module's device."""
    device = next(module.parameters()).device
    missing = [m for m in module.modalities if m not in batch]
    if missing:
        raise ValueError(f"the batch lacks the model's modalities {missing}; it has {sorted(batch)}")
    inputs: dict[str, Any] = {m: torch.as_tensor(batch[m]).to(device).clone() for m in module.modalities}
    if batch.get("present") is not None:
        inputs["present"] = {m: torch.as_tensor(v).to(device).clone() for m, v in batch["present"].items()}
    return inputs


def input_kind(module: nn.Module, modality: str, batch: Mapping[str, Any]) -> str:
    """The kind of ``modality``: from the module's specs, else the first kind whose ``batch_ndim`` fits the batch."""
    if modality not in module.modalities:
        raise ValueError(f"{modality!r} is not a modality of the model; it has {list(module.modalities)}")
    specs = getattr(module, "hparams", {}).get("specs") or {}
    if modality in specs:
        return str(specs[modality]["kind"])
    ndim = torch.as_tensor(batch[modality]).ndim
    return next((name for name in KINDS if KINDS.get(name).batch_ndim == ndim), "unknown")


def explanation_of(kind: str) -> str | None:
    """The attribution method of a kind (``grad_cam``, ``integrated_gradients``), ``None`` for an unknown kind."""
    return KINDS.get(kind).explanation if kind in KINDS else None


def target_indices(target: Target, scores: torch.Tensor) -> torch.Tensor:
    """``(B,)`` class indices: the predicted class per sample, one class for all, or one per sample."""
    batch_size, num_classes = scores.shape
    if target is None:
        return scores.argmax(dim=1)
    chosen = torch.as_tensor(target, dtype=torch.long, device=scores.device).flatten()
    if chosen.numel() == 1:
        chosen = chosen.expand(batch_size)
    if chosen.shape != (batch_size,):
        raise ValueError(f"target must be one class index or one per sample ({batch_size}), got {chosen.numel()}")
    if bool(((chosen < 0) | (chosen >= num_classes)).any()):
        raise ValueError(f"target class indices must be in [0, {num_classes}), got {chosen.tolist()}")
    return chosen.clone()
