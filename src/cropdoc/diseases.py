"""Disease information shown with a prediction: crop, pathogen, symptoms, what to do.

The table is data (``resources/diseases.json``: the 38 PlantVillage classes, keyed by the
dataset's folder names, sources cited in the file). An extension service can supply its
own table in the same format (``--diseases FILE`` for ``predict`` and ``serve``): it
replaces the packaged one, so the advice shown is all theirs, and is validated when it is
loaded, so a typo is one clear error at start-up, not a broken page later. Lookups use
:func:`cropdoc.classnames.find_class`, so a model trained on a copy spelled
``Tomato_Bacterial_spot`` or ``Pepper__bell___healthy`` still finds its entry. A class the
table does not know gets a neutral generic entry built from its name, never an error: a
model trained on other crops should still be servable. Foundation module (no torch, no
matplotlib): ``predict`` and ``serve`` both use it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import resources
from .classnames import class_key, find_class, split_crop_disease
from .errors import ConfigError

__all__ = [
    "DiseaseEntry",
    "DiseaseInfo",
    "DiseaseTable",
    "disease_info",
    "disease_table",
    "load_disease_table",
]

_logger = logging.getLogger(__name__)

_GENERIC_MANAGEMENT = [
    "Compare the leaf with reference photos of this disease and look at other plants nearby.",
    "Ask a local agricultural extension officer or plant clinic to confirm before treating.",
]
_FORMAT = (
    'a JSON or YAML mapping {"<class name>": {"crop", "disease", "healthy", "pathogen", '
    '"severity", "symptoms", "management"}}, as cropdoc\'s resources/diseases.json'
)


class DiseaseEntry(BaseModel):
    """One class of a disease table, as the file holds it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop: str = Field(min_length=1)
    disease: str = Field(min_length=1)
    healthy: bool
    pathogen: str = ""
    severity: Literal["none", "moderate", "high"]
    symptoms: str = Field(min_length=1)
    management: list[str] = Field(min_length=1)
    sources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _severity_fits(self) -> DiseaseEntry:
        if self.healthy != (self.severity == "none"):
            raise ValueError("severity is 'none' exactly when healthy is true")
        return self


@dataclass(frozen=True)
class DiseaseInfo:
    """What a grower needs to know about one class.

    ``severity`` is ``"none"`` (healthy), ``"moderate"``, ``"high"`` or ``"unknown"``;
    ``known`` is False for the generic entry of a class the table lacks.
    """

    class_name: str
    crop: str
    disease: str
    healthy: bool
    pathogen: str
    severity: str
    symptoms: str
    management: list[str] = field(default_factory=list)
    known: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DiseaseTable(Mapping[str, DiseaseEntry]):
    """Validated entries by class name, and where they came from (``source``)."""

    def __init__(self, entries: Mapping[str, DiseaseEntry], source: str) -> None:
        self._entries = dict(entries)
        self.source = source

    def __getitem__(self, key: str) -> DiseaseEntry:
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def info(self, class_name: str) -> DiseaseInfo:
        """Information for ``class_name``; a neutral generic entry when the table lacks it."""
        key = find_class(class_name, list(self._entries))
        if key is None:
            _logger.debug(
                "no disease information for class %r; using the generic entry", class_name
            )
            return _generic(class_name)
        e = self._entries[key]
        return DiseaseInfo(
            class_name=class_name,
            crop=e.crop,
            disease=e.disease,
            healthy=e.healthy,
            pathogen=e.pathogen,
            severity=e.severity,
            symptoms=e.symptoms,
            management=list(e.management),
        )

    def missing(self, classes: Sequence[str]) -> list[str]:
        """The classes this table has no entry for (they get the generic entry)."""
        names = list(self._entries)
        return [c for c in classes if find_class(c, names) is None]


def _generic(class_name: str) -> DiseaseInfo:
    crop, disease = split_crop_disease(class_name)
    healthy = disease.casefold() == "healthy"
    return DiseaseInfo(
        class_name=class_name,
        crop=crop,
        disease="Healthy" if healthy else (disease or class_name),
        healthy=healthy,
        pathogen="",
        severity="none" if healthy else "unknown",
        symptoms="" if not healthy else "No signs of disease on this leaf.",
        management=["No treatment needed."] if healthy else list(_GENERIC_MANAGEMENT),
        known=False,
    )


def _errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    more = len(e.errors()) - 3
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _parse(text: str, source: str, yaml_file: bool) -> DiseaseTable:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"disease table {source}: {why}; expected {_FORMAT}")

    try:
        raw = yaml.safe_load(text) if yaml_file else json.loads(text)
    except json.JSONDecodeError as e:
        raise bad(f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    except yaml.YAMLError as e:
        raise bad(f"not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict):
        raise bad(f"the top level is a {type(raw).__name__}, not a mapping")
    entries = {str(k): v for k, v in raw.items() if not str(k).startswith("_")}
    if not entries:
        raise bad("it has no entries")
    table: dict[str, DiseaseEntry] = {}
    for name, value in entries.items():
        try:
            table[name] = DiseaseEntry.model_validate(value)
        except ValidationError as e:
            raise bad(f"entry {name!r}: {_errors(e)}") from e
    keys: dict[str, str] = {}
    for name in table:
        other = keys.setdefault(class_key(name), name)
        if other != name:
            raise bad(f"entries {other!r} and {name!r} name the same class; keep one")
    return DiseaseTable(table, source)


def load_disease_table(path: str | os.PathLike[str]) -> DiseaseTable:
    """Read and validate a disease table file (JSON, or YAML for ``.yaml``/``.yml``).

    Raises:
        ConfigError: the file is missing or unreadable, is not in the format, or has an
            invalid entry; one line naming the entry, the field and what is allowed.

    >>> load_disease_table("extension/diseases.json").source  # doctest: +SKIP
    'extension/diseases.json'
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"disease table {p} not found; check the path") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"disease table {p} cannot be read as UTF-8 text: {e}") from e
    return _parse(text, str(p), p.suffix.lower() in {".yaml", ".yml"})


@cache
def _packaged() -> DiseaseTable:
    return _parse(resources.read_text("diseases.json"), "packaged", yaml_file=False)


def disease_table(path: str | os.PathLike[str] | None = None) -> DiseaseTable:
    """The table at ``path`` (validated), or the packaged one (read once)."""
    return _packaged() if path is None else load_disease_table(path)


def disease_info(class_name: str, table: DiseaseTable | None = None) -> DiseaseInfo:
    """Information for ``class_name`` from ``table`` (default: the packaged one).

    >>> disease_info("Tomato_Late_blight").pathogen.startswith("Phytophthora")
    True
    >>> disease_info("Mango___Anthracnose").known
    False
    """
    return (table if table is not None else _packaged()).info(class_name)
