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
