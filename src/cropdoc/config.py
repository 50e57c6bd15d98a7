"""Configuration: every number of the recipe lives here, once, as a default.

The seed's values (``Model-Training.md``) are the defaults. Users override them from a
YAML file (``--config``) and from CLI options; options left unset (``None``) are dropped
before merging, so each default is written exactly once, here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

__all__ = [
    "DataConfig",
    "OptimConfig",
    "RuntimeConfig",
    "StageConfig",
    "TrainConfig",
    "RESUME_APPLIED",
    "RESUME_OPTIONS",
    "TRAIN_OPTIONS",
    "load_config",
    "merge_overrides",
    "options_to_overrides",
    "resume_conflicts",
]

_logger = logging.getLogger(__name__)

Trainable = Literal["head", "partial", "all"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """How images are found, split, decoded and batched."""

    image_size: int = Field(224, ge=16, le=1024)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int | None = Field(None, ge=1)
    workers: int | None = Field(None, ge=0, description="None: sized for the machine")
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int | None = Field(
        None,
        description="seed of the train/val/test split; None: the run's seed (runtime.seed). "
        "Keep it fixed to train with other seeds on one split",
    )
    group_pattern: str | None = Field(None, description="None: the PlantVillage leaf-id rule")
    classes: list[str] | None = None
    max_pixels: int = Field(40_000_000, ge=1)
    balance: Literal["none", "loss", "sampler"] = "none"
    variant: str | None = Field(
        None, description="the image variant folder to read (color, grayscale, segmented)"
    )
    resplit: bool = Field(
        False, description="pool a pre-split copy's folders and split them grouped by leaf"
    )
    label_conflicts: Literal["exclude", "keep"] = Field(
        "exclude", description="byte-identical files filed under two classes"
    )
    cache: Literal["auto", "ram", "disk", "none"] = Field(
        "auto",
        description="decoded-image cache: RAM when it fits, else a memory-mapped file in "
        "RUN/cache/ (auto); always ram or disk; none",
    )
    cache_max_mb: int | None = Field(
        None, ge=0, description="bound of a RAM cache in MiB (None: 2 GiB or RAM/4)"
    )

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x < 0 for x in v) or not math.isclose(sum(v), 1.0, abs_tol=1e-6) or v[0] <= 0:
            raise ValueError(
                f"split ratios must be three non-negative numbers summing to 1 with train > 0, "
                f"got {list(v)} (e.g. 0.7,0.15,0.15)"
            )
        return v


class StageConfig(_Strict):
    """One stage of progressive unfreezing."""

    name: str
    epochs: int = Field(ge=0)
    trainable: Trainable
    lr: float = Field(gt=0, description="head learning rate (and backbone, unless backbone_lr)")
    backbone_lr: float | None = Field(None, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    patience: int | None = Field(None, ge=1, description="None: optim.patience")


class OptimConfig(_Strict):
    """The regularization stack and optimizer settings shared by all stages."""

    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    drop_path: float | Literal["auto"] = Field(
        "auto",
        description="stochastic depth: the chance the deepest residual block is skipped in a "
        "training step (less for earlier blocks); auto: the architecture's own (0.2 for "
        "EfficientNet-B0 and the timm models that have it, none for ResNet-50 and "
        "MobileNetV3-Small)",
    )
    ema: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="exponential moving average of the weights: the most its decay "
        "reaches (each stage starts a new average, its decay warming up from 0); "
        "validation, the best model and the bundle use the average; 0: off",
    )
    clip_grad_norm: float | None = Field(1.0, gt=0)
    eta_min: float = Field(1e-7, ge=0)
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)
    bn_momentum: float | Literal["auto"] = Field(
        "auto",
        description="BatchNorm momentum; auto: the architecture's own for pretrained weights, "
        "0.1 for weights=none (MobileNetV3's 0.01 leaves the running statistics of a new "
        "model near their init for hundreds of steps, so validation sees garbage)",
    )
    bn_stats: Literal["auto", "frozen", "fixed", "update"] = Field(
        "auto",
        description="BatchNorm running statistics: frozen = those of frozen layers stay "
        "pretrained; fixed = every layer's stay pretrained (affine weights still train); "
        "update = all follow the data; auto: fixed for pretrained weights, update for "
        "weights=none",
    )

    @field_validator("drop_path")
    @classmethod
    def _drop_path_is_a_probability(cls, v: float | str) -> float | str:
        if v != "auto" and not 0 <= v < 1:
            raise ValueError(f"drop_path must be in [0, 1) or auto, got {v}")
        return v


class RuntimeConfig(_Strict):
    """Where and how the loop runs (Lightning Fabric settings)."""

    accelerator: str = "auto"
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    precision: Literal["auto", "32", "bf16", "16"] = "auto"
    channels_last: bool = True
    seed: int = 42
    deterministic: bool = False


class TrainConfig(_Strict):
    """Everything ``cropdoc train`` needs besides the data path and the run directory."""

    arch: str = "efficientnet_b0"
    weights: str = "imagenet"
    recipe: Literal["auto", "three-stage", "seed", "scratch"] = "auto"
    stage_epochs: list[int] | None = None
    stage_lrs: list[float] | None = Field(
        None, description="head learning rate per stage (the recipe's otherwise)"
    )
    backbone_lr: float | None = Field(
        None, gt=0, description="backbone learning rate of the stages that set one"
    )
    stages: list[StageConfig] | None = None
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _check_stage_epochs(self) -> TrainConfig:
        if self.stage_epochs is not None and any(e < 0 for e in self.stage_epochs):
            raise ValueError(f"stage epochs must be >= 0, got {self.stage_epochs}")
        if self.stage_lrs is not None and any(lr <= 0 for lr in self.stage_lrs):
            raise ValueError(f"stage learning rates must be > 0, got {self.stage_lrs}")
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see `cropdoc train --help`)"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    # None means "not given": keep the default written above instead of overriding it.
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            value = _drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def merge_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Return ``config`` with the non-None values of a nested ``overrides`` dict applied.

    Raises:
        ConfigError: when the result is invalid.
    """
    merged = _deep_merge(config.model_dump(), _drop_none(overrides))
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(f"invalid configuration: {_format_validation_error(e)}") from e


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Load a YAML config (or the defaults) and apply CLI overrides.

    Raises:
        ConfigError: missing file, malformed YAML, unknown keys or invalid values.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"malformed YAML in {p}: {e}".splitlines()[0]) from e
        except (UnicodeDecodeError, OSError) as e:  # a binary or unreadable file
            raise ConfigError(f"cannot read {p} as a UTF-8 YAML config: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p} must hold a mapping of settings, got {type(loaded).__name__}")
        raw = loaded
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"invalid configuration in {path}: {_format_validation_error(e)}") from e
    return merge_overrides(config, overrides or {})


#: The flat training options of :func:`cropdoc.train` and ``cropdoc train`` / ``compare``,
#: and where each lives in :class:`TrainConfig`. One table, so the Python API and the CLI
#: accept the same names with the same meaning.
TRAIN_OPTIONS: dict[str, tuple[str, ...]] = {
    "arch": ("arch",),
    "weights": ("weights",),
    "recipe": ("recipe",),
    "stage_epochs": ("stage_epochs",),
    "stage_lrs": ("stage_lrs",),
    "backbone_lr": ("backbone_lr",),
    "image_size": ("data", "image_size"),
    "batch_size": ("data", "batch_size"),
    "workers": ("data", "workers"),
    "balance": ("data", "balance"),
    "split": ("data", "split"),
    "split_seed": ("data", "split_seed"),
    "resplit": ("data", "resplit"),
    "variant": ("data", "variant"),
    "label_conflicts": ("data", "label_conflicts"),
    "classes": ("data", "classes"),
    "weight_decay": ("optim", "weight_decay"),
    "label_smoothing": ("optim", "label_smoothing"),
    "drop_path": ("optim", "drop_path"),
    "ema": ("optim", "ema"),
    "patience": ("optim", "patience"),
    "device": ("runtime", "accelerator"),
    "devices": ("runtime", "devices"),
    "precision": ("runtime", "precision"),
    "seed": ("runtime", "seed"),
    "deterministic": ("runtime", "deterministic"),
}


#: The settings a resumed run takes from the new config: where and how it runs, never what
#: it learns. Every other setting must equal the run's ``config.yaml`` or resume refuses
#: (:func:`resume_conflicts`): a changed batch size, image size, stage length or learning
#: rate would silently mix two recipes in one model. A changed device count is safe: the
#: stage's learning-rate schedule is rebuilt at the same fraction of the stage.
RESUME_APPLIED: frozenset[tuple[str, ...]] = frozenset(
    {
        ("runtime", "accelerator"),
        ("runtime", "devices"),
        ("runtime", "num_nodes"),
        ("runtime", "strategy"),
        ("runtime", "precision"),
        ("runtime", "channels_last"),
        ("runtime", "deterministic"),
        ("data", "workers"),
        ("data", "eval_batch_size"),
        ("data", "cache"),
        ("data", "cache_max_mb"),
    }
)


#: The training options (:data:`TRAIN_OPTIONS`) ``--resume`` applies; all others must match.
RESUME_OPTIONS: tuple[str, ...] = tuple(n for n, p in TRAIN_OPTIONS.items() if p in RESUME_APPLIED)


def _leaves(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_leaves(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def resume_conflicts(saved: TrainConfig, new: TrainConfig, *, applied: bool = False) -> list[str]:
    """The settings ``new`` changes that a resumed run cannot apply, as readable items.

    Each item names the option as the command line spells it (``--batch-size 64 (the run
    has 32)``), or the config key for settings without one (``optim.eta_min``). With
    ``applied``: the changes it does apply (:data:`RESUME_APPLIED`) instead.

    >>> resume_conflicts(TrainConfig(), TrainConfig(data=DataConfig(batch_size=64)))
    ['--batch-size 64 (the run has 32)']
    """
    flags = {path: "--" + name.replace("_", "-") for name, path in TRAIN_OPTIONS.items()}
    old, now = _leaves(saved.model_dump(mode="json")), _leaves(new.model_dump(mode="json"))
    items = []
    for path in sorted(set(old) | set(now)):
        if (path in RESUME_APPLIED) != applied or old.get(path) == now.get(path):
            continue
        name = flags.get(path, ".".join(path))
        items.append(f"{name} {_shown(now.get(path))} (the run has {_shown(old.get(path))})")
    return items


def _shown(value: Any) -> str:
    if value is None:
        return "the default"
    if isinstance(value, list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def options_to_overrides(**options: Any) -> dict[str, Any]:
    """Turn flat training options (:data:`TRAIN_OPTIONS`) into a nested config override.

    ``None`` means "not given" and is dropped by :func:`merge_overrides`.

    Raises:
        ConfigError: an unknown option, named with the known ones.
    """
    unknown = sorted(set(options) - set(TRAIN_OPTIONS))
    if unknown:
        raise ConfigError(
            f"unknown training option(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(TRAIN_OPTIONS))}"
        )
    nested: dict[str, Any] = {}
    for name, value in options.items():
        *parents, leaf = TRAIN_OPTIONS[name]
        target = nested
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = list(value) if isinstance(value, tuple) and name != "split" else value
    return nested
