"""Each kind of bad input: a clear error naming the file / patient / label, raised before training."""

import shutil

import pandas as pd
import pytest
from PIL import Image

from lightning_fusion.config import load_config
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.errors import DataError
from tests.conftest import small_overrides


def _setup(root, **overrides):
    config = load_config(None, small_overrides(root, **overrides))
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    return datamodule


def _first_patient(root, folder="Normal"):
    return sorted((root / folder).iterdir())[0]


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match=r"mpi data folder not found: .*nowhere"):
        _setup(tmp_path / "nowhere")


def test_empty_dataset(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        _setup(tmp_path / "empty")
    (tmp_path / "empty" / "Normal").mkdir()
    with pytest.raises(DataError, match="hold no patient folders"):
        _setup(tmp_path / "empty")


def test_unreadable_image_names_patient_and_file(small_cohort):
    patient = _first_patient(small_cohort)
    (patient / "Stress QGS AC.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=rf"patient {patient.name.lower()}: unreadable image .*Stress QGS AC\.png"):
        _setup(small_cohort)


def test_wrong_channel_count_names_patient_and_file(small_cohort):
    patient = _first_patient(small_cohort)
    Image.open(patient / "QPS AC.png").convert("L").save(patient / "QPS AC.png")
    with pytest.raises(DataError, match=r"QPS AC\.png has 1 channel\(s\) \(mode L\); expected 3 per view"):
        _setup(small_cohort)


def test_missing_view_excludes_and_reports_the_patient(small_cohort):
    patient = _first_patient(small_cohort)
    (patient / "Rest QGS AC.png").unlink()
    datamodule = _setup(small_cohort)
    assert datamodule.summary()["excluded_patients"] == {"missing a view": [patient.name.lower()]}
    assert patient.name.lower() not in sum(datamodule.splits.values(), [])
    # A view concerns the image only: the clinical-only ANN keeps the patient.
    tabular_only = _setup(small_cohort, **{"model.modalities": ["tabular"]})
    assert tabular_only.summary()["excluded_patients"] == {}
    assert patient.name.lower() in sum(tabular_only.splits.values(), [])


def test_patient_without_clinical_row_is_excluded_and_counted(small_cohort):
    clinical = pd.read_csv(small_cohort / "clinical.csv")
    dropped = clinical.iloc[0]["patient_id"]
    clinical.iloc[1:].to_csv(small_cohort / "clinical.csv", index=False)
    datamodule = _setup(small_cohort)
    assert datamodule.summary()["excluded"] == {"no tabular": 1}
    # The image-only model does not need the clinical row: the patient stays.
    assert _setup(small_cohort, **{"model.modalities": ["image"]}).summary()["excluded"] == {}
    assert dropped


def test_clinical_row_without_images_is_reported(small_cohort):
    clinical = pd.read_csv(small_cohort / "clinical.csv")
    extra = clinical.iloc[[0]].assign(patient_id="MPI-9999")
    pd.concat([clinical, extra]).to_csv(small_cohort / "clinical.csv", index=False)
    assert _setup(small_cohort).summary()["excluded_patients"]["no label"] == ["mpi-9999"]


def test_duplicate_patient_ids(small_cohort):
    clinical = pd.read_csv(small_cohort / "clinical.csv")
    pd.concat([clinical, clinical.iloc[[3]]]).to_csv(small_cohort / "clinical.csv", index=False)
    with pytest.raises(DataError, match=r"clinical\.csv column 'patient_id': duplicate patient ids"):
        _setup(small_cohort)
    clinical.to_csv(small_cohort / "clinical.csv", index=False)
    patient = _first_patient(small_cohort)
    shutil.copytree(patient, small_cohort / "Ischemia" / patient.name.lower().replace("-", "_"))
    with pytest.raises(DataError, match=rf"patient folders\): duplicate patient ids .*'{patient.name}'"):
        _setup(small_cohort)


def test_label_outside_the_class_list(small_cohort):
    shutil.move(str(small_cohort / "Infarction"), str(small_cohort / "Borderline"))
    with pytest.raises(
        DataError, match=r"Borderline: unknown class folder 'Borderline'.*Choices: infarction, ischemia, normal"
    ):
        _setup(small_cohort)


def test_class_with_no_training_patients(small_cohort):
    for patient in sorted((small_cohort / "Infarction").iterdir()):
        shutil.rmtree(patient)
    with pytest.raises(DataError, match=r"no training patients for class\(es\) \['infarction'\]"):
        _setup(small_cohort)


def test_clinical_table_problems_name_the_file_and_column(small_cohort):
    clinical = pd.read_csv(small_cohort / "clinical.csv")
    clinical.rename(columns={"patient_id": "PatientID"}).to_csv(small_cohort / "clinical.csv", index=False)
    with pytest.raises(DataError, match=r"clinical\.csv: unknown id column 'patient_id'.*PatientID"):
        _setup(small_cohort)
    clinical.assign(smoking="yes").to_csv(small_cohort / "clinical.csv", index=False)
    with pytest.raises(DataError, match=r"clinical\.csv: non-numeric columns \['smoking'\]"):
        _setup(small_cohort)
    (small_cohort / "clinical.csv").unlink()
    with pytest.raises(DataError, match=r"clinical table not found: .*clinical\.csv"):
        _setup(small_cohort)


def test_excluded_label_from_config(small_cohort):
    datamodule = _setup(small_cohort, **{"data.exclude_labels": ["infarction"]})
    assert datamodule.summary()["excluded"]["label 'infarction' excluded by config"] > 0
    with pytest.raises(DataError, match=r"exclude_labels: \['borderline'\] are not classes"):
        _setup(small_cohort, **{"data.exclude_labels": ["borderline"]})
