"""``data.memory_map``: decoded images in memory-mapped files, written once, read lazily, rebuilt when broken.

What must hold: batches are what the in-memory arrays give; the dataset holds file rows, not arrays
(and pickles without its data); another image size or an edited image makes a new file; a truncated
file is written again; two processes that want the same file at once write it once and read the same
rows (two real processes, not mocks).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from lightning_fusion.config import load_config
from lightning_fusion.data.datamodule import MultimodalDataModule
from lightning_fusion.data.memory_map import MappedRows, mapped_split, open_mapped
from lightning_fusion.errors import DataError
from tests.conftest import PROJECT_ROOT, small_overrides


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LF_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "memory_map"


def _datamodule(root: Path, **overrides) -> MultimodalDataModule:
    config = load_config(None, small_overrides(root, **overrides))
    module = MultimodalDataModule(config.data, config.model.modalities)
    module.setup("fit")
    return module


def test_mapped_batches_equal_the_in_memory_ones_and_rows_stay_on_disk(small_cohort_master, cache_dir):
    mapped = _datamodule(small_cohort_master, **{"data.memory_map": True})
    in_memory = _datamodule(small_cohort_master)
    assert sorted(p.name.split("-")[2] for p in cache_dir.glob("*.npy")) == ["test", "train", "val"]
    for split in ("train", "val", "test"):
        rows = mapped.datasets[split].arrays["image"]
        assert isinstance(rows, MappedRows) and rows.written_here
        assert isinstance(mapped.datasets[split].arrays["tabular"], np.ndarray)  # fitted: stays in memory
        assert np.array_equal(rows[:], in_memory.datasets[split].arrays["image"])
        picked = [3, 0, 4]
        for key in ("image", "tabular", "label") if split != "train" else ("tabular", "label"):  # train: augmented
            a = default_collate([mapped.datasets[split][i] for i in picked])[key]
            b = default_collate([in_memory.datasets[split][i] for i in picked])[key]
            assert torch.equal(a, b), (split, key)
        batch = mapped.datasets[split].batch(picked)  # the device pipeline's gather
        assert torch.equal(batch["image"], in_memory.datasets[split].batch(picked)["image"])
    # pickled for a spawned DataLoader worker: the path, not the pixels
    rows = mapped.datasets["train"].arrays["image"]
    assert len(pickle.dumps(rows)) < 1000 < rows.shape[0] * np.prod(rows.shape[1:])
    assert np.array_equal(pickle.loads(pickle.dumps(rows))[2], rows[2])
    again = _datamodule(small_cohort_master, **{"data.memory_map": True})
    assert not again.datasets["train"].arrays["image"].written_here  # found, not written again
    assert len(list(cache_dir.glob("*.npy"))) == 3


def test_a_new_image_size_or_an_edited_image_makes_a_new_file(small_cohort, cache_dir):
    first = _datamodule(small_cohort, **{"data.memory_map": True})
    resized = _datamodule(small_cohort, **{"data.memory_map": True, "data.image_size": 16})
    assert resized.datasets["train"].arrays["image"].shape[1:3] == (16, 16)
    assert len(list(cache_dir.glob("*.npy"))) == 6
    pid = first.datasets["train"].patient_ids[0]
    view = first.cohort.modalities["image"].files[pid][0]
    stat = view.stat()
    os.utime(view, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "edited"
    edited = _datamodule(small_cohort, **{"data.memory_map": True})
    assert edited.datasets["train"].arrays["image"].written_here
    assert edited.datasets["train"].arrays["image"].path != first.datasets["train"].arrays["image"].path


def test_a_truncated_file_is_named_and_written_again(small_cohort_master, cache_dir, caplog):
    first = _datamodule(small_cohort_master, **{"data.memory_map": True})
    path = first.datasets["val"].arrays["image"].path
    expected = first.datasets["val"].arrays["image"][:]
    with open(path, "r+b") as stream:
        stream.truncate(path.stat().st_size // 2)
    with pytest.raises(DataError, match=f"memory map {path}.*truncated"):
        open_mapped(path)
    again = _datamodule(small_cohort_master, **{"data.memory_map": True})
    rows = again.datasets["val"].arrays["image"]
    assert rows.written_here and rows.path == path and np.array_equal(rows[:], expected)
    assert str(path) in caplog.text and "writing it again" in caplog.text


def test_absent_modality_rows_are_zeros_and_a_source_without_fingerprint_is_named(tmp_path):
    rows = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    have = np.array([False, True, False, True, False])
    ids = [f"p{i}" for i in range(5)]
    lookup = {"p1": rows[0], "p3": rows[1]}
    mapped = mapped_split(
        "x-image-train", {"v": 1}, ids, have, {}, lambda c: np.stack([lookup[p] for p in c]), tmp_path
    )
    assert mapped.shape == (5, 4, 4, 3)
    assert np.array_equal(mapped[[1, 3]], rows) and not mapped[[0, 2, 4]].any()

    class Unkeyed:
        kind = "image"

    module = MultimodalDataModule.__new__(MultimodalDataModule)
    module.config = load_config(None, {}).data
    cohort = type("C", (), {"name": "somewhere", "modalities": {"image": Unkeyed()}})()
    with pytest.raises(DataError, match="somewhere: data.memory_map: modality 'image' comes from a Unkeyed"):
        module._mapped(cohort, "image", "train", ids, have, {"image_size": 4})


# --------------------------------------------------------------------------------------------------
# Two real processes want the same file at once
# --------------------------------------------------------------------------------------------------
_BUILD = """
import json, sys, time
from pathlib import Path
import numpy as np
from lightning_fusion.data.memory_map import mapped_split
from lightning_fusion.data.modalities import ImageStackModality

images, folder, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
files = {p.stem: [p] for p in sorted(images.glob("*.png"))}
source = ImageStackModality(files, channels_per_view=3)
ids = sorted(files)

def slow_decode(chunk):  # the writer is still writing when the other process arrives
    time.sleep(0.1)
    return source.load_many(chunk, 16)

(folder.parent / f"ready-{me}").touch()
while len(list(folder.parent.glob("ready-*"))) < 2:  # start together
    time.sleep(0.005)
rows = mapped_split("race-image-train", source.fingerprint(ids), ids, np.ones(len(ids), bool), {"s": 16},
                    slow_decode, folder)
print(json.dumps({"written_here": rows.written_here, "sum": int(rows[:].astype(np.int64).sum()),
                  "digest": __import__("hashlib").sha256(rows[:].tobytes()).hexdigest()}))
"""


def test_two_processes_building_the_same_file_at_once_write_it_once(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(150):  # three chunks
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(images / f"p{i:03d}.png")
    maps = tmp_path / "maps"
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILD, str(images), str(maps), str(me)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for me in range(2)
    ]
    outcomes = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err[-2000:]
        outcomes.append(json.loads(out))
    assert sorted(o["written_here"] for o in outcomes) == [False, True]  # one wrote, the other waited and read
    assert outcomes[0]["digest"] == outcomes[1]["digest"] and outcomes[0]["sum"] > 0
    left = sorted(p.name for p in maps.iterdir() if not p.name.endswith(".lock"))
    assert len(left) == 1 and left[0].endswith(".npy")  # no temporary file left behind
