"""benchmarks/raw_loop.py: the raw loops learn, and the comparison runs on the real data at a tiny size."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import raw_loop  # noqa: E402


def _signals(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1 carries a 4-cycle sine on lead 0; both classes carry noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    signals = rng.normal(size=(count, 2, 64)).astype(np.float32)
    signals[labels == 1, 0] += 2 * np.sin(np.linspace(0, 8 * np.pi, 64, dtype=np.float32))
    return signals, labels


def test_the_raw_signal_loop_learns_a_separable_task():
    data = {split: _signals(64, seed) for seed, split in enumerate(("train", "val", "test"))}
    scores = raw_loop.raw_signal_loop(data, seed=0, epochs=6, batch_size=16)
    assert set(scores) == {"accuracy", "balanced_accuracy", "auroc"}
    assert scores["auroc"] > 0.9


def test_the_raw_image_loop_standardises_and_tests_the_best_state():
    rng = np.random.default_rng(0)

    def images(count):  # class 1 is brighter: learnable in one epoch
        labels = np.arange(count) % 2
        values = rng.integers(0, 100, size=(count, 28, 28, 1)) + 100 * labels[:, None, None, None]
        return values.astype(np.uint8), labels

    data = {split: images(64) for split in ("train", "val", "test")}
    scores = raw_loop.raw_image_loop(data, seed=0, epochs=2, batch_size=32)
    assert 0.0 <= scores["balanced_accuracy"] <= 1.0 and scores["auroc"] > 0.75


def test_pneumoniamnist_comparison_runs_on_the_real_split(shared_data, tmp_path):
    out = tmp_path / "table.md"
    argv = ["pneumoniamnist", "--seeds", "1", "--epochs", "1", "--limit-batches", "1", "--recipes"]
    table = raw_loop.main([*argv, "--data-dir", str(shared_data), "--out", str(out)])
    assert "| raw loop (image) |" in table and out.read_text() == table
    # the framework's split: official val as test (524), a 10 % val carved from train, duplicates dropped
    assert "train 4229 (3136 positive), val 469 (348 positive), test 524 (389 positive)" in table


def test_framework_rows_alone_with_no_raw_loop(monkeypatch):
    """Only the routing is under test here: the fit and the data are the other tests' business."""
    labels = np.array([0, 1, 1])
    monkeypatch.setattr(raw_loop, "split_arrays", lambda *a: {s: (None, labels) for s in ("train", "val", "test")})
    monkeypatch.setattr(raw_loop, "RAW_LOOPS", {"image": lambda *a, **k: pytest.fail("the raw loop ran")})
    fits = []
    monkeypatch.setattr(raw_loop, "framework_row", lambda *a: fits.append(a[2]) or dict.fromkeys(raw_loop.METRICS, 0.5))
    argv = ["pneumoniamnist", "--seeds", "2", "--no-raw-loop", "--recipes", "a.yaml", "b.yaml:image"]
    table = raw_loop.main(argv)
    assert fits == ["a.yaml", "b.yaml:image"] * 2
    assert "raw loop" not in table and "| framework a.yaml |" in table and "| framework b.yaml:image |" in table


def test_an_unknown_data_set_is_refused():
    with pytest.raises(SystemExit):
        raw_loop.main(["mnist"])
