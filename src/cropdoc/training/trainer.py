"""The training loop: one stage of the recipe on Lightning Fabric.

``Trainer.fit`` runs one stage top to bottom: for each epoch, reseed, train, validate,
log one line, keep the best bundle, write the resume checkpoint. Fabric owns device,
precision and distribution (``setup``, ``backward``, ``clip_gradients``), so the same loop
runs on a CPU, a GPU or many processes with DDP. After a stage changes ``requires_grad``
the raw module is set up again with the new optimizer (DDP must be rebuilt for the new
trainable set).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from ..bundle import BundleMeta, save_bundle
from ..config import OptimConfig, StageConfig
from ..cpu import compute_threads, torch_threads
from ..errors import TrainingError
from ..io import atomic_write_text
from ..models import ArchSpec, apply_policy, param_groups, set_train_mode
from .checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from .early_stopping import EarlyStopping
from .precision import PrecisionPlan
from .scheduler import create_scheduler

__all__ = ["EpochStats", "HISTORY_COLUMNS", "Trainer", "evaluate", "seed_epoch", "write_history"]

_logger = logging.getLogger(__name__)


@dataclass
class EpochStats:
    """One row of ``history.csv``."""

    stage: int
    stage_name: str
    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_f1: float
    epoch_time_s: float
    train_images_per_s: float
    data_wait_s: float


HISTORY_COLUMNS = [f.name for f in fields(EpochStats)]


def write_history(path: Path, rows: Sequence[EpochStats | dict[str, Any]]) -> None:
    """Write ``history.csv`` atomically (one row per epoch, all stages)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row) if isinstance(row, EpochStats) else row)
    atomic_write_text(path, buf.getvalue())


def seed_epoch(seed: int, global_epoch: int, rank: int = 0) -> None:
    """Reseed every RNG from (seed, epoch, rank).

    An epoch's shuffling, augmentation and dropout are then the same whether the run was
    interrupted and resumed or not, and each DDP rank draws its own augmentation and
    dropout (ranks sharing one stream would augment their shards alike). The DDP shard
    sampler has its own seed, shared by all ranks (``cropdoc.data.loaders.make_loader``).
    """
    entropy = [seed % 2**64, global_epoch, rank]
    s = int(np.random.SeedSequence(entropy).generate_state(1)[0]) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def cpu_threads(fabric: Fabric, loader: Any, gflop_per_image: float) -> int | None:
    """On a CPU, the compute threads to run beside the loader's workers (``compute_threads``).

    None on other devices (their thread count does not matter).
    """
    if fabric.device.type != "cpu":
        return None
    inner = loader
    if getattr(inner, "num_workers", None) is None:  # Fabric's wrapper, or a benchmark's
        inner = getattr(loader, "_dataloader", None) or getattr(loader, "loader", None)
    workers = int(getattr(inner, "num_workers", 0) or 0)
    # Workers that only read the decoded cache are cheap; workers that decode JPEGs (all
    # of them, or the part a full cache left out) are busy.
    cache = getattr(getattr(inner, "dataset", None), "cache", None)
    light = cache is not None and bool(getattr(cache, "complete", False))
    # Training processes on this machine: DDP strategies list their local devices.
    local_processes = len(getattr(fabric.strategy, "parallel_devices", None) or [None])
    batch = int(getattr(inner, "batch_size", None) or 1)
    threads = compute_threads(
        workers, local_processes, light_workers=light, batch_gflop=gflop_per_image * batch
    )
    _logger.info("CPU split: %d loader worker(s), %d compute thread(s)", workers, threads)
    return threads


def _to_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def evaluate(
    fabric: Fabric,
    model: nn.Module,
    criterion: nn.Module,
    loader: torch.utils.data.DataLoader,
    num_classes: int,
    *,
    channels_last: bool = True,
    autocast: AbstractContextManager | None = None,
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 of ``model`` on every sample of ``loader`` (no padding).

    Each process evaluates the whole loader, so the figures are exact under DDP too.
    ``autocast``: the stage's autocast (a stage that trains in bf16 validates in it).
    """
    model.eval()
    acc = MulticlassAccuracy(num_classes, average="micro", sync_on_compute=False).to(fabric.device)
    f1 = MulticlassF1Score(num_classes, average="macro", sync_on_compute=False).to(fabric.device)
    total_loss, seen = 0.0, 0
    for x, y in loader:
        x, y = _to_input(x.to(fabric.device), channels_last), y.to(fabric.device)
        with autocast or nullcontext():
            logits = model(x).float()
        total_loss += criterion(logits, y).item() * y.numel()
        seen += y.numel()
        acc.update(logits, y)
        f1.update(logits, y)
    expected = len(loader.dataset)  # type: ignore[arg-type]
    if seen != expected:
        _logger.warning("evaluated %d samples but the dataset has %d", seen, expected)
    if seen == 0:
        return {"loss": math.nan, "acc": math.nan, "f1": math.nan, "n": 0}
    return {
        "loss": total_loss / seen,
        "acc": acc.compute().item(),
        "f1": f1.compute().item(),
        "n": seen,
    }


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


class Trainer:
    """Runs stages of the recipe on one model, keeping the best bundle across all of them.

    Args:
        fabric: a launched ``Fabric``.
        model: the raw (not yet set up) model; the trainer sets it up per stage.
        spec: the architecture spec (head attribute, stage-2 groups).
        optim: the shared optimizer / regularization settings.
        run_dir: where ``model/``, ``last.ckpt`` and ``history.csv`` go.
        meta: bundle metadata template (arch, classes, preprocessing, recipe).
        precision: the run's precision plan (bf16 autocast for the stages measured faster
            in it).
        seed: base seed for per-epoch reseeding.
        class_weights: per-class loss weights (``--balance loss``) or None.
        channels_last: feed NHWC tensors (faster convolutions on CPU and GPU).
        freeze_bn_stats: frozen BatchNorm layers keep their running statistics.
        fix_all_bn_stats: every BatchNorm layer keeps its running statistics.
        show_progress: a progress bar per epoch on global rank zero.

    Resume: :meth:`state_dict` is what ``last.ckpt`` holds after every epoch;
    :meth:`load_state_dict` restores it, and :attr:`position` then says where to go on.
    """

    def __init__(
        self,
        fabric: Fabric,
        model: nn.Module,
        spec: ArchSpec,
        *,
        optim: OptimConfig,
        run_dir: Path,
        meta: BundleMeta,
        precision: PrecisionPlan,
        seed: int = 42,
        class_weights: torch.Tensor | None = None,
        channels_last: bool = True,
        freeze_bn_stats: bool = True,
        fix_all_bn_stats: bool = False,
        show_progress: bool = True,
    ) -> None:
        self.fabric = fabric
        self.raw_model = model
        self.spec = spec
        self.optim = optim
        self.run_dir = Path(run_dir)
        self.meta = meta
        self.precision = precision
        self.seed = seed
        self.channels_last = channels_last
        self.freeze_bn_stats = freeze_bn_stats
        self.fix_all_bn_stats = fix_all_bn_stats
        self.show_progress = show_progress
        self.num_classes = meta.num_classes
        weight = class_weights.to(fabric.device) if class_weights is not None else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=optim.label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
        self.history: list[EpochStats] = []
        self.best_f1 = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.global_epoch = 0
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.early_stopping: EarlyStopping | None = None
        self.ema: ModelEmaV3 | None = None
        self._ema_step = 0
        self._stage: StageConfig | None = None
        self._stage_index = 0
        self._epoch = 0  # epochs done in the current stage
        self._stage_done = False
        self._resume: dict[str, Any] | None = None

    # -- resume state ----------------------------------------------------------------
    @property
    def position(self) -> tuple[int, int]:
        """``(stage index, epoch within it)`` where training goes on: (0, 0) for a new run."""
        if self._stage_done:
            return self._stage_index + 1, 0
        return self._stage_index, self._epoch

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this epoch ended (``last.ckpt``)."""
        assert self.optimizer is not None and self.scheduler is not None, "no stage set up"
        assert self.early_stopping is not None
        return {
            "format_version": CHECKPOINT_FORMAT,
            "model": _cpu_state(self.raw_model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "stage": self._stage_index,
            "epoch": self._epoch,
            "stage_done": self._stage_done,
            "global_epoch": self.global_epoch,
            "early_stopping": self.early_stopping.state_dict(),
            "ema": None if self.ema is None else _cpu_state(self.ema.module),
            "best_f1": self.best_f1,
            "history": [asdict(r) for r in self.history],
            "seed": self.seed,
        }

    def load_state_dict(
        self, state: dict[str, Any], *, best_state: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Restore a :meth:`state_dict`; the optimizer, scheduler and early-stopping state
        apply when :meth:`setup_stage` sets up the interrupted stage again.

        Args:
            state: a checkpoint as :func:`~cropdoc.training.checkpoint.load_checkpoint`
                returns it (keys already checked).
            best_state: the best weights so far (the bundle's), restored at stage ends.
        """
        self.raw_model.load_state_dict(state["model"])
        self.history = [EpochStats(**r) for r in state["history"]]
        self.best_f1 = float(state["best_f1"])
        self.global_epoch = int(state["global_epoch"])
        self.best_state = best_state
        self._stage_index = int(state["stage"])
        self._epoch = int(state["epoch"])
        self._stage_done = bool(state["stage_done"])
        if not self._stage_done:
            keys = ("optimizer", "scheduler", "early_stopping", "ema")
            self._resume = {k: state.get(k) for k in keys}

    # -- stage set-up -------------------------------------------------------------------
    def setup_stage(self, stage: StageConfig, index: int, steps_per_epoch: int) -> None:
        """Freeze policy → param groups → AdamW + cosine → ``fabric.setup``.

        Setting up the stage a loaded checkpoint interrupted restores its optimizer and
        early-stopping state, and starts its schedule at the epochs done times this run's
        ``steps_per_epoch`` (the same fraction of the stage on any number of devices).
        """
        apply_policy(self.raw_model, self.spec, stage.trainable)
        groups = param_groups(
            self.raw_model,
            self.spec,
            backbone_lr=stage.backbone_lr or stage.lr,
            head_lr=stage.lr,
        )
        optimizer = torch.optim.AdamW(
            groups, lr=stage.lr, betas=self.optim.betas, weight_decay=self.optim.weight_decay
        )
        self.early_stopping = EarlyStopping(
            patience=stage.patience or self.optim.patience, min_delta=self.optim.min_delta
        )
        resumed = self._resume is not None and index == self._stage_index
        ema_state = None
        if resumed:
            optimizer.load_state_dict(self._resume["optimizer"])
            self.early_stopping.load_state_dict(self._resume["early_stopping"])
            ema_state = self._resume["ema"]
            self._resume = None
        else:
            self._epoch = 0
        # The schedule's position comes from the epochs done, not the checkpoint's step
        # count, which a different number of DDP processes would misplace.
        self.scheduler = create_scheduler(
            optimizer,
            total_steps=max(1, stage.epochs * steps_per_epoch),
            eta_min=self.optim.eta_min,
            warmup_steps=round(stage.warmup_epochs * steps_per_epoch),
            start_step=self._epoch * steps_per_epoch,
        )
        self._stage, self._stage_index, self._stage_done = stage, index, False
        self.model, self.optimizer = self.fabric.setup(self.raw_model, optimizer)
        self._setup_ema(ema_state, steps_done=self._epoch * steps_per_epoch)
        _logger.debug("param groups: %s", [(g["name"], g["lr"], len(g["params"])) for g in groups])

    def _setup_ema(self, state: dict[str, torch.Tensor] | None, steps_done: int) -> None:
        """A new moving average of the weights for the stage (``optim.ema``), starting at
        the weights it starts from; a resumed stage's average and step count come back.

        timm's ``ModelEmaV3`` with its decay warm-up, ``1 - (1 + step) ** -0.75`` capped at
        ``optim.ema``: an average over the last few steps early in the stage, over the last
        ``1 / (1 - ema)`` steps once the cap is reached.
        """
        self.ema, self._ema_step = None, steps_done
        if self.optim.ema > 0:
            # Built after fabric.setup, so the copy is on the training device.
            self.ema = ModelEmaV3(
                self.raw_model, decay=self.optim.ema, use_warmup=True, warmup_power=0.75
            )
            if state is not None:
                self.ema.module.load_state_dict(state)

    @contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Hold the moving average's weights in the model while inside (no-op without EMA).

        Validation, the best weights and the bundle go through this, so they are all the
        average's; training goes on from the raw weights, put back on the way out.
        """
        if self.ema is None:
            yield
            return
        current = {k: v.detach().clone() for k, v in self.raw_model.state_dict().items()}
        self.raw_model.load_state_dict(self.ema.module.state_dict())
        try:
            yield
        finally:
            self.raw_model.load_state_dict(current)

    def autocast(self) -> AbstractContextManager:
        """The current stage's autocast (bf16 where the precision plan measured it faster,
        with the slow depthwise convolutions in fp32 where it measured that faster still)."""
        name = self._stage.name if self._stage is not None else None
        return self.precision.autocast(name, self.fabric.device.type, self.raw_model)

    # -- one epoch -----------------------------------------------------------------------
    def train_one_epoch(self, loader: torch.utils.data.DataLoader, desc: str) -> dict[str, float]:
        assert self.model is not None and self.optimizer is not None and self.scheduler is not None
        fabric, model, optimizer = self.fabric, self.model, self.optimizer
        set_train_mode(
            model, freeze_bn_stats=self.freeze_bn_stats, fix_all_bn_stats=self.fix_all_bn_stats
        )
        total = torch.zeros(3, dtype=torch.float64, device=fabric.device)  # loss*n, correct, n
        data_wait = 0.0
        progress = self._progress(len(loader), desc)
        start = tick = time.perf_counter()
        for x, y in loader:
            data_wait += time.perf_counter() - tick
            x = _to_input(x, self.channels_last)
            with self.autocast():
                logits = model(x)
            loss = self.criterion(logits.float(), y)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} in {desc}: training stopped; the best "
                    f"bundle so far is kept in {self.run_dir / 'model'}. Lower the learning "
                    f"rate or use --precision 32"
                )
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            if self.optim.clip_grad_norm is not None:
                fabric.clip_gradients(
                    model, optimizer, max_norm=self.optim.clip_grad_norm, error_if_nonfinite=False
                )
            optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self._ema_step += 1
                self.ema.update(self.raw_model, step=self._ema_step)
            n = y.numel()
            total += torch.tensor(
                [loss.item() * n, (logits.argmax(1) == y).sum().item(), n],
                dtype=torch.float64,
                device=fabric.device,
            )
            if progress is not None:
                elapsed = time.perf_counter() - start
                progress.update(
                    progress.task_ids[0],
                    advance=1,
                    loss=total[0].item() / total[2].item(),
                    ips=total[2].item() / max(elapsed, 1e-9),
                )
            tick = time.perf_counter()
        elapsed = time.perf_counter() - start
        if progress is not None:
            progress.stop()
        total = fabric.all_reduce(total, reduce_op="sum")
        n = max(total[2].item(), 1)
        return {
            "loss": total[0].item() / n,
            "acc": total[1].item() / n,
            "n": total[2].item(),
            "time": elapsed,
            "data_wait": data_wait,
        }

    def _progress(self, steps: int, desc: str):
        if not (self.show_progress and self.fabric.is_global_zero):
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  {task.fields[ips]:.0f} img/s"),
            TimeRemainingColumn(),
            transient=True,
        )
        progress.add_task(desc, total=steps, loss=math.nan, ips=0.0)
        progress.start()
        return progress

    # -- a stage -------------------------------------------------------------------------
    def fit(
        self,
        train_loader: torch.utils.data.DataLoader,
        val_loader: torch.utils.data.DataLoader,
    ) -> None:
        """Train the stage :meth:`setup_stage` set up, from where it stands, to its end or
        early stop (on val macro-F1).

        The best model across all stages is saved as the bundle; ``last.ckpt`` is written
        after every epoch. At the end the model holds the best weights seen so far, so the
        next stage starts from them. Compute threads are set for the stage and restored.
        """
        assert self._stage is not None and self.early_stopping is not None, "no stage set up"
        size = self.meta.preprocessing.image_size
        gflop = self.spec.gflops_224 * (size / 224) ** 2
        with torch_threads(cpu_threads(self.fabric, train_loader, gflop)):
            while self._epoch < self._stage.epochs and not self._stage_done:
                self._run_epoch(train_loader, val_loader)

    def _run_epoch(
        self, train_loader: torch.utils.data.DataLoader, val_loader: torch.utils.data.DataLoader
    ) -> None:
        stage, es = self._stage, self.early_stopping
        assert stage is not None and es is not None and self.optimizer is not None
        seed_epoch(self.seed, self.global_epoch, self.fabric.global_rank)
        lr = next(g["lr"] for g in self.optimizer.param_groups if g["name"] == "head")
        desc = f"stage {self._stage_index + 1} {stage.name} epoch {self._epoch + 1}/{stage.epochs}"
        train = self.train_one_epoch(train_loader, desc)
        with self.averaged_weights():
            val = evaluate(
                self.fabric,
                self.model,
                self.eval_criterion,
                val_loader,
                self.num_classes,
                channels_last=self.channels_last,
                autocast=self.autocast(),
            )
            improved = val["f1"] > self.best_f1
            if improved:
                self.best_state = {
                    k: v.detach().clone() for k, v in self.raw_model.state_dict().items()
                }
        self._epoch += 1
        row = EpochStats(
            stage=self._stage_index + 1,
            stage_name=stage.name,
            epoch=self._epoch,
            lr=lr,
            train_loss=train["loss"],
            train_acc=train["acc"],
            val_loss=val["loss"],
            val_acc=val["acc"],
            val_f1=val["f1"],
            epoch_time_s=train["time"],
            train_images_per_s=train["n"] / max(train["time"], 1e-9),
            data_wait_s=train["data_wait"],
        )
        self.history.append(row)
        self.global_epoch += 1
        stopped = es.step(val["f1"])
        if improved:
            self.best_f1 = val["f1"]
            self._save_bundle(row)
        _logger.info(
            "%s: train loss %.4f acc %.3f | val loss %.4f acc %.3f f1 %.4f%s | lr %.2e | "
            "%.1fs %.0f img/s",
            desc,
            row.train_loss,
            row.train_acc,
            row.val_loss,
            row.val_acc,
            row.val_f1,
            " (best)" if improved else "",
            lr,
            row.epoch_time_s,
            row.train_images_per_s,
        )
        self._stage_done = stopped or self._epoch == stage.epochs
        if self._stage_done:
            self.restore_best()
        self._save_checkpoint()
        if stopped:
            _logger.info(
                "early stopping: val macro-F1 did not improve for %d epochs (best %.4f)",
                es.patience,
                es.best_score,
            )

    def restore_best(self) -> None:
        """Load the best weights seen so far into the model (no-op before any epoch)."""
        if self.best_state is not None:
            self.raw_model.load_state_dict(self.best_state)

    # -- persistence -----------------------------------------------------------------
    def _save_bundle(self, row: EpochStats) -> None:
        if not self.fabric.is_global_zero:
            return
        self.meta.best = {
            "stage": row.stage,
            "stage_name": row.stage_name,
            "epoch": row.epoch,
            "global_epoch": self.global_epoch,
            "val_f1": row.val_f1,
            "val_acc": row.val_acc,
            "val_loss": row.val_loss,
        }
        with self.averaged_weights():  # the weights just validated, as best_state
            save_bundle(self.run_dir / "model", self.raw_model, self.meta)

    def _save_checkpoint(self) -> None:
        if self.fabric.is_global_zero:
            write_history(self.run_dir / "history.csv", self.history)
            save_checkpoint(self.run_dir / "last.ckpt", self.state_dict())
        self.fabric.barrier()
