"""cropdoc at dataset scale: scan, split, decoded cache and training throughput at N images.

For each size N (default 1k, 10k, 50k) a child process generates N images from the real
PlantVillage sample (each a byte-unique copy of a real leaf: the JPEG bytes with a unique
trailer after the end-of-image marker, which decoders ignore, so nothing is re-encoded and
no file is a duplicate of another), then measures, in the product's own code paths:

* first read: every file read once (a thread per core), untimed by the scan: what the disk
  costs when the files are not in the page cache (a fresh download; measured as it finds
  them, not forced cold);
* scan: ``scan_folder`` seconds and images/s on the page-cached files, against plain JPEG
  decoding of the same files on all cores (a thread per core, ``images.load_tensor``),
  both warm, so the ratio compares the scan's own work (read, hash, validate) with
  decoding; its target is >= 80 % of that decode rate;
* split: ``make_split`` seconds;
* cache: building the train and val datasets with the decoded cache (``data.cache auto``:
  RAM when it fits 2 GiB, else the memory-mapped file in a run's ``cache/``), its size and
  where it went;
* training: MobileNetV3-Small, every layer trainable (stage 3, the recipe's longest),
  through ``make_loader``, Fabric and the product's CPU split (``cpu_threads``): a first
  pass and a steady pass of ``--steps`` batches (or a whole epoch, whichever is fewer),
  images/s and the share of step time spent waiting for data;
* memory: the peak of the process and its loader workers, sampled every 0.2 s from
  /proc: RSS, and its anonymous part (what the process really owns; RSS also counts pages
  of the memory-mapped cache, which the OS reclaims), plus ``ru_maxrss``.

Each size runs in its own process, so one size's peak is not another's. Numbers depend on
the machine and its load: run on an idle machine.

    python -m benchmarks.scale                      # 1k, 10k, 50k (~1 h on 2 cores)
    python -m benchmarks.scale --sizes 1000 --steps 20 --work /tmp/scale   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import DATA, emit, machine

SIZES = (1_000, 10_000, 50_000)


# ----------------------------------------------------------------------------- data
def generate(root: Path, n: int) -> Path:
    """``n`` byte-unique real leaves in ``root/<class>/`` (reused when already there)."""
    from .common import samples

    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == str(n):
        return root
    classes = sorted(d.name for d in DATA.iterdir() if d.is_dir())
    items = samples()
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path, label = items[i % len(items)]
        data = path.read_bytes() + f"cropdoc-scale-{i}".encode()
        (root / classes[label] / f"{i:06d}___gen {i}.jpg").write_bytes(data)
    marker.write_text(str(n))
    return root


# ----------------------------------------------------------------------------- memory
def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return kids


class PeakMemory:
    """Samples this process and its children every 0.2 s; keeps the peak sums."""

    def __init__(self) -> None:
        self.peak = {"rss": 0, "anon": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            rss = anon = 0
            for pid in (me, *_children(me)):
                s = _status(pid)
                rss += s.get("VmRSS", 0)
                anon += s.get("RssAnon", 0)
            self.peak["rss"] = max(self.peak["rss"], rss)
            self.peak["anon"] = max(self.peak["anon"], anon)
            self._stop.wait(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------- measures
def read_all(root: Path) -> tuple[float, int]:
    """Seconds and bytes to read every file under ``root`` once, a thread per core."""
    from cropdoc.cpu import usable_cpus

    files = [p for p in root.rglob("*") if p.is_file()]
    t = time.perf_counter()
    with ThreadPoolExecutor(usable_cpus()) as pool:
        total = sum(pool.map(lambda p: len(p.read_bytes()), files))
    return time.perf_counter() - t, total


def decode_rate(paths: list[Path]) -> float:
    """Images/s of plain decoding on all cores (one thread per core)."""
    from cropdoc.cpu import usable_cpus
    from cropdoc.data.images import load_tensor

    t = time.perf_counter()
    with ThreadPoolExecutor(usable_cpus()) as pool:
        for _ in pool.map(load_tensor, paths):
            pass
    return len(paths) / (time.perf_counter() - t)


def _pass(model, loader, opt, loss_fn, steps: int, threads: int | None) -> dict[str, float]:
    """``steps`` training steps; images/s over steps 2..N and the data-wait share."""
    import torch

    from cropdoc.cpu import torch_threads

    model.train()
    asked, got, ends = [], [], []
    it = iter(loader)
    with torch_threads(threads):
        for _ in range(steps):
            asked.append(time.perf_counter())
            try:
                x, y = next(it)
            except StopIteration:
                asked.pop()
                break
            got.append(time.perf_counter())
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ends.append(time.perf_counter())
    del it
    if len(got) < 2:
        return {"steps": len(got), "images_per_s": float("nan"), "data_wait_frac": float("nan")}
    span = ends[-1] - ends[0]
    waits = sum(g - a for a, g in zip(asked[1:], got[1:], strict=True))
    batch = loader.batch_size if hasattr(loader, "batch_size") else x.shape[0]
    return {
        "steps": len(got),
        "images_per_s": (len(got) - 1) * batch / span,
        "data_wait_frac": waits / span,
    }


def one_size(
    n: int, work: Path, steps: int, size: int, batch: int, cache: str = "auto"
) -> dict[str, Any]:
    """Every measure at ``n`` images (run in a child process of its own)."""
    import torch
    from lightning_fabric import Fabric

    from cropdoc.data.augment import build_fast_train_transform
    from cropdoc.data.loaders import ImageDataset, make_loader
    from cropdoc.data.scan import scan_folder
    from cropdoc.data.split import make_split
    from cropdoc.data.transforms import build_eval_transform
    from cropdoc.models import build, get_arch
    from cropdoc.preprocessing import Preprocessing
    from cropdoc.training.trainer import cpu_threads

    row: dict[str, Any] = {"images": n}
    t = time.perf_counter()
    root = generate(work / f"data-{n}", n)
    row["generate_s"] = round(time.perf_counter() - t, 2)
    with PeakMemory() as memory:
        read_s, nbytes = read_all(root)
        row["first_read_s"] = round(read_s, 2)
        row["first_read_mb_per_s"] = round(nbytes / 1e6 / read_s, 1)
        t = time.perf_counter()
        report = scan_folder(root)
        scan_s = time.perf_counter() - t
        paths = [s.path for s in report.samples]
        row["scan_s"] = round(scan_s, 2)
        row["scan_images_per_s"] = round(len(paths) / scan_s, 1)
        sample = paths[:: max(1, len(paths) // 2000)]
        decode = decode_rate(sample)
        row["decode_images_per_s_all_cores"] = round(decode, 1)
        row["scan_vs_decode"] = round(len(paths) / scan_s / decode, 3)

        t = time.perf_counter()
        manifest = make_split(report)
        row["split_s"] = round(time.perf_counter() - t, 2)

        arch = "mobilenet_v3_small"
        spec = get_arch(arch)
        pre = Preprocessing.for_size(size, mean=spec.mean, std=spec.std)
        run_dir = work / f"run-{n}"
        t = time.perf_counter()
        datasets = {
            s: ImageDataset(
                manifest.samples(s),
                build_fast_train_transform(size) if s == "train" else build_eval_transform(pre),
                cache_short_side=pre.resize_size,
                cache_dir=run_dir / "cache",
                cache_storage=cache,  # type: ignore[arg-type]
            )
            for s in ("train", "val")
        }
        row["cache_build_s"] = round(time.perf_counter() - t, 2)
        caches = [d.cache for d in datasets.values() if d.cache is not None]
        row["cache_mib"] = round(sum(c.nbytes for c in caches) / 2**20, 1)
        row["cache_images"] = sum(c.cached for c in caches)
        row["cache_where"] = sorted({"disk" if c.file else "ram" for c in caches})

        fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
        model = build(arch, classes=len(manifest.classes), weights="none")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
        model, opt = fabric.setup(model, opt)
        loader = fabric.setup_dataloaders(
            make_loader(datasets["train"], batch_size=batch, train=True)
        )
        threads = cpu_threads(fabric, loader, spec.gflops_224 * (size / 224) ** 2)
        n_steps = min(steps, len(loader))
        row["workers"] = loader._dataloader.num_workers if hasattr(loader, "_dataloader") else None
        row["compute_threads"] = threads
        row["first_pass"] = _pass(model, loader, opt, loss_fn, n_steps, threads)
        row["steady_pass"] = _pass(model, loader, opt, loss_fn, n_steps, threads)
    row["peak_rss_mib"] = round(memory.peak["rss"] / 2**20, 1)
    row["peak_anon_mib"] = round(memory.peak["anon"] / 2**20, 1)
    row["ru_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    row["ru_maxrss_children_mib"] = round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
    )
    return row


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    parser.add_argument("--steps", type=int, default=200, help="training steps per pass")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=None, help="keep data and caches here")
    parser.add_argument(
        "--cache", choices=("auto", "ram", "disk"), default="auto", help="data.cache to use"
    )
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:  # the child: one size, one JSON line
        row = one_size(
            args.one, args.work, args.steps, args.image_size, args.batch_size, args.cache
        )
        print(json.dumps(row), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="cropdoc-scale-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for n in sizes:
            cmd = [sys.executable, "-m", "benchmarks.scale", "--one", str(n), "--work", str(work)]
            cmd += ["--steps", str(args.steps), "--image-size", str(args.image_size)]
            cmd += ["--batch-size", str(args.batch_size), "--cache", args.cache]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"size {n} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    emit(
        {
            "benchmark": "scale",
            "machine": machine(),
            "settings": {
                "arch": "mobilenet_v3_small",
                "trainable": "all",
                "image_size": args.image_size,
                "batch_size": args.batch_size,
                "steps_per_pass": args.steps,
                "cache": args.cache,
            },
            "rows": rows,
        }
    )


if __name__ == "__main__":
    main()
