"""The command line: help, version, one-line errors with exit code 2, DDP training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cropdoc import __version__


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cropdoc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == f"cropdoc {__version__}"
    helptext = run_cli("--help").stdout
    for command in ("train", "demo", "data"):
        assert command in helptext
    assert "--stage-epochs" in run_cli("train", "--help").stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "/nonexistent/folder", "--out", "{tmp}/r"], "dataset folder not found"),
        (["train", "{file}", "--out", "{tmp}/r"], "not a folder"),
        (["train", "{tmp}", "--arch", "vgg16", "--out", "{tmp}/r"], "resnet50"),
        (["train", "{tmp}", "--split", "0.5,0.5,0.5", "--out", "{tmp}/r"], "summing to 1"),
        (["train", "{tmp}", "--stage-epochs", "-1,2,3", "--out", "{tmp}/r"], ">= 0"),
        (["train", "{tmp}", "--config", "{badyaml}", "--out", "{tmp}/r"], "malformed YAML"),
        (["train", "{tmp}", "--config", "{unknownkey}", "--out", "{tmp}/r"], "unknown key"),
        (["data", "inspect", "/nonexistent/folder"], "does not exist"),
        (["serve", "{tmp}", "--workers", "-1"], "--workers must be 0 (auto) or more"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, monkeypatch, args, message):
    afile = tmp_path / "a_file.txt"
    afile.write_text("x")
    bad = tmp_path / "bad.yaml"
    bad.write_text("arch: [unclosed")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("archh: resnet50")
    subs = {
        "{tmp}": str(tmp_path),
        "{file}": str(afile),
        "{badyaml}": str(bad),
        "{unknownkey}": str(unknown),
    }
    argv = []
    for a in args:
        for k, v in subs.items():
            a = a.replace(k, v)
        argv.append(a)
    # In-process through the real entry point (main), which turns errors into exit 2.
    import importlib
    import io

    from rich.console import Console

    from cropdoc.cli import main

    app_module = importlib.import_module("cropdoc.cli.app")
    buffer = io.StringIO()
    monkeypatch.setattr(app_module, "console", Console(file=buffer, width=400))
    monkeypatch.setattr(sys, "argv", ["cropdoc", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = buffer.getvalue()
    assert exit_info.value.code == 2, err
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_entry_point_error_in_a_real_process(tmp_path: Path):
    result = run_cli("train", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not found" in result.stderr


def test_ddp_two_cpu_processes_train_one_stage_and_write_one_bundle(tiny_data: Path, tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "arch": "mobilenet_v3_small",
                "weights": "none",
                "stages": [{"name": "all", "epochs": 1, "trainable": "all", "lr": 1e-3}],
                "data": {"image_size": 32, "batch_size": 8, "workers": 0},
                "runtime": {"precision": "32"},
            }
        )
    )
    run = tmp_path / "run"
    result = run_cli(
        "train",
        str(tiny_data),
        "--out",
        str(run),
        "--config",
        str(config),
        "--devices",
        "2",
        "--device",
        "cpu",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "model" / "model.json").is_file()
    assert not list(run.glob("model.tmp-*")) and not (run / "model.old").exists()
    history = (run / "history.csv").read_text().strip().splitlines()
    assert len(history) == 2  # header + one epoch, written once (rank zero)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 1
