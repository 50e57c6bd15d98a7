"""Initial weights for a freshly built model: ImageNet, none, or a local file.

Three sources, chosen by the ``weights`` argument of :func:`cropdoc.models.build`:

* ``"imagenet"`` — torchvision's ``spec.weights_enum.DEFAULT`` checkpoint through torch.hub's
  download cache (``<torch.hub.get_dir()>/checkpoints/<file>``, which honours ``TORCH_HOME``).
  A cached file is loaded without touching the network; otherwise it is downloaded once
  with a socket timeout, and any failure becomes a :class:`WeightsError` that says which
  file to place where, the URL to fetch it from, and the ``--weights`` alternatives, so an
  offline machine fails fast with a fix instead of a traceback. For ``timm/<name>``: the
  file of timm's default pretrained tag through the Hugging Face hub cache
  (:mod:`cropdoc.models.timm_weights`; the same fail-fast rule), or the torch.hub cache
  for the few timm configs with only a URL.
* ``None`` / ``"none"`` — keep the random initialisation (training from scratch).
* a path — ``.safetensors``, or ``.pth``/``.pt`` read with ``torch.load(weights_only=True)``
  so a checkpoint can never run code on load. Accepted contents: a state dict, or a dict
  holding one under ``state_dict``, ``model_state_dict`` or ``model`` (the seed's format);
  keys may carry ``module.`` / ``_orig_mod.`` wrapper prefixes. The file may be a full
  cropdoc model (its head is loaded when it fits) or a torchvision or timm backbone (its
  own ImageNet classifier is skipped; for a timm architecture, timm's key names, e.g.
  ``timm.create_model(name).state_dict()``). The backbone must match exactly — never a
  partial load: otherwise nothing is loaded and the error gives the counts of matching,
  missing and unexpected keys, names offending ones and the architecture the file seems
  to fit.
"""

from __future__ import annotations

import logging
import pickle
import re
import socket
import urllib.error
from collections.abc import Mapping
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.hub
from torch import nn

from ..errors import WeightsError
from .freeze import is_head_param
from .names import canonical_name
from .registry import ArchSpec, get_arch, list_archs
from .timm_specs import TIMM_PREFIX
from .timm_weights import fetch_timm_weights, to_model_keys

__all__ = ["WeightsSource", "imagenet_cache_path", "load_pretrained", "load_state_file"]

logger = logging.getLogger(__name__)

WeightsSource = str | Path | None

IMAGENET = "imagenet"
NONE = "none"
_TORCH_SUFFIXES = (".pth", ".pt")
_SAFETENSORS_SUFFIX = ".safetensors"
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_MAX_KEYS_SHOWN = 5
# torch.hub's naming convention ``name-<sha256 prefix>.ext``, verified after download.
_HASH_RE = re.compile(r"-([a-f0-9]+)\.")
# Buffers that old checkpoints may lack and BatchNorm recreates; never worth an error.
_OPTIONAL_SUFFIX = "num_batches_tracked"


def load_pretrained(
    model: nn.Module, spec: ArchSpec, weights: WeightsSource, *, timeout_s: float = 30.0
) -> None:
    """Load initial weights into ``model`` (built for ``spec``, cropdoc head attached).

    Args:
        model: A torchvision model whose ``spec.head_attr`` is already cropdoc's head.
        spec: Its architecture spec.
        weights: ``"imagenet"``, ``"none"``/``None``, or the path of a local file.
        timeout_s: Socket timeout for the ImageNet download, so a dead network fails fast.

    Raises:
        WeightsError: The weights cannot be fetched, read or matched to ``spec``.
    """
    if weights is None or (isinstance(weights, str) and weights.strip().lower() == NONE):
        logger.debug("No pretrained weights for %s: random initialisation.", spec.name)
        return
    if isinstance(weights, str) and weights.strip().lower() == IMAGENET:
        if spec.timm is not None and spec.timm.hf_hub_id:
            path = fetch_timm_weights(spec, timeout_s=timeout_s)
        else:
            path = _fetch_imagenet(spec, timeout_s=timeout_s)
        state = _read_file(path, hint=_corrupt_cache_hint(path))
        _apply_state(model, spec, state, source=f"ImageNet weights {path}")
        return
    path = Path(weights).expanduser()
    state = load_state_file(path)
    _apply_state(model, spec, state, source=str(path))


def imagenet_cache_path(spec: ArchSpec) -> Path:
    """Where torch.hub caches ``spec``'s ImageNet checkpoint (``TORCH_HOME`` is honoured).

    Raises:
        WeightsError: ``spec`` has no torch.hub download (a timm model whose weights live
            on the Hugging Face hub, or have none).
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(_imagenet_url(spec)).path).name


def _imagenet_url(spec: ArchSpec) -> str:
    if spec.weights_enum is not None:
        return spec.weights_enum.DEFAULT.url
    if spec.timm is not None and spec.timm.url:
        return spec.timm.url
    raise WeightsError(
        f"timm has no pretrained weights for {spec.name}. Use --weights none (train from "
        f"scratch) or --weights FILE (a local .safetensors/.pth state dict)."
    )


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a local weights file into a flat state dict, never unpickling objects.

    Args:
        path: A ``.safetensors``, ``.pth`` or ``.pt`` file.

    Returns:
        Tensor state dict with nesting unwrapped and wrapper prefixes stripped.

    Raises:
        WeightsError: The file is missing, of an unsupported type, unreadable, contains
            pickled objects, or holds no state dict.
    """
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise WeightsError(
            f"Weights file {path} {what}. Pass --weights PATH with an existing "
            f"{_SAFETENSORS_SUFFIX}/.pth/.pt file, --weights {IMAGENET} or --weights {NONE}."
        )
    return _read_file(path, hint="Check that it is a complete, uncorrupted weights file.")


def _read_file(path: Path, *, hint: str) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix not in (_SAFETENSORS_SUFFIX, *_TORCH_SUFFIXES):
        raise WeightsError(
            f"Unsupported weights file type {path.suffix!r} ({path}). Supported: "
            f"{_SAFETENSORS_SUFFIX}, {', '.join(_TORCH_SUFFIXES)}."
        )
    try:
        if suffix == _SAFETENSORS_SUFFIX:
            from safetensors.torch import load_file

            raw: object = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"Refusing to load {path}: it contains pickled Python objects besides tensors, "
            "and unpickling can run arbitrary code. Re-save only the weights, e.g. "
            "torch.save(model.state_dict(), path) or safetensors.torch.save_file."
        ) from e
    except Exception as e:  # the readers raise many types; all mean "unreadable file"
        raise WeightsError(f"Cannot read weights file {path}: {e}. {hint}") from e
    return _flatten(raw, path)


def _flatten(raw: object, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap a checkpoint dict to its state dict and strip wrapper prefixes."""
    if isinstance(raw, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(raw.get(key), Mapping):
                raw = raw[key]
                break
    if not isinstance(raw, Mapping) or not raw:
        raise WeightsError(
            f"{path} holds no state dict. Expected a mapping of parameter names to tensors, "
            f"or a checkpoint dict with one under {' / '.join(_NESTED_KEYS)}."
        )
    not_tensors = [str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{path} is not a state dict: entries {_few(not_tensors)} are not tensors. Pass "
            f"a file saved from model.state_dict(), or a checkpoint holding one under "
            f"{' / '.join(_NESTED_KEYS)}."
        )
    return {canonical_name(str(k)): v for k, v in raw.items()}


def _apply_state(
    model: nn.Module, spec: ArchSpec, state: dict[str, torch.Tensor], *, source: str
) -> None:
    """Load the backbone strictly and the head only if it is cropdoc's head of equal shape."""
    original = state
    state, dropped = to_model_keys(state, spec)
    expected = model.state_dict()
    problems = _backbone_problems(_shapes(expected), _shapes(state), spec)
    if problems:
        fits = _guess_arch(original)
        if fits:
            fit_note = (
                f"The file seems to fit {fits!r}; use --arch {fits} or a file for {spec.name!r}."
            )
        else:
            fit_note = (
                f"It fits none of the registered architectures ({', '.join(list_archs())}); "
                f"a timm model's state dict loads with --arch {TIMM_PREFIX}<its timm name>."
            )
        matching, total = _matching(_shapes(expected), _shapes(state), spec)
        raise WeightsError(
            f"Weights from {source} do not fit {spec.name!r}, so none were loaded: "
            f"{matching} of its {total} backbone tensors match by name and shape; "
            f"{'; '.join(problems)}. {fit_note}"
        )
    if dropped:
        logger.info("Dropped %d tensors of timm's own classifier from %s.", len(dropped), source)
    to_load = {k: v for k, v in state.items() if not is_head_param(k, spec)}
    head_expected = {k: tuple(v.shape) for k, v in expected.items() if is_head_param(k, spec)}
    head_given = {k: tuple(v.shape) for k, v in state.items() if is_head_param(k, spec)}
    if head_given and head_given == head_expected:
        to_load.update({k: v for k, v in state.items() if is_head_param(k, spec)})
        logger.info(
            "Loaded %s into %s (backbone and head, %d tensors).", source, spec.name, len(to_load)
        )
    else:
        reason = (
            "none in the file"
            if not head_given
            else "a different head (e.g. torchvision's ImageNet classifier or another class count)"
        )
        logger.info(
            "Loaded %s into %s backbone (%d tensors); head %r kept at random init (%s, %d "
            "keys skipped).",
            source,
            spec.name,
            len(to_load),
            spec.head_attr,
            reason,
            len(head_given),
        )
    model.load_state_dict(to_load, strict=False)


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _backbone_problems(
    expected: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]], spec: ArchSpec
) -> list[str]:
    """Human-readable backbone mismatches between two key -> shape maps (empty: it fits)."""
    exp = {k: s for k, s in expected.items() if not is_head_param(k, spec)}
    got = {k: s for k, s in given.items() if not is_head_param(k, spec)}
    missing = [k for k in exp if k not in got and not k.endswith(_OPTIONAL_SUFFIX)]
    unexpected = [k for k in got if k not in exp]
    wrong = [f"{k} {got[k]} vs {exp[k]}" for k in exp if k in got and got[k] != exp[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_few(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches ({_few(wrong)})")
    return problems


def _matching(
    expected: dict[str, tuple[int, ...]], given: dict[str, tuple[int, ...]], spec: ArchSpec
) -> tuple[int, int]:
    """``(backbone tensors of the model the file holds with the same shape, all of them)``."""
    backbone = {
        k: s
        for k, s in expected.items()
        if not is_head_param(k, spec) and not k.endswith(_OPTIONAL_SUFFIX)
    }
    return sum(given.get(k) == s for k, s in backbone.items()), len(backbone)


def _guess_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    """The registered architecture whose backbone ``state`` fits, if any.

    Models are built on the meta device, so this costs milliseconds and no memory.
    """
    given = _shapes(state)
    for name in list_archs():
        spec = get_arch(name)
        with torch.device("meta"):
            reference = spec.builder(weights=None)
        if not _backbone_problems(_shapes(reference.state_dict()), given, spec):
            return spec.name
    return None


def _few(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_KEYS_SHOWN])
    return shown + (", ..." if len(items) > _MAX_KEYS_SHOWN else "")


def _fetch_imagenet(spec: ArchSpec, *, timeout_s: float) -> Path:
    """Path of ``spec``'s ImageNet checkpoint, downloading it into the hub cache if needed."""
    target = imagenet_cache_path(spec)
    if target.is_file():
        logger.info("Using cached ImageNet weights for %s: %s", spec.name, target)
        return target
    url = _imagenet_url(spec)
    match = _HASH_RE.search(target.name)
    logger.info("Downloading ImageNet weights for %s from %s to %s", spec.name, url, target)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(target), match.group(1) if match else None, progress=False
        )
    except (urllib.error.URLError, OSError, HTTPException, RuntimeError) as e:
        raise WeightsError(_offline_message(spec, target, url, e)) from e
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return target


def _offline_message(spec: ArchSpec, target: Path, url: str, error: BaseException) -> str:
    return (
        f"Cannot download the ImageNet weights for {spec.name} ({type(error).__name__}: "
        f"{error}; no network?).\n"
        f"  Either place the file {target.name} at {target}\n"
        f"  (fetch it on a machine with internet from {url}; set TORCH_HOME to use another "
        f"cache directory),\n"
        f"  or use --weights none (train from scratch) or --weights PATH (a local "
        f".safetensors/.pth file)."
    )


def _corrupt_cache_hint(path: Path) -> str:
    return f"Delete {path} so it is downloaded again, or place a complete copy there."
