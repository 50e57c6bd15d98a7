"""Options shared by the commands: the training options of ``train`` and ``compare``, choices.

:class:`TrainingOptions` declares every training option once (flag, metavar, help), under
the names of :data:`cropdoc.config.TRAIN_OPTIONS`, which the Python API takes too.
:func:`training_options` adds them all to a command and hands them over as one object;
:meth:`TrainingOptions.to_config` turns the given ones into a config through
:func:`cropdoc.config.options_to_overrides`. Options default to None ("not given"), so each
default is written once, in ``config.py``. ``--help`` reads those defaults, and the
architecture names from the registry, only when it is shown (:class:`LateHelp`): the
registry loads torch, which no other command should wait for.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args, get_type_hints

import typer
from typer.core import TyperCommand, TyperOption

from ..config import (
    RESUME_OPTIONS,
    TRAIN_OPTIONS,
    DataConfig,
    RuntimeConfig,
    TrainConfig,
    load_config,
    options_to_overrides,
)
from ..errors import ConfigError

__all__ = [
    "Arch",
    "Balance",
    "Device",
    "DeviceOpt",
    "EvalSplit",
    "LabelConflicts",
    "LateHelp",
    "Precision",
    "RESUME_FLAGS",
    "Recipe",
    "TrainingOptions",
    "WorkersOpt",
    "complete_arch",
    "fresh_out",
    "known_archs",
    "pin_out",
    "run_dir_for",
    "training_options",
]

_logger = logging.getLogger(__name__)

_PANEL = "Training options"
#: Set by torchrun and by Fabric's launcher in each rank: every rank runs this
#: command on its own, so none may pick a different ``--out`` than the others.
_RANK_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE")


def _choices(name: str, model: type, key: str) -> type[StrEnum]:
    """An enum of a config field's ``Literal`` values: ``--help`` lists them, and the values
    stay written once, in ``config.py``."""
    return StrEnum(name, [(v, v) for v in get_args(model.model_fields[key].annotation)])


Recipe = _choices("Recipe", TrainConfig, "recipe")
Precision = _choices("Precision", RuntimeConfig, "precision")
Balance = _choices("Balance", DataConfig, "balance")
LabelConflicts = _choices("LabelConflicts", DataConfig, "label_conflicts")


class Device(StrEnum):
    """Where to compute (``runtime.accelerator`` takes any Fabric name; these are the usual)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class EvalSplit(StrEnum):
    """What ``evaluate --split`` scores (``cropdoc.evaluation.evaluate.EVAL_SPLITS``)."""

    test = "test"
    val = "val"
    train = "train"
    all = "all"


def known_archs() -> list[str]:
    """The registry's architecture names (imports the registry, hence torch)."""
    from ..models import list_archs

    return list_archs()


def complete_arch(incomplete: str) -> list[str]:
    """Shell completion for ``--arch``."""
    return [a for a in known_archs() if a.startswith(incomplete)]


Arch = Annotated[
    str | None,
    typer.Option(metavar="NAME", help="Architecture.", autocompletion=complete_arch),
]
DeviceOpt = Annotated[Device | None, typer.Option(help="Where to compute; auto: a GPU if any.")]
WorkersOpt = Annotated[
    int | None,
    typer.Option(metavar="N", help="DataLoader workers (default: sized for this machine)."),
]


def _opt(*decls: str, **kwargs: Any) -> Any:
    return typer.Option(*decls, rich_help_panel=_PANEL, **kwargs)


@dataclass(frozen=True)
class TrainingOptions:
    """The training options as given on the command line; None means "not given"."""

    config: Annotated[
        Path | None, _opt("--config", metavar="FILE", help="YAML config; options given win.")
    ] = None
    weights: Annotated[
        str | None,
        _opt(
            metavar="imagenet|none|FILE",
            help="Pretrained weights, none (from scratch) or a local .pth/.safetensors file.",
        ),
    ] = None
    recipe: Annotated[
        Recipe | None,
        _opt(
            help="auto: three-stage (cropdoc's rates for pretrained backbones: 2/4/12 epochs), "
            "or scratch (one stage) with --weights none; seed: the seed's table exactly."
        ),
    ] = None
    stage_epochs: Annotated[
        str | None,
        _opt(metavar="N,N,N", help="Epochs of each stage, one per stage (default: the recipe's)."),
    ] = None
    stage_lrs: Annotated[
        str | None,
        _opt(
            metavar="LR,LR,LR",
            help="Head learning rate of each stage, one per stage (default: the recipe's). "
            "The backbone trains at the same rate, except in stages with their own "
            "--backbone-lr.",
        ),
    ] = None
    backbone_lr: Annotated[
        float | None,
        _opt(
            metavar="LR",
            help="Backbone learning rate of the stages that set one (differential rates: "
            "the three-stage recipe's refinement stage).",
        ),
    ] = None
    image_size: Annotated[int | None, _opt(metavar="PX", help="Input side in pixels.")] = None
    batch_size: Annotated[int | None, _opt(metavar="N", help="Training images per step.")] = None
    workers: Annotated[int | None, _opt(metavar="N", help="DataLoader worker processes.")] = None
    balance: Annotated[
        Balance | None, _opt(help="Counter class imbalance: loss weights or a weighted sampler.")
    ] = None
    split: Annotated[
        str | None,
        _opt(
            metavar="TRAIN,VAL,TEST",
            help="Split ratios (a pre-split copy keeps its own; a split it lacks is carved "
            "from its train folder at these ratios).",
        ),
    ] = None
    split_seed: Annotated[
        int | None,
        _opt(
            metavar="N",
            help="Seed of the train/val/test split (default: --seed). Keep it to train "
            "with other seeds on the same split.",
        ),
    ] = None
    resplit: Annotated[
        bool | None,
        _opt(
            "--resplit/--no-resplit",
            help="Pre-split DATA (train/ val/ test/): pool its folders and split them "
            "grouped by leaf instead of using the split it ships with.",
        ),
    ] = None
    variant: Annotated[
        str | None,
        _opt(
            metavar="NAME",
            help="Read this variant folder of DATA when it holds several (color, grayscale, "
            "segmented: PlantVillage's raw/ folder).",
        ),
    ] = None
    label_conflicts: Annotated[
        LabelConflicts | None,
        _opt(
            help="Byte-identical files filed under two classes: exclude them from training "
            "and evaluation (default), or keep them.",
        ),
    ] = None
    classes: Annotated[
        str | None, _opt(metavar="NAMES", help="Only these class folders (comma-separated).")
    ] = None
    weight_decay: Annotated[float | None, _opt(metavar="WD", help="AdamW weight decay.")] = None
    label_smoothing: Annotated[
        float | None, _opt(metavar="EPS", help="Cross-entropy label smoothing.")
    ] = None
    drop_path: Annotated[
        float | None,
        _opt(
            metavar="P",
            help="Stochastic depth: the chance the deepest residual block is skipped per "
            "training step; default: the architecture's own (0.2 for EfficientNet-B0 and "
            "timm models that have it).",
        ),
    ] = None
    ema: Annotated[
        float | None,
        _opt(
            metavar="DECAY",
            help="Validate, keep and ship an exponential moving average of the weights, "
            "with this decay at most (it warms up from 0 each stage); 0: off.",
        ),
    ] = None
    patience: Annotated[
        int | None,
        _opt(metavar="EPOCHS", help="Early stopping: epochs without a better val macro-F1."),
    ] = None
    device: Annotated[Device | None, _opt(help="Where to train; auto: a GPU if any.")] = None
    devices: Annotated[
        int | None, _opt(metavar="N", help="Processes/GPUs; more than 1 runs DDP.")
    ] = None
    precision: Annotated[
        Precision | None,
        _opt(
            help="auto: measured per stage; bf16 (or bf16 with the slow depthwise "
            "convolutions in fp32) only where it is faster."
        ),
    ] = None
    seed: Annotated[
        int | None,
        _opt(
            metavar="N",
            help="Seed of the init, data order and augmentation, and of the split unless "
            "--split-seed.",
        ),
    ] = None
    deterministic: Annotated[
        bool | None,
        _opt("--deterministic/--no-deterministic", help="Deterministic algorithms (slower)."),
    ] = None

    def given(self) -> dict[str, Any]:
        """The options given, as :data:`TRAIN_OPTIONS` values (lists parsed, enums as text).

        Raises:
            ConfigError: a list option that is not comma-separated numbers (or too few).
        """
        options = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or f.name == "config":
                continue
            parse = _PARSERS.get(f.name)
            options[f.name] = parse(value) if parse else getattr(value, "value", value)
        return options

    def to_config(self, *, arch: str | None = None, fallback: Path | None = None) -> TrainConfig:
        """``--config`` (else ``fallback``, when that file exists) with the options on top.

        Raises:
            ConfigError: a bad file or value, or an unknown architecture (the message lists
                the known ones), before any data is scanned.
        """
        options = self.given()
        if arch is not None:
            options["arch"] = arch
        path = self.config
        if path is None and fallback is not None and fallback.is_file():
            path = fallback
        config = load_config(path, options_to_overrides(**options))
        from ..models import get_arch

        get_arch(config.arch)
        return config


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: The options ``--resume`` applies, as flags: derived from the library's one rule
#: (``cropdoc.config.RESUME_APPLIED``); any other option that differs from the run's
#: ``config.yaml`` is refused by ``cropdoc.training``.
RESUME_FLAGS: tuple[str, ...] = tuple(_flag(n) for n in RESUME_OPTIONS)


def _numbers(kind: type, n: int | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError as e:
            raise ConfigError(f"expected comma-separated numbers, got {text!r}") from e
        if n is not None and len(values) != n:
            raise ConfigError(f"expected {n} comma-separated numbers, got {text!r}")
        return values

    return parse


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _named(option: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` with the option's flag in its error, e.g. ``--split: expected ...``."""

    def run(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as e:
            raise ConfigError(f"{_flag(option)}: {e}") from e

    return run


_PARSERS: dict[str, Callable[[str], Any]] = {
    name: _named(name, parse)
    for name, parse in {
        "stage_epochs": _numbers(int),
        "stage_lrs": _numbers(float),
        "split": _numbers(float, 3),
        "classes": _names,
    }.items()
}


_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add every :class:`TrainingOptions` option to ``command``, passed as ``training=``.

    Typer reads a command's options from its signature, so the wrapper shows the command's
    own parameters followed by the shared ones, and gathers those back into one object.
    """
    hints = get_type_hints(TrainingOptions, include_extras=True)
    shared = [
        inspect.Parameter(f.name, _KEYWORD, default=None, annotation=hints[f.name])
        for f in fields(TrainingOptions)
    ]
    own = [
        p
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.name != "training"
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        training = TrainingOptions(**{f.name: kwargs.pop(f.name) for f in fields(TrainingOptions)})
        return command(**kwargs, training=training)

    params = [*own, *shared]
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


class LateHelp(TyperCommand):
    """A command whose option help gets, when shown, what only the library knows: each
    training option's default (``config.py``) and the registered architectures."""

    _completed = False

    def format_help(self, ctx: Any, formatter: Any) -> None:
        if not self._completed:
            for param in self.params:
                note = _late_note(param.name)
                if note and isinstance(param, TyperOption):
                    param.help = f"{param.help} {note}" if param.help else note
            self._completed = True
        super().format_help(ctx, formatter)


def _late_note(name: str | None) -> str | None:
    if name == "arch":
        return (
            f"One of: {', '.join(known_archs())}, or timm/<name> for any timm model "
            f"(default: {TrainConfig().arch})."
        )
    if name == "archs":
        return (
            f"Known: {', '.join(known_archs())}, or timm/<name> (default: the known ones, "
            f"unless --runs)."
        )
    if name not in TRAIN_OPTIONS:
        return None
    *parents, leaf = TRAIN_OPTIONS[name]
    value: Any = TrainConfig()
    for part in parents:
        value = getattr(value, part)
    info, default = type(value).model_fields[leaf], getattr(value, leaf)
    if default is None:
        # A None default is described in config.py ("None: sized for the machine").
        described = info.description or ""
        return f"(default: {described[6:]})" if described.startswith("None: ") else None
    if isinstance(default, bool):
        return f"(default: {'on' if default else 'off'})"
    if isinstance(default, tuple | list):
        return f"(default: {','.join(f'{v:g}' for v in default)})"
    return f"(default: {default:g})" if isinstance(default, float) else f"(default: {default})"


def fresh_out(out: Path) -> Path:
    """``out`` if it is missing or empty, else the first free ``out-2``, ``out-3``, ...

    So a second run with the same ``--out`` neither mixes its files with the first's nor
    stops on them (Ultralytics' ``increment_path``, with a dash because run names often end
    in a digit: ``runs/resnet50-2``).
    """
    if not out.exists() or (out.is_dir() and next(out.iterdir(), None) is None):
        return out
    for n in itertools.count(2):
        candidate = out.with_name(f"{out.name}-{n}")
        if not candidate.exists():
            return candidate
    raise AssertionError("unreachable")


def run_dir_for(out: Path, *, resume: bool, exist_ok: bool) -> Path:
    """Where ``cropdoc train --out OUT`` writes: OUT, or a fresh sibling (logged) when OUT
    already holds files, unless ``--resume``/``--exist-ok`` or one rank of a launched job."""
    if resume or exist_ok or any(v in os.environ for v in _RANK_ENV):
        return out
    fresh = fresh_out(out)
    if fresh != out:
        _logger.warning(
            "%s already holds files: this run goes to %s (--resume continues %s, "
            "--exist-ok writes into it)",
            out,
            fresh,
            out,
        )
    return fresh


def pin_out(argv: list[str], out: Path) -> list[str]:
    """``argv`` with ``--out OUT --exist-ok``: Fabric's DDP launcher runs this command line
    again for ranks 1..N-1, which must write where rank 0 decided, not choose again."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return [*kept, "--out", str(out), *([] if "--exist-ok" in kept else ["--exist-ok"])]
