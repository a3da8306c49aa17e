"""The ``ecg`` reader on the synthetic ECG layout: modalities, joins, datamodule, bad input, the writer."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import lightning_fusion.data.readers.ecg  # noqa: F401  (registers the reader)
import lightning_fusion.demo.ecg  # noqa: F401  (registers the demo layout)
from lightning_fusion import make_demo_data
from lightning_fusion.config import load_config
from lightning_fusion.data.cohort import Cohort, join_modalities
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.data.readers import READERS
from lightning_fusion.data.readers.ecg import ECGReaderConfig
from lightning_fusion.demo.ecg import SAMPLES, write_ecg
from lightning_fusion.errors import DataError

PATIENTS = 40
MODALITIES = ["image", "signal", "tabular"]


@pytest.fixture(scope="module")
def ecg_master(tmp_path_factory) -> Path:
    """The synthetic ECG layout, 40 indices (read-only: copy it to modify)."""
    return write_ecg(tmp_path_factory.mktemp("ecg") / "ecg", patients=PATIENTS, seed=1)


@pytest.fixture
def ecg_root(ecg_master, tmp_path) -> Path:
    return Path(shutil.copytree(ecg_master, tmp_path / "ecg"))


def _manifest(root: Path) -> dict:
    return json.loads((root / "cohort.json").read_text())


def _read(root: Path, **options) -> Cohort:
    return READERS.create("ecg", ECGReaderConfig(**options)).read(root)


def _datamodule(root: Path, **overrides) -> MultimodalDataModule:
    config = load_config(
        None,
        {
            "data.reader": {"name": "ecg"},
            "data.root": str(root),
            "data.image_size": 32,
            "model.modalities": MODALITIES,
            "model.encoders": {
                "image": {"name": "timm", "backbone": "test_resnet"},
                "signal": {"name": "signal_mlp"},
                "tabular": {"name": "mlp"},
            },
            **overrides,
        },
    )
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    return datamodule


def _ids(numbers) -> list[str]:
    return sorted(str(n) for n in numbers)


def test_reader_reads_every_modality_and_keeps_borderline(ecg_master):
    manifest = _manifest(ecg_master)
    incomplete = manifest["incomplete"]
    cohort = _read(ecg_master)
    assert cohort.classes == ["normal", "abnormal", "borderline"]
    assert len(cohort.labels) == PATIENTS - 1
    assert cohort.labels.value_counts().to_dict() == {k: v for k, v in manifest["class_counts"].items()}
    assert cohort.labels.value_counts()["borderline"] > 0  # the reader does not drop borderline
    everyone = {str(i) for i in range(1, PATIENTS + 1)}
    assert cohort.modalities["image"].patient_ids == everyone - set(_ids(incomplete["no image folder"]))
    assert cohort.modalities["tabular"].patient_ids == everyone - set(_ids(incomplete["no clinical row"]))
    assert cohort.modalities["signal"].patient_ids == everyone
    assert set(cohort.labels.index) == everyone - set(_ids(incomplete["no label"]))
    assert cohort.excluded == {}

    assert cohort.modalities["signal"].load("1").shape == (1, SAMPLES)
    assert cohort.modalities["tabular"].columns == ["age", "sex", "systolic_bp", "diastolic_bp", "diabetes"]
    image = cohort.modalities["image"]
    modes = {pid: Image.open(files[0]).mode for pid, files in image.files.items()}
    assert set(modes.values()) == {"L", "RGB"}  # the demo mixes grayscale and RGB exports
    for mode in ("L", "RGB"):
        pid = next(p for p, m in modes.items() if m == mode)
        assert image.load(pid, 32).shape == (32, 32, 3)


def test_datamodule_joins_splits_and_normalises_signals_on_train(ecg_master):
    incomplete = _manifest(ecg_master)["incomplete"]
    datamodule = _datamodule(ecg_master, **{"data.exclude_labels": ["borderline"]})
    summary = datamodule.summary()
    borderline = sorted(datamodule.cohort.labels.index[datamodule.cohort.labels == "borderline"])
    assert summary["excluded_patients"] == {
        "label 'borderline' excluded by config": borderline,
        "no image": _ids(incomplete["no image folder"]),
        "no tabular": _ids(incomplete["no clinical row"]),
        "no label": _ids(incomplete["no label"]),
    }
    assert summary["classes"] == ["normal", "abnormal"]
    splits = datamodule.splits
    assert all(set(splits[a]).isdisjoint(splits[b]) for a, b in [("train", "val"), ("train", "test"), ("val", "test")])
    assert sorted(sum(splits.values(), [])) == datamodule.join.kept
    assert len(datamodule.join.kept) == PATIENTS - 4 - len(borderline)

    source = datamodule.cohort.modalities["signal"]
    raw_train, raw_val = source.load_many(splits["train"]), source.load_many(splits["val"])
    train = datamodule.datasets["train"].arrays["signal"]
    assert train.shape == (len(splits["train"]), 1, SAMPLES)
    np.testing.assert_allclose(train.mean(axis=(0, 2)), [0.0], atol=1e-4)
    np.testing.assert_allclose(train.std(axis=(0, 2)), [1.0], atol=1e-3)
    expected_val = (raw_val - raw_train.mean()) / raw_train.std()  # train statistics, not val's own
    np.testing.assert_allclose(datamodule.datasets["val"].arrays["signal"], expected_val, atol=1e-4)
    assert {m: spec.shape for m, spec in datamodule.specs.items()} == {
        "image": (3, 32, 32),
        "signal": (1, SAMPLES),
        "tabular": (5,),
    }


def test_image_folder_with_another_file_count_is_excluded_and_numeric_indices_match(ecg_root):
    kept = join_modalities(_read(ecg_root), MODALITIES).kept
    doubled, padded = kept[0], kept[1]
    folder = ecg_root / "images" / doubled
    (folder / "lead_II.jpg").rename(folder / "b.jpg")
    shutil.copy(folder / "b.jpg", folder / "a.jpg")
    (ecg_root / "images" / padded).rename(ecg_root / "images" / f"00{padded}")  # "007" is index 7
    cohort = _read(ecg_root)
    assert cohort.excluded == {"image folder without exactly 1 image file(s)": [doubled]}
    report = join_modalities(cohort, MODALITIES)
    assert report.kept == [pid for pid in kept if pid != doubled]
    assert report.excluded["image folder without exactly 1 image file(s)"] == [doubled]

    two = _read(ecg_root, images_per_record=2)  # now only the doubled folder qualifies; files sorted by name
    assert [p.name for p in two.modalities["image"].files[doubled]] == ["a.jpg", "b.jpg"]
    assert len(two.excluded["image folder without exactly 2 image file(s)"]) == PATIENTS - 3
    assert two.modalities["image"].load(doubled, 16).shape == (16, 16, 6)


def test_unnamed_signal_index_column_and_text_sex_codes(ecg_root):
    signals = pd.read_csv(ecg_root / "ecg_signals.csv")
    signals.rename(columns={"index": ""}).to_csv(ecg_root / "ecg_signals.csv", index=False)
    clinical = pd.read_excel(ecg_root / "clinical.xlsx")
    text = clinical["sex"].map({1: " Male", 0: "f"}).astype(object)
    text.iloc[0] = np.nan
    clinical.assign(sex=text).to_excel(ecg_root / "clinical.xlsx", index=False)
    cohort = _read(ecg_root)
    assert cohort.modalities["signal"].patient_ids == {str(i) for i in range(1, PATIENTS + 1)}
    sex = cohort.modalities["tabular"].frame["sex"]
    expected = clinical.set_index(clinical["IDX"].astype(str))["sex"].astype(float)
    expected.iloc[0] = np.nan
    pd.testing.assert_series_equal(sex, expected.loc[sex.index], check_names=False, check_index_type=False)

    first = clinical["IDX"].iloc[0]
    clinical.assign(sex=text.fillna("X")).to_excel(ecg_root / "clinical.xlsx", index=False)
    with pytest.raises(DataError, match=rf"clinical\.xlsx column 'sex': value\(s\) outside .*index {first}: 'X'"):
        _read(ecg_root)
    clinical.assign(smoker="yes").to_excel(ecg_root / "clinical.xlsx", index=False)
    with pytest.raises(DataError, match=r"clinical\.xlsx: non-numeric columns \['smoker'\]"):
        _read(ecg_root)


def test_unknown_and_duplicate_labels_name_the_index(ecg_root):
    labels = pd.read_excel(ecg_root / "labels.xlsx")
    first = labels["index"].iloc[0]
    labels.assign(label=["  ABNORMAL "] + list(labels["label"][1:])).to_excel(ecg_root / "labels.xlsx", index=False)
    assert _read(ecg_root).labels[str(first)] == "abnormal"  # case and spaces do not matter
    labels.assign(label=["unclear"] + list(labels["label"][1:])).to_excel(ecg_root / "labels.xlsx", index=False)
    with pytest.raises(DataError, match=rf"labels\.xlsx column 'label': unknown label\(s\) index {first}: 'unclear'"):
        _read(ecg_root)
    pd.concat([labels, labels.iloc[[4]]]).to_excel(ecg_root / "labels.xlsx", index=False)
    duplicate = labels["index"].iloc[4]
    with pytest.raises(
        DataError, match=rf"labels\.xlsx column 'index': duplicate patient ids {duplicate} / {duplicate}"
    ):
        _read(ecg_root)


def test_signal_rows_of_the_wrong_length_name_the_index(ecg_root):
    path = ecg_root / "ecg_signals.csv"
    lines = path.read_text().splitlines()
    short = lines[2].rsplit(",", 3)[0]  # 3 samples too few
    short_index = short.split(",")[0]
    path.write_text("\n".join([lines[0], lines[1], short, *lines[3:]]) + "\n")
    with pytest.raises(DataError, match=rf"ecg_signals\.csv: short row.*index {short_index} \(3 of {SAMPLES} cells"):
        _read(ecg_root)
    long_index = lines[5].split(",")[0]
    path.write_text("\n".join([*lines[:5], lines[5] + ",0.1", *lines[6:]]) + "\n")
    with pytest.raises(DataError, match=rf"ecg_signals\.csv: index {long_index} \(line 6\) has {SAMPLES + 2} cells"):
        _read(ecg_root)
    path.write_text("\n".join([*lines[:5], lines[5].replace(",", ",abc,", 1).rsplit(",", 1)[0], *lines[6:]]) + "\n")
    with pytest.raises(DataError, match=rf"non-numeric signal value\(s\): index {long_index} column '0': 'abc'"):
        _read(ecg_root)


def test_corrupt_jpeg_names_the_index_and_file(ecg_root):
    labels = _read(ecg_root).labels
    pid = next(p for p in sorted(labels.index) if labels[p] != "borderline" and (ecg_root / "images" / p).is_dir())
    (ecg_root / "images" / pid / "lead_II.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match=rf"patient {pid}: unreadable image .*images/{pid}/lead_II\.jpg"):
        _datamodule(ecg_root, **{"data.exclude_labels": ["borderline"]})


def test_missing_columns_and_files_are_named(ecg_root):
    clinical = pd.read_excel(ecg_root / "clinical.xlsx")
    clinical.rename(columns={"IDX": "ID"}).to_excel(ecg_root / "clinical.xlsx", index=False)
    with pytest.raises(DataError, match=r"clinical\.xlsx: unknown id column 'IDX'; did you mean 'ID'\?"):
        _read(ecg_root)
    assert "tabular" not in _read(ecg_root, clinical_file=None).modalities
    assert _read(ecg_root, clinical_id_column="ID").modalities["tabular"].patient_ids
    (ecg_root / "ecg_signals.csv").unlink()
    shutil.rmtree(ecg_root / "images")
    with pytest.raises(DataError, match=r"not found: .*ecg/images, .*ecg/ecg_signals\.csv"):
        _read(ecg_root)
    with pytest.raises(DataError, match=r"ecg data folder not found: .*nowhere"):
        _read(ecg_root / "nowhere")


def test_writer_is_deterministic_and_make_demo_data_writes_the_layout(tmp_path, capsys):
    first, second = write_ecg(tmp_path / "a", patients=20, seed=4), write_ecg(tmp_path / "b", patients=20, seed=4)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        if name.suffix == ".xlsx":  # openpyxl stamps the save time: compare the cells
            pd.testing.assert_frame_equal(pd.read_excel(first / name), pd.read_excel(second / name))
        else:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    other = write_ecg(tmp_path / "c", patients=20, seed=5)
    assert (other / "ecg_signals.csv").read_bytes() != (first / "ecg_signals.csv").read_bytes()

    assert make_demo_data.main(["ecg", str(tmp_path / "cli"), "--patients", "20", "--seed", "4"]) == 0
    assert "--data.reader.name ecg" in capsys.readouterr().out
    assert (tmp_path / "cli" / "ecg_signals.csv").read_bytes() == (first / "ecg_signals.csv").read_bytes()
    assert len(_read(tmp_path / "cli").labels) == 19
    with pytest.raises(ValueError, match="patients must be an integer >= 20"):
        write_ecg(tmp_path / "d", patients=5)
