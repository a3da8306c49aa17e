"""Explanations of a trained model: Grad-CAM for image branches, Integrated Gradients for tables, modality drops.

Files: :mod:`~lightning_fusion.explain.files` writes them for a set of patients (``predict --explain``, a
tested ``fit``).

Pure torch/numpy on top of ``pytorch_grad_cam`` and ``captum``; every function takes the trained
:class:`~lightning_fusion.lit.FusionLitModule` and a batch dict as its dataloaders yield it
(``{modality: tensor, optional "present": {modality: (B,) bool}}``; other keys are ignored) and
returns numpy arrays:

* :func:`~lightning_fusion.explain.cam.grad_cam` — ``(B, H, W)`` heat maps in [0, 1] of one image modality, for any model whose image
  encoder is a timm CNN (the image-only CNN or any fusion): Grad-CAM (Selvaraju et al., 2017) or
  Grad-CAM++ at the backbone's last feature map (:func:`cam_target_layer`). :func:`view_overlays` lays
  a heat map over each view of a multi-view stack (9 channels = 3 RGB views) and :func:`save_png`
  writes the result.
* :func:`~lightning_fusion.explain.attributions.tabular_attributions` — ``(B, F)`` Integrated Gradients (Sundararajan et al., 2017) of a
  tabular input; feature names are the caller's (the data module's fitted column names).
* :func:`~lightning_fusion.explain.contributions.modality_contributions` — how much the predicted class's probability falls when one modality
  is taken away, plus the fusion's own modality weights where it has them (gated, attention,
  late_weighted).

In each, the explained modality is the only input that varies (:class:`~lightning_fusion.explain.inputs.ModalityFunction`): the
samples' other modalities and presence flags stay as given. The module runs in eval mode (no
dropout, BatchNorm running statistics), no parameter or buffer changes, and every submodule's
training flag and every parameter's ``.grad`` are restored afterwards. The targets are the model's
output scores: logits, or log-probabilities for ``late_weighted`` (decision-level) fusion.
"""
