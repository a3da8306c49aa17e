"""Shared fixtures: a small synthetic MPI cohort on disk and an isolated MLflow store per test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from lightning_fusion.demo import generate_mpi_cohort  # noqa: E402

SMALL_PATIENTS = 60
SMALL_IMAGE = 32
PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data (PTB-XL subset, PneumoniaMNIST): ``$LF_DATA_DIR``, default ``../shared/data``.

    Missing data skips the test on a developer's machine but fails it in CI (``CI`` set), where the
    data is always beside the clone: a real-data test must not pass by not running.
    """
    root = Path(os.environ.get("LF_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data")).resolve()
    if not root.is_dir():
        message = f"real data folder not found: {root} (set LF_DATA_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def small_cohort_master(tmp_path_factory) -> Path:
    """A 60-patient, 32-px synthetic cohort, generated once per session (read-only: copy it to modify)."""
    return generate_mpi_cohort(
        tmp_path_factory.mktemp("cohort") / "mpi", SMALL_PATIENTS, seed=3, image_size=SMALL_IMAGE
    )


@pytest.fixture
def small_cohort(small_cohort_master, tmp_path) -> Path:
    """A private, modifiable copy of the small cohort."""
    return Path(shutil.copytree(small_cohort_master, tmp_path / "mpi"))


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> dict[str, str]:
    """An isolated MLflow store (SQLite + artifact folder) in the test's temp dir."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return {"uri": uri, "artifacts": str(tmp_path / "mlruns")}


def small_overrides(root: Path, **extra) -> dict:
    """Config overrides for a quick run on the small cohort."""
    overrides = {
        "data.reader": {"name": "mpi"},
        "data.root": str(root),
        "data.image_size": SMALL_IMAGE,
        "data.batch_size": 16,
        "model.encoders.image.backbone": "test_resnet",
        "trainer.max_epochs": 2,
        "trainer.accelerator": "cpu",
    }
    overrides.update(extra)
    return overrides
