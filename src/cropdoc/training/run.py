"""A training run: data → split → model → stages → bundle, curves and summary in a run dir.

This is the recipe runner: it executes the stages of :func:`resolve_stages` with one
:class:`Trainer`, and owns the run directory (``config.yaml``, ``scan_report.json``,
``split.json``, ``history.csv``, ``curves.png``, ``model/``, ``last.ckpt``,
``summary.json``). ``resume=True`` continues an interrupted run from ``last.ckpt``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from lightning_fabric import Fabric
from lightning_fabric.utilities.seed import seed_everything
from safetensors.torch import load_file

from ..bundle import BundleMeta, update_meta
from ..config import StageConfig, TrainConfig, load_config
from ..data.loaders import ImageDataset, build_fast_train_transform, class_weights, make_loader
from ..data.scan import ScanReport, scan_folder
from ..data.split import SplitManifest, make_split
from ..data.transforms import EVAL_RESIZE_RATIO, build_eval_transform
from ..errors import ConfigError, CropdocError, DataError
from ..io import atomic_write_json, atomic_write_text
from ..models import apply_policy, build, get_arch, set_train_mode
from .checkpoint import load_checkpoint
from .curves import plot_curves
from .early_stopping import EarlyStopping
from .precision import cpu_probe_applies, probe_cpu_precision, resolve_precision
from .recipe import resolve_stages
from .trainer import EpochStats, Trainer, evaluate

__all__ = ["TrainResult", "train"]

_logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run reports; also written to ``summary.json``."""

    run_dir: Path
    bundle_dir: Path
    curves: Path
    arch: str
    best_val_f1: float
    best: dict[str, Any]
    test: dict[str, float]
    epochs_run: int
    elapsed_s: float
    precision: str
    stages: list[dict[str, Any]] = field(default_factory=list)
    model: torch.nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        for k in ("run_dir", "bundle_dir", "curves"):
            d[k] = str(d[k])
        return d


def _prepare_data(
    fabric: Fabric,
    data: Path,
    run_dir: Path,
    config: TrainConfig,
    resume: bool,
    scan_progress: Callable[[int, int], None] | None,
) -> SplitManifest:
    """Scan and split on rank zero (or reload a resumed run's split), then share it."""
    split_path = run_dir / "split.json"
    with fabric.rank_zero_first(local=False):
        if resume or not fabric.is_global_zero:
            return SplitManifest.load(split_path)
        report: ScanReport = scan_folder(
            data,
            classes=config.data.classes,
            max_pixels=config.data.max_pixels,
            progress=scan_progress,
        )
        if report.bad_files:
            _logger.warning(
                "%d bad file(s) excluded (see %s): %s",
                len(report.bad_files),
                run_dir / "scan_report.json",
                "; ".join(f"{b.path.name}: {b.reason}" for b in report.bad_files[:3]),
            )
        report.save(run_dir / "scan_report.json")
        kwargs: dict[str, Any] = {"ratios": config.data.split, "seed": config.runtime.seed}
        if config.data.group_pattern is not None:
            kwargs["group_pattern"] = config.data.group_pattern
        manifest = make_split(report, **kwargs)
        manifest.save(split_path)
        return manifest


def probe_stage_precision(
    arch: str, trainable: str, *, image_size: int, freeze_bn_stats: bool
) -> str:
    """Measure bf16 against fp32 for ``arch`` trained with ``trainable`` (cached per stage).

    The probe's model is set up as the stage trains it: the frozen layers, and frozen
    BatchNorm layers in eval mode when ``freeze_bn_stats``.
    """
    spec = get_arch(arch)

    def make_model() -> torch.nn.Module:
        model = build(spec.name, classes=2, weights="none")
        apply_policy(model, spec, trainable)
        return set_train_mode(model, freeze_bn_stats=freeze_bn_stats)

    return probe_cpu_precision(make_model, f"{spec.name}/{trainable}", image_size=image_size)


def _make_fabric(
    config: TrainConfig, stages: list[StageConfig]
) -> tuple[Fabric, str, dict[str, str]]:
    """Fabric for the run, its precision, and a per-stage precision when one is measured.

    ``--precision auto`` on a bf16-capable CPU: the faster precision depends on what is
    trainable (see ``training.precision``), so it is probed per stage; Fabric then runs
    fp32 and the trainer turns bf16 autocast on for the stages that won with it.
    """
    rt = config.runtime
    stage_precision: dict[str, str] = {}
    if cpu_probe_applies(rt.precision, rt.accelerator):
        by_trainable: dict[str, str] = {}
        for stage in stages:
            if stage.trainable not in by_trainable:
                by_trainable[stage.trainable] = probe_stage_precision(
                    config.arch,
                    stage.trainable,
                    image_size=config.data.image_size,
                    freeze_bn_stats=_freeze_bn_stats(config),
                )
            stage_precision[stage.name] = by_trainable[stage.trainable]
        precision = "32-true"
    else:
        precision = resolve_precision(rt.precision, rt.accelerator)
    try:
        fabric = Fabric(
            accelerator=rt.accelerator,
            devices=rt.devices,
            num_nodes=rt.num_nodes,
            strategy=rt.strategy,
            precision=precision,  # type: ignore[arg-type]
        )
    except (ValueError, RuntimeError, TypeError) as e:
        raise ConfigError(
            f"cannot run with accelerator={rt.accelerator!r} devices={rt.devices} "
            f"strategy={rt.strategy!r} precision={precision!r}: {e}"
        ) from e
    return fabric, precision, stage_precision


def _describe_precision(precision: str, stage_precision: dict[str, str]) -> str:
    """``bf16-mixed``, or per stage: ``feature_extraction bf16-mixed, refinement 32-true``."""
    if not stage_precision:
        return precision
    if len(set(stage_precision.values())) == 1:
        return next(iter(stage_precision.values()))
    return ", ".join(f"{name} {p}" for name, p in stage_precision.items())


def _freeze_bn_stats(config: TrainConfig) -> bool:
    if config.optim.bn_stats == "auto":
        return config.weights.lower() != "none"
    return config.optim.bn_stats == "frozen"


def train(
    data: str | Path | None,
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    show_progress: bool = True,
    scan_progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train a classifier on a folder-per-class dataset with the three-stage recipe.

    Args:
        data: the dataset root (PlantVillage layout). With ``resume`` it may be None: the
            run's ``split.json`` knows it.
        out: the run directory.
        config: settings (defaults: the seed's recipe on EfficientNet-B0).
        resume: continue the interrupted run in ``out`` from its ``last.ckpt``.
        show_progress: progress bars on rank zero.
        scan_progress: ``(done, total)`` callback while scanning images.

    Returns:
        The run's summary (also in ``out/summary.json``).

    Raises:
        CropdocError: bad data, configuration, weights or checkpoint.

    Example:
        >>> from cropdoc import train  # doctest: +SKIP
        >>> result = train("PlantVillage", "runs/effb0")  # doctest: +SKIP
    """
    started = time.perf_counter()
    run_dir = Path(out)
    if resume:
        if not (run_dir / "last.ckpt").is_file() or not (run_dir / "config.yaml").is_file():
            raise ConfigError(
                f"cannot resume: {run_dir} has no last.ckpt/config.yaml from an "
                f"earlier `cropdoc train --out {run_dir}`"
            )
        saved = load_config(run_dir / "config.yaml")
        # Placement may change on resume (another machine); the recipe may not.
        config = saved.model_copy(
            update={
                "runtime": (config or saved).runtime.model_copy(update={"seed": saved.runtime.seed})
            }
        )
        if data is None:
            data = SplitManifest.load(run_dir / "split.json").root
    else:
        config = config or TrainConfig()
        if (run_dir / "last.ckpt").exists():
            raise ConfigError(
                f"{run_dir} already holds a training run; continue it with "
                f"--resume or choose another --out"
            )
    if data is None:
        raise ConfigError("no dataset path given")
    data = Path(data)
    if not data.exists():
        raise DataError(f"dataset folder not found: {data}")
    if not data.is_dir():
        raise DataError(
            f"{data} is a file, not a folder: give the dataset folder that holds one "
            f"sub-folder per class"
        )
    spec = get_arch(config.arch)
    config = config.model_copy(update={"arch": spec.name})
    stages = resolve_stages(config)

    fabric, fabric_precision, stage_precision = _make_fabric(config, stages)
    precision = _describe_precision(fabric_precision, stage_precision)
    fabric.launch()
    seed_everything(config.runtime.seed, verbose=False)
    if config.runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if fabric.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    manifest = _prepare_data(fabric, data, run_dir, config, resume, scan_progress)
    classes = manifest.classes
    n_classes = len(classes)

    # Model and preprocessing.
    model = build(spec.name, classes=n_classes, weights=config.weights)
    momentum = config.optim.bn_momentum
    if momentum == "auto":
        momentum = 0.1 if config.weights.lower() == "none" else None
    if momentum is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = momentum
    if config.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    size = config.data.image_size
    train_tf = build_fast_train_transform(size, mean=spec.mean, std=spec.std)
    eval_tf = build_eval_transform(size, mean=spec.mean, std=spec.std)
    root = data
    datasets = {
        s: ImageDataset(
            manifest.samples(s, root=root),
            train_tf if s == "train" else eval_tf,
            max_pixels=config.data.max_pixels,
            # Decode once per run (train and val are read every epoch; test only once).
            cache_short_side=round(size * EVAL_RESIZE_RATIO) if s != "test" else None,
        )
        for s in ("train", "val", "test")
    }
    if len(datasets["val"]) == 0:
        raise DataError(
            "the validation split is empty: use a larger dataset or a larger val ratio (--split)"
        )
    bs = config.data.batch_size
    eval_bs = config.data.eval_batch_size or bs * 2
    workers = config.data.workers
    train_loader = make_loader(
        datasets["train"],
        batch_size=bs,
        train=True,
        workers=workers,
        balance_sampler=config.data.balance == "sampler",
        num_classes=n_classes,
    )
    val_loader = make_loader(datasets["val"], batch_size=eval_bs, train=False, workers=workers)
    test_loader = make_loader(datasets["test"], batch_size=eval_bs, train=False, workers=workers)
    train_loader = fabric.setup_dataloaders(train_loader)
    val_loader, test_loader = fabric.setup_dataloaders(
        val_loader, test_loader, use_distributed_sampler=False
    )
    weights = (
        class_weights(datasets["train"].labels, n_classes)
        if config.data.balance == "loss"
        else None
    )

    meta = BundleMeta(
        arch=spec.name,
        classes=list(classes),
        image_size=size,
        resize_size=round(size * EVAL_RESIZE_RATIO),
        mean=spec.mean,
        std=spec.std,
        recipe=[s.model_dump() for s in stages],
        extra={
            "balance": config.data.balance,
            "weights": config.weights,
            "precision": precision,
            "seed": config.runtime.seed,
        },
    )
    trainer = Trainer(
        fabric,
        model,
        spec,
        optim=config.optim,
        run_dir=run_dir,
        meta=meta,
        seed=config.runtime.seed,
        class_weights=weights,
        channels_last=config.runtime.channels_last,
        freeze_bn_stats=_freeze_bn_stats(config),
        show_progress=show_progress,
        stage_precision=stage_precision,
    )

    first_stage, start_epoch, es_state = 0, 0, None
    if resume:
        ckpt = load_checkpoint(run_dir / "last.ckpt")
        model.load_state_dict(ckpt["model"])
        trainer.history = [EpochStats(**r) for r in ckpt["history"]]
        trainer.best_f1 = float(ckpt["best_f1"])
        trainer.global_epoch = int(ckpt["global_epoch"])
        best_weights = run_dir / "model" / "weights.safetensors"
        if best_weights.is_file():
            trainer.best_state = load_file(str(best_weights))
        first_stage = int(ckpt["stage"])
        if ckpt["stage_done"]:
            first_stage += 1
        else:
            start_epoch, es_state = int(ckpt["epoch"]), ckpt["early_stopping"]
        _logger.info("resuming %s at stage %d epoch %d", run_dir, first_stage + 1, start_epoch + 1)

    for index in range(first_stage, len(stages)):
        stage = stages[index]
        if stage.epochs == 0:
            continue
        _logger.info(
            "stage %d/%d %s: trainable=%s lr=%g%s epochs=%d",
            index + 1,
            len(stages),
            stage.name,
            stage.trainable,
            stage.lr,
            f" backbone_lr={stage.backbone_lr:g}" if stage.backbone_lr else "",
            stage.epochs,
        )
        trainer.setup_stage(stage, steps_per_epoch=len(train_loader))
        es = None
        if resume and index == first_stage and es_state is not None:
            trainer.optimizer.load_state_dict(ckpt["optimizer"])  # type: ignore[union-attr]
            trainer.scheduler.load_state_dict(ckpt["scheduler"])  # type: ignore[union-attr]
            es = EarlyStopping(
                patience=stage.patience or config.optim.patience, min_delta=config.optim.min_delta
            )
            es.load_state_dict(es_state)
        trainer.fit(
            train_loader,
            val_loader,
            stage.epochs,
            stage=stage,
            stage_index=index,
            start_epoch=start_epoch if index == first_stage else 0,
            early_stopping=es,
        )

    # Final: the best weights on the held-out test split.
    trainer.restore_best()
    eval_model = trainer.model if trainer.model is not None else fabric.setup(model)
    test = evaluate(
        fabric,
        eval_model,
        trainer.eval_criterion,
        test_loader,
        n_classes,
        channels_last=config.runtime.channels_last,
    )
    test = {"accuracy": test["acc"], "macro_f1": test["f1"], "loss": test["loss"], "n": test["n"]}
    best = dict(trainer.meta.best)
    if not best and (run_dir / "model").exists():
        from ..bundle import read_meta

        best = read_meta(run_dir / "model").best
    result = TrainResult(
        run_dir=run_dir,
        bundle_dir=run_dir / "model",
        curves=run_dir / "curves.png",
        arch=spec.name,
        best_val_f1=trainer.best_f1,
        best=best,
        test=test,
        epochs_run=len(trainer.history),
        elapsed_s=time.perf_counter() - started,
        precision=precision,
        stages=[s.model_dump() for s in stages],
        model=model.eval(),
    )
    if fabric.is_global_zero:
        update_meta(run_dir / "model", metrics={"test": test, "val": best})
        plot_curves(
            trainer.history,
            run_dir / "curves.png",
            title=f"{spec.name} on {data.name} ({n_classes} classes)",
        )
        atomic_write_json(run_dir / "summary.json", result.to_dict())
        # Temperature on the val split, full evaluation of the test split, report.md.
        from ..evaluation.finalize import finalize_run

        try:
            finalize_run(run_dir, data, workers=config.data.workers, device=str(fabric.device))
        except CropdocError as e:  # the trained bundle is already safe; don't fail the run
            _logger.warning("training finished, but calibration/evaluation/report failed: %s", e)
    fabric.barrier()
    return result
