"""Disease information shown with a prediction: crop, pathogen, symptoms, what to do.

The table is data (``resources/diseases.json``), keyed by the PlantVillage class names.
Lookups use :func:`cropdoc.classnames.find_class`, so a model trained on a copy spelled
``Tomato_Bacterial_spot`` or ``Pepper__bell___healthy`` still finds its entry. A class the
table does not know gets a neutral generic entry built from its name, never an error: a
model trained on other crops should still be servable. Foundation module (no torch, no
matplotlib): ``predict`` and ``serve`` both use it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from . import resources
from .classnames import find_class, split_crop_disease

__all__ = ["DiseaseInfo", "disease_info", "disease_table"]

_logger = logging.getLogger(__name__)

_GENERIC_MANAGEMENT = [
    "Compare the leaf with reference photos of this disease and look at other plants nearby.",
    "Ask a local agricultural extension officer or plant clinic to confirm before treating.",
]


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


@cache
def disease_table() -> dict[str, dict[str, Any]]:
    """The packaged table ``{class name: fields}`` (read once)."""
    text = resources.read_text("diseases.json")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def disease_info(class_name: str) -> DiseaseInfo:
    """Information for ``class_name``; a neutral generic entry when the table lacks it.

    >>> disease_info("Tomato_Late_blight").pathogen.startswith("Phytophthora")
    True
    >>> disease_info("Mango___Anthracnose").known
    False
    """
    table = disease_table()
    key = find_class(class_name, list(table))
    if key is not None:
        entry = table[key]
        return DiseaseInfo(
            class_name=class_name,
            crop=entry["crop"],
            disease=entry["disease"],
            healthy=bool(entry["healthy"]),
            pathogen=entry.get("pathogen", ""),
            severity=entry["severity"],
            symptoms=entry["symptoms"],
            management=list(entry["management"]),
        )
    _logger.debug("no disease information for class %r; using the generic entry", class_name)
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
