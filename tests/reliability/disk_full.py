"""Item 3: ENOSPC injected into every write of a checkpoint or bundle.

Each site must give one clear ``CropdocError`` (through the CLI: one line, exit 2) and
leave the previous files loadable, with no temporary file left behind.

    python -m tests.reliability.disk_full [--full]
"""

from __future__ import annotations

import argparse
import errno
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import (
    TINY_CONFIG,
    clear_error,
    cli_in_process,
    emit,
    error_lines,
    patched,
    tiny_bundle_meta,
    tiny_dataset,
    write_config,
)


def _enospc(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _after(n: int, real: Callable[..., Any], match: Callable[..., bool]) -> Callable[..., Any]:
    """Call ``real`` until the ``n``-th call that ``match``es, then raise ENOSPC."""
    seen = {"n": 0}

    def fn(*args: Any, **kwargs: Any) -> Any:
        if match(*args, **kwargs):
            seen["n"] += 1
            if seen["n"] >= n:
                _enospc()
        return real(*args, **kwargs)

    return fn


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp-" in p.name)


def _training_sites(data: Path, work: Path, full: bool) -> list[dict[str, Any]]:
    """ENOSPC during a real ``cropdoc train``: at the 2nd checkpoint (and history.csv)."""
    import torch

    from cropdoc.bundle import load_bundle
    from cropdoc.training import trainer as trainer_mod
    from cropdoc.training.checkpoint import load_checkpoint

    config = write_config(work / "config.yaml")
    sites: list[tuple[str, Any, str, Callable[..., Any]]] = [
        (
            "checkpoint (torch.save, epoch 2 of a real run)",
            torch,
            "save",
            _after(
                2, torch.save, lambda obj, *a, **k: isinstance(obj, dict) and "optimizer" in obj
            ),
        ),
    ]
    if full:
        sites.append(
            (
                "history.csv (epoch 2 of a real run)",
                trainer_mod,
                "write_history",
                _after(2, trainer_mod.write_history, lambda *a, **k: True),
            )
        )
    rows = []
    for i, (site, obj, name, fn) in enumerate(sites):
        run = work / f"train-{i}"
        shutil.rmtree(run, ignore_errors=True)
        with patched(obj, name, fn):
            argv = ["train", str(data), "--out", str(run), "--config", str(config)]
            code, stderr = cli_in_process(argv)
        row: dict[str, Any] = {"site": site, "exit_code": code, "message": error_lines(stderr)[:2]}
        row["clear_error"] = clear_error(code, stderr, "No space left")
        try:
            row["previous_checkpoint_epoch"] = load_checkpoint(run / "last.ckpt")["global_epoch"]
            load_bundle(run / "model")
            row["previous_files_load"] = True
        except Exception as e:  # noqa: BLE001 - the figure reports it
            row["previous_files_load"] = f"{type(e).__name__}: {e}"
        row["leftovers"] = _leftovers(run)
        if full:  # space is back: the run continues where it stopped
            code, stderr = cli_in_process(["train", "--resume", "--out", str(run)])
            row["resumed_after_space_freed"] = code == 0
        rows.append(row)
    return rows


def _io_os() -> Any:
    """The ``os`` module as ``cropdoc.io`` (atomic JSON writes) sees it."""
    from cropdoc import io as cropdoc_io

    return cropdoc_io.os


def _bundle_sites(work: Path) -> list[dict[str, Any]]:
    """ENOSPC in each write of ``save_bundle`` and ``update_meta`` over an existing bundle."""
    import torch

    from cropdoc import bundle as bundle_mod
    from cropdoc.bundle import load_bundle, save_bundle, update_meta
    from cropdoc.errors import CropdocError
    from cropdoc.models import build

    def model(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return build("mobilenet_v3_small", classes=3, weights="none").eval()

    real_fsync = bundle_mod._fsync_file
    sites: list[tuple[str, Any, str, Callable[..., Any], Callable[[Path], Any]]] = [
        (
            "bundle weights (safetensors save_file)",
            bundle_mod,
            "save_file",
            _enospc,
            lambda t: save_bundle(t, model(1), tiny_bundle_meta()),
        ),
        (
            "bundle model.json (in save_bundle)",
            bundle_mod,
            "_fsync_file",
            _after(1, real_fsync, lambda p: Path(p).name == "model.json"),
            lambda t: save_bundle(t, model(1), tiny_bundle_meta()),
        ),
        (
            "bundle swap (rename into place)",
            bundle_mod.os,
            "replace",
            _enospc,
            lambda t: save_bundle(t, model(1), tiny_bundle_meta()),
        ),
        (
            "model.json metrics update (update_meta)",
            _io_os(),
            "replace",
            _enospc,
            lambda t: update_meta(t, metrics={"test": {"accuracy": 1.0}}),
        ),
    ]
    rows = []
    for i, (site, obj, name, fn, write) in enumerate(sites):
        folder = work / f"bundle-{i}"
        shutil.rmtree(folder, ignore_errors=True)
        first = model(0)
        save_bundle(folder / "model", first, tiny_bundle_meta())
        row: dict[str, Any] = {"site": site}
        with patched(obj, name, fn):
            try:
                write(folder / "model")
                row["error"] = "none raised"
                row["clear_error"] = False
            except CropdocError as e:
                row["error"] = str(e)[:300]
                row["clear_error"] = "No space left" in str(e)
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"[:300]
                row["clear_error"] = False
        loaded = load_bundle(folder / "model")
        same = all(
            torch.equal(loaded.model.state_dict()[k], v) for k, v in first.state_dict().items()
        )
        row["previous_files_load"] = same and not loaded.meta.metrics
        row["leftovers"] = _leftovers(folder) + _leftovers(folder / "model")
        rows.append(row)
    return rows


def run(work: Path, *, data: Path | None = None, full: bool = False) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    data = data or tiny_dataset(work)
    rows = _bundle_sites(work) + _training_sites(data, work, full)
    ok = [
        r["clear_error"] and r["previous_files_load"] is True and not r["leftovers"] for r in rows
    ]
    return {
        "item": "disk full (ENOSPC injected)",
        "config": TINY_CONFIG["arch"],
        "sites_tried": len(rows),
        "clear_error_and_previous_loadable": sum(ok),
        "sites": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also history.csv, and resume")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cropdoc-enospc-"))
    emit(run(work, full=args.full))


if __name__ == "__main__":
    main()
