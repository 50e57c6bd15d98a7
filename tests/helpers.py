"""Test helpers shared by pytest tests and the fault scripts of ``tests/reliability``.

Tiny data, configs and bundle metadata, the CLI run in-process, a loopback server, RSS,
JSON figures. Kept free of pytest so the same code produces the CI figures and the
full-size ones (``python -m tests.reliability.run_all --full``). Imported as
``tests.helpers`` everywhere (pytest puts the repository root on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

#: The tiny recipe of the fault scripts and of ``tests/conftest.py::tiny_config``
#: (MobileNetV3-Small from scratch, 32 px, one epoch per stage, fp32 on CPU), as a YAML-able
#: dict for ``cropdoc train --config``.
TINY_CONFIG: dict[str, Any] = {
    "arch": "mobilenet_v3_small",
    "weights": "none",
    "recipe": "seed",  # the seed's rates: tests check them
    "stage_epochs": [1, 1, 1],
    "data": {"image_size": 32, "batch_size": 8, "workers": 0},
    "runtime": {"precision": "32", "accelerator": "cpu"},
}


def tiny_bundle_meta() -> Any:
    """Metadata of a 3-class, 32 px MobileNetV3-Small bundle (for scripts that save one)."""
    from cropdoc.bundle import BundleMeta
    from cropdoc.preprocessing import Preprocessing

    return BundleMeta(
        arch=TINY_CONFIG["arch"],
        classes=["a", "b", "c"],
        preprocessing=Preprocessing(image_size=32, resize_size=36),
    )


def emit(figures: dict[str, Any]) -> None:
    """Print one item's figures as indented JSON (what ``RELIABILITY.md`` quotes)."""
    print(json.dumps(figures, indent=2, default=str), flush=True)


def tiny_dataset(root: Path, images_per_class: int = 12) -> Path:
    """The generated 4-class leaf set of ``tests/conftest.py::tiny_data`` (48 px)."""
    from cropdoc.data.synthetic import DEMO_CLASSES, generate_dataset

    if (root / "data").is_dir():
        return root / "data"
    return generate_dataset(
        root / "data",
        images_per_class=images_per_class,
        image_size=48,
        classes=DEMO_CLASSES[:4],
        seed=3,
    )


def write_config(path: Path, **overrides: Any) -> Path:
    """Write :data:`TINY_CONFIG` (top-level keys replaced by ``overrides``) as YAML."""
    path.write_text(yaml.safe_dump({**TINY_CONFIG, **overrides}), encoding="utf-8")
    return path


@contextlib.contextmanager
def patched(obj: Any, name: str, fn: Callable[..., Any]) -> Iterator[None]:
    """Replace ``obj.name`` by ``fn`` for the block (pytest's monkeypatch, for scripts)."""
    real = getattr(obj, name)
    setattr(obj, name, fn)
    try:
        yield
    finally:
        setattr(obj, name, real)


def cli_in_process(argv: list[str]) -> tuple[int, str]:
    """Run the real ``cropdoc`` entry point in this process; return (exit code, stderr).

    In-process so a script can patch library functions (a full disk, a NaN loss) first;
    the console is made wide so a one-line error stays one line.
    """
    from cropdoc.cli import main

    app_module = importlib.import_module("cropdoc.cli.app")
    err = io.StringIO()
    old_argv, old_width = sys.argv, app_module.console.width
    sys.argv = ["cropdoc", *argv]
    app_module.console.file = err
    app_module.console.width = 400
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        # None: the console follows sys.stderr again, as it was made (Console(stderr=True)).
        # Restoring the stream it returned would pin a capture stream pytest closes after
        # this test (capsys), and the CLI's log handler would then write to a closed file.
        sys.argv, app_module.console.file = old_argv, None
        app_module.console.width = old_width
    return code, err.getvalue()


def error_lines(stderr: str) -> list[str]:
    """The CLI's error lines (its log lines share stderr)."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def clear_error(code: int, stderr: str, *needles: str) -> bool:
    """Exit code 2 and exactly one error line, holding every needle, with no traceback."""
    lines = error_lines(stderr)
    one_line = len(lines) == 1 and "Traceback" not in stderr
    return code == 2 and one_line and all(n in lines[0] for n in needles)


def python_module(module: str, *args: str) -> list[str]:
    """A command running ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def cropdoc_cmd(*args: str) -> list[str]:
    """The ``cropdoc`` console script of this interpreter's environment (or ``-m``)."""
    script = Path(sys.executable).with_name("cropdoc")
    base = [str(script)] if script.is_file() else [sys.executable, "-m", "cropdoc"]
    return [*base, *args]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (loopback only, never a public interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (Linux ``/proc``)."""
    out, pending = [], [pid]
    while pending:
        p = pending.pop()
        if p in out:
            continue
        out.append(p)
        for task in Path(f"/proc/{p}").glob("task/*/children"):
            try:
                pending += [int(c) for c in task.read_text().split()]
            except OSError:  # exited meanwhile
                pass
    return out


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` and all its descendants in MiB, from ``/proc`` (Linux).

    ``cropdoc serve`` with several workers is a supervisor plus worker processes; the
    workers hold the models and the memory a leak would grow.
    """
    total = 0
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:  # exited meanwhile
            continue
        total += next((int(x.split()[1]) for x in status if x.startswith("VmRSS:")), 0)
    if not total:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return total / 1024


@dataclass
class Server:
    """A running ``cropdoc serve`` process."""

    url: str
    pid: int
    log: Path
    proc: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextlib.contextmanager
def running_server(bundle: Path, log: Path, *extra: str, start_s: float = 180) -> Iterator[Server]:
    """Start ``cropdoc serve BUNDLE`` on a free loopback port; always stop it afterwards."""
    import httpx

    port = free_port()
    cmd = cropdoc_cmd("serve", str(bundle), "--host", "127.0.0.1", "--port", str(port), *extra)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", proc.pid, log, proc)
    try:
        deadline = time.monotonic() + start_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"cropdoc serve exited early:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cropdoc serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@contextlib.contextmanager
def static_server(folder: Path) -> Iterator[str]:
    """Serve ``folder`` as a plain static site on a free loopback port; yields its URL.

    What a user hosting ``cropdoc export --format web`` gets from any static server: files,
    standard MIME types, no special headers (no cross-origin isolation).
    """
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def tiny_bundle(work: Path, data: Path) -> Path:
    """Train the tiny recipe once into ``work/run`` (reused when present); return the run."""
    from cropdoc.config import load_config
    from cropdoc.workflows import train

    run = work / "run"
    if not (run / "summary.json").is_file():
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        train(data, run, load_config(overrides=TINY_CONFIG), show_progress=False)
    return run
