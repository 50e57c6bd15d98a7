"""Where a class-activation map is read: the backbone's last spatial feature map.

Grad-CAM weighs one layer's activations by the class score's gradients; the layer must
still be spatial (before global pooling) and as deep as possible (most semantic). Rather
than a module name per architecture, it is found from the model, for torchvision and timm
alike: one probe forward pass records, in the order modules *finish*, every module called
exactly once (a module reused inside a block, like ResNet's ``relu``, would mix several
activations); the last one, outside the head, whose output is ``(N, C, H, W)`` with
``H * W > 1`` is the target. Containers finish after their children, so this is the
outermost module that yields the final map (``layer4``, ``features``, timm's ``bn2``).

Token models (ViT, DeiT, ...) have no such map (their 4-D tensors are attention internals,
followed by more token outputs): their target is the first module of their
last block (the norm before its attention, which still mixes patch tokens), and
``tokens`` says how many prefix tokens (class, register) to drop before the patch tokens
are laid out on their square grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .names import under
from .spec import ArchSpec

__all__ = ["CamTarget", "cam_target"]


@dataclass(frozen=True)
class CamTarget:
    """The module a CAM reads and how its output becomes a map.

    Attributes:
        name: its name in ``model.named_modules()``.
        module: the module.
        tokens: for token outputs ``(N, L, C)``, the prefix tokens to drop; None for
            ``(N, C, H, W)`` maps.
    """

    name: str
    module: nn.Module
    tokens: int | None = None

    def reshape(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Turns token outputs into ``(N, C, H, W)`` maps (None: already maps)."""
        if self.tokens is None:
            return None
        prefix = self.tokens

        def to_map(x: torch.Tensor) -> torch.Tensor:
            patches = x[:, prefix:, :]
            side = math.isqrt(patches.shape[1])
            return patches.reshape(x.shape[0], side, side, x.shape[2]).permute(0, 3, 1, 2)

        return to_map


def _probe(model: nn.Module, size: int) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """``(name, module, output shape)`` of modules called once, in the order they finish."""
    calls: dict[str, int] = {}
    finished: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    handles = []

    def hook(name: str):
        def record(module: nn.Module, _inputs: object, output: object) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                finished.append((name, module, tuple(output.shape)))

        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [(n, m, s) for n, m, s in finished if calls[n] == 1]


def _token_target(
    model: nn.Module, found: list[tuple[str, nn.Module, tuple[int, ...]]]
) -> CamTarget | None:
    """The first module of the last block of a token model (see the module docs)."""
    tokens = [(n, m, s) for n, m, s in found if len(s) == 3 and s[1] > 1]
    if not tokens:
        return None
    blocks = [n for n, m, _ in tokens if any(m.children()) and n.rpartition(".")[2].isdigit()]
    last_block = blocks[-1] if blocks else None
    inside = [t for t in tokens if last_block and under(t[0], last_block) and t[0] != last_block]
    name, module, shape = inside[0] if inside else tokens[-1]
    prefix = int(getattr(_owner(model, name), "num_prefix_tokens", 0) or 0)
    if math.isqrt(shape[1] - prefix) ** 2 != shape[1] - prefix:
        return None
    return CamTarget(name, module, tokens=prefix)


def _owner(model: nn.Module, name: str) -> nn.Module:
    """The outermost module under ``model`` on ``name``'s path that knows its prefix tokens."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        module = model.get_submodule(".".join(parts[:i]))
        if hasattr(module, "num_prefix_tokens"):
            return module
    return model


def cam_target(model: nn.Module, spec: ArchSpec, *, size: int | None = None) -> CamTarget:
    """The module Grad-CAM reads for ``model`` (see the module docs).

    Args:
        model: a model made by :func:`~cropdoc.models.build`.
        spec: its architecture spec (what is head, the input size to probe at).
        size: probe input side (default: the spec's input size).

    Raises:
        ValueError: the model has no spatial feature map nor token grid to read.
    """
    found = [t for t in _probe(model, size or spec.input_size) if not under(t[0], spec.head_attr)]
    spatial = [i for i, (_, _, s) in enumerate(found) if len(s) == 4 and s[2] * s[3] > 1]
    if spatial:
        name, module, _ = found[spatial[-1]]
        # Token outputs finishing later (not of its ancestors) mean the 4-D tensor was an
        # attention internal (N, heads, L, d) of a token model, not the final feature map.
        later = found[spatial[-1] + 1 :]
        if not any(len(s) == 3 and s[1] > 1 and not under(name, n) for n, _, s in later):
            return CamTarget(name, module)
    target = _token_target(model, found)
    if target is None:
        raise ValueError(
            f"{spec.name}: no spatial feature map or square token grid found for a "
            "class-activation map"
        )
    return target
