"""timm's pretrained weights: the Hugging Face hub cache, and timm's key names.

``weights="imagenet"`` for a ``timm/<name>`` architecture means the file of timm's
pretrained tag (``pretrained_cfg["hf_hub_id"]``, e.g. ``timm/resnet18.a1_in1k``,
``model.safetensors``). A copy in the hub cache is used without touching the network.
Otherwise the hub's host is probed with one short TCP connection first: on a dead
network ``huggingface_hub`` retries for about 25 s before giving up, while the probe fails
at once, and the error says which file to fetch and that ``--weights FILE`` takes a local
copy. (With a proxy configured a direct connection proves nothing, so the download is
simply tried.) The file is then loaded by :mod:`cropdoc.models.weights` like any local
file, strictly — timm's own loader would drop mismatching classifier keys and load the
rest with ``strict=False``.
"""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..errors import WeightsError
from .names import under
from .spec import ArchSpec
from .timm_specs import BACKBONE_ATTR

__all__ = ["fetch_timm_weights", "hub_file_url", "to_model_keys"]

logger = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 10.0


def hub_file_url(spec: ArchSpec) -> str:
    """The URL of ``spec``'s pretrained file on the hub (what to fetch by hand)."""
    from huggingface_hub import constants

    assert spec.timm is not None and spec.timm.hf_hub_id
    repo, _, revision = spec.timm.hf_hub_id.partition("@")
    return f"{constants.ENDPOINT}/{repo}/resolve/{revision or 'main'}/{spec.timm.hf_filename}"


def fetch_timm_weights(spec: ArchSpec, *, timeout_s: float) -> Path:
    """Path of the pretrained file of ``spec`` (a timm spec with a hub id), from the hub
    cache or downloaded into it.

    Raises:
        WeightsError: not cached and the hub cannot be reached or refuses the file.
    """
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    source = spec.timm
    assert source is not None and source.hf_hub_id, f"{spec.name} has no hub weights"
    repo, _, revision = source.hf_hub_id.partition("@")
    cached = try_to_load_from_cache(repo, source.hf_filename, revision=revision or None)
    if isinstance(cached, str) and Path(cached).is_file():
        logger.info("Using cached ImageNet weights for %s: %s", spec.name, cached)
        return Path(cached)
    if constants.HF_HUB_OFFLINE:
        raise WeightsError(_offline_message(spec, "HF_HUB_OFFLINE is set"))
    unreachable = _unreachable(constants.ENDPOINT, min(timeout_s, _PROBE_TIMEOUT_S))
    if unreachable:
        raise WeightsError(_offline_message(spec, unreachable))
    logger.info("Downloading ImageNet weights for %s from %s", spec.name, hub_file_url(spec))
    try:
        path = hf_hub_download(
            repo, source.hf_filename, revision=revision or None, etag_timeout=timeout_s
        )
    except Exception as e:  # the hub client raises many types; all mean "not fetched"
        raise WeightsError(_offline_message(spec, f"{type(e).__name__}: {e}")) from e
    return Path(path)


def to_model_keys(
    state: Mapping[str, torch.Tensor], spec: ArchSpec
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A file's tensors under the names of the :class:`TimmClassifier` built for ``spec``.

    A cropdoc model file (names under ``backbone.``) is returned as it is. A timm (or
    torchvision) state dict gets the ``backbone.`` prefix, minus the tensors of timm's own
    classifier (``spec.timm.classifier``), which are returned as the second item.
    """
    prefix = f"{BACKBONE_ATTR}."
    if spec.timm is None or any(k.startswith(prefix) for k in state):
        return dict(state), []
    classifier = spec.timm.classifier
    dropped = [k for k in state if any(under(k, c) for c in classifier)]
    skip = set(dropped)
    return {prefix + k: v for k, v in state.items() if k not in skip}, dropped


def _unreachable(endpoint: str, timeout_s: float) -> str | None:
    """Why ``endpoint`` cannot be reached by a direct connection, or None (or a proxy)."""
    proxies = urllib.request.getproxies()
    if proxies.get("https") or proxies.get("http") or proxies.get("all"):
        return None
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError as e:
        return f"cannot connect to {parsed.hostname}: {type(e).__name__}: {e}"
    return None


def _offline_message(spec: ArchSpec, reason: str) -> str:
    assert spec.timm is not None and spec.timm.hf_hub_id
    hub_id, filename = spec.timm.hf_hub_id, spec.timm.hf_filename
    return (
        f"Cannot download the ImageNet weights of {spec.name} ({reason}; no network?).\n"
        f"  Fetch {filename} of timm's {hub_id} ({hub_file_url(spec)}) on a machine with "
        f"internet and pass the local copy with --weights FILE,\n"
        f"  or put it in the Hugging Face cache there (hf download {hub_id} {filename}; "
        f"HF_HOME selects the cache), or use --weights none (train from scratch)."
    )
