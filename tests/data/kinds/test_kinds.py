"""Modality kinds: every registered kind has the whole interface and round-trips; a new kind is one class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lightning_fusion.config import DataConfig, load_config
from lightning_fusion.data.cohort import Cohort
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.data.dataset import collate_arrays
from lightning_fusion.data.kinds import KINDS, ModalityKind, kind_of
from lightning_fusion.data.kinds.upload import ModalityInput, UploadReading
from lightning_fusion.data.modalities import ArrayImageModality, SignalModality, TableModality
from lightning_fusion.encoders import ENCODERS
from lightning_fusion.errors import UnknownNameError
from lightning_fusion.explain.inputs import input_kind
from lightning_fusion.fit.results import model_kind
from lightning_fusion.fusion.early import StackInputs, plan_groups
from lightning_fusion.models import build_model

IDS = [f"p{i}" for i in range(6)]
LABELS = np.array([0, 1, 0, 1, 0, 1])
DATA = DataConfig(image_size=8)


@dataclass
class Sample:
    """A small source of one kind, and the raw values a served model gets for its patients."""

    source: object
    raw: Callable[[list[str]], object]


def _image() -> Sample:
    rng = np.random.default_rng(0)
    images = {pid: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for pid in IDS}
    return Sample(ArrayImageModality(images, "images.npz"), lambda ids: np.stack([images[p] for p in ids]))


def _vector() -> Sample:
    frame = pd.DataFrame({"age": [50.0, 61, np.nan, 45, 38, 80], "bmi": [20.0, 31, 25, 22, 27, 29]}, index=IDS)
    return Sample(TableModality(frame, "clinical.csv"), lambda ids: frame.loc[ids].to_numpy())


def _signal() -> Sample:
    signals = {pid: np.random.default_rng(i).normal(size=(2, 16)) for i, pid in enumerate(IDS)}
    source = SignalModality(lambda pid: signals[pid], IDS, "ecg.csv", leads=["I", "II"])
    return Sample(source, lambda ids: np.stack([signals[p] for p in ids]).astype(np.float32))


SAMPLES = {"image": _image, "vector": _vector, "signal": _signal}
INTERFACE = [
    "fit",
    "load",
    "restore",
    "array_shape",
    "to_tensor",
    "placeholder",
    "served_shape",
    "from_served",
    "merged_shape",
    "merge",
    "describe_upload",
    "read_upload",
    "public",
    "count_text",
    "details_title",
]


@pytest.mark.parametrize("name", list(KINDS))
def test_every_kind_has_the_whole_interface(name):
    kind = KINDS.get(name)
    assert isinstance(kind, ModalityKind) and kind.name == name and kind_of(name) is kind
    for attribute in ("label", "unimodal_model", "explanation_summary", "details_separator"):
        assert isinstance(getattr(kind, attribute), str) and getattr(kind, attribute)
    assert np.dtype(kind.input_dtype) and np.dtype(kind.served_dtype) and kind.batch_ndim >= 2
    assert kind.explanation in ("grad_cam", "integrated_gradients")
    assert all(callable(getattr(kind, method)) for method in INTERFACE)
    assert ENCODERS.names(input_kind=name), f"no encoder takes {name} inputs"
    assert name in SAMPLES, f"add a small {name} source to SAMPLES to test the kind"


@pytest.mark.parametrize("name", list(KINDS))
def test_a_sample_round_trips_through_loading_collate_serving_and_placeholders(name):
    kind, sample = KINDS.get(name), SAMPLES[name]()
    preprocessor, train = kind.fit(sample.source, IDS, LABELS, DATA)
    assert train.dtype == kind.input_dtype and len(train) == len(IDS)
    np.testing.assert_array_equal(kind.load(sample.source, IDS, DATA, preprocessor), train)

    batch = collate_arrays({"m": train}, {"m": name})["m"]  # what a loader yields
    assert batch.dtype == torch.float32 and batch.ndim == kind.batch_ndim and len(batch) == len(IDS)
    sample_shape = tuple(batch.shape[1:])
    assert kind.array_shape(sample_shape) == train.shape[1:]

    raw = np.asarray(sample.raw(IDS), dtype=kind.served_dtype)
    assert raw.shape[1:] == kind.served_shape(sample_shape, preprocessor)
    np.testing.assert_allclose(kind.from_served(raw, preprocessor, "m"), train, rtol=1e-6)

    placeholder = kind.placeholder(2, sample_shape)
    assert placeholder.shape == (2, *train.shape[1:]) and placeholder.dtype == kind.input_dtype
    assert not placeholder.any()
    assert tuple(collate_arrays({"m": placeholder}, {"m": name})["m"].shape[1:]) == sample_shape

    merged = kind.merged_shape([sample_shape, sample_shape])
    assert tuple(kind.merge([batch, batch], merged).shape) == (len(IDS), *merged)
    if kind.fitted:  # the checkpoint's state gives the same preprocessing back
        restored = kind.restore(DATA, {"kind": name} | preprocessor.state(), "model.ckpt")
        np.testing.assert_allclose(kind.load(sample.source, IDS, DATA, restored), train, rtol=1e-6)
    else:
        assert preprocessor is None


def test_an_unknown_kind_is_a_did_you_mean_error():
    with pytest.raises(UnknownNameError, match=r"unknown modality kind 'imgae'; did you mean 'image'"):
        KINDS.get("imgae")
    with pytest.raises(UnknownNameError, match="did you mean 'vector'"):
        kind_of(SimpleNamespace(kind="vectr"))  # a source, spec or upload of a misspelt kind


# --------------------------------------------------------------------------------------------------
# A new kind: one class and one registry line (here in the test; in the package, one module)
# --------------------------------------------------------------------------------------------------
class VolumeKind(ModalityKind):
    """A 3-D volume ``(C, D, H, W)`` ``float32``, nothing fitted."""

    name = "volume"
    label = "volume"
    unimodal_model = "cnn3d"
    input_dtype = np.float32
    served_dtype = np.float32
    batch_ndim = 5
    explanation = "integrated_gradients"
    explanation_summary = "Integrated Gradients per voxel"

    def fit(self, source, patient_ids, labels, data):
        return None, self.load(source, patient_ids, data, None)

    def load(self, source, patient_ids, data, preprocessor):
        return np.stack([source.volumes[pid] for pid in patient_ids]).astype(np.float32)

    def from_served(self, value, preprocessor, modality):
        return np.asarray(value, dtype=np.float32)

    def describe_upload(self, model, modality, shape, options):
        return ModalityInput(
            name=modality, kind=self.name, suffixes=(".npy",), count=1, summary="a volume", shape=shape
        )

    def read_upload(self, item, paths, names, folder, preprocessor):
        return UploadReading(np.load(paths[0])[None].astype(np.float32))


class VolumeModality:
    kind = "volume"

    def __init__(self, volumes: dict[str, np.ndarray]) -> None:
        self.volumes = volumes

    @property
    def patient_ids(self) -> set[str]:
        return set(self.volumes)


class VolumeEncoder(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], options: None) -> None:
        super().__init__()
        self.linear = nn.Linear(int(np.prod(input_shape)), 4)
        self.out_features = 4

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.linear(volumes.flatten(1))


@pytest.fixture
def volume_kind():
    KINDS.register("volume")(VolumeKind())  # the registry line
    ENCODERS.register("flat3d", input_kind="volume", config=None)(VolumeEncoder)
    yield KINDS.get("volume")
    KINDS._entries.pop("volume")  # the registries have no removal: undo the test's registrations
    ENCODERS._entries.pop("flat3d")


class _Reader:
    """Stands in for a dataset reader: 40 patients, a table for all, a volume for all but 4."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        ids = [f"v{i:02d}" for i in range(40)]
        self.cohort = Cohort(
            name="volumes",
            classes=["a", "b"],
            labels=pd.Series({pid: "ab"[i % 2] for i, pid in enumerate(ids)}),
            modalities={
                "ct": VolumeModality({pid: rng.normal(size=(1, 2, 3, 3)) for pid in ids[4:]}),
                "tabular": TableModality(pd.DataFrame({"age": rng.normal(60, 9, 40)}, index=ids), "clinical.csv"),
            },
        )

    def prepare(self, root: Path | None) -> None:
        pass

    def read(self, root: Path | None) -> Cohort:
        return self.cohort


def test_a_new_kind_needs_only_its_class_and_a_registry_line(volume_kind):
    datamodule = MultimodalDataModule(DataConfig(keep_missing_modalities=True, batch_size=8), ["ct", "tabular"])
    datamodule.reader = _Reader()
    datamodule.setup("fit")
    assert datamodule.specs["ct"].kind == "volume" and datamodule.specs["ct"].shape == (1, 2, 3, 3)
    assert set(datamodule.preprocessing_state()) == {"tabular"}  # nothing fitted for volumes

    batch = next(iter(datamodule.train_dataloader()))
    assert batch["ct"].shape[1:] == (1, 2, 3, 3) and batch["ct"].dtype == torch.float32
    placeholders = [d.arrays["ct"][~d.present["ct"]] for d in datamodule.datasets.values()]
    assert sum(len(rows) for rows in placeholders) == 4  # the patients without a volume: zero rows, masked
    assert not any(rows.any() for rows in placeholders)

    config = load_config(
        None,
        {
            "model.modalities": ["ct", "tabular"],
            "model.encoders": {"ct": {"name": "flat3d"}, "tabular": {"name": "mlp", "widths": [4]}},
            "model.fusion": "gated",
        },
    ).model
    model = build_model(config, datamodule.specs, num_classes=2).eval()
    assert model(batch).shape == (len(batch["label"]), 2)

    assert model_kind(["volume"]) == "cnn3d"
    assert input_kind(model_with_modalities(["ct"]), "ct", {"ct": batch["ct"]}) == "volume"
    groups = plan_groups(["ct", "tabular", "ct2"], {"ct": "volume", "tabular": "vector", "ct2": "volume"})
    assert list(groups.items()) == [("tabular", ["tabular"]), ("ct+ct2", ["ct", "ct2"])]  # kinds in name order
    stack = StackInputs(
        groups,
        {"ct": "volume", "ct2": "volume", "tabular": "vector"},
        {"ct": (1, 2, 3, 3), "ct2": (1, 2, 3, 3), "tabular": (1,)},
    )
    assert stack.shapes["ct+ct2"] == (2, 2, 3, 3)
    item = volume_kind.describe_upload(None, "ct", (1, 2, 3, 3), None)
    assert item.kind_label == "volume" and item.count_text == "1 .npy file" and item.public()["kind"] == "volume"


def model_with_modalities(modalities: list[str]) -> nn.Module:
    """A module with ``modalities`` and no specs: :func:`input_kind` goes by the batch's dimensions."""
    module = nn.Module()
    module.modalities = modalities
    return module
