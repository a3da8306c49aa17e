"""The ``image`` kind: ``(H, W, C)`` ``uint8`` arrays, ``(C, H, W)`` float tensors in [0, 1], Grad-CAM.

Views of one patient are stacked on the channel axis (3 RGB views → 9 channels). Nothing is fitted:
images are resized to ``data.image_size`` on load, normalised by the encoder, augmented in training
only. A served model takes the same ``(N, H, W, C)`` ``uint8`` arrays; an upload is one image file
per view (or a recording, for readers that turn recordings into spectrogram images).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lightning_fusion.data.batch_transforms import BatchAugment, images_to_float
from lightning_fusion.data.kinds.base import ModalityKind
from lightning_fusion.data.kinds.registry import KINDS
from lightning_fusion.data.kinds.upload import PATIENT, ModalityInput, UploadReading, clean_message
from lightning_fusion.data.modalities import ImageStackModality
from lightning_fusion.data.transforms import image_to_tensor
from lightning_fusion.errors import DataError, UploadError


class ImageKind(ModalityKind):
    """Image stacks: network samples ``(C, H, W)`` ``float32``, arrays ``(H, W, C)`` ``uint8``."""

    name = "image"
    label = "image"
    unimodal_model = "cnn"
    input_dtype = np.uint8
    served_dtype = np.uint8
    batch_ndim = 4
    explanation = "grad_cam"
    explanation_summary = "Grad-CAM at the backbone's last feature map"

    def fit(self, source: Any, patient_ids: Sequence[str], labels: np.ndarray, data: Any) -> tuple[None, np.ndarray]:
        return None, self.load(source, patient_ids, data, None)

    def load(self, source: Any, patient_ids: Sequence[str], data: Any, preprocessor: Any) -> np.ndarray:
        """``(N, H, W, C)`` ``uint8`` at ``data.image_size``."""
        return source.load_many(patient_ids, data.image_size)

    def decoding_settings(self, data: Any) -> dict[str, Any]:
        """Images are decoded and resized, nothing fitted: ``data.memory_map`` can keep them on disk."""
        return {"image_size": int(data.image_size)}

    def array_shape(self, sample_shape: Sequence[int]) -> tuple[int, ...]:
        """``(C, H, W)`` → ``(H, W, C)``."""
        channels, *size = (int(n) for n in sample_shape)
        return (*size, channels)

    def to_tensor(self, value: np.ndarray, augmentation: Callable[..., dict[str, Any]] | None = None) -> torch.Tensor:
        """``(H, W, C)`` ``uint8`` (augmented when given, training only) → ``(C, H, W)`` ``float32`` in [0, 1]."""
        if augmentation is not None:
            value = augmentation(image=value)["image"]
        return image_to_tensor(value)

    def batch_rows(self, values: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        """``(B, H, W, C)`` ``uint8`` rows → ``(B, C, H, W)`` ``uint8``: a view with channels-last strides (no copy)."""
        return torch.from_numpy(np.ascontiguousarray(values[rows])).permute(0, 3, 1, 2)

    def batch_augmentation(self, data: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """:class:`~lightning_fusion.data.batch_transforms.BatchAugment` of ``data.augment`` (``device`` batches)."""
        return BatchAugment(data.augment) if data.augment.enabled else None

    def augmentation_policy(self, data: Any) -> str | None:
        return data.augment.policy if data.augment.enabled else None

    def finish_batch(
        self, batch: torch.Tensor, augmentation: Callable[[torch.Tensor], torch.Tensor] | None, channels_last: bool
    ) -> torch.Tensor:
        """``uint8`` batches → ``float32`` in [0, 1] (the values :meth:`to_tensor` gives), augmented when
        given; float batches (already converted) unchanged. Either way in the model's memory layout."""
        if batch.dtype == torch.uint8:
            batch = images_to_float(batch)
            if augmentation is not None:
                batch = augmentation(batch)
        return batch.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def from_served(self, value: Any, preprocessor: Any, modality: str) -> np.ndarray:
        """``(N, H, W, C)`` whole numbers 0-255 (JSON gives int64) → ``uint8``."""
        array = np.asarray(value)
        if array.dtype != np.uint8:  # JSON gives integers as int64: fine if they are 0-255 whole numbers
            whole = np.issubdtype(array.dtype, np.number) and bool(np.all(np.mod(array, 1) == 0))
            if not whole or array.min() < 0 or array.max() > 255:
                raise DataError(
                    f"modality {modality!r}: images must be whole numbers 0-255 (uint8), as read from the "
                    f"image files; got {array.dtype} values in [{array.min():.3g}, {array.max():.3g}]"
                )
            array = array.astype(np.uint8)
        return array

    def merged_shape(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        """Channels summed; the largest height and width."""
        return (sum(s[0] for s in shapes), max(s[1] for s in shapes), max(s[2] for s in shapes))

    def merge(self, tensors: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        """``(B, C_i, H_i, W_i)`` resampled (bilinear) to ``shape``'s size and stacked as channels."""
        size = shape[1:]
        tensors = [t if t.shape[-2:] == size else F.interpolate(t, size=size, mode="bilinear") for t in tensors]
        return torch.cat(tensors, dim=1)

    # ---------------------------------------------------------------------------------------------
    def describe_upload(self, model: Any, modality: str, shape: tuple[int, ...], options: Any) -> ModalityInput:
        """``C / channels_per_view`` files, one per view, named after the reader's views or folders."""
        from lightning_fusion.data.audio import AUDIO_SUFFIXES
        from lightning_fusion.data.readers.mpi import IMAGE_SUFFIXES

        channels, height, width = shape
        per_view = channels_per_view(channels, options)
        views = channels // per_view
        names: tuple[str, ...] = ()
        patterns: tuple[str, ...] = ()
        configured = list(getattr(options, "views", None) or [])  # MPI: file-name globs, one per view
        folders = dict(getattr(options, "modality_folders", None) or {})  # CT/CXR/cough: modality → folder
        if len(configured) == views:
            names = patterns = tuple(configured)
        elif modality in folders and views == 1:
            names = (folders[modality],)
        elif len(folders) == views:  # the stacked early-fusion modality: the folders' images, in folder order
            names = tuple(folders.values())
        if not names:
            names = tuple(f"view {i + 1}" for i in range(views)) if views > 1 else ("image",)
        spectrogram = getattr(options, "spectrogram", None)
        suffixes = IMAGE_SUFFIXES + (AUDIO_SUFFIXES if spectrogram is not None else ())
        crop = tuple(int(n) for n in options.crop) if getattr(options, "crop", None) else None
        colour = "RGB" if per_view == 3 else "grayscale"
        if views > 1:
            summary = f"{views} image files, one per view, in this order: {', '.join(names)}; {colour}"
        else:
            summary = f"1 image file; {colour}"
        summary += f" (other modes are converted); resized to {height}×{width} px"
        if crop:
            summary += f" after cropping {crop} px (top, bottom, left, right)"
        details = [f"file types: {', '.join(IMAGE_SUFFIXES)}"]
        if views > 1 and patterns:
            details.append(
                "select all files at once; files named like the views (as in the training data) are put in view "
                "order, other names are taken in the order sent"
            )
        elif views > 1:
            details.append("select all files at once; they are taken in the order sent")
        if suffixes != IMAGE_SUFFIXES:
            recordings = ", ".join(AUDIO_SUFFIXES)
            details.append(f"recordings ({recordings}) become log-mel spectrogram images, as in training")
        return ModalityInput(
            name=modality,
            kind=self.name,
            suffixes=suffixes,
            count=views,
            summary=summary,
            details=tuple(details),
            channels_per_view=per_view,
            view_names=names,
            view_patterns=patterns,
            crop=crop,
            image_size=int(model.config.data.image_size),
            shape=shape,
            spectrogram=spectrogram,
        )

    def read_upload(
        self, item: ModalityInput, paths: list[Path], names: list[str], folder: Path, preprocessor: Any
    ) -> UploadReading:
        """The views (put in view order by file name when the reader names them) → ``(1, H, W, C)`` ``uint8``."""
        from lightning_fusion.data.audio import AUDIO_SUFFIXES, cached_log_mel_png

        notes: list[str] = []
        if item.count > 1:
            order = view_order(item, names)
            if order is not None:
                paths, names = [paths[i] for i in order], [names[i] for i in order]
                notes.append(f"{item.name}: views matched by file name: " + ", ".join(names))
            else:
                notes.append(
                    f"{item.name}: views taken in the order sent: "
                    + ", ".join(f"{view} = {name}" for view, name in zip(item.view_names, names))
                )
        images = []
        for path, name in zip(paths, names):
            if path.suffix in AUDIO_SUFFIXES:  # a recording: its log-mel image, written beside it
                try:
                    images.append(cached_log_mel_png(path, item.spectrogram, cache_dir=path.parent / "spectrograms"))
                except DataError as err:
                    raise UploadError(f"{item.name}: {clean_message(str(err), paths, names, folder)}") from None
                notes.append(f"{item.name}: {name} converted to a log-mel spectrogram image")
            else:
                images.append(path)
        stack = ImageStackModality({PATIENT: images}, item.channels_per_view, item.crop, convert=True)
        try:
            return UploadReading(stack.load_many([PATIENT], item.image_size), notes)
        except DataError as err:
            shown = [*names, *names]  # the spectrogram PNGs stand for their recordings
            raise UploadError(f"{item.name}: {clean_message(str(err), [*paths, *images], shown, folder)}") from None

    def public(self, item: ModalityInput) -> dict[str, Any]:
        return {"views": list(item.view_names), "channels_per_view": item.channels_per_view}

    def count_text(self, item: ModalityInput) -> str:
        return f"{item.count} image files: {', '.join(item.view_names)}" if item.count > 1 else "1 image file"


def channels_per_view(channels: int, options: Any) -> int:
    """1 (grayscale) or 3 (RGB) channels per view of a ``channels``-channel image stack.

    The reader's ``channels_per_view`` (or ``channels``) option when it divides ``channels``, else 3
    when ``channels`` is a multiple of 3, else 1.
    """
    for attribute in ("channels_per_view", "channels"):
        value = getattr(options, attribute, None)
        if value in (1, 3) and channels % value == 0:
            return value
    return 3 if channels % 3 == 0 else 1


def view_order(item: ModalityInput, names: Sequence[str]) -> list[int] | None:
    """Positions of the uploads in view order when each view's file-name pattern matches exactly one name."""
    if not item.view_patterns or len(names) != len(item.view_patterns):
        return None
    stems = [PurePosixPath(name).stem.casefold() for name in names]
    order = []
    for pattern in item.view_patterns:
        hits = [i for i, stem in enumerate(stems) if fnmatch.fnmatch(stem, pattern.casefold())]
        if len(hits) != 1:
            return None
        order.append(hits[0])
    return order if len(set(order)) == len(order) else None


IMAGE = KINDS.register(ImageKind.name)(ImageKind())
