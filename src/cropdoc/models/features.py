"""The penultimate head features next to the logits, for every architecture.

Feature-space OOD scores (``cropdoc.ood``) read the 512-d input of the head's last linear
layer. Every cropdoc model applies its head (``spec.head_attr``, built by
:func:`~cropdoc.models.build_head`) last, to the pooled backbone features, so a view of
the model whose head is an identity gives those pooled features, and the head's own
layers split them into features and logits: one forward pass, no hooks, traceable by the
ONNX exporter.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .spec import ArchSpec

__all__ = ["LogitsAndFeatures", "split_head"]


def split_head(model: nn.Module, spec: ArchSpec) -> tuple[nn.Module, nn.Linear]:
    """``(everything of the head before its last linear layer, that layer)``.

    Raises:
        ValueError: the head is not cropdoc's ``Sequential`` ending in a ``Linear``.
    """
    head = getattr(model, spec.head_attr, None)
    if not isinstance(head, nn.Sequential) or not isinstance(head[-1], nn.Linear):
        raise ValueError(
            f"{spec.name}: expected cropdoc's head (a Sequential ending in Linear) at "
            f"{spec.head_attr!r}; build the model with cropdoc.models.build"
        )
    return head[:-1], head[-1]


class LogitsAndFeatures(nn.Module):
    """``model`` returning ``(logits, penultimate features)``; shares its parameters.

    Args:
        model: a model made by :func:`~cropdoc.models.build` (left unchanged).
        spec: its architecture spec (where the head is).
    """

    def __init__(self, model: nn.Module, spec: ArchSpec) -> None:
        super().__init__()
        self.pre_head, self.last = split_head(model, spec)
        # A shallow copy with its own child table: the same parameter tensors, the head
        # replaced by an identity, so it returns the pooled features the head reads.
        body = copy.copy(model)
        body._modules = dict(model._modules)
        setattr(body, spec.head_attr, nn.Identity())
        self.body = body

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pre_head(self.body(x))
        return self.last(features), features
