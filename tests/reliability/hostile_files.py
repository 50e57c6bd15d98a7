"""Item 4: model files an attacker could hand a user or a server.

Pickle payloads (``last.ckpt``, ``.pth`` weights) must be refused *without running them*
(the payload would create a marker file); a bundle whose ``model.json`` disagrees with its
weights must give a clear error; a file name from a bundle that points outside it must be
ignored. Upload file names are covered by :mod:`uploads` (they are only echoed).

    python -m tests.reliability.hostile_files
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import emit, tiny_bundle_meta

MARKER = "PWNED_BY_PICKLE"


class _Payload:
    """Unpickling this runs ``touch <marker>``: the proof a loader executed code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


def _checkpoint_state(payload: Any) -> dict[str, Any]:
    from cropdoc.training.checkpoint import CHECKPOINT_KEYS

    state: dict[str, Any] = {k: 0 for k in CHECKPOINT_KEYS}
    state["model"] = payload
    return state


def _bundle(folder: Path) -> Path:
    import torch

    from cropdoc.bundle import save_bundle
    from cropdoc.models import build

    torch.manual_seed(0)
    meta = tiny_bundle_meta()
    return save_bundle(folder, build("mobilenet_v3_small", classes=3, weights="none"), meta)


def _edit_meta(bundle: Path, **changes: Any) -> None:
    path = bundle / "model.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def cases(work: Path) -> list[tuple[str, Callable[[], Any]]]:
    """(name, attempt) pairs; each attempt must raise a ``CropdocError`` or return None."""
    import torch

    from cropdoc.bundle import load_bundle
    from cropdoc.inference import recorded_export
    from cropdoc.models import build
    from cropdoc.training.checkpoint import load_checkpoint

    marker = work / MARKER

    def pickled_ckpt() -> Any:
        path = work / "last.ckpt"
        with open(path, "wb") as fh:
            pickle.dump(_checkpoint_state(_Payload(marker)), fh)
        return load_checkpoint(path)

    def torch_saved_ckpt() -> Any:  # the zip format torch.save writes, payload inside
        path = work / "zip.ckpt"
        torch.save(_checkpoint_state(_Payload(marker)), path)
        return load_checkpoint(path)

    def pickled_weights(suffix: str) -> Callable[[], Any]:
        def attempt() -> Any:
            path = work / f"weights{suffix}"
            torch.save({"state_dict": _Payload(marker)}, path)
            return build("mobilenet_v3_small", classes=3, weights=str(path))

        return attempt

    def meta_mismatch(**changes: Any) -> Callable[[], Any]:
        def attempt() -> Any:
            folder = _bundle(work / f"bundle-{'-'.join(changes)}")
            _edit_meta(folder, **changes)
            return load_bundle(folder)

        return attempt

    def export_outside(path: str) -> Callable[[], Any]:
        def attempt() -> Any:
            folder = _bundle(work / f"bundle-export-{abs(hash(path)) % 1000}")
            outside = work / "evil.onnx"
            outside.write_bytes(b"not really onnx")
            record = {"path": path.replace("{outside}", str(outside)), "weights_sha256": ""}
            sha = json.loads((folder / "model.json").read_text())["weights_sha256"]
            record["weights_sha256"] = sha
            _edit_meta(folder, exports={"onnx": record})
            return recorded_export(folder)  # must be None: never opened

        return attempt

    return [
        ("last.ckpt: raw pickle with os.system payload", pickled_ckpt),
        ("last.ckpt: torch.save zip with os.system payload", torch_saved_ckpt),
        ("weights .pth with os.system payload", pickled_weights(".pth")),
        ("weights .pt with os.system payload", pickled_weights(".pt")),
        ("model.json class count != weights", meta_mismatch(classes=["a", "b"], num_classes=2)),
        ("model.json num_classes != class list", meta_mismatch(num_classes=7)),
        ("model.json arch != weights", meta_mismatch(arch="efficientnet_b0")),
        ("model.json unknown arch", meta_mismatch(arch="__import__('os').system")),
        ("model.json export path ../", export_outside("../evil.onnx")),
        ("model.json export path absolute", export_outside("{outside}")),
    ]


def run(work: Path) -> dict[str, Any]:
    from cropdoc.errors import CropdocError

    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, attempt in cases(work):
        row: dict[str, Any] = {"case": name}
        try:
            result = attempt()
            row["outcome"] = "ignored (None)" if result is None else "ACCEPTED"
            row["refused"] = result is None
        except CropdocError as e:
            row["outcome"] = f"{type(e).__name__}: {str(e)[:200]}"
            row["refused"] = True
        except Exception as e:  # noqa: BLE001 - a crash is a finding
            row["outcome"] = f"CRASH {type(e).__name__}: {str(e)[:200]}"
            row["refused"] = False
        row["payload_ran"] = (work / MARKER).exists()
        rows.append(row)
    return {
        "item": "hostile model files",
        "cases_tried": len(rows),
        "refused_with_clear_error": sum(r["refused"] for r in rows),
        "payloads_executed": sum(r["payload_ran"] for r in rows),
        "cases": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cropdoc-hostile-"))
    try:
        emit(run(work))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
