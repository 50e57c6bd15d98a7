"""Resume and DDP correctness: what ``--resume`` refuses and applies, the schedule's position
after a change of device count, and one random stream per rank (two CPU processes, gloo)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tests.ddp_probe import draws
from tests.helpers import REPO

from conftest import tiny_config
from cropdoc.config import RESUME_APPLIED, RESUME_OPTIONS, TRAIN_OPTIONS, resume_conflicts
from cropdoc.data.loaders import ImageDataset, make_loader
from cropdoc.errors import ConfigError
from cropdoc.training import run as run_module
from cropdoc.training import trainer as trainer_module
from cropdoc.training.scheduler import create_scheduler
from cropdoc.training.trainer import seed_epoch

#: One 2-epoch stage: resuming after epoch 1 lands mid-cosine, where a misplaced schedule shows.
TWO_EPOCHS = {
    "stages": [{"name": "all", "epochs": 2, "trainable": "all", "lr": 1e-3}],
    "data": {"image_size": 32, "batch_size": 4, "workers": 0},
}


def _fake_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(tiny_config().to_yaml())
    (run / "last.ckpt").write_bytes(b"never read: the settings are checked first")
    return run


def test_resume_refuses_each_changed_recipe_setting_by_name(tmp_path: Path):
    run = _fake_run(tmp_path)
    for changes, shown in [
        ({"data": {"batch_size": 16}}, "--batch-size 16 (the run has 8)"),
        ({"stage_epochs": [2, 1, 1]}, "--stage-epochs 2,1,1 (the run has 1,1,1)"),
        ({"data": {"image_size": 64}}, "--image-size 64 (the run has 32)"),
        ({"optim": {"eta_min": 0.0}}, "optim.eta_min 0.0 (the run has 1e-07)"),
    ]:
        with pytest.raises(ConfigError, match="cannot resume") as err:
            run_module.train(None, run, tiny_config(**changes), resume=True, show_progress=False)
        assert shown in str(err.value) and "\n" not in str(err.value)
        assert "start a new run with another --out" in str(err.value)


def test_one_rule_says_what_resume_applies():
    applied = {"runtime": {"devices": 2, "precision": "bf16", "accelerator": "cuda"}}
    assert resume_conflicts(tiny_config(), tiny_config(**applied)) == []
    changed = resume_conflicts(tiny_config(), tiny_config(**applied), applied=True)
    assert changed == [
        "--device cuda (the run has cpu)",
        "--devices 2 (the run has 1)",
        "--precision bf16 (the run has 32)",
    ]
    # The CLI's list is derived from the same rule: workers is a runtime matter too.
    assert set(RESUME_OPTIONS) == {n for n, p in TRAIN_OPTIONS.items() if p in RESUME_APPLIED}
    assert "workers" in RESUME_OPTIONS and "batch_size" not in RESUME_OPTIONS


def test_a_resumed_schedule_starts_at_the_same_fraction_of_the_stage():
    def lr_at(steps_done: int, total: int) -> float:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = create_scheduler(opt, total_steps=total, eta_min=1e-7, start_step=steps_done)
        return sched.get_last_lr()[0]

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = create_scheduler(opt, total_steps=20, eta_min=1e-7)
    for _ in range(10):
        opt.step()
        sched.step()
    assert lr_at(10, 20) == pytest.approx(sched.get_last_lr()[0])  # same steps per epoch
    assert lr_at(5, 10) == pytest.approx(sched.get_last_lr()[0])  # half the steps: two ranks


def test_each_rank_draws_its_own_stream_and_every_stream_repeats():
    streams = {}
    for rank in (0, 1):
        for epoch in (0, 1):
            seed_epoch(42, epoch, rank)
            streams[rank, epoch] = draws()
    assert len({json.dumps(s) for s in streams.values()}) == 4
    seed_epoch(42, 1, 1)
    assert draws() == streams[1, 1]


def test_the_shard_sampler_shuffles_a_resumed_epoch_as_the_uninterrupted_run(tmp_path: Path):
    samples = [(tmp_path / f"{i}.jpg", 0) for i in range(40)]

    def order(start_epoch: int, iterations: int) -> list[int]:
        loader = make_loader(
            ImageDataset(samples),
            batch_size=4,
            train=True,
            workers=0,
            shard=(1, 2),
            shuffle_seed=7 + start_epoch,
        )
        loader.sampler.set_epoch(iterations)  # what Fabric does: epochs this process ran
        return list(loader.sampler)

    assert order(3, 0) == order(0, 3) != order(0, 0)
    assert len(order(0, 0)) == 20  # rank 1's half


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as f:
        return list(csv.DictReader(f))


def test_resume_on_two_processes_keeps_the_schedule_and_gives_ranks_their_own_streams(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Epoch 1 on one process, epoch 2 resumed on two (DDP on CPU, gloo)."""
    config = tiny_config(**TWO_EPOCHS).model_copy(update={"stage_epochs": None})
    run = tmp_path / "run"
    real_epoch = trainer_module.Trainer.train_one_epoch
    done = {"n": 0}

    def killed_after_one(self, loader, desc):
        done["n"] += 1
        if done["n"] > 1:
            raise KeyboardInterrupt("simulated kill")
        return real_epoch(self, loader, desc)

    monkeypatch.setattr(trainer_module.Trainer, "train_one_epoch", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_module.train(tiny_data, run, config, show_progress=False)
    monkeypatch.undo()
    assert len(_history(run)) == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["runtime"]["devices"] == 1

    result = subprocess.run(
        [sys.executable, "-m", "tests.ddp_probe", str(run)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,  # ~40 s on an idle 2-core machine; far more on a busy one
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    # Half-way through the cosine, not at eta_min: epochs done x the new steps per epoch.
    floor = 1e-7 / 1e-3
    assert float(rows[1]["lr"]) == pytest.approx(1e-3 * (floor + (1 - floor) * 0.5), rel=1e-6)
    assert "resuming with --devices 2 (the run has 1)" in result.stderr

    probes = {}
    for rank in (0, 1):
        lines = (run / f"streams-rank{rank}.jsonl").read_text().splitlines()
        probes[rank] = [json.loads(line) for line in lines]
        assert [p["epoch"] for p in probes[rank]] == [1]  # the resumed epoch only
    assert probes[0][0] != probes[1][0]  # each rank its own augmentation and dropout
    for rank in (0, 1):  # and each one the stream (seed, epoch, rank) always gives
        seed_epoch(config.runtime.seed, 1, rank)
        assert {"epoch": 1, **draws()} == probes[rank][0]  # JSON keeps floats exactly
    assert math.isfinite(float(rows[1]["train_loss"]))
