"""Explanations of some patients written as files: Grad-CAM overlays, tabular attributions, modality drops.

Layout of the folder (``predict --explain N`` writes it beside the predictions; ``fit`` logs it as the
run's ``explanations/`` artifacts for a few test patients)::

    <patient id>/<image modality>_view<k>.png   heat map over each view (Grad-CAM, predicted class)
    tabular_attributions.csv                    patient_id, modality, feature, value, attribution
    modality_contributions.csv                  patient_id, explained class, probability, drop-one deltas, weights,
                                                and (masking fusions) Shapley values with their baseline
    explanations.json                           what was explained, how, and anything that could not be

A part that is not defined for the model (Grad-CAM on a non-CNN backbone or a stacked early fusion,
modality drops of a one-modality model) is recorded in ``explanations.json`` under ``skipped`` with
the reason, never silently left out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lightning_fusion.data.dataset import collate_arrays
from lightning_fusion.data.kinds import KINDS
from lightning_fusion.explain.attributions import tabular_attributions
from lightning_fusion.explain.cam import grad_cam, save_png, view_overlays
from lightning_fusion.explain.contributions import modality_contributions
from lightning_fusion.explain.inputs import inspecting

log = logging.getLogger(__name__)

SHAPLEY_SUMMARY = (
    "exact Shapley values of the explained class's probability over every subset of the modalities (the others "
    "masked as missing); v(no modality) = the class's training prior (shapley_baseline), so a patient's values "
    "sum to probability - shapley_baseline"
)


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def explain_patients(
    module: Any,
    patient_ids: Sequence[str],
    arrays: Mapping[str, np.ndarray],
    feature_names: Mapping[str, Sequence[str]],
    folder: Path,
    present: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the explanations of ``patient_ids`` (model inputs ``arrays``, one row each) into ``folder``.

    Args:
        module: the trained :class:`~lightning_fusion.lit.FusionLitModule`.
        arrays: modality → model inputs as :func:`~lightning_fusion.data.datamodule.modality_arrays` gives.
        feature_names: tabular modality → its columns after the fitted preprocessing; signal modality →
            its lead names.
        present: modality → ``(N,)`` bool for modalities some patients lack (their rows are placeholders).

    Returns the summary also written to ``explanations.json``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {m: s["kind"] for m, s in module.hparams["specs"].items()}
    images = collate_arrays(arrays, kinds, present, patient_ids)  # on the CPU, for the overlays
    batch = _to(images, module.device)
    classes = list(module.classes)
    summary: dict[str, Any] = {"patients": list(patient_ids), "classes": classes, "written": [], "skipped": {}}
    with inspecting(module), torch.no_grad():  # eval mode: fit hands over the module in training mode
        probs = module(batch).float().softmax(dim=1).cpu().numpy()
    predicted = probs.argmax(axis=1)
    summary["predicted"] = [classes[i] for i in predicted]
    attribution_rows: list[dict[str, Any]] = []
    signal_rows: list[dict[str, Any]] = []
    for modality in module.modalities:
        kind = KINDS.get(kinds[modality])  # its explanation method decides what is written
        try:
            if kind.explanation == "grad_cam":
                cams = grad_cam(module, batch, modality, target=predicted)
                for pid, image, cam in zip(patient_ids, images[modality], cams):
                    for k, overlay in enumerate(view_overlays(image, cam)):
                        path = save_png(overlay, folder / _safe(pid) / f"{modality}_view{k}.png")
                        summary["written"].append(str(path.relative_to(folder)))
            elif kind.explanation == "integrated_gradients":
                values = tabular_attributions(module, batch, modality, target=predicted)
                if values.ndim == 2:  # (B, F): one row per feature, beside the preprocessed input
                    names = list(feature_names.get(modality, [f"feature_{i}" for i in range(values.shape[1])]))
                    attribution_rows += [
                        {"patient_id": pid, "modality": modality, "feature": name, "value": x, "attribution": a}
                        for pid, xs, attrs in zip(patient_ids, images[modality].numpy(), values)
                        for name, x, a in zip(names, xs, attrs)
                    ]
                else:  # (B, leads, T): summed per lead, and a leads x time figure per patient
                    leads = list(feature_names.get(modality, [f"lead_{i}" for i in range(values.shape[1])]))
                    signal_rows += _lead_rows(modality, patient_ids, values, leads)
                    for pid, per_lead, cls in zip(patient_ids, values, predicted):
                        path = folder / _safe(pid) / f"{modality}_attributions.png"
                        title = f"{pid}: {modality}, Integrated Gradients for {classes[cls]}"
                        _signal_figure(per_lead, leads, path, title)
                        summary["written"].append(str(path.relative_to(folder)))
            else:
                raise ValueError(f"no explanation files for the method {kind.explanation!r} of {kind.name} modalities")
            summary.setdefault("methods", {})[modality] = kind.explanation_summary
        except ValueError as err:  # not defined for this model: say so
            summary["skipped"][modality] = str(err)
            log.warning("explanations: %s skipped: %s", modality, err)
    if attribution_rows:
        pd.DataFrame(attribution_rows).to_csv(folder / "tabular_attributions.csv", index=False)
    if signal_rows:
        pd.DataFrame(signal_rows).to_csv(folder / "signal_attributions.csv", index=False)
    if len(module.modalities) > 1:
        drops = modality_contributions(module, batch, target=predicted)
        frame = pd.DataFrame(
            {
                "patient_id": list(patient_ids),
                "class": [classes[i] for i in drops.target],
                "probability": drops.probability,
            }
        )
        for modality, delta in drops.deltas.items():
            frame[f"delta_without_{modality}"] = delta
        for modality, weight in (drops.fusion_weights or {}).items():
            frame[f"fusion_weight_{modality}"] = weight
        for modality, value in (drops.shapley or {}).items():
            frame[f"shapley_{modality}"] = value
        if drops.shapley_baseline is not None:
            frame["shapley_baseline"] = drops.shapley_baseline
        frame.to_csv(folder / "modality_contributions.csv", index=False)
        summary["modality_contributions"] = {"method": drops.method, "fusion_weights": drops.weights_source}
        if drops.shapley is not None:
            summary["modality_contributions"]["shapley"] = SHAPLEY_SUMMARY
        else:
            summary["skipped"]["modality_shapley"] = drops.shapley_skipped
    else:
        summary["skipped"]["modality_contributions"] = "a one-modality model has no modality to drop"
    (folder / "explanations.json").write_text(json.dumps(summary, indent=2))
    return summary


def _lead_rows(
    modality: str, patient_ids: Sequence[str], values: np.ndarray, leads: Sequence[str]
) -> list[dict[str, Any]]:
    """``(B, leads, T)`` attributions → one row per patient and lead: summed over time, and of absolute values."""
    return [
        {"patient_id": pid, "modality": modality, "lead": lead, "attribution": a.sum(), "abs": abs(a).sum()}
        for pid, per_lead in zip(patient_ids, values)
        for lead, a in zip(leads, per_lead)
    ]


def _signal_figure(attributions: np.ndarray, leads: Sequence[str], path: Path, title: str) -> None:
    """A leads x time heat map of one patient's signal attributions (red: for the class, blue: against)."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    limit = float(np.abs(attributions).max()) or 1.0
    figure, axis = plt.subplots(figsize=(8, 0.3 * len(leads) + 1.2))
    axis.imshow(attributions, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    axis.set_yticks(range(len(leads)), leads)
    axis.set_xlabel("sample")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _safe(patient_id: str) -> str:
    """A patient id as a folder name (ids are normalised already; keep it to a safe alphabet anyway)."""
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in patient_id) or "patient"


__all__ = ["explain_patients"]
