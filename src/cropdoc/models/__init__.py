"""Models: architecture registry, the ``build`` factory, freeze policies and weights.

The seed's torchvision architectures are declared in the registry; any timm model is
available as ``timm/<name>``, its spec derived on first use.

>>> from cropdoc.models import build, get_arch, apply_policy, param_groups
>>> spec = get_arch("efficientnet_b0")  # or get_arch("timm/convnext_atto")
>>> model = build(spec.name, classes=5, weights=None)
>>> apply_policy(model, spec, "head")
"""

from __future__ import annotations

from .cam import CamTarget as CamTarget
from .cam import cam_target as cam_target
from .factory import build as build
from .factory import drop_path_rate as drop_path_rate
from .features import LogitsAndFeatures as LogitsAndFeatures
from .features import split_head as split_head
from .freeze import BatchNormPolicy as BatchNormPolicy
from .freeze import FreezePolicy as FreezePolicy
from .freeze import apply_policy as apply_policy
from .freeze import freeze_backbone as freeze_backbone
from .freeze import full_unfreeze as full_unfreeze
from .freeze import is_head_param as is_head_param
from .freeze import param_groups as param_groups
from .freeze import partial_unfreeze as partial_unfreeze
from .freeze import set_train_mode as set_train_mode
from .freeze import trainable_names as trainable_names
from .registry import ArchSpec as ArchSpec
from .registry import build_head as build_head
from .registry import get_arch as get_arch
from .registry import list_archs as list_archs
from .registry import register_arch as register_arch
from .spec import TimmSource as TimmSource
from .timm_specs import TimmClassifier as TimmClassifier
from .timm_specs import is_timm_name as is_timm_name
from .weights import load_pretrained as load_pretrained

__all__ = [
    "ArchSpec",
    "BatchNormPolicy",
    "CamTarget",
    "FreezePolicy",
    "LogitsAndFeatures",
    "TimmClassifier",
    "TimmSource",
    "apply_policy",
    "build",
    "build_head",
    "cam_target",
    "drop_path_rate",
    "freeze_backbone",
    "full_unfreeze",
    "get_arch",
    "is_head_param",
    "is_timm_name",
    "list_archs",
    "load_pretrained",
    "param_groups",
    "partial_unfreeze",
    "register_arch",
    "set_train_mode",
    "split_head",
    "trainable_names",
]
