"""``cropdoc demo``: offline from scratch by default; transfer learning from a local file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cropdoc.errors import ConfigError
from cropdoc.training.recipe import PRETRAINED_STAGES, resolve_stages
from cropdoc.workflows.demo import DEMO_STAGES, PRETRAINED_DEMO_EPOCHS, demo_config

LITE0 = Path(__file__).resolve().parents[2] / "shared/data/weights"
LITE0 = LITE0 / "tf_efficientnet_lite0.imagenet.safetensors"


def test_default_demo_is_from_scratch_and_offline() -> None:
    config = demo_config()
    assert config.weights == "none"
    assert resolve_stages(config) == list(DEMO_STAGES)


def test_demo_with_a_local_backbone_uses_the_pretrained_recipe(tmp_path: Path) -> None:
    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"not read here")
    config = demo_config(weights=weights, arch="timm/tf_efficientnet_lite0")
    assert config.weights == str(weights) and config.arch == "timm/tf_efficientnet_lite0"
    stages = resolve_stages(config)
    assert [s.epochs for s in stages] == PRETRAINED_DEMO_EPOCHS
    assert [(s.trainable, s.lr, s.backbone_lr) for s in stages] == [
        (s.trainable, s.lr, s.backbone_lr) for s in PRETRAINED_STAGES
    ]
    with pytest.raises(ConfigError, match="--arch"):
        demo_config(weights=weights)
    with pytest.raises(ConfigError, match="not found"):
        demo_config(weights=tmp_path / "missing.safetensors", arch="timm/tf_efficientnet_lite0")


def test_pretrained_demo_runs_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not LITE0.is_file():
        pytest.skip(f"the shared pretrained Lite0 weights are not at {LITE0}")
    from typer.testing import CliRunner

    from cropdoc.cli import app
    from cropdoc.workflows import demo

    # The wiring is under test (CLI -> pretrained config -> three stages -> bundle), not
    # the demo's length: one epoch per stage keeps it to about a minute.
    monkeypatch.setattr(demo, "PRETRAINED_DEMO_EPOCHS", [1, 1, 1])

    result = CliRunner().invoke(
        app,
        [
            "demo",
            "--out",
            str(tmp_path / "demo"),
            "--images-per-class",
            "6",
            "--weights",
            str(LITE0),
            "--arch",
            "timm/tf_efficientnet_lite0",
        ],
    )
    assert result.exit_code == 0, result.output
    from cropdoc.bundle import read_meta

    meta = read_meta(tmp_path / "demo" / "run" / "model")
    assert meta.arch == "timm/tf_efficientnet_lite0" and meta.training.weights == str(LITE0)
    assert [s["epochs"] for s in meta.recipe] == [1, 1, 1]
    assert [s["trainable"] for s in meta.recipe] == ["head", "partial", "all"]
