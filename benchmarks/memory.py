"""Memory of a fit as the dataset grows, with and without ``data.memory_map``, and per DDP rank.

    python benchmarks/memory.py --n 500                  # N and 4N images at 224 px, then 2-process DDP at N
    python benchmarks/memory.py --n 8 --image-size 32    # tiny (the test)

Each fit runs in a fresh process (``python benchmarks/memory.py --child ...``) on synthetic RGB PNG
files in class folders (the ``image_folders`` reader, ``test_resnet`` by default so that the model's
own memory stays small next to the data's): ``--train-batches`` training batches (10), validation
and test on all of their images, MLflow on (no model or checkpoint logged). Every split is decoded
(in memory, or into the memory map) whatever the number of training batches: this measures holding
a dataset, and reading part of it. A thread in that process samples ``/proc/self/status`` every 50 ms and
``/proc/self/smaps_rollup`` every 250 ms. Figures per process:

* peak RSS: ``VmHWM``, every page the process had mapped at once, its private memory *and* the
  file pages it mapped. A memory-mapped split's pages count here once they are read, although the
  kernel may drop them (clean page cache) whenever memory is short, and every process mapping the
  file maps the same pages;
* peak anonymous: the largest ``RssAnon`` sampled, the process's private memory: what must fit in RAM;
* PSS: proportional set size (``smaps_rollup``), each shared page divided among the processes that
  map it; and ``Shared_Clean``, the pages mapped by more than one process (e.g. by both DDP ranks).

Growth is 4N over N. The goal (issue 15): with the memory map, peak memory grows at most 10 % from
N to 4N images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

STATUS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")
ROLLUP_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Clean", "Private_Dirty", "Anonymous")


# --------------------------------------------------------------------------------------------------
# In the measured process
# --------------------------------------------------------------------------------------------------
def read_kib(path: str, fields: tuple[str, ...]) -> dict[str, int]:
    """``Field: N kB`` lines of a ``/proc`` file → ``{field: N}`` (empty when the file is not there)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in fields:
            values[name] = int(rest.split()[0])
    return values


class Sampler(threading.Thread):
    """Samples this process's memory until stopped: the largest ``RssAnon`` and the ``smaps_rollup`` at its
    largest ``Pss``."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stopped = threading.Event()
        self.peak_anon_kib = 0
        self.peak_rollup: dict[str, int] = {}
        self.samples = 0

    def run(self) -> None:
        tick = 0
        while not self.stopped.is_set():
            self.sample(rollup=tick % 5 == 0)
            tick += 1
            self.stopped.wait(0.05)

    def sample(self, rollup: bool = True) -> None:
        status = read_kib("/proc/self/status", STATUS_FIELDS)
        self.peak_anon_kib = max(self.peak_anon_kib, status.get("RssAnon", 0))
        self.samples += 1
        if rollup:
            found = read_kib("/proc/self/smaps_rollup", ROLLUP_FIELDS)
            if found.get("Pss", 0) >= self.peak_rollup.get("Pss", 0):
                self.peak_rollup = found


def child(out: Path, overrides: dict[str, Any]) -> int:
    """One fit in this process (and, under DDP, in the rank processes Lightning starts from the same
    command line); each writes ``<out stem>-rank<local rank>.json``."""
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fusion"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    from lightning_fusion.config import load_config
    from lightning_fusion.fit.run import fit

    result = fit(load_config(None, overrides))
    sampler.sample()
    sampler.stopped.set()
    sampler.join()
    status = read_kib("/proc/self/status", STATUS_FIELDS)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    record = {
        "rank": rank,
        "seconds": time.perf_counter() - start,
        "peak_rss_mib": status.get("VmHWM", 0) / 1024,
        "peak_anon_mib": sampler.peak_anon_kib / 1024,
        "at_peak_pss": {k: v / 1024 for k, v in sampler.peak_rollup.items()},  # MiB
        "samples": sampler.samples,
        "test_balanced_accuracy": (result.test_metrics or {}).get("test/balanced_accuracy") if rank == 0 else None,
    }
    out.with_name(f"{out.stem}-rank{rank}.json").write_text(json.dumps(record))
    return 0


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------
def make_images(folder: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` random RGB PNGs of ``size`` px in two class folders (``a``, ``b``), once."""
    import numpy as np
    from PIL import Image

    done = folder / ".complete"
    if done.exists():
        return folder
    rng = np.random.default_rng(seed)
    for i in range(count):
        target = folder / "ab"[i % 2] / f"img{i:06d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (size // 4 or 1, size // 4 or 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
        Image.fromarray(np.asarray(image) ^ rng.integers(0, 16, (size, size, 3), dtype=np.uint8)).save(
            target, compress_level=1
        )
    done.touch()
    return folder


def subset(source: Path, target: Path, count: int) -> Path:
    """The first ``count`` images of ``source`` (alternating classes) as symbolic links in ``target``."""
    names = sorted(p.relative_to(source) for p in source.glob("*/*.png"))
    names = sorted(names, key=lambda p: p.stem)[:count]
    for name in names:
        (target / name.parent).mkdir(parents=True, exist_ok=True)
        if not (target / name).exists():
            (target / name).symlink_to(source / name)
    return target


def overrides_for(args: argparse.Namespace, root: Path, work: Path, memory_map: bool, ddp: bool) -> dict:
    values = {
        "name": "memory-benchmark",
        "data.reader": {"name": "image_folders", "channels": 3},
        "data.root": str(root),
        "data.image_size": args.image_size,
        "data.batch_size": args.batch_size,
        "data.memory_map": memory_map,
        "model.modalities": ["image"],
        "model.encoders.image.backbone": args.backbone,
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": args.train_batches,
        "trainer.accelerator": "cpu",
        "evaluation.bootstrap_resamples": 1000,
        "evaluation.explain_patients": 0,
        "tracking.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "tracking.artifact_root": str(work / "mlruns"),
        "tracking.log_model": False,
        "tracking.log_checkpoint": False,
    }
    if ddp:
        values |= {"trainer.devices": 2, "trainer.strategy": "ddp"}
    return values


def measure(args: argparse.Namespace, work: Path, label: str, overrides: dict, processes: int) -> list[dict]:
    out = work / f"{label}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(out), json.dumps(overrides)]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print(f"  {label} ...", flush=True)
    with (work / f"{label}.log").open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, timeout=args.timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{label}: exit code {done.returncode}; {work / f'{label}.log'}:\n" + tail(work, label))
    records = [json.loads(out.with_name(f"{out.stem}-rank{r}.json").read_text()) for r in range(processes)]
    return [r | {"label": label} for r in records]


def tail(work: Path, label: str) -> str:
    return (work / f"{label}.log").read_text()[-3000:]


def growth(small: float, large: float) -> float:
    return (large / small - 1) * 100


def report(args: argparse.Namespace, results: dict, env: dict) -> str:
    n, size = args.n, args.image_size
    lines = [
        f"memory of a fit: {env['date']}, commit {env['commit']}, {env['cores']} cores, load {env['load']} "
        f"(1/5/15 min) at start; timm {args.backbone}, {size} px RGB PNGs, batch {args.batch_size}, "
        f"{args.train_batches} training batches, then all of validation and test",
        "",
        "| images | memory map | peak RSS MiB | peak anonymous MiB | PSS at peak MiB | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in results["single"].items():
        mapped, count = key
        lines.append(
            f"| {count} | {'on' if mapped else 'off'} | {row['peak_rss_mib']:.0f} | {row['peak_anon_mib']:.0f} | "
            f"{row['at_peak_pss'].get('Pss', float('nan')):.0f} | {row['seconds']:.0f} |"
        )
    lines += ["", f"growth from {n} to {4 * n} images:", ""]
    decoded = 4 * n * size * size * 3 / 2**20 - n * size * size * 3 / 2**20
    for mapped in (False, True):
        small, large = results["single"][(mapped, n)], results["single"][(mapped, 4 * n)]
        rss = growth(small["peak_rss_mib"], large["peak_rss_mib"])
        lines.append(
            f"- memory map {'on' if mapped else 'off'}: peak RSS {rss:+.1f} %"
            f" ({large['peak_rss_mib'] - small['peak_rss_mib']:+.0f} MiB), peak anonymous "
            f"{growth(small['peak_anon_mib'], large['peak_anon_mib']):+.1f} % "
            f"({large['peak_anon_mib'] - small['peak_anon_mib']:+.0f} MiB)"
        )
    lines.append(f"  (the {3 * n} added images are {decoded:.0f} MiB decoded)")
    if results.get("ddp"):
        lines += [
            "",
            f"2-process DDP (gloo) on {n} images against one process:",
            "",
            "| memory map | process | peak RSS MiB | peak anonymous MiB | PSS at peak MiB | shared clean MiB |",
            "|---|---|---|---|---|---|",
        ]
        for mapped in (False, True):
            one = results["single"][(mapped, n)]
            rows = [("one process", one)] + [(f"DDP rank {r['rank']}", r) for r in results["ddp"][mapped]]
            for name, row in rows:
                pss = row["at_peak_pss"]
                lines.append(
                    f"| {'on' if mapped else 'off'} | {name} | {row['peak_rss_mib']:.0f} | {row['peak_anon_mib']:.0f} "
                    f"| {pss.get('Pss', float('nan')):.0f} | {pss.get('Shared_Clean', float('nan')):.0f} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(Path(argv[1]), json.loads(argv[2]))
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=500, help="images of the smaller dataset (the larger has 4N)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument(
        "--train-batches", type=int, default=10, help="training batches per fit (all of val and test are evaluated)"
    )
    parser.add_argument("--no-ddp", action="store_true", help="leave out the 2-process DDP rows")
    parser.add_argument("--work", type=Path, help="images, caches and logs (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per fit")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if not Path("/proc/self/status").exists():
        parser.error("reads /proc/self/status: Linux only")
    work = (args.work or Path(tempfile.mkdtemp(prefix="memory_bench_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LF_CACHE_DIR"] = str(work / "cache")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit.stdout.strip() or "?",
        "cores": len(os.sched_getaffinity(0)),
        "load": " / ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    print(f"writing {4 * args.n} images of {args.image_size} px under {work}", flush=True)
    large = make_images(work / f"images-{4 * args.n}", 4 * args.n, args.image_size)
    small = subset(large, work / f"images-{args.n}", args.n)
    results: dict[str, Any] = {"single": {}, "ddp": {}}
    for mapped in (False, True):
        for count, root in ((args.n, small), (4 * args.n, large)):
            label = f"single-{'mapped' if mapped else 'in_memory'}-{count}"
            overrides = overrides_for(args, root, work, mapped, ddp=False)
            results["single"][(mapped, count)] = measure(args, work, label, overrides, 1)[0]
    if not args.no_ddp:
        for mapped in (False, True):
            label = f"ddp-{'mapped' if mapped else 'in_memory'}-{args.n}"
            results["ddp"][mapped] = measure(args, work, label, overrides_for(args, small, work, mapped, True), 2)
    text = report(args, results, env)
    print(text)
    if args.json:
        flat = {
            "environment": env,
            "single": [{"memory_map": m, "images": c} | r for (m, c), r in results["single"].items()],
            "ddp": [{"memory_map": m} | r for m, rows in results["ddp"].items() for r in rows],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(flat, indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"# Memory ({env['date']})\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
