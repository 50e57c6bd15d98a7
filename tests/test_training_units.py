"""Early stopping, scheduler, recipe, precision and checkpoint units."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from cropdoc.config import load_config
from cropdoc.errors import BundleError, ConfigError
from cropdoc.training.checkpoint import CHECKPOINT_KEYS, load_checkpoint, save_checkpoint
from cropdoc.training.early_stopping import EarlyStopping
from cropdoc.training.precision import (
    BF16,
    BF16_FP32_DEPTHWISE,
    FP32,
    cpu_supports_bf16,
    precision_context,
    resolve_precision,
    slow_bf16_convs,
)
from cropdoc.training.recipe import (
    PRETRAINED_STAGES,
    SCRATCH_STAGES,
    SEED_STAGES,
    resolve_stages,
)
from cropdoc.training.scheduler import create_scheduler


def test_early_stopping_seed_example():
    # The seed's table: best at epochs 1 and 2, then five epochs without improvement.
    es = EarlyStopping(patience=5)
    scores = [0.85, 0.87, 0.86, 0.84, 0.85, 0.83, 0.84]
    stops = [es.step(s) for s in scores]
    assert stops == [False] * 6 + [True]
    assert es.best_score == pytest.approx(0.87)
    assert es.counter == 5


def test_early_stopping_improved_flag_and_state_round_trip():
    es = EarlyStopping(patience=2)
    es.step(0.5)
    assert es.improved
    es.step(0.5)  # equal is not an improvement
    assert not es.improved
    other = EarlyStopping(patience=2)
    other.load_state_dict(es.state_dict())
    assert other.step(0.4) is True


def _optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.AdamW(groups)


def test_cosine_reaches_eta_min_at_end_of_stage_for_every_group():
    opt = _optimizer(1e-5, 5e-5)
    sched = create_scheduler(opt, total_steps=20, eta_min=1e-7)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[1]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(5e-5)
    assert all(a >= b for a, b in zip(seen, seen[1:], strict=False))  # monotone decay
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-7, 1e-7])


def test_warmup_rises_then_decays():
    opt = _optimizer(1e-3)
    sched = create_scheduler(opt, total_steps=10, eta_min=0.0, warmup_steps=3)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] == pytest.approx(1e-3)
    assert lrs[-1] < lrs[4]


def test_recipe_seed_is_the_seed_table_exactly():
    stages = resolve_stages(load_config(overrides={"recipe": "seed"}))
    assert [(s.trainable, s.epochs, s.lr, s.backbone_lr, s.warmup_epochs) for s in stages] == [
        ("head", 5, 1e-3, None, 0.0),
        ("partial", 10, 1e-4, None, 0.0),
        ("all", 10, 5e-5, 1e-5, 0.0),
    ]
    assert stages == list(SEED_STAGES)
    # With pretrained weights (the default), auto is cropdoc's three-stage recipe.
    assert resolve_stages(load_config()) == list(PRETRAINED_STAGES)


def test_recipe_scratch_for_weights_none_unless_forced():
    assert resolve_stages(load_config(overrides={"weights": "none"})) == list(SCRATCH_STAGES)
    forced = load_config(overrides={"weights": "none", "recipe": "three-stage"})
    assert resolve_stages(forced) == list(PRETRAINED_STAGES)


def test_recipe_stage_epochs_override_and_mismatch():
    stages = resolve_stages(load_config(overrides={"stage_epochs": [1, 2, 3]}))
    assert [s.epochs for s in stages] == [1, 2, 3]
    with pytest.raises(ConfigError, match="one number per stage"):
        resolve_stages(load_config(overrides={"stage_epochs": [1, 2]}))
    with pytest.raises(ConfigError, match="nothing would be trained"):
        resolve_stages(load_config(overrides={"stage_epochs": [0, 0, 0]}))


def test_recipe_from_yaml(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "arch: resnet50\nstages:\n  - {name: only, epochs: 2, trainable: all, lr: 0.01}\n"
        "optim: {patience: 3}\n"
    )
    config = load_config(cfg, {"optim": {"patience": None}})
    assert config.optim.patience == 3
    assert [s.name for s in resolve_stages(config)] == ["only"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("arch: [unclosed", "malformed YAML"),
        ("archh: resnet50", "unknown key"),
        ("data: {split: [0.5, 0.5, 0.5]}", "summing to 1"),
        ("stage_epochs: [-1, 2, 3]", ">= 0"),
        ("optim: {ema: 1.0}", "less than 1"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, match: str):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(cfg)


def test_precision_explicit_and_auto():
    assert resolve_precision("32") == "32-true"
    assert resolve_precision("bf16") == "bf16-mixed"
    assert resolve_precision("16") == "16-mixed"
    # Without a probe, auto on CPU follows what this CPU computes natively.
    native = "bf16-mixed" if cpu_supports_bf16() else "32-true"
    assert resolve_precision("auto", "cpu") == native


def test_auto_precision_on_a_bf16_cpu_follows_the_probe(monkeypatch):
    from cropdoc.training import precision as precision_mod

    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", "cpu", probe=lambda: "32-true") == "32-true"
    assert resolve_precision("auto", "cpu", probe=lambda: "bf16-mixed") == "bf16-mixed"
    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", "cpu", probe=lambda: "bf16-mixed") == "32-true"


def test_precision_probe_measures_once_and_caches(tmp_path, monkeypatch):
    from cropdoc.models import build
    from cropdoc.training.precision import probe_cpu_precision

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def make():
        calls.append(1)
        return build("mobilenet_v3_small", classes=2, weights="none")

    first = probe_cpu_precision(make, "mobilenet_v3_small", image_size=32, batch_size=2, steps=1)
    again = probe_cpu_precision(make, "mobilenet_v3_small", image_size=32, batch_size=2, steps=1)
    assert first == again and first in (FP32, BF16, BF16_FP32_DEPTHWISE)
    assert len(calls) == 1
    (entry,) = json.loads((tmp_path / "cropdoc" / "precision.json").read_text()).values()
    # MobileNetV3 has 5x5 and stride-2 depthwise convolutions: all three modes were timed.
    assert set(entry["s_per_step"]) == {FP32, BF16, BF16_FP32_DEPTHWISE}
    assert entry["precision"] == first


def _depthwise_net() -> torch.nn.Sequential:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 1),  # dense (pointwise): stays bf16
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # 3x3 stride-1 depthwise: fast in bf16
        nn.Conv2d(8, 8, 5, padding=2, groups=8),  # 5x5 depthwise: slow bf16 backward
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),  # stride-2 depthwise: slow too
        nn.Conv2d(8, 16, 3, padding=1, groups=2),  # grouped, not depthwise
    )


def test_fp32_depthwise_runs_only_the_slow_depthwise_convolutions_in_fp32():
    net = _depthwise_net()
    assert slow_bf16_convs(net) == [net[2], net[3]]
    keys = list(net.state_dict())
    dtypes: dict[int, torch.dtype] = {}
    for i, m in enumerate(net):
        m.register_forward_hook(lambda m, a, out, i=i: dtypes.__setitem__(i, out.dtype))
    x = torch.randn(2, 3, 16, 16)
    region = precision_context(BF16_FP32_DEPTHWISE, "cpu", net)
    for _ in range(2):  # the region is reusable, as a torch.autocast object is
        with region:
            out = net(x)
        assert torch.is_autocast_enabled("cpu") is False
        assert dtypes == {
            0: torch.bfloat16,
            1: torch.bfloat16,
            2: torch.float32,
            3: torch.float32,
            4: torch.bfloat16,
        }
        out.float().sum().backward()  # the graph crosses the precision boundary both ways
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
    # Nothing is left behind: plain forwards, the same parameters and state-dict keys.
    assert all("forward" not in m.__dict__ for m in net)
    assert list(net.state_dict()) == keys
    with precision_context(BF16, "cpu", net):
        net(x)
    assert dtypes[2] == torch.bfloat16  # plain bf16 leaves them to autocast


def _state() -> dict:
    return {
        "format_version": 1,
        "model": {"w": torch.ones(2)},
        "optimizer": {},
        "scheduler": {},
        "stage": 0,
        "epoch": 1,
        "stage_done": False,
        "global_epoch": 1,
        "early_stopping": EarlyStopping().state_dict(),
        "ema": None,
        "best_f1": 0.5,
        "history": [],
        "seed": 42,
    }


def test_checkpoint_from_before_the_moving_average_still_loads(tmp_path: Path):
    path = tmp_path / "last.ckpt"
    state = _state()
    del state["ema"]
    torch.save(state, path)  # format 1, written before optim.ema existed
    assert load_checkpoint(path)["ema"] is None
    torch.save({**state, "format_version": 2}, path)
    with pytest.raises(BundleError, match="missing \\['ema'\\]"):
        load_checkpoint(path)


def test_checkpoint_round_trip_and_strict_keys(tmp_path: Path):
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, _state())
    loaded = load_checkpoint(path)
    assert set(loaded) == CHECKPOINT_KEYS
    assert torch.equal(loaded["model"]["w"], torch.ones(2))
    extra = {**_state(), "surprise": 1}
    torch.save(extra, path)
    with pytest.raises(BundleError, match="unused"):
        load_checkpoint(path)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED_MARKER",))


def test_checkpoint_with_pickle_payload_is_refused_without_running_it(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "last.ckpt"
    with open(path, "wb") as fh:
        pickle.dump({**_state(), "model": _Payload()}, fh)
    with pytest.raises(BundleError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_checkpoint_write_error_keeps_previous(tmp_path: Path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, _state())

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(BundleError, match="No space left"):
        save_checkpoint(path, {**_state(), "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
