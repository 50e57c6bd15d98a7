"""End-to-end training runs on tiny generated data: files, bundle, best-across-stages, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from cropdoc.bundle import load_bundle, read_meta
from cropdoc.errors import ConfigError
from cropdoc.training import trainer as trainer_mod
from cropdoc.training.precision import slow_bf16_convs
from cropdoc.training.trainer import HISTORY_COLUMNS
from cropdoc.workflows import train

RUN_FILES = [
    "config.yaml",
    "split.json",
    "scan_report.json",
    "history.csv",
    "curves.png",
    "model/model.json",
    "model/weights.safetensors",
    "last.ckpt",
    "summary.json",
    "report.md",
    "eval/metrics.json",
    "eval/confusion_matrix.png",
]


def _history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_tiny_three_stage_run_writes_every_file(tiny_data: Path, tmp_path: Path):
    run = tmp_path / "run"
    result = train(tiny_data, run, tiny_config(), show_progress=False)
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    rows = _history(run)
    assert list(rows[0].keys()) == HISTORY_COLUMNS
    assert [int(r["stage"]) for r in rows] == [1, 2, 3]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Head lr per stage: the recipe's 1e-3, 1e-4, 5e-5.
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-3, 1e-4, 5e-5])

    meta = read_meta(run / "model")
    assert meta.arch == "mobilenet_v3_small"
    assert meta.classes == json.loads((run / "split.json").read_text())["classes"]
    assert meta.preprocessing.image_size == 32
    assert meta.best["val_f1"] == pytest.approx(result.best_val_f1)
    assert set(meta.metrics["test"]) >= {"accuracy", "macro_f1"}
    assert [s["trainable"] for s in meta.recipe] == ["head", "partial", "all"]
    # The evaluation after training put its bootstrap intervals into the summary too.
    evaluated = json.loads((run / "eval" / "metrics.json").read_text())["intervals"]
    assert result.test_intervals == evaluated
    assert json.loads((run / "summary.json").read_text())["test_intervals"] == evaluated

    # The bundle reloads and predicts exactly what the in-memory best model predicts.
    bundle = load_bundle(run / "model")
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        expected = result.model.float().eval()(x.contiguous(memory_format=torch.channels_last))
        got = bundle.model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["n"] == len(
        json.loads((run / "split.json").read_text())["splits"]["test"]
    )


def test_refuses_to_overwrite_a_run(tiny_data: Path, tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny_data, run, tiny_config(), show_progress=False)


def test_later_worse_stage_never_overwrites_better_bundle(tiny_data, tmp_path, monkeypatch):
    # Scripted validation F1: stage 1 peaks at 0.9, stages 2 and 3 stay below it.
    scores = iter([0.5, 0.9, 0.6, 0.7, 0.4])
    real_evaluate = trainer_mod.evaluate

    def scripted(*args, **kwargs):
        out = real_evaluate(*args, **kwargs)
        return {**out, "f1": next(scores, out["f1"])}

    monkeypatch.setattr(trainer_mod, "evaluate", scripted)
    run = tmp_path / "run"
    train(tiny_data, run, tiny_config(stage_epochs=[2, 2, 1]), show_progress=False)
    meta = read_meta(run / "model")
    assert meta.best["stage"] == 1 and meta.best["epoch"] == 2
    assert meta.best["val_f1"] == pytest.approx(0.9)
    assert len(_history(run)) == 5


def _interrupt_after(monkeypatch, epochs: int) -> None:
    real = trainer_mod.Trainer.train_one_epoch
    calls = {"n": 0}

    def flaky(self, loader, desc):
        calls["n"] += 1
        if calls["n"] > epochs:
            raise KeyboardInterrupt("simulated kill")
        return real(self, loader, desc)

    monkeypatch.setattr(trainer_mod.Trainer, "train_one_epoch", flaky)


@pytest.mark.parametrize(
    ("done_epochs", "ema"),
    [(2, 0.0), (3, 0.0), (2, 0.9)],  # mid-stage 2, the stage 2/3 boundary; with a moving average
)
def test_resume_matches_uninterrupted_run(tiny_data, tmp_path, monkeypatch, done_epochs, ema):
    config = tiny_config(stage_epochs=[1, 2, 1], optim={"ema": ema})
    reference = train(tiny_data, tmp_path / "ref", config, show_progress=False)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, done_epochs)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_data, run, config, show_progress=False)
    assert len(_history(run)) == done_epochs
    resumed = train(None, run, config, resume=True, show_progress=False)

    ref_rows, rows = _history(tmp_path / "ref"), _history(run)
    assert len(rows) == len(ref_rows) == 4
    for a, b in zip(ref_rows, rows, strict=True):
        assert (a["stage"], a["epoch"]) == (b["stage"], b["epoch"])
        for key in ("lr", "train_loss", "val_loss", "val_f1"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-5), key
    assert resumed.best_val_f1 == pytest.approx(reference.best_val_f1)
    assert resumed.test["accuracy"] == pytest.approx(reference.test["accuracy"])


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot resume"):
        train(None, tmp_path / "nothing", tiny_config(), resume=True, show_progress=False)


def test_same_seed_same_history_and_balance_is_recorded(tiny_data, tmp_path):
    config = tiny_config(stage_epochs=[1, 1, 0], data={"balance": "loss"})
    train(tiny_data, tmp_path / "a", config, show_progress=False)
    train(tiny_data, tmp_path / "b", config, show_progress=False)
    a, b = _history(tmp_path / "a"), _history(tmp_path / "b")
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "val_f1"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-6), key
    assert "balance: loss" in (tmp_path / "a" / "config.yaml").read_text()
    assert read_meta(tmp_path / "a" / "model").training.balance == "loss"


def test_split_seed_keeps_one_split_across_training_seeds(tiny_data, tmp_path):
    from cropdoc.data.split import SplitManifest
    from cropdoc.training import train as train_only

    runs = {
        "a": tiny_config(stage_epochs=[1, 0, 0], runtime={"seed": 1}, data={"split_seed": 9}),
        "b": tiny_config(stage_epochs=[1, 0, 0], runtime={"seed": 2}, data={"split_seed": 9}),
        "c": tiny_config(stage_epochs=[1, 0, 0], runtime={"seed": 9}),
        "d": tiny_config(stage_epochs=[1, 0, 0], runtime={"seed": 1}),
    }
    for name, config in runs.items():
        train_only(tiny_data, tmp_path / name, config, show_progress=False)
    split = {name: SplitManifest.load(tmp_path / name / "split.json") for name in runs}
    # The split depends on the split seed only (c: its own seed 9, no split seed; d: seed 1)...
    assert split["a"].seed == split["b"].seed == 9
    assert split["a"].splits == split["b"].splits == split["c"].splits
    assert split["d"].seed == 1 and split["d"].splits != split["a"].splits
    # ...while the training seed still changes the training.
    assert _history(tmp_path / "a") != _history(tmp_path / "b")


def test_auto_precision_is_measured_per_stage_and_applied(tiny_data, tmp_path, monkeypatch):
    """A frozen backbone and full training can differ in their faster precision."""
    from cropdoc.training import precision as precision_mod

    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: True)
    probed: list[str] = []

    def fake_probe(make_model, key, *, image_size):
        model = make_model()  # built as the stage trains it: frozen parts, BN modes
        trainable = [p.requires_grad for p in model.parameters()]
        probed.append(key)
        return "bf16-mixed" if not all(trainable) else "bf16-mixed+fp32-depthwise"

    monkeypatch.setattr(precision_mod, "probe_cpu_precision", fake_probe)
    seen: list[tuple[str, bool]] = []  # (stage name, autocast on?) per training forward
    real_epoch = trainer_mod.Trainer.train_one_epoch

    depthwise: list[tuple[str, torch.dtype]] = []  # (stage, a slow depthwise conv's output)

    def spy(self, loader, desc):
        stage = desc.split()[2]
        handles = [
            self.raw_model.register_forward_hook(
                lambda m, i, o: seen.append((stage, torch.is_autocast_enabled("cpu")))
            ),
            slow_bf16_convs(self.raw_model)[0].register_forward_hook(
                lambda m, i, o: depthwise.append((stage, o.dtype))
            ),
        ]
        try:
            return real_epoch(self, loader, desc)
        finally:
            for handle in handles:
                handle.remove()

    monkeypatch.setattr(trainer_mod.Trainer, "train_one_epoch", spy)
    config = tiny_config(stage_epochs=[1, 1, 1], runtime={"precision": "auto"})
    result = train(tiny_data, tmp_path / "run", config, show_progress=False)

    assert probed == [
        "mobilenet_v3_small/head",
        "mobilenet_v3_small/partial",
        "mobilenet_v3_small/all",
    ]
    assert result.precision == (
        "feature_extraction bf16-mixed, adaptation bf16-mixed, refinement bf16-mixed+fp32-depthwise"
    )
    by_stage = {stage: {on for s, on in seen if s == stage} for stage, _ in seen}
    assert by_stage == {
        "feature_extraction": {True},
        "adaptation": {True},
        "refinement": {True},
    }
    # Only the refinement stage's mode keeps the slow depthwise convolutions in fp32.
    dw = {stage: {d for s, d in depthwise if s == stage} for stage, _ in depthwise}
    assert dw == {
        "feature_extraction": {torch.bfloat16},
        "adaptation": {torch.bfloat16},
        "refinement": {torch.float32},
    }
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["precision"] == result.precision


def test_moving_average_is_what_is_validated_kept_and_shipped(tiny_data, tmp_path, monkeypatch):
    """With ``optim.ema`` every validation sees the average's weights, training goes on from
    the raw ones, and the bundle holds the average of the best epoch."""
    seen: list[dict] = []
    real_epoch, real_evaluate = trainer_mod.Trainer.train_one_epoch, trainer_mod.evaluate

    def snapshot(model) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def train_epoch(self, loader, desc):
        start = snapshot(self.raw_model)
        out = real_epoch(self, loader, desc)
        seen.append({"start": start, "raw": snapshot(self.raw_model)})
        seen[-1]["ema"] = snapshot(self.ema.module)
        return out

    def evaluate(fabric, model, *args, **kwargs):
        seen[-1]["validated"] = snapshot(model)
        return real_evaluate(fabric, model, *args, **kwargs)

    monkeypatch.setattr(trainer_mod.Trainer, "train_one_epoch", train_epoch)
    monkeypatch.setattr(trainer_mod, "evaluate", evaluate)
    run = tmp_path / "run"
    train(
        tiny_data, run, tiny_config(stage_epochs=[0, 0, 3], optim={"ema": 0.9}), show_progress=False
    )

    assert len(seen) == 3
    for epoch in seen[:-1]:  # the last epoch ends with the best weights restored
        raw, ema, validated = epoch["raw"], epoch["ema"], epoch["validated"]
        weights = [k for k in raw if raw[k].is_floating_point()]
        assert any(not torch.equal(raw[k], ema[k]) for k in weights)  # the average lags
        assert all(torch.equal(validated[k], ema[k]) for k in weights)
    for before, after in zip(seen, seen[1:], strict=False):  # training goes on from the raw weights
        assert all(torch.equal(after["start"][k], before["raw"][k]) for k in before["raw"])
    best = read_meta(run / "model").best["epoch"]
    bundle = load_bundle(run / "model").model.state_dict()
    kept = seen[best - 1]["ema"]
    assert all(torch.allclose(bundle[k].float(), kept[k].float()) for k in bundle if k in kept)
    assert read_meta(run / "model").training.ema == 0.9
