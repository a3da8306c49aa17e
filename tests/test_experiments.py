"""Every experiment in experiments/ loads, and trains one short epoch on synthetic data in its layout.

The data comes from the layout's demo writer (``make_demo_data``); backbones are swapped for timm's
tiny ``test_resnet`` and pretrained weights switched off, so the check is the experiment's wiring
(reader options, modalities, encoders, fusion, preprocessing), not its accuracy.
"""

import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lightning_fusion.config import load_yaml, resolve
from lightning_fusion.data.readers import READERS
from lightning_fusion.demo import DEMO_LAYOUTS
from lightning_fusion.fit.run import fit
from tests.conftest import PROJECT_ROOT

EXPERIMENTS = sorted((PROJECT_ROOT / "experiments").glob("*.yaml"))
READERS_OF = {path.stem: load_yaml(path)["data"]["reader"]["name"] for path in EXPERIMENTS}


def _layout_for(reader: str) -> str:
    layouts = [name for name in DEMO_LAYOUTS if DEMO_LAYOUTS.metadata(name)["reader"] == reader]
    assert layouts, f"no demo writer produces data for reader {reader!r}"
    return layouts[0]


@pytest.fixture(scope="module")
def demo_roots(tmp_path_factory):
    """Synthetic datasets, one per layout, written on first use."""
    made: dict[str, Path] = {}

    def get(layout: str) -> Path:
        if layout not in made:
            made[layout] = DEMO_LAYOUTS.get(layout)(tmp_path_factory.mktemp(layout) / "data", patients=60, seed=1)
        return made[layout]

    return get


def _smoke(data: dict, root: Path | None) -> dict:
    """The experiment with tiny encoders, one epoch, CPU."""
    model = data.setdefault("model", {})
    for encoder in model.get("encoders", {}).values():
        if encoder.get("name") == "timm":
            encoder.update(backbone="test_resnet", pretrained=False, weights_path=None)
        elif encoder.get("name") == "resnet1d":
            encoder.update(widths=[8, 16])
    data.setdefault("data", {}).update(image_size=32, batch_size=16)
    if root is not None:
        data["data"]["root"] = str(root)
    data["trainer"] = {**data.get("trainer", {}), "max_epochs": 1, "accelerator": "cpu", "devices": 1}
    return data


def test_there_is_an_experiment_per_reference_study():
    names = {path.stem for path in EXPERIMENTS}
    assert {
        "demo",
        "mpi_fusion",
        "mpi_mobilenet",
        "ecg_multimodal",
        "cxr_ct_cough_early",
        "cxr_ct_cough_intermediate",
        "cmri_baseline",
        "ptbxl_fusion",
        "pneumoniamnist",
    } <= names
    assert {READERS_OF[name] for name in names} >= {"mpi", "ecg", "cxr_ct_cough", "image_folders", "ptbxl", "medmnist"}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_loads_with_its_documented_choices(path):
    config = resolve(load_yaml(path))
    assert config.name == path.stem
    assert config.data.reader.name in READERS
    assert set(config.model.modalities) <= set(config.model.encoders)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_trains_one_epoch_on_its_layout(path, demo_roots, mlflow_store, monkeypatch, tmp_path):
    data = load_yaml(path)
    reader = data["data"]["reader"]["name"]
    if reader.startswith("demo_"):
        monkeypatch.setenv("LF_CACHE_DIR", str(tmp_path / "cache"))
        data["data"]["reader"]["patients"] = 40
        root = None
    else:
        layout = _layout_for(reader)
        root = demo_roots(layout)
        data["data"]["reader"].update(DEMO_LAYOUTS.metadata(layout).get("reader_options", {}))
    data["tracking"] = {"tracking_uri": mlflow_store["uri"], "artifact_root": mlflow_store["artifacts"]}
    result = fit(resolve(_smoke(data, root)))
    run = MlflowClient(mlflow_store["uri"]).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert math.isfinite(result.test_metrics["test/loss"])
    assert run.data.tags["lf.experiment"] == path.stem
    assert set(result.data_summary["modalities"]) == set(data["model"]["modalities"])
