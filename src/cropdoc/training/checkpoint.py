"""Resume checkpoints (``last.ckpt``): named state, written atomically, loaded strictly.

Only tensors and plain Python values go in, so the file loads with
``torch.load(weights_only=True)``: a checkpoint carrying a pickle payload is refused, never
executed. Random state is not stored: the trainer reseeds every epoch from
``(seed, global epoch, rank)``, which is what makes a resumed run repeat the uninterrupted
one. The scheduler's state is kept for the record, but a resumed stage rebuilds its
position from the epochs done (see :mod:`.scheduler`), so a changed device count resumes
at the same fraction of the stage.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch

from ..errors import BundleError
from ..io import atomic_path

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_KEYS", "load_checkpoint", "save_checkpoint"]

#: Version of the ``last.ckpt`` layout (:meth:`Trainer.state_dict`).
CHECKPOINT_FORMAT = 2

_logger = logging.getLogger(__name__)

CHECKPOINT_KEYS = frozenset(
    {
        "format_version",
        "model",
        "optimizer",
        "scheduler",
        "stage",
        "epoch",
        "stage_done",
        "global_epoch",
        "early_stopping",
        "ema",
        "best_f1",
        "history",
        "seed",
    }
)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (exactly :data:`CHECKPOINT_KEYS`) to ``path`` atomically.

    Raises:
        BundleError: on a write error (disk full): the previous checkpoint is kept.
    """
    keys = set(state)
    if keys != CHECKPOINT_KEYS:
        raise ValueError(
            f"checkpoint keys mismatch: missing {sorted(CHECKPOINT_KEYS - keys)}, "
            f"unexpected {sorted(keys - CHECKPOINT_KEYS)}"
        )
    _remove_partial_writes(Path(path))
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except OSError as e:
        raise BundleError(
            f"could not write checkpoint {path}: {e}; the previous one is kept"
        ) from e


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, refusing pickled objects.

    Raises:
        BundleError: missing, corrupt, unsafe, or with missing/unknown keys.
    """
    p = Path(path)
    _remove_partial_writes(p)
    if not p.is_file():
        raise BundleError(f"no checkpoint at {p}; nothing to resume (train without --resume)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise BundleError(
            f"{p} holds objects other than tensors and plain values and was refused without "
            f"running it (possible pickle payload); delete it and retrain, or resume from a "
            f"checkpoint written by cropdoc"
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise BundleError(f"{p} is corrupt or not a cropdoc checkpoint: {e}") from e
    if not isinstance(state, dict):
        raise BundleError(f"{p} is not a cropdoc checkpoint (expected a dict)")
    if state.get("format_version") == 1:  # before the moving average of the weights
        state.setdefault("ema", None)
    keys = set(state)
    if keys != CHECKPOINT_KEYS:
        raise BundleError(
            f"{p} is not a cropdoc checkpoint of this version: missing "
            f"{sorted(CHECKPOINT_KEYS - keys)}, unused {sorted(keys - CHECKPOINT_KEYS)}"
        )
    return state


def _remove_partial_writes(path: Path) -> None:
    """Delete temporary files a killed writer left next to ``path`` (``.last.ckpt.*.tmp``).

    A kill -9 mid-write skips :func:`~cropdoc.io.atomic_path`'s cleanup, leaving a torn
    file of checkpoint size; only the trainer writes checkpoints, so any such file is dead.
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            stale.unlink()
            _logger.info("removed %s, left by an interrupted checkpoint write", stale)
        except OSError:
            pass
