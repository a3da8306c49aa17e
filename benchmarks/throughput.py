"""Training throughput: a raw PyTorch loop against the framework's path, same model, data and settings.

    python benchmarks/throughput.py                  # on the GPU: ResNet-50 at 224 px and the demo fusion
    python benchmarks/throughput.py --ablate         # also one row per fast-path step (framework path)
    python benchmarks/throughput.py --cpu --tiny     # on the CPU at small sizes

For each workload, side by side in one process and alternating ``--repeats`` times:

(a) a raw PyTorch loop: a ``DataLoader``, the model, AdamW, cross-entropy with the same class
    weights, the same precision (bf16 autocast on a GPU that has it, fp32 otherwise), the same
    augmentation (the package's albumentations pipeline per sample, or its whole-batch device
    augmentation, as the framework's resolved ``data.pipeline``), the same loader workers, pinning,
    ``channels_last``, ``cudnn.benchmark`` and ``torch.compile``;
(b) the framework: ``MultimodalDataModule`` + ``FusionLitModule`` + the Trainer of ``fit``
    (``lightning_fusion.fit.trainer.build_trainer``, with its checkpoint, early-stopping and LR
    callbacks); MLflow is off for this measurement (a logger that records nothing), since a run's
    artifacts are written after training anyway.

Images/s are training images per second over ``--steps`` steps after ``--warmup`` steps (data
loading, transfer, augmentation, forward, backward and optimiser step; the device synchronised at
both ends); the ratio is (b)/(a) of the medians. "loader only" times the framework's training
loader alone (batches fetched, moved to the device and finished there, no model). Peak GPU memory
is ``torch.cuda.max_memory_allocated`` per run.

Data: synthetic ``uint8`` images held in memory (a pool of distinct random images, repeated), read
through a reader registered here, so the framework's data module runs as on real data but no file
is decoded: this measures training throughput, not JPEG decoding. Workloads: ``resnet50`` (timm
ResNet-50, 3 channels; the raw loop uses ``timm.create_model`` with its own classifier, the framework
adds its 64-unit head: < 0.01 % of the compute) and ``fusion`` (the demo model: 9-channel image
stack through a 1x1 conv and resnet10t, a 45-feature table through an MLP, concatenated).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.loggers import Logger  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from lightning_fusion.cli import quiet_other_libraries  # noqa: E402
from lightning_fusion.config import load_config  # noqa: E402
from lightning_fusion.data.batch_transforms import BatchAugment  # noqa: E402
from lightning_fusion.data.cohort import Cohort  # noqa: E402
from lightning_fusion.data.datamodule import MultimodalDataModule  # noqa: E402
from lightning_fusion.data.modalities import TableModality  # noqa: E402
from lightning_fusion.data.readers.base import FolderReader  # noqa: E402
from lightning_fusion.data.readers.registry import READERS  # noqa: E402
from lightning_fusion.data.transforms import build_augmentation  # noqa: E402
from lightning_fusion.fit.trainer import auto_precision, build_trainer  # noqa: E402
from lightning_fusion.lit import FusionLitModule  # noqa: E402
from lightning_fusion.models import build_model  # noqa: E402

ANCHORS = (
    "anchors: NVIDIA DeepLearningExamples ResNet-50 AMP, one A100 ~ 2,500 img/s; "
    "MLPerf-class H100 ~ 7,000 img/s per GPU (DALI, tuned); goal here on one H100/H200: >= 3,500 img/s, ratio >= 0.95"
)


# --------------------------------------------------------------------------------------------------
# Synthetic data through a reader, so the framework's data module runs as on real data
# --------------------------------------------------------------------------------------------------
@dataclass
class SyntheticConfig:
    """In-memory synthetic cohort: ``train``/``val``/``test`` samples of random ``uint8`` images (+ a table)."""

    train: int = 256
    val: int = 32
    test: int = 32
    image_size: int = 64
    channels: int = 3
    features: int = 0  # columns of a numeric table modality ("tabular"); 0: images only
    classes: int = 2
    distinct: int = 256  # distinct random images, repeated to fill the splits
    seed: int = 0


class SyntheticImages:
    """An image source over one ``(N, H, W, C)`` ``uint8`` array."""

    kind = "image"

    def __init__(self, ids: list[str], images: np.ndarray) -> None:
        self.row = {pid: i for i, pid in enumerate(ids)}
        self.images = images

    @property
    def patient_ids(self) -> set[str]:
        return set(self.row)

    def load_many(self, patient_ids: list[str], image_size: int) -> np.ndarray:
        if self.images.shape[1] != image_size:
            raise ValueError(f"synthetic images are {self.images.shape[1]} px, data.image_size is {image_size}")
        return self.images[[self.row[pid] for pid in patient_ids]]


@READERS.register("bench_synthetic", config=SyntheticConfig)
class SyntheticReader(FolderReader):
    def read(self, root: Path | None) -> Cohort:
        o = self.options
        n = o.train + o.val + o.test
        ids = [f"s{i:07d}" for i in range(n)]
        rng = np.random.default_rng(o.seed)
        labels = np.arange(n) % o.classes  # every class in every split
        pool = rng.integers(0, 256, (min(n, o.distinct), o.image_size, o.image_size, o.channels), dtype=np.uint8)
        modalities: dict[str, Any] = {"image": SyntheticImages(ids, pool[np.arange(n) % len(pool)])}
        if o.features:
            table = pd.DataFrame(
                rng.normal(size=(n, o.features)), index=ids, columns=[f"f{j}" for j in range(o.features)]
            )
            modalities["tabular"] = TableModality(table, "synthetic table")
        classes = [f"class{k}" for k in range(o.classes)]
        return Cohort(
            name="synthetic",
            classes=classes,
            labels=pd.Series([classes[k] for k in labels], index=ids),
            modalities=modalities,
            splits=pd.Series(["train"] * o.train + ["val"] * o.val + ["test"] * o.test, index=ids),
        )


# --------------------------------------------------------------------------------------------------
# Workloads and sizes
# --------------------------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    backbone: str
    image_size: int
    channels: int
    features: int
    batch_size: int

    def describe(self) -> str:
        table = f" + {self.features}-feature table" if self.features else ""
        return f"{self.name}: timm {self.backbone}, {self.image_size} px, {self.channels} channels{table}"


def workloads(args: argparse.Namespace) -> list[Workload]:
    gpu = not args.cpu
    size = args.image_size or (224 if gpu and not args.tiny else 64)
    chosen = []
    if args.workload in ("resnet50", "all"):
        batch = args.batch_size or (256 if gpu and not args.tiny else 16)
        chosen.append(Workload("resnet50", args.backbone or "resnet50", size, 3, 0, batch))
    if args.workload in ("fusion", "all"):
        batch = args.batch_size or (256 if gpu and not args.tiny else 32)
        fusion_size = args.image_size or 64  # the demo's size
        chosen.append(Workload("fusion", args.fusion_backbone or "resnet10t", fusion_size, 9, 45, batch))
    return chosen


def config_for(workload: Workload, args: argparse.Namespace, train: int, extra: dict[str, Any]) -> Any:
    """The framework's experiment config for a workload (the demo's defaults otherwise)."""
    overrides: dict[str, Any] = {
        "name": f"throughput-{workload.name}",
        "data.reader": {
            "name": "bench_synthetic",
            "train": train,
            "val": workload.batch_size,
            "test": workload.batch_size,
            "image_size": workload.image_size,
            "channels": workload.channels,
            "features": workload.features,
            "distinct": min(train, 512),
        },
        "data.image_size": workload.image_size,
        "data.batch_size": workload.batch_size,
        "model.modalities": ["image", "tabular"] if workload.features else ["image"],
        "model.encoders.image.backbone": workload.backbone,
        "trainer.max_epochs": 1,
        "trainer.accelerator": "cpu" if args.cpu else "gpu",
        "trainer.devices": 1,
        "trainer.compile": bool(args.compile),
        "evaluation.explain_patients": 0,
    }
    return load_config(None, overrides | extra)


# --------------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


class WindowTimer(Callback):
    """Times training steps ``warmup .. warmup + steps - 1`` (device synchronised at both ends)."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.seconds = math.nan
        self._start = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            synchronize(self.device)
            self._start = time.perf_counter()
        elif batch_idx == self.warmup + self.steps - 1:
            synchronize(self.device)
            self.seconds = time.perf_counter() - self._start


class NoLogger(Logger):
    """MLflow off for the measurement: a logger that records nothing (the Trainer's LR monitor needs one)."""

    @property
    def name(self) -> str:
        return "none"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# (b) the framework's path
# --------------------------------------------------------------------------------------------------
def framework_run(config: Any, datamodule: MultimodalDataModule, device: torch.device, warmup: int, steps: int) -> dict:
    L.seed_everything(config.seed, workers=True)
    datamodule.config = config.data  # the data module is shared between runs; loader options change
    specs = {m: {"kind": s.kind, "shape": list(s.shape)} for m, s in datamodule.specs.items()}
    module = FusionLitModule(config, specs, datamodule.classes, datamodule.class_weights)
    timer = WindowTimer(warmup, steps, device)
    reset_peak(device)
    with tempfile.TemporaryDirectory() as checkpoints:
        trainer, _ = build_trainer(config.trainer, NoLogger(), Path(checkpoints), config.model, [timer])
        trainer.fit(module, datamodule=datamodule)
        peak = peak_mib(device)
        loader = loader_only(datamodule, module, device, warmup, steps)
        settings = datamodule.loader_settings()
    return {
        "img_s": steps * config.data.batch_size / timer.seconds,
        "peak_mib": peak,
        "loader_img_s": loader,
        "settings": {
            "pipeline": settings.pipeline,
            "num_workers": settings.num_workers,
            "pin_memory": settings.pin_memory,
            "channels_last": module.channels_last,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "compile": bool(config.trainer.compile),
            "precision": auto_precision(config.trainer),
        },
    }


def loader_only(
    datamodule: MultimodalDataModule, module: FusionLitModule, device: torch.device, warmup: int, steps: int
) -> float:
    """Images/s of the framework's training loader: fetched, moved to the device and finished there (no model)."""
    from lightning.fabric.utilities.apply_func import move_data_to_device

    loader = datamodule.train_dataloader()
    module.to(device)
    count, start = 0, 0.0
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i == warmup:
                synchronize(device)
                start, count = time.perf_counter(), 0
            batch = module.finish_batch(move_data_to_device(batch, device), augment=True)
            count += len(batch["label"])
            if i == warmup + steps - 1:
                break
    synchronize(device)
    return count / (time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------
# (a) the raw PyTorch loop
# --------------------------------------------------------------------------------------------------
class RawBatches(Dataset):
    """Whole batches gathered from the arrays (``__getitems__``); images stay uint8 ``(B, C, H, W)``."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: np.ndarray) -> None:
        self.arrays, self.labels = arrays, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, rows):
        batch = {k: torch.from_numpy(v[rows]) for k, v in self.arrays.items()}
        batch["image"] = batch["image"].permute(0, 3, 1, 2)
        return batch, torch.from_numpy(self.labels[rows])


class RawSamples(Dataset):
    """One sample at a time: albumentations on the HWC uint8 image, then float CHW in [0, 1]."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: np.ndarray, augment: Any) -> None:
        self.arrays, self.labels, self.augment = arrays, labels, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        image = self.arrays["image"][i]
        if self.augment is not None:
            image = self.augment(image=image)["image"]
        sample = {k: torch.tensor(v[i], dtype=torch.float32) for k, v in self.arrays.items() if k != "image"}
        sample["image"] = torch.from_numpy(image.transpose(2, 0, 1).copy()).float().div_(255.0)
        return sample, torch.tensor(self.labels[i])


def first(batch):
    return batch


def raw_run(
    config: Any,
    datamodule: MultimodalDataModule,
    settings: dict,
    workload: Workload,
    device: torch.device,
    warmup: int,
    steps: int,
) -> dict:
    """The same training as the framework's, written as a plain loop with the framework's resolved settings."""
    L.seed_everything(config.seed, workers=True)
    train = datamodule.datasets["train"]
    arrays, labels = train.arrays, train.labels
    classes = len(datamodule.classes)
    if workload.features:  # the fusion has no plain-timm equivalent: the same network, outside Lightning
        specs = {m: datamodule.specs[m] for m in config.model.modalities}
        model = build_model(config.model, specs, classes)
        forward = model
    else:
        model = timm.create_model(workload.backbone, num_classes=classes, in_chans=workload.channels)
        mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

        def forward(batch):
            return model((batch["image"] - mean) / std)

    model.to(device).train()
    channels_last = settings["channels_last"]
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if settings["compile"]:
        model.compile()
    torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
    weight = torch.tensor(datamodule.class_weights, device=device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    device_pipeline = settings["pipeline"] == "device"
    augment = BatchAugment(config.data.augment) if config.data.augment.enabled else None
    dataset = (
        RawBatches(arrays, labels)
        if device_pipeline
        else RawSamples(arrays, labels, build_augmentation(config.data.augment))
    )
    workers = settings["num_workers"]
    loader = DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=settings["pin_memory"],
        collate_fn=first if device_pipeline else None,
    )
    bf16 = settings["precision"].startswith("bf16")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    reset_peak(device)
    start = 0.0
    for step, (batch, target) in enumerate(loader):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        target = target.to(device, non_blocking=True)
        images = batch["image"]
        if device_pipeline:
            images = images.float().div_(255.0)
            if augment is not None:
                images = augment(images)
        batch["image"] = images.contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(batch)
        loss = F.cross_entropy(logits.float(), target, weight=weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step == warmup + steps - 1:
            break
    synchronize(device)
    seconds = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise FloatingPointError("the raw loop's loss is not finite")
    return {"img_s": steps * config.data.batch_size / seconds, "peak_mib": peak_mib(device)}


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------
ABLATION = (  # cumulative: each row adds one step to the row above, from the path as it was before
    (
        "as before: per-sample, 0 workers",
        {
            "data.pipeline": "per_sample",
            "data.num_workers": 0,
            "data.pin_memory": False,
            "trainer.channels_last": False,
            "trainer.cudnn_benchmark": False,
        },
    ),
    ("+ device pipeline", {"data.pipeline": "device"}),
    ("+ num_workers auto", {"data.num_workers": "auto"}),
    ("+ pinned memory", {"data.pin_memory": None}),
    ("+ channels_last", {"trainer.channels_last": True}),
    ("+ cudnn.benchmark", {"trainer.cudnn_benchmark": None}),
    ("+ torch.compile", {"trainer.compile": True}),
)


def measure(workload: Workload, args: argparse.Namespace, device: torch.device) -> dict:
    train = (args.warmup + args.steps) * workload.batch_size
    base = config_for(workload, args, train, {})
    datamodule = MultimodalDataModule(base.data, base.model.modalities)
    datamodule.prepare_data()
    datamodule.setup("fit")
    raws, frames = [], []
    for _ in range(args.repeats):  # alternate, so a change in machine load hits both alike
        frame = framework_run(base, datamodule, device, args.warmup, args.steps)
        frames.append(frame)
        raws.append(raw_run(base, datamodule, frame["settings"], workload, device, args.warmup, args.steps))
    result = {
        "workload": workload.name,
        "describe": workload.describe(),
        "batch_size": workload.batch_size,
        "train_images": train,
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "repeats": args.repeats,
        "raw_img_s": statistics.median(r["img_s"] for r in raws),
        "framework_img_s": statistics.median(f["img_s"] for f in frames),
        "loader_img_s": statistics.median(f["loader_img_s"] for f in frames),
        "raw_runs_img_s": [r["img_s"] for r in raws],
        "framework_runs_img_s": [f["img_s"] for f in frames],
        "raw_peak_gpu_mib": max((r["peak_mib"] or 0.0) for r in raws) if device.type == "cuda" else None,
        "framework_peak_gpu_mib": max((f["peak_mib"] or 0.0) for f in frames) if device.type == "cuda" else None,
        "settings": frames[-1]["settings"],
    }
    result["ratio"] = result["framework_img_s"] / result["raw_img_s"]
    if args.ablate:
        rows, changes = [], {}
        for label, change in ABLATION:
            changes |= change
            if change.get("trainer.compile") and device.type == "cpu" and not args.compile:
                rows.append({"step": label, "skipped": "CPU without --compile (inductor compiles for minutes)"})
                continue
            config = config_for(workload, args, train, changes)
            run = framework_run(config, datamodule, device, args.warmup, args.steps)
            rows.append(
                {"step": label, "img_s": run["img_s"], "peak_mib": run["peak_mib"], "settings": run["settings"]}
            )
        result["ablation"] = rows
    return result


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {
        "device": name,
        "torch": torch.__version__,
        "lightning": L.__version__,
        "timm": timm.__version__,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def report(results: list[dict], env: dict, device: torch.device) -> str:
    lines = [
        f"device: {env['device']} | torch {env['torch']} | lightning {env['lightning']} | timm {env['timm']} | "
        f"{env['cores']} cores, load {env['load_average_1min']:.1f} (1 min) at start",
        "MLflow off for this measurement (the framework's Trainer with a logger that records nothing); "
        "data: synthetic uint8 images in memory (no decoding)",
        ANCHORS,
        "",
        "| workload | batch | precision | raw loop img/s | framework img/s | ratio | loader only img/s "
        "| peak GPU MiB raw / framework |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        memory = (
            f"{r['raw_peak_gpu_mib']:.0f} / {r['framework_peak_gpu_mib']:.0f}" if device.type == "cuda" else "n/a (CPU)"
        )
        lines.append(
            f"| {r['describe']} | {r['batch_size']} | {r['settings']['precision']} | {r['raw_img_s']:.1f} | "
            f"{r['framework_img_s']:.1f} | {r['ratio']:.3f} | {r['loader_img_s']:.1f} | {memory} |"
        )
    lines.append("")
    for r in results:
        s = r["settings"]
        lines.append(
            f"{r['workload']}: {r['steps']} timed steps after {r['warmup_steps']} warm-up steps, median of "
            f"{r['repeats']} alternating runs (raw {', '.join(f'{v:.1f}' for v in r['raw_runs_img_s'])}; framework "
            f"{', '.join(f'{v:.1f}' for v in r['framework_runs_img_s'])}); settings: pipeline {s['pipeline']}, "
            f"{s['num_workers']} workers, pin_memory {s['pin_memory']}, channels_last {s['channels_last']}, "
            f"cudnn.benchmark {s['cudnn_benchmark']}, compile {s['compile']}"
        )
    for r in results:
        if "ablation" not in r:
            continue
        lines += [
            "",
            f"ablation, {r['workload']} (framework path; each row adds one step to the row above):",
            "",
            "| step | img/s | × first row | peak GPU MiB | resolved settings |",
            "|---|---|---|---|---|",
        ]
        first_rate = next((row["img_s"] for row in r["ablation"] if "img_s" in row), math.nan)
        for row in r["ablation"]:
            if "skipped" in row:
                lines.append(f"| {row['step']} | skipped: {row['skipped']} | | | |")
                continue
            s = row["settings"]
            shown = (
                f"{s['pipeline']}, {s['num_workers']} workers, pin {s['pin_memory']}, channels_last "
                f"{s['channels_last']}, cudnn.benchmark {s['cudnn_benchmark']}, compile {s['compile']}"
            )
            memory = f"{row['peak_mib']:.0f}" if row["peak_mib"] is not None else "n/a"
            lines.append(
                f"| {row['step']} | {row['img_s']:.1f} | {row['img_s'] / first_rate:.2f} | {memory} | {shown} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="train on the CPU (default: the GPU)")
    parser.add_argument(
        "--tiny", action="store_true", help="small sizes: 64 px, batch 16 (ResNet-50) / 32 (fusion), few steps"
    )
    parser.add_argument("--workload", choices=["resnet50", "fusion", "all"], default="all")
    parser.add_argument("--ablate", action="store_true", help="also one row per fast-path step (framework path)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile in the main comparison (and the CPU ablation)"
    )
    parser.add_argument("--steps", type=int, help="timed steps (default 50 on a GPU, 8 with --tiny)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 15 on a GPU, 2 with --tiny)")
    parser.add_argument(
        "--repeats", type=int, help="alternating raw/framework runs, medians reported (default 2, 3 with --tiny)"
    )
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--backbone", help="timm backbone of the resnet50 workload (default resnet50)")
    parser.add_argument("--fusion-backbone", help="timm backbone of the fusion workload (default resnet10t)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    quiet_other_libraries()  # Lightning's own deprecation warnings are not the reader's business
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: use --cpu (with --tiny for small sizes)")
    args.steps = args.steps or (8 if args.tiny or args.cpu else 50)
    args.warmup = args.warmup or (2 if args.tiny or args.cpu else 15)
    args.repeats = args.repeats or (3 if args.tiny or args.cpu else 2)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    quiet()
    device = torch.device("cpu" if args.cpu else "cuda")
    env = environment(device)
    results = [measure(w, args, device) for w in workloads(args)]
    text = report(results, env, device)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "environment": env,
                    "mlflow": "off",
                    "data": "synthetic uint8 in memory",
                    "anchors": ANCHORS,
                    "results": results,
                },
                indent=2,
            )
        )
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"# Throughput ({env['date']})\n\n{text}\n")
    return 0


def quiet() -> None:
    """Lightning's start-up lines and tips would bury the table."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fusion"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LearningRateMonitor.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")


if __name__ == "__main__":
    raise SystemExit(main())
