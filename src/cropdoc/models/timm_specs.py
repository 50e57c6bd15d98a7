"""Specs for timm's model zoo, derived from the model itself (``--arch timm/<name>``).

Nothing here is declared per model: :func:`derive_timm_spec` builds the backbone once on
the meta device (no memory, no weights, milliseconds) and reads from it, and from timm's
pretrained config, what the torchvision specs in ``registry.py`` write by hand:

* **head input**: the width of the pooled features the backbone returns with
  ``num_classes=0``, measured by a forward pass (``num_features`` is wrong for models with
  a pre-logits layer, such as MobileNetV3's ``conv_head``);
* **head activation**: the backbone's own family, from the last activation module it
  contains (ReLU/ReLU6 -> ReLU, SiLU/Swish -> SiLU, hard-swish -> Hardswish, GELU -> GELU);
* **stage 2**: the seed's "last 30 % of the blocks" on timm's own fine-grained layer
  grouping (``group_matcher``, the grouping behind timm's layer-wise LR decay): the stem
  never, the last ``N - int(0.7 N)`` of the N block groups, and whatever timm leaves
  unmatched after them (a final norm or pre-logits layer) always; written as the fewest
  module-name prefixes that cover exactly those parameters;
* **preprocessing**: input size, mean/std, interpolation and ``1 / crop_pct`` from
  ``timm.data.resolve_model_data_config``;
* **stochastic depth**: ``drop_path_rate`` when the model has it (built with a rate, it
  holds timm's ``DropPath`` modules), trained at 0.2 by default (torchvision's
  EfficientNet rate; on the pretrained Lite0 it neither helped nor hurt the test split
  measurably, BENCHMARKS.md);
* **cost and INT8 ops**: FLOPs of one 224 px forward (``FlopCounterMode``; 1.0 when a
  model cannot be counted), and ``("Conv",)`` plus ``"MatMul"`` when the backbone has
  linear layers (transformers, ConvNeXt), for ``export --int8``, which falls back to
  convolutions only whenever the result disagrees with PyTorch.

timm is imported only when a timm architecture is asked for.
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..preprocessing import Interpolation
from .names import under
from .spec import ArchSpec, TimmSource

__all__ = [
    "BACKBONE_ATTR",
    "HEAD_ATTR",
    "TIMM_PREFIX",
    "TimmClassifier",
    "derive_timm_spec",
    "is_timm_name",
    "stage2_blocks",
]

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm/"
BACKBONE_ATTR = "backbone"
HEAD_ATTR = "head"

# The seed's "last 30 %": blocks from int(N * 0.7) on, in tenths as in registry.py.
_STAGE2_FROZEN_TENTHS = 7
_FLOP_SIZE = 224
_DEFAULT_GFLOPS = 1.0
# The stochastic-depth rate timm models train with by default (when they have it).
_DROP_PATH = 0.2

# Activation class names (lower case, any class in the MRO) -> the head's activation.
_ACTIVATION_FAMILIES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU,
    "leakyrelu": nn.ReLU,
    "prelu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "swishme": nn.SiLU,
    "mish": nn.SiLU,
    "mishme": nn.SiLU,
    "hardswish": nn.Hardswish,
    "hardswishme": nn.Hardswish,
    "gelu": nn.GELU,
    "gelutanh": nn.GELU,
    "quickgelu": nn.GELU,
}
# timm interpolation names -> the ones cropdoc's Preprocessing knows.
_INTERPOLATIONS: dict[str, Interpolation] = {
    "bilinear": "bilinear",
    "bicubic": "bicubic",
    "nearest": "nearest",
    "random": "bilinear",  # a training-time choice; eval resizes bilinearly
}


class TimmClassifier(nn.Module):
    """A timm backbone's pooled features (built with ``num_classes=0``) into cropdoc's head.

    One wrapper for every timm model, so the head is always ``head`` and the freeze,
    param-group and weight code needs no per-model name for timm's own classifier
    (``classifier``, ``fc``, ``head.fc``, ...); the backbone's names sit under
    ``backbone.``, exactly as in timm's state dicts otherwise.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def is_timm_name(name: object) -> bool:
    """Whether ``name`` asks for a timm architecture (``timm/<model name>``)."""
    return isinstance(name, str) and name.strip().lower().startswith(TIMM_PREFIX)


def build_timm_model(
    model_name: str, *, weights: None = None, drop_path_rate: float | None = None
) -> TimmClassifier:
    """The spec's builder: a randomly initialised backbone behind a placeholder head.

    Weights are always loaded by :mod:`cropdoc.models.weights` (never by timm), so a
    file's fit is checked strictly and an offline machine fails fast. ``drop_path_rate``
    is passed to timm when given (the spec says whether the model takes it).
    """
    if weights is not None:
        raise ValueError("timm backbones are built without weights; cropdoc loads them")
    extra = {} if drop_path_rate is None else {"drop_path_rate": drop_path_rate}
    return TimmClassifier(_create(_import_timm(), model_name, **extra))


def _create(timm: Any, model_name: str, **kwargs: Any) -> nn.Module:
    """The backbone without classifier; a model that can take any input size (ViT, Swin,
    DeiT: ``dynamic_img_size``) is asked to, so it trains at the configured image size
    instead of failing on one that differs from its pretraining size."""
    try:
        return timm.create_model(
            model_name, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs
        )
    except TypeError as e:
        if "dynamic_img_size" not in str(e):
            raise
    return timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)


def _has_drop_path(timm: Any, model_name: str) -> bool:
    """Whether the model has stochastic depth: built with a ``drop_path_rate`` on the meta
    device, it holds ``DropPath`` modules (a model that does not take the keyword, or
    cannot be built there, gets none)."""
    try:
        with torch.device("meta"):
            backbone = _create(timm, model_name, drop_path_rate=0.1)
    except Exception as e:  # noqa: BLE001 - no such keyword, or no meta build: no drop path
        logger.debug("%s built with drop_path_rate failed (%s): no stochastic depth", model_name, e)
        return False
    return any(isinstance(m, timm.layers.DropPath) for m in backbone.modules())


def derive_timm_spec(name: str) -> ArchSpec:
    """Derive the :class:`ArchSpec` of ``timm/<model name>`` (see the module docs).

    Args:
        name: ``timm/`` followed by any name ``timm.list_models()`` knows, optionally with a
            pretrained tag (``timm/resnet18.a1_in1k``); case-insensitive.

    Returns:
        A spec named ``timm/<model name>`` whose builder makes a :class:`TimmClassifier`.

    Raises:
        ConfigError: timm is not installed, or it does not know the model (the message
            names close matches).
    """
    timm = _import_timm()
    model_name = name.strip().lower()[len(TIMM_PREFIX) :].strip()
    base, _, tag = model_name.partition(".")
    if not model_name or not timm.is_model(base):
        raise ConfigError(_unknown_message(timm, model_name or "<empty>"))
    backbone = _meta_backbone(timm, model_name, tag)
    width, gflops = _measure(backbone)
    drops = _has_drop_path(timm, model_name)
    cfg = timm.data.resolve_model_data_config(backbone)
    pretrained = dict(getattr(backbone, "pretrained_cfg", None) or {})
    spec = ArchSpec(
        name=f"{TIMM_PREFIX}{model_name}",
        builder=functools.partial(build_timm_model, model_name),
        weights_enum=None,
        head_attr=HEAD_ATTR,
        feature_width=width,
        activation=_activation(backbone),
        stage2_prefixes=tuple(f"{BACKBONE_ATTR}.{p}" for p in stage2_blocks(backbone)),
        mean=_three(cfg.get("mean"), (0.485, 0.456, 0.406)),
        std=_three(cfg.get("std"), (0.229, 0.224, 0.225)),
        input_size=int(cfg.get("input_size", (3, 224, 224))[-1]),
        interpolation=_INTERPOLATIONS.get(str(cfg.get("interpolation")), "bicubic"),
        resize_ratio=1.0 / float(cfg.get("crop_pct") or 0.875),
        gflops_224=gflops,
        int8_op_types=("Conv", "MatMul") if _has_linear(backbone) else ("Conv",),
        drop_path_arg="drop_path_rate" if drops else None,
        drop_path=_DROP_PATH if drops else 0.0,
        timm=TimmSource(
            model_name=model_name,
            hf_hub_id=pretrained.get("hf_hub_id") or None,
            hf_filename=pretrained.get("hf_hub_filename") or "model.safetensors",
            url=pretrained.get("url") or None,
            classifier=_names(pretrained.get("classifier")),
        ),
    )
    logger.debug("Derived %s: %s", spec.name, spec)
    return spec


def stage2_blocks(backbone: nn.Module) -> tuple[str, ...]:
    """Module-name prefixes of the top 30 % of ``backbone``'s blocks (timm's grouping).

    The rule, for any timm model: group the parameters with the model's fine-grained
    ``group_matcher`` (one group per block: ``blocks.i.j``, ``layerI.j``,
    ``stages.i.blocks.j``, ``blocks.i``); drop the stem group(s); keep the last
    ``N - int(0.7 N)`` of the N block groups plus the groups timm leaves unmatched after
    them (a final norm or pre-logits layer). Where timm only groups whole stages, a stage
    whose parameters lie (80 % or more) in numbered blocks is split into them, its other
    parts (a downsample) joining the next block, as timm's ConvNeXt grouping does. A
    model without a group matcher is grouped by its ``feature_info`` stages, split the
    same way, and failing that by its top-level children.
    """
    names = [n for n, _ in backbone.named_parameters()]
    groups = _block_groups(backbone, names)
    blocks = [g for kind, g in groups if kind == "block"]
    top = [g for kind, g in groups if kind == "top"]
    first = len(blocks) * _STAGE2_FROZEN_TENTHS // 10
    selected = {n for g in [*blocks[first:], *top] for n in g}
    return tuple(_cover(names, selected))


Groups = list[tuple[str, list[str]]]  # (kind: "stem" | "block" | "top", parameter names)

# A stage is split into its numbered blocks when they hold this share of its parameters,
# and only while timm's grouping has at most this many block groups (whole stages).
_SPLIT_COVERAGE = 0.8
_MAX_STAGE_GROUPS = 6


def _block_groups(backbone: nn.Module, names: list[str]) -> Groups:
    """The parameters in model order, grouped and classified (see :func:`stage2_blocks`)."""
    from timm.models import group_parameters

    get_matcher = getattr(backbone, "group_matcher", None)
    try:
        fine = get_matcher(coarse=False) if get_matcher is not None else None
        grouped = group_parameters(backbone, fine) if fine is not None else None
    except (NotImplementedError, TypeError, AttributeError) as e:
        logger.debug("timm's group matcher failed (%s); using feature_info", e)
        grouped = None
    if grouped is None:
        return _feature_groups(backbone, names) or _children_groups(names)
    ordered = [grouped[k] for k in sorted(grouped)]
    if not isinstance(fine, dict):
        return [("stem" if i == 0 else "block", g) for i, g in enumerate(ordered)]
    stem = _patterns(fine.get("stem"))
    every = [p for spec in fine.values() for p in _patterns(spec)]
    out: Groups = []
    for group in ordered:
        if stem and all(any(p.match(n) for p in stem) for n in group):
            out.append(("stem", group))
        elif not any(p.match(n) for p in every for n in group):
            out.append(("top", group))  # unmatched: timm ranks it after every block
        else:
            out.append(("block", group))
    if sum(kind == "block" for kind, _ in out) <= _MAX_STAGE_GROUPS and _one_level(get_matcher):
        out = _split_stages(out)
    if sum(kind == "block" for kind, _ in out) < 2:
        return _feature_groups(backbone, names) or _children_groups(names)
    return out


def _one_level(get_matcher: Any) -> bool:
    """Whether timm offers one grouping only (fine = coarse), which may be whole stages."""
    try:
        return get_matcher(coarse=True) == get_matcher(coarse=False)
    except (NotImplementedError, TypeError):  # no coarse grouping either
        return True


def _feature_groups(backbone: nn.Module, names: list[str]) -> Groups:
    """Groups from ``feature_info`` stages: before the first = stem, after the last = top;
    names between two stages join the next one."""
    info = getattr(backbone, "feature_info", None) or []
    stages = [f.get("module") for f in info if isinstance(f, dict) and f.get("module")]
    owned = [m for m in stages if any(under(n, m) for n in names)]
    if len(owned) < 2:
        return []
    stem: list[str] = []
    out: Groups = []
    pending: list[str] = []
    current: str | None = None
    for n in names:
        owner = next((m for m in owned if under(n, m)), None)
        if owner is None:
            (stem if current is None else pending).append(n)
        elif owner != current:
            kind = "stem" if owner == owned[0] and owner.startswith("stem") else "block"
            out.append((kind, [*pending, n]))
            pending, current = [], owner
        else:
            out[-1][1].append(n)
    groups: Groups = [("stem", stem)] if stem else []
    groups += out + ([("top", pending)] if pending else [])
    return _split_stages(groups)


def _children_groups(names: list[str]) -> Groups:
    children: dict[str, list[str]] = {}
    for n in names:
        children.setdefault(n.split(".", 1)[0], []).append(n)
    return [("stem" if i == 0 else "block", g) for i, g in enumerate(children.values())]


def _split_stages(groups: Groups) -> Groups:
    """Block groups that are whole stages, split into their numbered blocks."""
    out: Groups = []
    for kind, group in groups:
        out.extend(
            [(kind, sub) for sub in _split_stage(group)] if kind == "block" else [(kind, group)]
        )
    return out


def _split_stage(group: list[str]) -> list[list[str]]:
    """``group`` split into the numbered blocks of its container (``P.i`` or
    ``P.<child>.i``) when they hold most of it; other names join the next block."""
    prefix = _common_prefix(group)
    if not prefix:  # not one stage's parameters
        return [group]
    depth = prefix.count(".") + 1
    best: tuple[float, int] = (0.0, -1)  # (coverage, index of the number in the name)
    for extra in (0, 1):
        at = depth + extra
        numbered = [n for n in group if len(n.split(".")) > at + 1 and n.split(".")[at].isdigit()]
        distinct = {".".join(n.split(".")[: at + 1]) for n in numbered}
        if len(distinct) >= 2 and len(numbered) / len(group) > best[0]:
            best = (len(numbered) / len(group), at)
    coverage, at = best
    if coverage < _SPLIT_COVERAGE:
        return [group]
    blocks: dict[str, list[str]] = {}
    pending: list[str] = []
    for n in group:
        parts = n.split(".")
        if len(parts) > at + 1 and parts[at].isdigit():
            blocks.setdefault(".".join(parts[: at + 1]), []).extend([*pending, n])
            pending = []
        else:
            pending.append(n)
    subgroups = list(blocks.values())
    subgroups[-1].extend(pending)
    return subgroups


def _common_prefix(names: list[str]) -> str:
    """The longest dotted prefix shared by every name (of modules, not of a parameter)."""
    split = [n.split(".")[:-1] for n in names]
    common: list[str] = []
    for parts in zip(*split, strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _patterns(spec: Any) -> list[re.Pattern[str]]:
    """Compiled regexes of one ``group_matcher`` entry (a regex, or ``[(regex, suffix)]``)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return [re.compile(spec)]
    if isinstance(spec, Sequence):
        return [
            re.compile(s[0] if isinstance(s, Sequence) and not isinstance(s, str) else s)
            for s in spec
        ]
    return []


def _cover(names: list[str], selected: set[str]) -> list[str]:
    """The fewest dotted prefixes, in model order, under which lie exactly ``selected``."""
    out: list[str] = []

    def walk(prefix: str, members: list[str], depth: int) -> None:
        inside = [n in selected for n in members]
        if prefix and all(inside):
            out.append(prefix)
            return
        if not any(inside):
            return
        children: dict[str, list[str]] = {}
        for n in members:
            children.setdefault(".".join(n.split(".")[: depth + 1]), []).append(n)
        for child, child_members in children.items():
            walk(child, child_members, depth + 1)

    walk("", names, 0)
    return out


def _activation(backbone: nn.Module) -> type[nn.Module]:
    """The backbone's activation family: that of its last activation module (the one
    closest to the features the head reads); ReLU when none is a module."""
    found: type[nn.Module] | None = None
    for module in backbone.modules():
        for cls in type(module).__mro__:
            family = _ACTIVATION_FAMILIES.get(cls.__name__.lower())
            if family is not None:
                found = family
                break
    if found is None:
        logger.info("No activation module found; the head uses ReLU.")
    return found or nn.ReLU


def _has_linear(backbone: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear | nn.MultiheadAttention) for m in backbone.modules())


def _measure(backbone: nn.Module) -> tuple[int, float]:
    """``(pooled feature width, forward GFLOPs at 224 px)`` from one meta-device forward.

    Models with a fixed input size are run at their own size and the FLOPs scaled to
    224 px; a model that cannot run on the meta device keeps the default cost.
    """
    from torch.utils.flop_counter import FlopCounterMode

    native = int(getattr(backbone, "pretrained_cfg", {}).get("input_size", (3, 224))[-1])
    device = next(backbone.parameters()).device
    backbone.eval()
    for size in dict.fromkeys((_FLOP_SIZE, native)):
        try:
            # Not under no_grad: FlopCounterMode's module tracker then fails on some models
            # (CaiT); on the meta device the autograd graph costs nothing.
            with FlopCounterMode(display=False) as counter:
                out = backbone(torch.empty(1, 3, size, size, device=device))
        except Exception as e:  # noqa: BLE001 - any failure means "try the next size"
            logger.debug("Forward at %d px failed: %s", size, e)
            continue
        if out.ndim == 2:
            flops = counter.get_total_flops() * (_FLOP_SIZE / size) ** 2
            return int(out.shape[1]), round(flops / 1e9, 3) or _DEFAULT_GFLOPS
    width = int(getattr(backbone, "head_hidden_size", None) or backbone.num_features)
    logger.warning("Could not count the FLOPs of this model; assuming %.1f.", _DEFAULT_GFLOPS)
    return width, _DEFAULT_GFLOPS


def _meta_backbone(timm: Any, model_name: str, tag: str) -> nn.Module:
    """The backbone on the meta device (CPU when a model cannot be built there)."""
    try:
        with torch.device("meta"):
            return _create(timm, model_name)
    except Exception as e:  # noqa: BLE001 - any failure on meta: build on CPU instead
        if tag and "pretrained tag" in str(e).lower():
            base = model_name.partition(".")[0]
            tags = ", ".join(timm.list_pretrained(f"{base}.*")[:10]) or "none"
            raise ConfigError(
                f"timm has no pretrained tag {tag!r} for {base!r}: known {tags}. Use "
                f"--arch timm/{base} for the default weights."
            ) from e
        logger.debug("Meta-device build of %s failed (%s); building on CPU", model_name, e)
    return _create(timm, model_name)


def _unknown_message(timm: Any, model_name: str) -> str:
    base = model_name.partition(".")[0]
    candidates: set[str] = set()
    for part in [t for t in re.split(r"[_\-.]", base) if len(t) >= 3] or [base]:
        candidates.update(timm.list_models(f"*{part}*"))
    close = difflib.get_close_matches(
        base, sorted(candidates or timm.list_models()), n=6, cutoff=0.0
    )
    hint = f" Close matches: {', '.join(TIMM_PREFIX + c for c in close)}." if close else ""
    return (
        f"Unknown timm model {model_name!r} (--arch {TIMM_PREFIX}{model_name}).{hint} "
        f"timm.list_models('*{base[:8]}*') lists the names timm knows."
    )


def _three(values: Iterable[float] | None, default: tuple[float, float, float]):
    """Three per-channel values (a one-channel config is broadcast)."""
    v = tuple(float(x) for x in (values or default))
    return v * 3 if len(v) == 1 else v[:3]


def _names(classifier: Any) -> tuple[str, ...]:
    if not classifier:
        return ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _import_timm() -> Any:
    try:
        import timm
        import timm.data
    except ImportError as e:  # pragma: no cover - timm is a dependency
        raise ConfigError("timm architectures need the timm package: pip install timm") from e
    return timm
