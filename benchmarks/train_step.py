"""Training-step throughput: cropdoc's product loop vs a textbook loop, side by side.

Targets 1-3 of issue 6. For each architecture and stage (1: head only, 3: everything) both
loops train ``steps`` batches of real photos at 224 px, batch 32, interleaved ``reps``
times; throughput counts steps 2..N (data + forward + backward + optimizer), so worker
start-up and first-call kernel selection are excluded from both alike.

* reference: what a textbook / the seed does: PIL decode + torchvision.transforms (v1)
  nine steps in DataLoader workers, fp32, NCHW, no autocast, ``model.train()``.
* ours: the product path: ``ImageDataset`` with the decoded cache + ``FastTrainAugment``,
  ``make_loader`` defaults, ``--precision auto`` (measured probe per stage, cached),
  channels_last, ``Trainer.setup_stage`` + ``Trainer.train_one_epoch``.

Also: a bf16 GEMM peak measured in the same run (target 2) and, for ours, the fraction of
step time spent waiting for data (target 3).

    python -m benchmarks.train_step --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms as T
from lightning_fabric import Fabric
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cropdoc.bundle import BundleMeta
from cropdoc.config import OptimConfig, StageConfig
from cropdoc.cpu import default_workers, torch_threads
from cropdoc.data.augment import build_fast_train_transform
from cropdoc.data.loaders import ImageDataset, make_loader
from cropdoc.models import apply_policy, build, get_arch
from cropdoc.preprocessing import Preprocessing
from cropdoc.training.precision import PrecisionPlan, probe_stage_precision, resolve_precision
from cropdoc.training.trainer import Trainer, cpu_threads

from .common import emit, machine, median, ratio, samples

STAGES = {1: ("head", 1e-3, None), 3: ("all", 5e-5, 1e-5)}
#: torch's own default intra-op threads: what a textbook loop runs with.
TEXTBOOK_THREADS = torch.get_num_threads()


class _Timed:
    """Wraps a loader; records when each batch was asked for and when it arrived."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.asked: list[float] = []
        self.got: list[float] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            self.asked.append(time.perf_counter())
            try:
                batch = next(it)
            except StopIteration:
                self.asked.pop()
                return
            self.got.append(time.perf_counter())
            yield batch


def _measure(run_epoch, timed: _Timed, batch: int) -> dict[str, float]:
    run_epoch()
    end = time.perf_counter()
    span = end - timed.got[1]
    waits = sum(g - a for a, g in zip(timed.asked[2:], timed.got[2:], strict=True))
    return {"images_per_s": (len(timed.got) - 1) * batch / span, "data_wait_frac": waits / span}


# ----------------------------------------------------------------------------- reference


class _PilDataset(Dataset):
    def __init__(self, items: list[tuple[Path, int]], transform: Any) -> None:
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def reference_transform(size: int) -> T.Compose:
    """The seed's nine steps with classic PIL torchvision.transforms."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.8, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(0.2),
            T.RandomRotation(20),
            T.ColorJitter(0.2, 0.2, 0.2, 0.05),
            T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.2),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            T.RandomErasing(p=0.1, scale=(0.02, 0.1)),
        ]
    )


class Reference:
    def __init__(self, arch: str, stage: int, items, size: int, batch: int, workers: int):
        spec = get_arch(arch)
        self.model = build(arch, classes=12, weights="none")
        apply_policy(self.model, spec, STAGES[stage][0])
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=STAGES[stage][1], weight_decay=1e-4)
        self.loss = nn.CrossEntropyLoss(label_smoothing=0.1)
        ds = _PilDataset(items, reference_transform(size))
        self.loader = DataLoader(
            ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers
        )
        self.batch = batch

    def run(self) -> dict[str, float]:
        torch.set_num_threads(TEXTBOOK_THREADS)  # ours may have changed the split
        timed = _Timed(self.loader)

        def epoch() -> None:
            self.model.train()
            for x, y in timed:
                loss = self.loss(self.model(x), y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.opt.step()

        return _measure(epoch, timed, self.batch)


# ----------------------------------------------------------------------------- ours


def product_precision(arch: str, size: int, stage: int) -> str:
    """What ``--precision auto`` picks here for this arch and stage (the cached probe)."""

    def probe() -> str:
        return probe_stage_precision(arch, STAGES[stage][0], image_size=size, freeze_bn_stats=True)

    return resolve_precision("auto", "cpu", probe=probe)


class Ours:
    def __init__(self, arch, stage, dataset, size, batch, precision, workdir: Path):
        spec = get_arch(arch)
        # As the product does with --precision auto: Fabric in fp32, bf16 autocast per stage.
        self.fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
        model = build(arch, classes=12, weights="none").to(memory_format=torch.channels_last)
        meta = BundleMeta(
            arch=arch,
            classes=[str(i) for i in range(12)],
            preprocessing=Preprocessing.for_size(size, mean=spec.mean, std=spec.std),
        )
        self.trainer = Trainer(
            self.fabric,
            model,
            spec,
            optim=OptimConfig(),
            run_dir=workdir,
            meta=meta,
            freeze_bn_stats=True,  # the pretrained case: frozen BN layers in eval mode
            show_progress=False,
            precision=PrecisionPlan(fabric="32-true", by_stage={f"s{stage}": precision}),
        )
        trainable, lr, backbone_lr = STAGES[stage]
        stage_cfg = StageConfig(
            name=f"s{stage}", epochs=1, trainable=trainable, lr=lr, backbone_lr=backbone_lr
        )
        loader = make_loader(dataset, batch_size=batch, train=True)
        self.loader = self.fabric.setup_dataloaders(loader)
        self.trainer.setup_stage(stage_cfg, 0, steps_per_epoch=len(self.loader))
        self.batch = batch
        # The compute threads Trainer.fit runs this stage with.
        self.threads = cpu_threads(self.fabric, self.loader, spec.gflops_224 * (size / 224) ** 2)

    def run(self) -> dict[str, float]:
        timed = _Timed(self.loader)
        with torch_threads(self.threads):
            return _measure(lambda: self.trainer.train_one_epoch(timed, "bench"), timed, self.batch)


# ----------------------------------------------------------------------------- peak


def gemm_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    """bf16 matrix-multiply rate (GFLOP/s) on every core (torch's default threads).

    2048 is the fastest of 1024/2048/4096 measured here (2 cores: 1246/2021/1632 GFLOP/s).
    """
    torch.set_num_threads(TEXTBOOK_THREADS)
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times) / 1e9


# ----------------------------------------------------------------------------- main


def run(
    archs: list[str],
    stages: list[int],
    steps: dict[str, int],
    reps: dict[str, int],
    size: int,
    batch: int,
) -> dict[str, Any]:
    workers = default_workers()
    rows = []
    extra: dict[str, Any] = {"workers": workers, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="cropdoc-bench-") as tmp:
        for arch in archs:
            n = steps[arch]
            items = samples(n * batch)
            t = time.perf_counter()
            dataset = ImageDataset(
                items,
                build_fast_train_transform(size),
                cache_short_side=round(size * 1.14),
            )
            cache_s = time.perf_counter() - t
            for stage in stages:
                precision = product_precision(arch, size, stage)
                ref = Reference(arch, stage, items, size, batch, workers)
                ours = Ours(arch, stage, dataset, size, batch, precision, Path(tmp))
                r_runs, o_runs = [], []
                for _ in range(reps[arch]):  # interleaved: the machine's load hits both alike
                    r_runs.append(ref.run())
                    o_runs.append(ours.run())
                ref_ips = median([r["images_per_s"] for r in r_runs])
                our_ips = median([o["images_per_s"] for o in o_runs])
                row = {
                    "arch": arch,
                    "stage": stage,
                    "precision": precision,
                    "steps": n,
                    "reps": reps[arch],
                    "ours_images_per_s": our_ips,
                    "reference_images_per_s": ref_ips,
                    "ratio": ratio(our_ips, ref_ips),
                    "ours_data_wait_frac": median([o["data_wait_frac"] for o in o_runs]),
                    "reference_data_wait_frac": median([r["data_wait_frac"] for r in r_runs]),
                    "cache_build_s": cache_s,
                    "runs": {"ours": o_runs, "reference": r_runs},
                }
                if stage == 3:
                    peak = gemm_peak_gflops()
                    # Training ~ 3 forward passes; forward GFLOPs from the registry.
                    achieved = our_ips * 3 * get_arch(arch).gflops_224 * (size / 224) ** 2
                    row.update(
                        bf16_gemm_peak_gflops=peak,
                        achieved_gflops=achieved,
                        share_of_peak=achieved / peak,
                    )
                rows.append(row)
                print(
                    f"# {arch} stage {stage}: ours {our_ips:.1f} ref {ref_ips:.1f} img/s",
                    file=__import__("sys").stderr,
                    flush=True,
                )
                del ref, ours
    return {"benchmark": "train_step", "image_size": size, "batch": batch, **extra, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    p.add_argument("--archs", default="mobilenet_v3_small,efficientnet_b0,resnet50")
    p.add_argument("--stages", default="1,3")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    steps = (
        {"mobilenet_v3_small": 8, "efficientnet_b0": 4, "resnet50": 4}
        if args.quick
        else {"mobilenet_v3_small": 20, "efficientnet_b0": 8, "resnet50": 5}
    )
    # Quick: two interleaved pairs per case (about 6 minutes on 2 idle cores).
    quick_reps = {"mobilenet_v3_small": 2, "efficientnet_b0": 2, "resnet50": 2}
    reps = {a: args.reps or (quick_reps.get(a, 1) if args.quick else 3) for a in steps}
    result = run(
        args.archs.split(","),
        [int(s) for s in args.stages.split(",")],
        steps,
        reps,
        args.image_size,
        args.batch,
    )
    result["machine"] = machine()
    emit(result)
    return result


if __name__ == "__main__":
    main()
