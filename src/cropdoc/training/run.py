"""A training run: data → split → model → stages → bundle, curves and summary in a run dir.

This is the recipe runner: it executes the stages of :func:`resolve_stages` with one
:class:`Trainer`, and owns the run directory (``config.yaml``, ``scan_report.json``,
``split.json``, ``history.csv``, ``curves.png``, ``model/``, ``last.ckpt``,
``summary.json``). ``resume=True`` continues an interrupted run from ``last.ckpt``.
Calibration, the full evaluation and the report come after it, in
:func:`cropdoc.workflows.train`.
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

from ..bundle import WEIGHTS_FILE, BundleMeta, TrainingInfo, read_meta, update_meta
from ..config import (
    RESUME_OPTIONS,
    RuntimeConfig,
    StageConfig,
    TrainConfig,
    load_config,
    resume_conflicts,
)
from ..data.augment import build_fast_train_transform
from ..data.layout import dataset_root
from ..data.loaders import ImageDataset, class_weights, make_loader
from ..data.scan import scan_folder
from ..data.split import SplitManifest, make_split
from ..data.transforms import build_eval_transform
from ..errors import ConfigError, DataError
from ..io import atomic_write_json, atomic_write_text
from ..models import ArchSpec, BatchNormPolicy, build, drop_path_rate, get_arch
from ..preprocessing import Preprocessing
from .checkpoint import load_checkpoint
from .curves import plot_curves
from .precision import PrecisionPlan, plan_precision
from .recipe import resolve_stages
from .trainer import Trainer, evaluate

__all__ = ["TrainResult", "train"]

_logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


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
    data: Path | None = None
    # Bootstrap intervals of the test accuracy and macro-F1, from the evaluation after
    # training (cropdoc.evaluation.bootstrap_intervals); None until it has run.
    test_intervals: dict[str, Any] | None = None
    model: torch.nn.Module | None = field(default=None, repr=False, compare=False)
    # Where the run ran, for the steps after it (not part of summary.json).
    global_rank: int = field(default=0, repr=False, compare=False)
    workers: int | None = field(default=None, repr=False, compare=False)
    device: str = field(default="cpu", repr=False, compare=False)

    _RUNTIME = ("model", "global_rank", "workers", "device")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._RUNTIME}
        for k in ("run_dir", "bundle_dir", "curves", "data"):
            d[k] = None if d[k] is None else str(d[k])
        return d


def _resolve_inputs(
    data: str | Path | None, run_dir: Path, config: TrainConfig | None, resume: bool
) -> tuple[Path, TrainConfig]:
    """The dataset root (a lone wrapper folder or a chosen variant stepped into) and the
    config of the run: a resumed run keeps its own, and refuses what it cannot apply."""
    if resume:
        if not (run_dir / "last.ckpt").is_file() or not (run_dir / "config.yaml").is_file():
            raise ConfigError(
                f"cannot resume: {run_dir} has no last.ckpt/config.yaml from an "
                f"earlier `cropdoc train --out {run_dir}`"
            )
        config = _resume_config(run_dir, load_config(run_dir / "config.yaml"), config)
        if data is None:
            data = SplitManifest.load(run_dir / "split.json").root
            _check_folder(data)
            return data, config  # the dataset root already
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
    _check_folder(data)
    return dataset_root(data, variant=config.data.variant), config


def _check_folder(data: Path) -> None:
    if not data.exists():
        raise DataError(f"dataset folder not found: {data}")
    if not data.is_dir():
        raise DataError(
            f"{data} is a file, not a folder: give the dataset folder that holds one "
            f"sub-folder per class"
        )


def _resume_config(run_dir: Path, saved: TrainConfig, given: TrainConfig | None) -> TrainConfig:
    """The run's config with the runtime settings ``given`` changes (:data:`RESUME_APPLIED`
    in ``cropdoc.config``); any other change is refused, naming the option."""
    if given is None:
        return saved
    # An alias and its registry name are one architecture.
    saved = saved.model_copy(update={"arch": get_arch(saved.arch).name})
    given = given.model_copy(update={"arch": get_arch(given.arch).name})
    refused = resume_conflicts(saved, given)
    if refused:
        allowed = ", ".join("--" + n.replace("_", "-") for n in RESUME_OPTIONS)
        raise ConfigError(
            f"cannot resume {run_dir} with {'; '.join(refused)}: a resumed run keeps the "
            f"recipe, data settings and seed it started with (only {allowed} may change); "
            f"leave the option out, or start a new run with another --out"
        )
    applied = resume_conflicts(saved, given, applied=True)
    if applied:
        _logger.info("resuming with %s", "; ".join(applied))
    return given


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
        report = scan_folder(
            data,
            classes=config.data.classes,
            label_conflicts=config.data.label_conflicts,
            max_pixels=config.data.max_pixels,
            progress=scan_progress,
        )
        problems = report.problems()
        for problem in problems:
            _logger.warning(problem.message)
        if problems:
            _logger.info("full lists: %s", run_dir / "scan_report.json")
        report.save(run_dir / "scan_report.json")
        kwargs: dict[str, Any] = {
            "ratios": config.data.split,
            "seed": _split_seed(config),
            "shipped": not config.data.resplit,
        }
        if config.data.group_pattern is not None:
            kwargs["group_pattern"] = config.data.group_pattern
        manifest = make_split(report, **kwargs)
        manifest.save(split_path)
        return manifest


def _split_seed(config: TrainConfig) -> int:
    """The split's seed: ``data.split_seed``, else the run's seed."""
    seed = config.data.split_seed
    return config.runtime.seed if seed is None else seed


def _make_fabric(rt: RuntimeConfig, plan: PrecisionPlan) -> Fabric:
    try:
        return Fabric(
            accelerator=rt.accelerator,
            devices=rt.devices,
            num_nodes=rt.num_nodes,
            strategy=rt.strategy,
            precision=plan.fabric,  # type: ignore[arg-type]
        )
    except (ValueError, RuntimeError, TypeError) as e:
        raise ConfigError(
            f"cannot run with accelerator={rt.accelerator!r} devices={rt.devices} "
            f"strategy={rt.strategy!r} precision={plan.fabric!r}: {e}"
        ) from e


def _seed(rt: RuntimeConfig) -> None:
    seed_everything(rt.seed, verbose=False)
    if rt.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _make_loaders(
    fabric: Fabric,
    manifest: SplitManifest,
    root: Path,
    config: TrainConfig,
    preprocessing: Preprocessing,
    start_epoch: int = 0,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Train (augmented), val and test loaders, set up by Fabric (train is sharded).

    Train and val images are decoded once into a cache (``data.cache``): in RAM when they
    fit, else a memory-mapped file in ``cache_dir`` that a resumed run maps again. Under
    DDP it is always that file, written by rank zero and mapped by every rank, so the
    ranks of a machine share one copy in the page cache instead of one each.

    Under DDP the train loader gets its own sharding sampler seeded with ``seed +
    start_epoch``: Fabric sets a sampler's epoch to the epochs this process has run, so
    after a resume at global epoch ``start_epoch`` each epoch still shuffles as the
    uninterrupted run's did.
    """
    size = preprocessing.image_size
    train_tf = build_fast_train_transform(size, mean=preprocessing.mean, std=preprocessing.std)
    eval_tf = build_eval_transform(preprocessing)
    storage = config.data.cache
    if storage == "auto" and fabric.world_size > 1:
        storage = "disk"
    mb = config.data.cache_max_mb
    with fabric.rank_zero_first(local=False):
        datasets = {
            s: ImageDataset(
                manifest.samples(s, root=root),
                train_tf if s == "train" else eval_tf,
                max_pixels=config.data.max_pixels,
                # Decode once per run (train and val are read every epoch; test only once).
                cache_short_side=preprocessing.resize_size if s != "test" else None,
                cache_max_bytes=None if mb is None else mb << 20,
                cache_dir=cache_dir,
                cache_storage=storage,
            )
            for s in SPLITS
        }
    if len(datasets["val"]) == 0:
        raise DataError(
            "the validation split is empty: use a larger dataset or a larger val ratio (--split)"
        )
    d = config.data
    eval_bs = d.eval_batch_size or d.batch_size * 2
    # A weighted sampler draws with replacement from each rank's own random stream.
    shard = (fabric.global_rank, fabric.world_size) if fabric.world_size > 1 else None
    if d.balance == "sampler":
        shard = None
    train_loader = make_loader(
        datasets["train"],
        batch_size=d.batch_size,
        train=True,
        workers=d.workers,
        balance_sampler=d.balance == "sampler",
        num_classes=len(manifest.classes),
        shard=shard,
        shuffle_seed=config.runtime.seed + start_epoch,
    )
    val_loader, test_loader = (
        make_loader(datasets[s], batch_size=eval_bs, train=False, workers=d.workers)
        for s in ("val", "test")
    )
    val_loader, test_loader = fabric.setup_dataloaders(
        val_loader, test_loader, use_distributed_sampler=False
    )
    train_loader = fabric.setup_dataloaders(train_loader, use_distributed_sampler=shard is None)
    return {"train": train_loader, "val": val_loader, "test": test_loader}


def _bundle_meta(
    spec: ArchSpec,
    classes: list[str],
    preprocessing: Preprocessing,
    stages: list[StageConfig],
    config: TrainConfig,
    plan: PrecisionPlan,
    drop_path: float,
) -> BundleMeta:
    return BundleMeta(
        arch=spec.name,
        classes=list(classes),
        preprocessing=preprocessing,
        recipe=[s.model_dump() for s in stages],
        training=TrainingInfo(
            weights=config.weights,
            balance=config.data.balance,
            seed=config.runtime.seed,
            precision=plan.describe(),
            drop_path=drop_path,
            ema=config.optim.ema,
        ),
    )


def _drop_path(spec: ArchSpec, config: TrainConfig) -> float:
    """The run's stochastic-depth rate (``optim.drop_path``, else the architecture's)."""
    rate = config.optim.drop_path
    return drop_path_rate(spec, None if rate == "auto" else rate)


def _pretrained(config: TrainConfig) -> bool:
    return config.weights.lower() != "none"


def _make_trainer(
    fabric: Fabric,
    spec: ArchSpec,
    config: TrainConfig,
    manifest: SplitManifest,
    data: Path,
    run_dir: Path,
    stages: list[StageConfig],
    plan: PrecisionPlan,
    bn: BatchNormPolicy,
    show_progress: bool,
    start_epoch: int,
) -> tuple[Trainer, dict[str, Any]]:
    """The model (BatchNorm policy applied), its loaders and the trainer that runs it."""
    n_classes, rt = len(manifest.classes), config.runtime
    drop_path = _drop_path(spec, config)
    model = bn.apply(
        build(spec.name, classes=n_classes, weights=config.weights, drop_path=drop_path)
    )
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    preprocessing = Preprocessing.for_size(
        config.data.image_size,
        mean=spec.mean,
        std=spec.std,
        interpolation=spec.interpolation,
        resize_ratio=spec.resize_ratio,
    )
    loaders = _make_loaders(
        fabric, manifest, data, config, preprocessing, start_epoch, cache_dir=run_dir / "cache"
    )
    weights = None
    if config.data.balance == "loss":
        weights = class_weights(loaders["train"].dataset.labels, n_classes)
    trainer = Trainer(
        fabric,
        model,
        spec,
        optim=config.optim,
        run_dir=run_dir,
        meta=_bundle_meta(spec, manifest.classes, preprocessing, stages, config, plan, drop_path),
        precision=plan,
        seed=rt.seed,
        class_weights=weights,
        channels_last=rt.channels_last,
        freeze_bn_stats=bn.freeze_stats,
        fix_all_bn_stats=bn.fix_all_stats,
        show_progress=show_progress,
    )
    return trainer, loaders


def _resume(trainer: Trainer, state: dict[str, Any], run_dir: Path) -> None:
    """Load ``last.ckpt``'s state (and the best weights so far, from the bundle)."""
    best_weights = run_dir / "model" / WEIGHTS_FILE
    best = load_file(str(best_weights)) if best_weights.is_file() else None
    trainer.load_state_dict(state, best_state=best)
    stage, epoch = trainer.position
    _logger.info("resuming %s at stage %d epoch %d", run_dir, stage + 1, epoch + 1)


def _fit_stages(trainer: Trainer, stages: list[StageConfig], loaders: dict[str, Any]) -> None:
    first, _ = trainer.position
    for index in range(first, len(stages)):
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
        trainer.setup_stage(stage, index, steps_per_epoch=len(loaders["train"]))
        trainer.fit(loaders["train"], loaders["val"])


def _test_pass(trainer: Trainer, loader: Any, channels_last: bool) -> dict[str, float]:
    """The best weights on the held-out test split."""
    trainer.restore_best()
    fabric = trainer.fabric
    model = trainer.model if trainer.model is not None else fabric.setup(trainer.raw_model)
    test = evaluate(
        fabric,
        model,
        trainer.eval_criterion,
        loader,
        trainer.num_classes,
        channels_last=channels_last,
    )
    return {"accuracy": test["acc"], "macro_f1": test["f1"], "loss": test["loss"], "n": test["n"]}


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
        data: the dataset folder: one sub-folder per class, or a pre-split copy (its own
            split is used unless ``data.resplit``), see :mod:`cropdoc.data.layout`. With
            ``resume`` it may be None: the run's ``split.json`` knows it.
        out: the run directory.
        config: settings (defaults: the seed's recipe on EfficientNet-B0).
        resume: continue the interrupted run in ``out`` from its ``last.ckpt``. Only the
            runtime settings of ``config`` may differ from the run's (device, device count,
            precision, workers: :data:`cropdoc.config.RESUME_APPLIED`); any other change
            raises, naming the option.
        show_progress: progress bars on rank zero.
        scan_progress: ``(done, total)`` callback while scanning images.

    Returns:
        The run's summary (also in ``out/summary.json``).

    Raises:
        CropdocError: bad data, configuration, weights or checkpoint, or a resume with
            a changed recipe.
    """
    started = time.perf_counter()
    run_dir = Path(out)
    data, config = _resolve_inputs(data, run_dir, config, resume)
    spec = get_arch(config.arch)
    config = config.model_copy(update={"arch": spec.name})
    stages = resolve_stages(config)
    _drop_path(spec, config)  # a rate the architecture cannot take fails before the scan
    bn = BatchNormPolicy.resolve(
        config.optim.bn_stats, config.optim.bn_momentum, pretrained=_pretrained(config)
    )
    rt = config.runtime
    plan = plan_precision(
        rt.precision,
        rt.accelerator,
        arch=spec.name,
        stages=stages,
        image_size=config.data.image_size,
        freeze_bn_stats=bn.freeze_stats,
    )
    fabric = _make_fabric(rt, plan)
    fabric.launch()
    _seed(rt)
    if fabric.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    manifest = _prepare_data(fabric, data, run_dir, config, resume, scan_progress)
    state = load_checkpoint(run_dir / "last.ckpt") if resume else None
    trainer, loaders = _make_trainer(
        fabric,
        spec,
        config,
        manifest,
        data,
        run_dir,
        stages,
        plan,
        bn,
        show_progress,
        start_epoch=int(state["global_epoch"]) if state is not None else 0,
    )
    if state is not None:
        _resume(trainer, state, run_dir)
    _fit_stages(trainer, stages, loaders)
    test = _test_pass(trainer, loaders["test"], rt.channels_last)

    best = dict(trainer.meta.best)
    if not best and (run_dir / "model").exists():  # resumed after the last improvement
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
        precision=plan.describe(),
        stages=[s.model_dump() for s in stages],
        data=data,
        model=trainer.raw_model.eval(),
        global_rank=fabric.global_rank,
        workers=config.data.workers,
        device=str(fabric.device),
    )
    if fabric.is_global_zero:
        update_meta(run_dir / "model", metrics={"test": test, "val": best})
        title = f"{spec.name} on {data.name} ({len(manifest.classes)} classes)"
        plot_curves(trainer.history, run_dir / "curves.png", title=title)
        atomic_write_json(run_dir / "summary.json", result.to_dict())
    fabric.barrier()
    return result
