"""The PTB-XL reader on a synthetic PTB-XL (label rule, folds, patients, bad files, ECG images) and on the
real subset in the shared data folder (exact counts), plus the synthetic writer and its CLI."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import lightning_fusion.data.readers.ptbxl  # noqa: F401  (registers the "ptbxl" reader)
import lightning_fusion.demo.ptbxl  # noqa: F401  (registers the "ptbxl" demo layout)
from lightning_fusion import make_demo_data
from lightning_fusion.config import load_config
from lightning_fusion.data import ecg_render
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.data.readers.ptbxl import PTBXLReader, PTBXLReaderConfig, record_label
from lightning_fusion.demo.ptbxl import write_ptbxl
from lightning_fusion.errors import DataError, LeakageError

LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
DIAGNOSTIC = {"NORM", "IMI", "AMI", "NDT", "LVH", "CLBBB"}
REAL_FOLDS = {"train_folds": list(range(1, 8)), "val_folds": [8], "test_folds": [9]}


@pytest.fixture(scope="module")
def synthetic_master(tmp_path_factory) -> Path:
    """The default synthetic PTB-XL (60 patients), written once (read-only: copy it to modify)."""
    return write_ptbxl(tmp_path_factory.mktemp("ptbxl") / "ptbxl", patients=60, seed=0)


@pytest.fixture
def synthetic(synthetic_master, tmp_path) -> Path:
    return Path(shutil.copytree(synthetic_master, tmp_path / "ptbxl"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LF_CACHE_DIR", str(tmp_path / "cache"))


def _read(root: Path, **options):
    return PTBXLReader(PTBXLReaderConfig(**options)).read(root)


def _edit_database(root: Path, edit) -> pd.DataFrame:
    database = pd.read_csv(root / "ptbxl_database.csv")
    edit(database)
    database.to_csv(root / "ptbxl_database.csv", index=False)
    return database


def _datamodule(root: Path, modalities=("signal", "tabular"), **reader_options):
    config = load_config(
        None,
        {
            "data.reader": {"name": "ptbxl", **reader_options},
            "data.root": str(root),
            "data.tabular.missing_indicators": True,
            "data.image_size": 32,
            "model.modalities": list(modalities),
            "model.encoders": {
                "signal": {"name": "resnet1d"},
                "tabular": {"name": "mlp"},
                "image": {"name": "timm", "backbone": "test_resnet"},
            },
        },
    )
    datamodule = MultimodalDataModule(config.data, config.model.modalities)
    datamodule.setup("fit")
    return datamodule


# --------------------------------------------------------------------------------------------------
# Label rule
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("codes", "label", "reason"),
    [
        ({"NORM": 100.0, "SR": 0.0}, "normal", None),
        ({"NORM": 80.0, "SBRAD": 0.0}, None, "NORM likelihood below 100 and no other diagnostic statement"),
        ({"NORM": 100.0, "IMI": 50.0}, "abnormal", None),
        ({"LVH": 0.0}, "abnormal", None),  # likelihood 0 (unknown) still counts, as in the benchmark
        ({"SR": 0.0, "LVOLT": 0.0}, None, "no diagnostic statement"),
        ({}, None, "no diagnostic statement"),
    ],
)
def test_record_label_rule(codes, label, reason):
    assert record_label(codes, DIAGNOSTIC, 100.0) == (label, reason)


def test_label_rule_and_threshold_on_the_layout(synthetic):
    codes = {
        1: "{'NORM': 100.0, 'SR': 0.0}",  # normal
        2: "{'NORM': 80.0, 'SR': 0.0}",  # excluded: NORM below the threshold
        3: "{'NORM': 50.0, 'IMI': 0.0}",  # abnormal
        4: "{'SR': 0.0}",  # excluded: no diagnostic statement
    }

    def edit(database):
        for ecg_id, text in codes.items():
            database.loc[database["ecg_id"] == ecg_id, "scp_codes"] = text
        database.loc[database["ecg_id"] == 1, "age"] = 300  # PTB-XL's code for "older than 89"

    _edit_database(synthetic, edit)
    cohort = _read(synthetic)
    assert cohort.classes == ["normal", "abnormal"]
    assert cohort.labels["1"] == "normal" and cohort.labels["3"] == "abnormal"
    assert "2" in cohort.excluded["NORM likelihood below 100 and no other diagnostic statement"]
    assert "4" in cohort.excluded["no diagnostic statement"]
    assert "2" not in cohort.labels and "4" not in cohort.labels
    assert cohort.modalities["tabular"].frame.loc["1", "age"] == 90.0
    relaxed = _read(synthetic, norm_min_likelihood=80)
    assert relaxed.labels["2"] == "normal"
    assert "4" in relaxed.excluded["no diagnostic statement"]


# --------------------------------------------------------------------------------------------------
# Folds, patients, splits
# --------------------------------------------------------------------------------------------------
def test_splits_follow_strat_fold_and_keep_patients_whole(synthetic_master):
    database = pd.read_csv(synthetic_master / "ptbxl_database.csv")
    fold_of = dict(zip(database["ecg_id"].astype(str), database["strat_fold"]))
    patient_of = dict(zip(database["ecg_id"].astype(str), database["patient_id"]))
    cohort = _read(synthetic_master, train_folds=[1, 2, 3, 4, 5, 6], val_folds=[7], test_folds=[8])
    expected = {fold: "train" for fold in range(1, 7)} | {7: "val", 8: "test"}
    assert all(expected[fold_of[sid]] == split for sid, split in cohort.splits.items())
    assert set(cohort.splits.index) == set(cohort.labels.index)
    left_out = {sid for sid, fold in fold_of.items() if fold in (9, 10)}
    label_excluded = {sid for reason, ids in cohort.excluded.items() if "strat_fold" not in reason for sid in ids}
    reported = set(cohort.excluded["strat_fold 9 not in train_folds/val_folds/test_folds"]) | set(
        cohort.excluded["strat_fold 10 not in train_folds/val_folds/test_folds"]
    )
    assert reported == left_out - label_excluded and reported
    assert not left_out & set(cohort.labels.index)
    # groups: clean patient ids ("19104.0" → "19104"); several records per some patients
    assert all(cohort.groups[sid] == str(int(patient_of[sid])) for sid in cohort.labels.index)
    assert cohort.groups.value_counts().max() >= 2
    split_per_patient = pd.DataFrame({"patient": cohort.groups, "split": cohort.splits}).groupby("patient")["split"]
    assert split_per_patient.nunique().max() == 1


def test_leaky_fold_assignment_is_a_leakage_error(synthetic):
    cohort = _read(synthetic)
    counts = cohort.groups.value_counts()
    patient = counts.index[counts >= 2][0]
    first, second = sorted(cohort.groups.index[cohort.groups == patient], key=int)[:2]

    def edit(database):
        database.loc[database["ecg_id"] == int(first), "strat_fold"] = 1
        database.loc[database["ecg_id"] == int(second), "strat_fold"] = 10

    _edit_database(synthetic, edit)
    with pytest.raises(LeakageError, match=rf"patients in more than one split: {patient} \(train and test\)"):
        _datamodule(synthetic)


def test_a_configured_fold_without_records_names_it_and_says_how_to_set_the_folds(synthetic):
    _edit_database(synthetic, lambda db: db.drop(db.index[db["strat_fold"] == 10], inplace=True))
    message = (
        r"ptbxl_database\.csv: no record has strat_fold \[10\] \(test_folds \[10\]\); the folds present are "
        r"\[1, 2, 3, 4, 5, 6, 7, 8, 9\]\. Set the folds to ones that exist, e\.g\. --data\.reader\.train_folds "
        r"\[1,2,3,4,5,6,7\] --data\.reader\.val_folds \[8\] --data\.reader\.test_folds \[9\]"
    )
    with pytest.raises(DataError, match=message):
        _read(synthetic)
    assert set(_read(synthetic, train_folds=list(range(1, 8)), val_folds=[8], test_folds=[9]).splits) == {
        "train",
        "val",
        "test",
    }


def test_overlapping_folds_are_rejected():
    with pytest.raises(ValueError, match="strat_fold 9 is in both train_folds and val_folds"):
        PTBXLReaderConfig(train_folds=[1, 9], val_folds=[9], test_folds=[10])


# --------------------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------------------
def test_missing_record_file_is_excluded_and_reported_or_an_error(synthetic):
    victim = sorted(_read(synthetic).labels.index, key=int)[0]
    path = synthetic / "records100" / "00000" / f"{int(victim):05d}_lr.dat"
    path.unlink()
    cohort = _read(synthetic)
    assert cohort.excluded["record file missing (filename_lr)"] == [victim]
    assert victim not in cohort.labels and victim not in cohort.modalities["signal"].patient_ids
    message = rf"ecg_id {victim}: .*{int(victim):05d}_lr\.hea/\.dat.*set --data\.reader\.missing_records exclude"
    with pytest.raises(DataError, match=message):
        _read(synthetic, missing_records="error")
    with pytest.raises(DataError, match=r"filename_hr are missing: ecg_id \d+: .*records500/00000/\d+_hr"):
        _read(synthetic, sampling_rate=500, missing_records="error")  # the writer writes 100 Hz records only


def test_corrupt_record_names_the_ecg_id_and_file(synthetic):
    cohort = _read(synthetic)
    victim = sorted(cohort.labels.index, key=int)[0]
    with open(synthetic / "records100" / "00000" / f"{int(victim):05d}_lr.dat", "r+b") as dat:
        dat.truncate(1000)
    with pytest.raises(DataError, match=rf"ecg_id {victim}: cannot read WFDB record .*{int(victim):05d}_lr: "):
        cohort.modalities["signal"].load(victim)


def test_decoded_signals_are_cached_and_refreshed_when_the_record_changes(synthetic, tmp_path, monkeypatch):
    cohort = _read(synthetic)
    sid = sorted(cohort.labels.index, key=int)[0]
    first = cohort.modalities["signal"].load(sid)
    assert len(list((tmp_path / "cache" / "ptbxl_signals").rglob("*.npy"))) == 1

    def no_wfdb(*args, **kwargs):
        raise AssertionError("wfdb was called for a cached record")

    with monkeypatch.context() as patch:
        patch.setattr(lightning_fusion.data.readers.ptbxl.wfdb, "rdrecord", no_wfdb)
        np.testing.assert_array_equal(_read(synthetic).modalities["signal"].load(sid), first)
        with open(synthetic / "records100" / "00000" / f"{int(sid):05d}_lr.dat", "r+b") as dat:
            dat.truncate(1000)  # a changed record file is a new cache entry, read (and checked) again
        with pytest.raises(DataError, match="wfdb was called"):
            _read(synthetic).modalities["signal"].load(sid)
    uncached = _read(synthetic, cache_signals=False)
    monkeypatch.setenv("LF_CACHE_DIR", str(tmp_path / "other-cache"))
    with pytest.raises(DataError, match=rf"ecg_id {sid}: cannot read WFDB record"):
        uncached.modalities["signal"].load(sid)
    assert not (tmp_path / "other-cache" / "ptbxl_signals").exists()


def _set_codes(root: Path, ecg_id: int, text: str) -> None:
    def edit(database):
        database.loc[database["ecg_id"] == ecg_id, "scp_codes"] = text

    _edit_database(root, edit)


def test_bad_database_values_name_the_record(synthetic):
    _set_codes(synthetic, 5, "{'NROM': 100.0}")
    with pytest.raises(
        DataError, match=r"ecg_id 5: scp_codes statement 'NROM' is not in scp_statements\.csv; did you mean 'NORM'\?"
    ):
        _read(synthetic)
    _set_codes(synthetic, 5, "NORM=100")
    with pytest.raises(DataError, match=r"ecg_id 5: scp_codes 'NORM=100' is not a dict literal"):
        _read(synthetic)
    _edit_database(synthetic, lambda database: database.rename(columns={"strat_fold": "fold"}, inplace=True))
    with pytest.raises(DataError, match=r"ptbxl_database\.csv: no column 'strat_fold'; did you mean 'fold'\?"):
        _read(synthetic)


# --------------------------------------------------------------------------------------------------
# Data module: signal + tabular; rendered ECG images
# --------------------------------------------------------------------------------------------------
def test_datamodule_signal_and_tabular_fitted_on_train(synthetic_master):
    datamodule = _datamodule(synthetic_master)
    cohort = datamodule.cohort
    summary = datamodule.summary()
    for split, ids in datamodule.splits.items():
        assert set(ids) == set(cohort.splits.index[cohort.splits == split])
        assert sum(summary["counts"][split].values()) == len(ids)
    assert summary["excluded"]["NORM likelihood below 100 and no other diagnostic statement"] > 0
    raw_train = cohort.modalities["signal"].load_many(datamodule.splits["train"])
    raw_val = cohort.modalities["signal"].load_many(datamodule.splits["val"])
    assert raw_train.shape[1:] == (12, 1000)
    mean, std = raw_train.mean(axis=(0, 2)), raw_train.std(axis=(0, 2))
    signal = datamodule.preprocessors["signal"]
    np.testing.assert_allclose(signal.mean, mean, rtol=1e-4, atol=1e-6)
    assert signal.leads == LEADS
    train = datamodule.datasets["train"].arrays["signal"]
    np.testing.assert_allclose(train.mean(axis=(0, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=(0, 2)), 1.0, atol=1e-3)
    val = datamodule.datasets["val"].arrays["signal"]
    np.testing.assert_allclose(val, (raw_val - mean[None, :, None]) / std[None, :, None], rtol=1e-3, atol=1e-3)
    tabular = datamodule.preprocessors["tabular"].summary()
    assert tabular["input_columns"] == ["age", "sex", "height", "weight"]
    assert "missingindicator_height" in tabular["output_columns"]
    assert datamodule.specs["signal"].shape == (12, 1000)


def test_rendered_ecg_images_are_drawn_once_and_cached(synthetic_master, tmp_path, monkeypatch):
    options = {"render_image": True, "image_width": 128, "image_height": 96}
    cohort = _read(synthetic_master, **options)
    ids = sorted(cohort.labels.index, key=int)[:3]
    images = cohort.modalities["image"].load_many(ids, 32)
    assert images.shape == (3, 32, 32, 1) and images.dtype == np.uint8
    assert images.min() < 100 < images.max()  # dark trace on a light grid
    pngs = sorted((tmp_path / "cache" / "ecg_images").rglob("*.png"))
    assert len(pngs) == 3
    with Image.open(pngs[0]) as png:
        assert (png.mode, png.size) == ("L", (128, 96))

    def no_render(*args, **kwargs):
        raise AssertionError("rendered again instead of using the cache")

    render = ecg_render.render_ecg
    monkeypatch.setattr(ecg_render, "render_ecg", no_render)
    again = _read(synthetic_master, **options).modalities["image"].load_many(ids, 32)
    np.testing.assert_array_equal(again, images)
    with pytest.raises(AssertionError, match="rendered again"):  # other options → another cache entry
        _read(synthetic_master, **options, image_layout="12x1").modalities["image"].load_many(ids[:1], 32)
    monkeypatch.setattr(ecg_render, "render_ecg", render)
    datamodule = _datamodule(synthetic_master, modalities=["image"], **options)
    assert datamodule.specs["image"].shape == (1, 32, 32)
    assert len(list((tmp_path / "cache" / "ecg_images").rglob("*.png"))) == len(datamodule.cohort.labels)
    assert not list((tmp_path / "cache" / "ecg_images").rglob("*partial*"))


def test_render_ecg_layouts():
    signal = np.zeros((12, 1000))
    signal[0, 100] = 1.0
    grid = np.asarray(ecg_render.render_ecg(signal, LEADS, 100, ecg_render.RenderOptions(400, 300, lead_labels=False)))
    assert grid.shape == (300, 400)
    # lead I (top left cell, 100 px high, ±1.5 mV): a 1 mV spike at 1 s is drawn ~33 px above the centre line
    assert grid[10:25, 35:45].min() == 0 and grid[110:125, 35:45].min() > 0
    assert all(grid[50 + 100 * row, 100 * column + 60] == 0 for row in range(3) for column in range(4))  # flat traces
    rows = ecg_render.render_ecg(signal, LEADS, 100, ecg_render.RenderOptions(400, 360, layout="12x1"))
    assert rows.size == (400, 360)
    with pytest.raises(ValueError, match="3x4 layout needs 12 leads"):
        ecg_render.render_ecg(signal[:3], LEADS[:3], 100)


# --------------------------------------------------------------------------------------------------
# The real PTB-XL subset
# --------------------------------------------------------------------------------------------------
def test_real_ptbxl_subset(shared_data):
    root = shared_data / "ptbxl"
    cohort = _read(root, **REAL_FOLDS)
    counts = pd.crosstab(cohort.splits, cohort.labels).to_dict(orient="index")
    assert counts == {
        "train": {"abnormal": 645, "normal": 548},
        "val": {"abnormal": 73, "normal": 72},
        "test": {"abnormal": 122, "normal": 89},
    }
    assert {reason: len(ids) for reason, ids in cohort.excluded.items()} == {
        "NORM likelihood below 100 and no other diagnostic statement": 164,
        "no diagnostic statement": 19,
    }
    database = pd.read_csv(root / "ptbxl_database.csv")
    assert len(cohort.labels) + 164 + 19 == len(database) == 1732
    assert (cohort.labels == "normal").sum() / len(database) == pytest.approx(0.41, abs=0.01)  # 709 strictly normal
    signal = cohort.modalities["signal"]
    assert signal.leads == LEADS
    sample = signal.load_many(sorted(cohort.labels.index, key=int)[::100])
    assert sample.shape == (16, 12, 1000) and sample.dtype == np.float32
    patients = {split: set(cohort.groups[cohort.splits == split]) for split in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert cohort.groups.nunique() == 1447
    table = cohort.modalities["tabular"].frame
    assert table.isna().sum().to_dict() == {"age": 14, "sex": 0, "height": 631, "weight": 285}
    assert database["height"].isna().mean() == pytest.approx(0.42, abs=0.03)  # 731 of 1732
    with pytest.raises(DataError, match=r"no record has strat_fold \[10\]"):
        _read(root)  # the standard split: fold 10 is not in the subset


# --------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------
def test_writer_is_deterministic(tmp_path):
    first = write_ptbxl(tmp_path / "a", patients=12, seed=5)
    second = write_ptbxl(tmp_path / "b", patients=12, seed=5)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(first, second, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    other = write_ptbxl(tmp_path / "c", patients=12, seed=6)
    assert (other / "ptbxl_database.csv").read_bytes() != (first / "ptbxl_database.csv").read_bytes()
    database = pd.read_csv(first / "ptbxl_database.csv")
    assert database.groupby("patient_id")["strat_fold"].nunique().max() == 1
    assert set(database["strat_fold"]) == set(range(1, 11))
    with pytest.raises(ValueError, match="patients must be >= 10"):
        write_ptbxl(tmp_path / "d", patients=5)


def test_writer_matches_ptbxl_proportions(synthetic_master):
    database = pd.read_csv(synthetic_master / "ptbxl_database.csv")
    statements = pd.read_csv(synthetic_master / "scp_statements.csv", index_col=0)
    assert {"NORM", "IMI", "AMI", "NDT", "LVH", "CLBBB"} <= set(statements.index[statements["diagnostic"] == 1])
    assert statements.loc["IMI", "diagnostic_class"] == "MI" and statements.loc["NDT", "diagnostic_class"] == "STTC"
    assert 0.25 < database["height"].isna().mean() < 0.6 and 0.05 < database["weight"].isna().mean() < 0.35
    assert database["patient_id"].duplicated().any()  # several records for some patients
    assert (synthetic_master / f"{database.loc[0, 'filename_lr']}.hea").is_file()


def test_make_demo_data_cli(tmp_path, capsys):
    assert make_demo_data.main(["ptbxl", str(tmp_path / "demo"), "--patients", "12"]) == 0
    assert "--data.reader.name ptbxl" in capsys.readouterr().out
    cohort = _read(tmp_path / "demo")
    assert set(cohort.labels) == {"normal", "abnormal"}
