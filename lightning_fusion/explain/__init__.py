"""Explanations of a trained model: Grad-CAM for image branches, Integrated Gradients, modality drops.

Pure torch/numpy on top of ``pytorch_grad_cam`` and ``captum``; every function takes the trained
:class:`~lightning_fusion.lit.FusionLitModule` and a batch dict as its dataloaders yield it
(``{modality: tensor, optional "present": {modality: (B,) bool}}``; other keys are ignored) and
returns numpy arrays:

* :mod:`~lightning_fusion.explain.cam` — ``(B, H, W)`` Grad-CAM / Grad-CAM++ heat maps in [0, 1] of one
  image modality (Selvaraju et al., 2017), and their overlays on each view of a multi-view stack.
* :mod:`~lightning_fusion.explain.attributions` — ``(B, F)`` Integrated Gradients (Sundararajan et al.,
  2017) of a tabular input, ``(B, leads, T)`` of a signal.
* :mod:`~lightning_fusion.explain.contributions` — how much the predicted class's probability falls
  when one modality is taken away, beside the fusion's own modality weights.
* :mod:`~lightning_fusion.explain.files` — all of it as files for a set of patients (``predict
  --explain``, a tested ``fit``).

In each, the explained modality is the only input that varies
(:class:`~lightning_fusion.explain.inputs.ModalityFunction`): the samples' other modalities and
presence flags stay as given. The module runs in eval mode (no dropout, BatchNorm running
statistics), no parameter or buffer changes, and every submodule's training flag and every
parameter's ``.grad`` are restored afterwards. The targets are the model's output scores: logits,
or log-probabilities for ``late_weighted`` (decision-level) fusion.
"""
