"""The data an architecture is described by: :class:`ArchSpec` (and :class:`TimmSource`).

Kept apart from the registry so that the module deriving timm specs and the registry that
hands them out can both import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torchvision.models._api import WeightsEnum

from ..preprocessing import EVAL_RESIZE_RATIO, IMAGENET_MEAN, IMAGENET_STD, Interpolation

__all__ = ["ArchSpec", "TimmSource"]


@dataclass(frozen=True)
class TimmSource:
    """Where a timm architecture and its pretrained weights come from.

    Attributes:
        model_name: the name ``timm.create_model`` takes (it may carry a pretrained tag,
            e.g. ``resnet18.a1_in1k``).
        hf_hub_id: Hugging Face hub repository of the pretrained weights (``None``: none
            there); may end in ``@revision``.
        hf_filename: file in that repository (timm's are ``model.safetensors``).
        url: direct download URL, for the few pretrained configs that have no hub id.
        classifier: module names of timm's own classifier (its ImageNet head), whose
            tensors a weights file may hold and cropdoc drops.
    """

    model_name: str
    hf_hub_id: str | None = None
    hf_filename: str = "model.safetensors"
    url: str | None = None
    classifier: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArchSpec:
    """Everything generic code needs to know about one architecture.

    Attributes:
        name: Canonical name, used in configs, bundles and on the command line.
        builder: Constructor; called as ``builder(weights=None)`` it returns the model
            with its original head (torchvision), or a placeholder head (timm).
        weights_enum: torchvision weights enum; ``weights_enum.DEFAULT`` is the ImageNet
            checkpoint fetched for ``weights="imagenet"``. ``None`` for timm models.
        head_attr: Attribute of the model that cropdoc replaces with its own head;
            parameters under it form the "head" group.
        feature_width: Width of the pooled features that feed the head.
        activation: Activation used inside the head, matching the backbone's own.
        stage2_prefixes: Module-name prefixes (matched on dot boundaries) unfrozen in
            stage 2 besides the head.
        aliases: Other accepted names (e.g. the seed's ``mobilenetv3``).
        mean: Per-channel normalisation mean the pretrained weights expect.
        std: Per-channel normalisation std the pretrained weights expect.
        input_size: Square input side the pretrained weights were trained at.
        interpolation: Resampling filter of the eval resize the weights were tuned with.
        resize_ratio: Shorter side before the centre crop, as a multiple of the crop
            (``1 / crop_pct`` in timm's terms).
        gflops_224: Forward-pass GFLOPs (2 x multiply-accumulates) per 224 px image; sizes
            the work per batch (how many threads pay) and the benchmarks' share of peak.
        int8_op_types: ONNX op types the INT8 export tries to quantize first (it falls back
            to convolutions only when the result disagrees with PyTorch too often).
            EfficientNet-B0 adds its SiLU and squeeze-excitation ops (Sigmoid, Mul, Add):
            left fp32, they put a dequantize/quantize pair around every convolution;
            measured at 224 px, batch 1: 16.7 ms with convolutions only, 10.2 ms with them.
        drop_path_arg: The builder's keyword for the stochastic-depth rate (the chance
            the deepest residual block is skipped in a training step, less for earlier
            blocks): ``stochastic_depth_prob`` for torchvision's EfficientNet,
            ``drop_path_rate`` for the timm models that take it; ``None``: the
            architecture has no stochastic depth.
        drop_path: The rate cropdoc trains with unless ``optim.drop_path`` says otherwise.
        timm: For a timm model, the timm name and where its weights live; ``None`` for
            the torchvision architectures.
    """

    name: str
    builder: Callable[..., nn.Module]
    weights_enum: type[WeightsEnum] | None
    head_attr: str
    feature_width: int
    activation: type[nn.Module]
    stage2_prefixes: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int = 224
    interpolation: Interpolation = "bilinear"
    resize_ratio: float = EVAL_RESIZE_RATIO
    gflops_224: float = 1.0
    int8_op_types: tuple[str, ...] = ("Conv",)
    drop_path_arg: str | None = None
    drop_path: float = 0.0
    timm: TimmSource | None = None
