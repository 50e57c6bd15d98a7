"""The command line: help, options, ``--out``, one-line errors with exit code 2, DDP training."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from tests.helpers import TINY_CONFIG, clear_error, cli_in_process, error_lines
from typer.testing import CliRunner

from cropdoc import __version__
from cropdoc.cli import app
from cropdoc.cli.options import EvalSplit, TrainingOptions, pin_out
from cropdoc.config import TRAIN_OPTIONS, TrainConfig

WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}
#: Type names Click/Typer print when an option has no metavar.
TYPE_NAMES = ("INTEGER", "TEXT", "FLOAT", "<int>", "<float>", "<text>", "<str>")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cropdoc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env=WIDE)


def flat(text: str) -> str:
    """Help text with the table borders and line wraps taken out."""
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple]:
    """What ``train`` and ``compare`` would hand to the library; the command stops there."""
    seen: dict[str, tuple] = {}

    def stop(name: str):
        def record(*args, **kwargs):
            seen[name] = (args, kwargs)
            raise typer.Exit(0)

        return record

    cli = "cropdoc.cli."
    monkeypatch.setattr(importlib.import_module(cli + "train"), "_train", stop("train"))
    monkeypatch.setattr(importlib.import_module(cli + "evaluate"), "_compare", stop("compare"))
    return seen


def test_version_help_and_completion():
    assert run_cli("--version").stdout.strip() == f"cropdoc {__version__}"
    helptext = run_cli("--help").stdout
    for command in ("train", "compare", "evaluate", "demo", "data"):
        assert command in helptext
    assert "--install-completion" in helptext
    assert "--stage-epochs" in run_cli("train", "--help").stdout


def test_train_and_compare_share_the_training_options_of_the_api():
    declared = {f.name for f in dataclasses.fields(TrainingOptions)}
    # Every option the Python API takes is on the command line, under the same name.
    assert declared == set(TRAIN_OPTIONS) - {"arch"} | {"config"}
    commands = typer.main.get_command(app).commands
    for name in ("train", "compare"):
        params = {p.name for p in commands[name].params}
        assert declared <= params, (name, declared - params)
    assert "arch" in {p.name for p in commands["train"].params}


def test_help_lists_the_registry_choices_and_config_defaults(monkeypatch: pytest.MonkeyPatch):
    import cropdoc.models

    known = cropdoc.models.list_archs()
    # Built from the registry when shown, not typed into the CLI: a new spec appears.
    monkeypatch.setattr(cropdoc.models, "list_archs", lambda: [*known, "made_up_net"])
    defaults = TrainConfig()
    for command in ("train", "compare"):
        result = invoke(command, "--help")
        assert result.exit_code == 0, result.output
        text = flat(result.output)
        for arch in [*known, "made_up_net"]:
            assert arch in text, (command, arch)
        for choice in ("three-stage", "scratch", "bf16", "sampler", "cuda"):
            assert choice in text, (command, choice)
        assert f"Input side in pixels. (default: {defaults.data.image_size})" in text
        assert f"(default: {defaults.optim.label_smoothing:g})" in text
        assert "--stage-lrs LR,LR,LR" in text and "--backbone-lr LR" in text
    assert f"(default: {defaults.arch})" in flat(invoke("train", "--help").output)


@pytest.mark.parametrize(
    "command", [["train"], ["compare"], ["evaluate"], ["demo"], ["data", "inspect"]]
)
def test_help_names_values_not_python_types(command: list[str]):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert not [t for t in TYPE_NAMES if t in result.output], result.output


def test_enums_match_what_the_library_accepts():
    from cropdoc.evaluation.evaluate import EVAL_SPLITS

    assert {s.value for s in EvalSplit} == set(EVAL_SPLITS)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "/nonexistent/folder", "--out", "{tmp}/r"], "dataset folder not found"),
        (["train", "{file}", "--out", "{tmp}/r"], "not a folder"),
        (["train", "{tmp}", "--split", "0.5,0.5,0.5", "--out", "{tmp}/r"], "summing to 1"),
        (["train", "{tmp}", "--split", "a,b,c", "--out", "{tmp}/r"], "--split: expected"),
        (["train", "{tmp}", "--stage-lrs", "1e-3,x", "--out", "{tmp}/r"], "--stage-lrs"),
        (["train", "{tmp}", "--stage-epochs", "-1,2,3", "--out", "{tmp}/r"], ">= 0"),
        (["train", "{tmp}", "--config", "{badyaml}", "--out", "{tmp}/r"], "malformed YAML"),
        (["train", "{tmp}", "--config", "{unknownkey}", "--out", "{tmp}/r"], "unknown key"),
        (["data", "inspect", "/nonexistent/folder"], "does not exist"),
        (["serve", "{tmp}", "--processes", "-1"], "--processes must be 0"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], message: str):
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
    code, err = cli_in_process(argv)  # the real entry point, which turns errors into exit 2
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("command", [["train", "--arch", "vgg16"], ["compare", "--archs", "vgg16"]])
def test_unknown_arch_is_one_line_naming_the_known_ones(tmp_path: Path, command: list[str]):
    from cropdoc.models import list_archs

    name, *rest = command
    code, err = cli_in_process([name, str(tmp_path), *rest, "--out", str(tmp_path / "r")])
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "vgg16" in lines[0]
    assert all(arch in lines[0] for arch in list_archs()), lines[0]


def test_out_that_holds_files_gets_a_numbered_sibling(tmp_path: Path, calls: dict):
    def run_dir(*extra: str) -> Path:
        result = invoke("train", str(tmp_path), "--out", str(tmp_path / "run"), *extra)
        assert result.exit_code == 0, result.output
        return calls["train"][0][1]

    assert run_dir() == tmp_path / "run"  # missing
    (tmp_path / "run").mkdir()
    assert run_dir() == tmp_path / "run"  # empty
    (tmp_path / "run" / "history.csv").write_text("stage\n")
    code, err = cli_in_process(["train", str(tmp_path), "--out", str(tmp_path / "run")])
    assert code == 0 and calls["train"][0][1] == tmp_path / "run-2"
    assert f"already holds files: this run goes to {tmp_path / 'run-2'}" in err
    (tmp_path / "run-2").mkdir()
    assert run_dir() == tmp_path / "run-3"
    assert run_dir("--exist-ok") == tmp_path / "run"
    assert run_dir("--resume") == tmp_path / "run"


def test_training_options_reach_the_config_of_train_and_compare(tmp_path: Path, calls: dict):
    from cropdoc.training.recipe import resolve_stages

    options = [
        *("--recipe", "three-stage", "--stage-epochs", "1,2,3"),
        *("--stage-lrs", "2e-3,2e-4,1e-4", "--backbone-lr", "2e-5"),
        *("--weight-decay", "0.01", "--label-smoothing", "0.05", "--patience", "3"),
        *("--drop-path", "0", "--ema", "0.99"),
        *("--precision", "bf16", "--balance", "loss", "--split", "0.8,0.1,0.1"),
        *("--split-seed", "3"),
        *("--classes", "a,b", "--device", "cpu", "--seed", "7", "--deterministic"),
    ]
    result = invoke("train", str(tmp_path), "--arch", "resnet50", *options)
    assert result.exit_code == 0, result.output
    config = calls["train"][0][2]
    assert config.arch == "resnet50"
    assert (config.optim.weight_decay, config.optim.label_smoothing) == (0.01, 0.05)
    assert config.optim.patience == 3 and config.optim.drop_path == 0.0
    assert config.optim.ema == 0.99
    assert config.data.balance == "loss" and config.data.split == (0.8, 0.1, 0.1)
    assert config.data.split_seed == 3
    assert config.data.classes == ["a", "b"]
    rt = config.runtime
    assert (rt.precision, rt.accelerator, rt.seed, rt.deterministic) == ("bf16", "cpu", 7, True)
    stages = resolve_stages(config)
    assert [s.epochs for s in stages] == [1, 2, 3]
    assert [s.lr for s in stages] == [2e-3, 2e-4, 1e-4]
    # Only the stage with its own backbone rate (refinement) takes --backbone-lr.
    assert [s.backbone_lr for s in stages] == [None, None, 2e-5]

    result = invoke("compare", str(tmp_path), "--archs", "resnet50,mobilenet_v3_small", *options)
    assert result.exit_code == 0, result.output
    kwargs = calls["compare"][1]
    assert kwargs["archs"] == ["resnet50", "mobilenet_v3_small"]
    assert kwargs["config"].model_copy(update={"arch": "resnet50"}) == config
    assert kwargs["device"] == "cpu"


def test_compare_defaults_to_every_registered_arch(tmp_path: Path, calls: dict):
    from cropdoc.models import list_archs

    assert invoke("compare", str(tmp_path)).exit_code == 0
    assert calls["compare"][1]["archs"] == list_archs()


def test_resume_refuses_a_changed_recipe_option_in_one_line(tmp_path: Path):
    """A run stopped before its first checkpoint was read: the check comes first."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    (run / "last.ckpt").write_bytes(b"not read: the options are checked first")
    resume = ["train", "--resume", "--out", str(run)]
    for option, value, shown in [
        ("--batch-size", "64", "--batch-size 64 (the run has 8)"),
        ("--stage-epochs", "2,2,2", "--stage-epochs 2,2,2 (the run has 1,1,1)"),
        ("--image-size", "64", "--image-size 64 (the run has 32)"),
        ("--resplit", None, "--resplit True (the run has False)"),
        ("--seed", "7", "--seed 7 (the run has 42)"),
    ]:
        code, err = cli_in_process([*resume, option, *([value] if value else [])])
        assert clear_error(code, err, "cannot resume", shown, "--devices"), (option, err)
    code, err = cli_in_process([*resume, "--arch", "resnet50"])
    assert clear_error(code, err, "--arch resnet50 (the run has mobilenet_v3_small)"), err
    # Runtime placement is applied: past the check, the half-made run is what fails.
    runtime = ["--workers", "0", "--devices", "1", "--precision", "32", "--device", "cpu"]
    code, err = cli_in_process([*resume, *runtime])
    assert clear_error(code, err, "split.json") and "cannot resume" not in err, err
    help_text = flat(invoke("train", "--help").output)
    assert "Only --workers, --device, --devices, --precision, --deterministic may change" in (
        help_text
    )


def test_pin_out_names_rank_zeros_folder_for_the_other_ranks():
    argv = ["cropdoc", "train", "d", "--out", "runs/x", "--devices", "2"]
    assert pin_out(argv, Path("runs/x-2")) == [
        *("cropdoc", "train", "d", "--devices", "2", "--out", "runs/x-2", "--exist-ok")
    ]
    assert pin_out(["cropdoc", "train", "--out=a", "--exist-ok"], Path("a")) == [
        *("cropdoc", "train", "--exist-ok", "--out", "a")
    ]


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
    # Rank 1 writes where rank 0 does, though rank 0 made the folder first.
    assert not (tmp_path / "run-2").exists()
    assert not list(run.glob("model.tmp-*")) and not (run / "model.old").exists()
    history = (run / "history.csv").read_text().strip().splitlines()
    assert len(history) == 2  # header + one epoch, written once (rank zero)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 1
