"""``cropdoc demo``: the whole pipeline on generated leaves, in a few CPU minutes.

It generates a small PlantVillage-style dataset (no network, no shipped images), then
trains MobileNetV3-Small through all three stages of the recipe — head, then the top of
the backbone, then everything with differential learning rates — and evaluates the best
bundle on the held-out test split.

Without a local pretrained backbone (no network is assumed), the demo starts from random
weights. The recipe's learning rates (1e-3 → 1e-4 → 1e-5) are tuned to protect ImageNet
features; from random weights they barely move, so the demo keeps the recipe's structure
(freeze policy, differential rates, cosine per stage, early stopping, best-across-stages)
with rates that learn from scratch. Given a pretrained file (``weights=`` and the ``arch``
it belongs to), the demo shows transfer learning instead: the pretrained recipe with
shorter stages at a small input size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..config import StageConfig, TrainConfig, load_config
from ..data.synthetic import generate_dataset
from ..errors import ConfigError
from ..training import TrainResult
from .train import train

__all__ = ["DEMO_STAGES", "demo_config", "run_demo"]

_logger = logging.getLogger(__name__)

DEMO_STAGES = [
    StageConfig(name="feature_extraction", epochs=2, trainable="head", lr=3e-3),
    StageConfig(name="adaptation", epochs=4, trainable="partial", lr=3e-3),
    StageConfig(
        name="refinement",
        epochs=55,
        trainable="all",
        lr=3e-3,
        backbone_lr=2e-3,
        warmup_epochs=1,
        patience=15,
    ),
]
DEMO_IMAGE_SIZE = 64
#: With a pretrained backbone: the pretrained recipe's stages, shortened, at 96 px.
PRETRAINED_DEMO_EPOCHS = [3, 5, 5]
PRETRAINED_DEMO_IMAGE_SIZE = 96


def demo_config(
    seed: int = 42, *, weights: str | Path | None = None, arch: str | None = None
) -> TrainConfig:
    """The demo's training settings.

    Without ``weights``: MobileNetV3-Small, random init, small images. With a local
    pretrained file: that backbone (``arch`` must say which it is) and transfer learning.

    Raises:
        ConfigError: ``weights`` without ``arch``, or a file that does not exist.
    """
    if weights is None:
        return load_config(
            overrides={
                "arch": arch or "mobilenet_v3_small",
                "weights": "none",
                "recipe": "three-stage",
                "stages": [s.model_dump() for s in DEMO_STAGES],
                "data": {"image_size": DEMO_IMAGE_SIZE, "batch_size": 32},
                "runtime": {"seed": seed},
            }
        )
    if arch is None:
        raise ConfigError(
            "a demo with --weights needs --arch naming the architecture of the file, e.g. "
            "--arch timm/tf_efficientnet_lite0"
        )
    if not Path(weights).is_file():
        raise ConfigError(f"weights file not found: {weights}")
    return load_config(
        overrides={
            "arch": arch,
            "weights": str(weights),
            "recipe": "three-stage",
            "stage_epochs": PRETRAINED_DEMO_EPOCHS,
            "data": {"image_size": PRETRAINED_DEMO_IMAGE_SIZE, "batch_size": 32},
            "runtime": {"seed": seed},
        }
    )


def run_demo(
    out: str | Path = "demo-run",
    *,
    images_per_class: int = 200,
    seed: int = 42,
    weights: str | Path | None = None,
    arch: str | None = None,
    config: TrainConfig | None = None,
    show_progress: bool = True,
    scan_progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Generate the demo data under ``out/data`` and train into ``out/run``.

    A second call reuses the generated data; an earlier finished run is replaced.
    ``weights`` (a local pretrained file) and ``arch``: see :func:`demo_config`.
    """
    import shutil

    out = Path(out)
    data = generate_dataset(
        out / "data", images_per_class=images_per_class, image_size=96, seed=seed
    )
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    _logger.info("demo data: %s; training into %s", data, run_dir)
    return train(
        data,
        run_dir,
        config or demo_config(seed, weights=weights, arch=arch),
        show_progress=show_progress,
        scan_progress=scan_progress,
    )
