"""Raw PyTorch baselines beside the framework's recipes, on the same samples, split and epoch budget.

    python benchmarks/raw_loop.py pneumoniamnist --seeds 3 --epochs 24
    python benchmarks/raw_loop.py ptbxl --seeds 3 --epochs 12
    python benchmarks/raw_loop.py ptbxl --recipes experiments/ptbxl_fusion.yaml:signal  # framework rows to add

The raw loops are what a user writes in ~50 lines: no Lightning, no callbacks, no early stopping; on
the GPU when there is one (fp32, the whole split held on the device), else the CPU.

* PneumoniaMNIST, image only: timm ``resnet18`` at 28 px from scratch (1 input channel), input
  standardised with the training mean/std, Adam 1e-3, step LR ×0.1 at 50 % and 75 % of the epochs,
  the checkpoint with the best validation AUROC tested (the loop in issue 16).
* PTB-XL, signal only: a plain 1-D CNN (4 blocks of conv k7 → BN → ReLU → max-pool 2, widths
  32-64-128-128, global average pool, linear), AdamW 1e-3 (weight decay 1e-2), the checkpoint with
  the best validation AUROC tested.

Both read their samples through the framework's data module (``MultimodalDataModule``) so the rows
are the same patients in the same split as the framework's (PneumoniaMNIST: a stratified 10 % of
official train as val, official val as the test stand-in, cross-split duplicates dropped; PTB-XL
development subset: folds 1-7 train, 8 val, 9 test, signals z-scored per lead on train). Only the
data comes from the package; training and evaluation are plain PyTorch and scikit-learn.

Framework rows (``--recipes FILE[:modality,...]``, default the shipped experiment for that data
set) are ``fit`` on the same split with ``trainer.max_epochs = --epochs`` (they may stop earlier:
early stopping is part of a recipe) and are tested once on their own chosen checkpoint. Every row
is mean ± sd over ``--seeds`` training seeds. Runs go to a throwaway MLflow store.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score  # noqa: E402
from torch import nn  # noqa: E402

from lightning_fusion.config import load_config  # noqa: E402
from lightning_fusion.data.datamodule import MultimodalDataModule  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
DATASETS = {  # data set → its folder under the data dir, the experiment that reads it, overrides, modality
    "pneumoniamnist": ("pneumoniamnist", "experiments/pneumoniamnist.yaml", {}, "image"),
    "ptbxl": (
        "ptbxl",
        "experiments/ptbxl_fusion.yaml",
        {"data.reader.train_folds": [1, 2, 3, 4, 5, 6, 7], "data.reader.val_folds": [8], "data.reader.test_folds": [9]},
        "signal",
    ),
}
METRICS = ("accuracy", "balanced_accuracy", "auroc")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the raw loops' (fp32); fit chooses its own


# -------------------------------------------------------------------------------------------------
# The raw loops
# -------------------------------------------------------------------------------------------------
def raw_image_loop(data: dict, seed: int, epochs: int, batch_size: int = 128, limit: int | None = None) -> dict:
    """timm resnet18, Adam 1e-3, step LR ×0.1 at 50 %/75 %, standardised input, best val AUROC tested."""
    torch.manual_seed(seed)
    x = {s: torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255) for s, (a, _) in data.items()}
    mean, std = x["train"].mean(), x["train"].std()
    x = {s: (v - mean) / std for s, v in x.items()}
    y = {s: torch.from_numpy(labels) for s, (_, labels) in data.items()}
    model = timm.create_model("resnet18", pretrained=False, num_classes=2, in_chans=x["train"].shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    milestones = [max(1, epochs // 2), max(1, int(epochs * 0.75))]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    return _train(model, optimizer, schedule, x, y, epochs, batch_size, limit)


class Plain1DCNN(nn.Module):
    """4 × (conv k7 → BN → ReLU → max-pool 2), global average pool, linear: ``(B, leads, T)`` → ``(B, 2)``."""

    def __init__(self, leads: int, widths: tuple[int, ...] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width_in, width in zip((leads, *widths), widths):
            layers += [nn.Conv1d(width_in, width, 7, padding=3, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
            layers.append(nn.MaxPool1d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(widths[-1], 2)

    def forward(self, signals: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(signals).mean(dim=2))


def raw_signal_loop(data: dict, seed: int, epochs: int, batch_size: int = 64, limit: int | None = None) -> dict:
    """A plain 1-D CNN, AdamW 1e-3 (weight decay 1e-2), constant LR, best val AUROC tested."""
    torch.manual_seed(seed)
    x = {s: torch.from_numpy(a).float() for s, (a, _) in data.items()}  # already z-scored per lead on train
    y = {s: torch.from_numpy(labels) for s, (_, labels) in data.items()}
    model = Plain1DCNN(x["train"].shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    return _train(model, optimizer, None, x, y, epochs, batch_size, limit)


def _train(model, optimizer, schedule, x, y, epochs, batch_size, limit) -> dict:
    """Shuffled mini-batches, cross-entropy; the state with the best val AUROC is tested once."""
    model.to(DEVICE)
    x, y = {s: v.to(DEVICE) for s, v in x.items()}, {s: v.to(DEVICE) for s, v in y.items()}
    best_auroc, best_state = -1.0, None
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y["train"]), device=DEVICE)
        for step, start in enumerate(range(0, len(order), batch_size)):
            if limit is not None and step >= limit:
                break
            rows = order[start : start + batch_size]
            loss = F.cross_entropy(model(x["train"][rows]), y["train"][rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if schedule is not None:
            schedule.step()
        val_auroc = roc_auc_score(y["val"].cpu().numpy(), _probabilities(model, x["val"]))
        if val_auroc > best_auroc:
            best_auroc, best_state = val_auroc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    probability = _probabilities(model, x["test"])
    truth = y["test"].cpu().numpy()
    predicted = (probability >= 0.5).astype(int)
    return {
        "accuracy": accuracy_score(truth, predicted),
        "balanced_accuracy": balanced_accuracy_score(truth, predicted),
        "auroc": roc_auc_score(truth, probability),
    }


@torch.no_grad()
def _probabilities(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    model.eval()
    chunks = [model(x[i : i + batch_size]).softmax(1)[:, 1] for i in range(0, len(x), batch_size)]
    return torch.cat(chunks).cpu().numpy()


RAW_LOOPS = {"image": raw_image_loop, "signal": raw_signal_loop}


# -------------------------------------------------------------------------------------------------
# The comparison
# -------------------------------------------------------------------------------------------------
def split_arrays(dataset: str, data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split → (model inputs, labels) of the data set's one raw-loop modality, as the framework splits it."""
    folder, experiment, overrides, modality = DATASETS[dataset]
    config = load_config(PROJECT / experiment, {**overrides, "data.root": str(data_dir / folder)})
    datamodule = MultimodalDataModule(config.data, [modality])
    datamodule.prepare_data()
    datamodule.setup("fit")
    return {s: (d.arrays[modality], d.labels) for s, d in datamodule.datasets.items()}


def framework_row(
    dataset: str, data_dir: Path, recipe: str, seed: int, epochs: int, store: str, limit: int | None = None
) -> dict:
    """One ``fit`` of ``FILE[:modality,...]`` on the same split; its test metrics."""
    from lightning_fusion.fit.run import fit

    path, _, modalities = recipe.partition(":")
    folder, _, overrides, modality = DATASETS[dataset]
    settings = {
        **overrides,
        "data.root": str(data_dir / folder),
        "model.modalities": modalities.split(",") if modalities else [modality],
        "seed": seed,
        "trainer.max_epochs": epochs,
        "tracking.tracking_uri": f"sqlite:///{store}/mlflow.db",
        "tracking.artifact_root": f"{store}/mlruns",
        "tracking.log_model": False,
        "evaluation.explain_patients": 0,
        "trainer.limit_train_batches": limit,
    }
    result = fit(load_config(PROJECT / path, settings))
    return {name: result.test_metrics[f"test/{name}"] for name in METRICS}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--recipes", nargs="*", default=None, help="framework rows: FILE[:modality,...]")
    parser.add_argument(
        "--no-raw-loop", action="store_true", help="framework rows only (rows to add to a table measured before)"
    )
    parser.add_argument("--limit-batches", type=int, default=None, help="training batches per epoch (tests)")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("LF_DATA_DIR", PROJECT.parent / "shared" / "data"))
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    _, experiment, _, modality = DATASETS[args.dataset]
    recipes = [experiment] if args.recipes is None else args.recipes
    arrays = split_arrays(args.dataset, args.data_dir)
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as store:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            raw = partial(RAW_LOOPS[modality], arrays, seed, args.epochs, limit=args.limit_batches)
            runs = {} if args.no_raw_loop else {f"raw loop ({modality})": raw}
            for recipe in recipes:
                runs[f"framework {recipe}"] = partial(
                    framework_row, args.dataset, args.data_dir, recipe, seed, args.epochs, store, args.limit_batches
                )
            for label, run in runs.items():
                start = time.perf_counter()
                scores = run() | {"seconds": time.perf_counter() - start}
                for name, value in scores.items():
                    rows.setdefault(label, {}).setdefault(name, []).append(float(value))
                print(f"{label} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
    sizes = ", ".join(f"{s} {len(labels)} ({int((labels == 1).sum())} positive)" for s, (_, labels) in arrays.items())
    table = "| model | test accuracy | test balanced acc. | test AUROC | s per run |\n|---|---|---|---|---|\n"
    for label, scores in rows.items():
        cells = [_mean_sd(scores[name]) for name in METRICS] + [_mean_sd(scores["seconds"], 0)]
        table += f"| {label} | " + " | ".join(cells) + " |\n"
    table += f"\n{args.seeds} seed(s), at most {args.epochs} epochs; {sizes}.\n"
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return table


def _mean_sd(values: list[float], digits: int = 3) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


if __name__ == "__main__":
    main()
