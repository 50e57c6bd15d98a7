"""The training recipe as data: which stages run, with which epochs, rates and trainable sets.

The seed's three stages (``Model-Training.md``):

=====  ======================  ======  ==========================  =======================
stage  trainable               epochs  lr                          why
=====  ======================  ======  ==========================  =======================
1      head                    5       1e-3                        train the new head fast
2      head + top of backbone  10      1e-4                        adapt high-level features
3      everything              10      1e-5 backbone / 5e-5 head   co-adapt, gently
=====  ======================  ======  ==========================  =======================

``recipe="seed"`` is that table, exactly. ``three-stage`` is cropdoc's default for a
pretrained backbone: the same three stages with the numbers the quality benchmark
(``benchmarks/quality.py``, BENCHMARKS.md) measured to reach a better model in the same
time. With ``weights=none`` there is no pretrained knowledge to protect, and freezing a
random backbone only wastes epochs, so the ``auto`` recipe becomes one from-scratch stage
with a higher learning rate and a short warm-up.
"""

from __future__ import annotations

import logging

from ..config import StageConfig, TrainConfig
from ..errors import ConfigError

__all__ = ["PRETRAINED_STAGES", "SCRATCH_STAGES", "SEED_STAGES", "resolve_stages"]

_logger = logging.getLogger(__name__)

#: The seed's table, exactly (``--recipe seed``).
SEED_STAGES: tuple[StageConfig, ...] = (
    StageConfig(name="feature_extraction", epochs=5, trainable="head", lr=1e-3),
    StageConfig(name="adaptation", epochs=10, trainable="partial", lr=1e-4),
    StageConfig(name="refinement", epochs=10, trainable="all", lr=5e-5, backbone_lr=1e-5),
)

#: The default for pretrained backbones (``--recipe three-stage``, what ``auto`` picks).
#: Measured on plantvillage-mini with the ImageNet EfficientNet-Lite0 (BENCHMARKS.md,
#: "Quality"): the seed's rates leave the head under-trained after stage 1 (val macro-F1
#: 0.84), stall in stage 2 (0.91) and barely move in stage 3 (test macro-F1 0.92 at 224 px
#: in 17 min, 0.86 at 160 px). Ten times higher rates with short warm-ups, a short stage 1
#: and 2 and a longer stage 3 reach 0.96 at 160 px (val 0.98).
PRETRAINED_STAGES: tuple[StageConfig, ...] = (
    StageConfig(name="feature_extraction", epochs=2, trainable="head", lr=3e-3),
    StageConfig(name="adaptation", epochs=4, trainable="partial", lr=1e-3, warmup_epochs=0.5),
    StageConfig(
        name="refinement",
        epochs=12,
        trainable="all",
        lr=1e-3,
        backbone_lr=3e-4,
        warmup_epochs=1,
        patience=6,
    ),
)

# From scratch: one stage, everything trainable. Measured on plantvillage-mini (see
# BENCHMARKS.md / the trainer issue note): AdamW at 3e-3 with two warm-up epochs learns
# reliably where the seed's 1e-3/1e-4/1e-5 schedule on a frozen random backbone does not.
SCRATCH_STAGES: tuple[StageConfig, ...] = (
    StageConfig(name="scratch", epochs=80, trainable="all", lr=3e-3, warmup_epochs=2, patience=15),
)


_RECIPES = {"seed": SEED_STAGES, "three-stage": PRETRAINED_STAGES, "scratch": SCRATCH_STAGES}


def resolve_stages(config: TrainConfig) -> list[StageConfig]:
    """Return the stages a run will execute, after recipe choice and epoch overrides.

    Raises:
        ConfigError: when ``stage_epochs`` does not match the number of stages.
    """
    if config.stages is not None:
        stages = list(config.stages)
    else:
        recipe = config.recipe
        if recipe == "auto":
            recipe = "scratch" if config.weights.lower() == "none" else "three-stage"
            if recipe == "scratch":
                _logger.info(
                    "weights=none: no pretrained features to preserve, so using one "
                    "from-scratch stage (all layers, lr 3e-3, warm-up); pass "
                    "--recipe three-stage (or --recipe seed) to train in three stages anyway"
                )
        stages = list(_RECIPES[recipe])
    stages = _per_stage(stages, config.stage_epochs, "epochs", "--stage-epochs")
    stages = _per_stage(stages, config.stage_lrs, "lr", "--stage-lrs")
    if config.backbone_lr is not None:
        stages = [
            s.model_copy(update={"backbone_lr": config.backbone_lr}) if s.backbone_lr else s
            for s in stages
        ]
    if not any(s.epochs > 0 for s in stages):
        raise ConfigError("every stage has 0 epochs: nothing would be trained")
    return stages


def _per_stage(
    stages: list[StageConfig], values: list | None, key: str, option: str
) -> list[StageConfig]:
    """``stages`` with one value per stage of ``key`` replaced (``--stage-epochs`` and co)."""
    if values is None:
        return stages
    if len(values) != len(stages):
        raise ConfigError(
            f"{option} has {len(values)} value(s) but the recipe has {len(stages)} stage(s) "
            f"({', '.join(s.name for s in stages)}); give one number per stage, e.g. "
            f"{','.join(f'{getattr(s, key):g}' for s in stages)}"
        )
    return [s.model_copy(update={key: v}) for s, v in zip(stages, values, strict=True)]
