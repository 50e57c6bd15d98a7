"""Item 8: malformed config and CLI input, each through a real ``cropdoc`` process.

Bar per case: exit code 2, exactly one ``error:`` line on stderr, no traceback. (The
in-process twin of this table is ``tests/test_cli.py::test_user_errors_are_one_line_exit_2``,
which runs in CI; this script adds the real process, where a stray traceback would show.)

    python -m tests.reliability.cli_input
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.helpers import cropdoc_cmd, emit


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) for every malformed input of the issue, plus a few neighbours."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "a_file.txt").write_text("x")
    (tmp / "bad.yaml").write_text("arch: [unclosed")
    (tmp / "tabs.yaml").write_text("data:\n\tsplit: 1\n")
    (tmp / "unknown.yaml").write_text("archh: resnet50\n")
    (tmp / "nested_unknown.yaml").write_text("optim: {lr_typo: 1}\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "neg.yaml").write_text("stage_epochs: [-1, 2, 3]\n")
    (tmp / "split.yaml").write_text("data: {split: [0.5, 0.5, 0.5]}\n")
    (tmp / "binary.yaml").write_bytes(b"\x00\xff\xfe garbage")
    out = ["--out", str(tmp / "run")]
    d = str(tmp)
    return [
        ("malformed YAML", ["train", d, "--config", str(tmp / "bad.yaml"), *out]),
        ("YAML with tabs", ["train", d, "--config", str(tmp / "tabs.yaml"), *out]),
        ("binary config file", ["train", d, "--config", str(tmp / "binary.yaml"), *out]),
        ("YAML that is a list", ["train", d, "--config", str(tmp / "list.yaml"), *out]),
        ("missing config file", ["train", d, "--config", str(tmp / "nope.yaml"), *out]),
        ("unknown key", ["train", d, "--config", str(tmp / "unknown.yaml"), *out]),
        ("unknown nested key", ["train", d, "--config", str(tmp / "nested_unknown.yaml"), *out]),
        ("unknown architecture", ["train", d, "--arch", "vgg16", *out]),
        ("split not summing to 1 (CLI)", ["train", d, "--split", "0.5,0.5,0.5", *out]),
        ("split not summing to 1 (YAML)", ["train", d, "--config", str(tmp / "split.yaml"), *out]),
        ("split not numbers", ["train", d, "--split", "a,b,c", *out]),
        ("negative epochs (CLI)", ["train", d, "--stage-epochs", "-1,2,3", *out]),
        ("negative epochs (YAML)", ["train", d, "--config", str(tmp / "neg.yaml"), *out]),
        ("data path is a file", ["train", str(tmp / "a_file.txt"), *out]),
        ("data path missing", ["train", str(tmp / "missing"), *out]),
        ("resume without a run", ["train", "--resume", "--out", str(tmp / "norun")]),
        ("inspect a missing folder", ["data", "inspect", str(tmp / "missing")]),
        ("predict with no bundle", ["predict", str(tmp / "nobundle"), str(tmp / "a_file.txt")]),
        ("serve with no bundle", ["serve", str(tmp / "nobundle"), "--port", "1"]),
    ]


def run(tmp: Path) -> dict[str, Any]:
    env = {**os.environ, "COLUMNS": "400"}
    rows = []
    for name, argv in cases(tmp):
        proc = subprocess.run(
            cropdoc_cmd(*argv), capture_output=True, text=True, timeout=120, env=env, check=False
        )
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        usage = "Usage:" in proc.stderr  # Typer/Click's own parse errors (also exit 2)
        one_line = len(errors) == 1 or (usage and proc.stderr.count("Error") == 1)
        ok = proc.returncode == 2 and one_line and "Traceback" not in proc.stderr
        rows.append(
            {
                "case": name,
                "exit_code": proc.returncode,
                "message": (errors[0] if errors else proc.stderr.strip().splitlines()[-1:])
                if proc.stderr.strip()
                else "",
                "traceback": "Traceback" in proc.stderr,
                "ok": ok,
            }
        )
    return {
        "item": "config and CLI input",
        "cases_tried": len(rows),
        "one_line_exit_2_no_traceback": sum(r["ok"] for r in rows),
        "cases": rows,
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    with tempfile.TemporaryDirectory(prefix="cropdoc-cli-") as tmp:
        emit(run(Path(tmp)))


if __name__ == "__main__":
    main()
