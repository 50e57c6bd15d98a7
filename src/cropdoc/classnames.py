"""Class names: readable labels, and matching names that differ only in spelling.

PlantVillage circulates in several spellings of the same classes: the original
``Pepper,_bell___healthy``, Kaggle's ``Pepper__bell___healthy``, and copies that use one
underscore (``Tomato_Bacterial_spot``) or spaces. A model trained on one copy must be
evaluable on another, and disease information must be found for any of them, so every
comparison of class names goes through :func:`class_key`. Folder names also reach us in
either Unicode form (macOS writes ``Maïs`` decomposed, NFD; most other systems composed,
NFC) and in any script, so keys are normalised and keep every letter and digit.

Foundation module: no torch, no matplotlib, so serving and the CLI import it cheaply.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence

from .errors import DataError

__all__ = ["class_key", "class_label", "find_class", "match_classes", "split_crop_disease"]

_logger = logging.getLogger(__name__)

# Unicode general categories kept in a key: letters, marks (accents that have no
# precomposed form) and numbers. Everything else (punctuation, spaces, symbols,
# underscores) is a separator and dropped.
_KEPT_CATEGORIES = frozenset("LMN")


# --------------------------------------------------------------------------- readable labels


def _words(part: str) -> str:
    return re.sub(r"\s+", " ", part.replace("_", " ")).strip()


def _crop_words(part: str) -> str:
    # Kaggle's copy writes "Pepper,_bell" as "Pepper__bell": both mean "Pepper, bell".
    return _words(re.sub(r",?_{2,}|,_?", ", ", part))


def split_crop_disease(class_name: str) -> tuple[str, str]:
    """Split a PlantVillage-style class name into (crop, disease) for people to read.

    Handles the original ``Crop___Disease`` names, the Kaggle variants that use ``__`` or a
    single ``_`` between crop and disease, and ``Pepper,_bell`` / ``Pepper__bell``. A name
    in no known format comes back whole, with an empty disease.

    >>> split_crop_disease("Pepper,_bell___Bacterial_spot")
    ('Pepper, bell', 'Bacterial spot')
    >>> split_crop_disease("Tomato__Target_Spot")
    ('Tomato', 'Target Spot')
    >>> split_crop_disease("my leaves")
    ('my leaves', '')
    """
    for sep in ("___", "__"):
        crop, found, disease = class_name.partition(sep)
        if found:
            break
    else:
        crop, found, disease = class_name.partition("_")
        # A single underscore is ambiguous ("leaf_spots"); PlantVillage crops are capitalised.
        if not crop[:1].isupper():
            found = ""
    crop, disease = _crop_words(crop), _words(disease)
    if not found or not crop or not disease:
        return class_name, ""
    return crop, disease


def class_label(class_name: str) -> str:
    """Readable one-line label, e.g. ``"Tomato · Late blight"``."""
    crop, disease = split_crop_disease(class_name)
    return f"{crop} · {disease}" if disease else crop


# --------------------------------------------------------------------------- matching


def class_key(name: str) -> str:
    """The comparison key of a class name: normalised, case-folded, letters and digits only.

    NFKC before and after case-folding (Unicode's "NFKC_Casefold" recipe), so composed and
    decomposed accents, full-width letters and case differences give one key; separators
    are dropped, letters of any script kept, so ``玉米___锈病`` neither empties nor collides
    with another Chinese name.

    >>> class_key("Pepper,_bell___healthy") == class_key("Pepper__bell___healthy")
    True
    >>> class_key("Tomato_Bacterial_spot")
    'tomatobacterialspot'
    >>> class_key("Кукуруза___ржавчина")
    'кукурузаржавчина'
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] in _KEPT_CATEGORIES)


def _same_key(name: str, classes: Sequence[str]) -> list[str]:
    key = class_key(name)
    # A name of separators only ("___") has an empty key: it means nothing but itself.
    return [c for c in classes if class_key(c) == key] if key else []


def find_class(name: str, classes: Sequence[str]) -> str | None:
    """The entry of ``classes`` that ``name`` means, or None.

    An exact match wins; otherwise the one class with the same :func:`class_key`. Two
    classes sharing a key are ambiguous, so neither is returned.
    """
    if name in classes:
        return name
    hits = _same_key(name, classes)
    return hits[0] if len(hits) == 1 else None


def match_classes(
    folder_names: Iterable[str],
    bundle_classes: Sequence[str],
    *,
    ignore_unknown: bool = False,
) -> dict[str, str]:
    """Map each dataset class name to the bundle class it means.

    Args:
        folder_names: class names found in the data (folder names or a manifest's).
        bundle_classes: the model's class names, in index order.
        ignore_unknown: leave out names the model does not know instead of raising.

    Returns:
        ``{folder name: bundle class}`` for every known name (identity entries included),
        in the order of ``folder_names``. Names left out were unknown.

    Raises:
        DataError: a name matches no bundle class (unless ``ignore_unknown``), or matches
            more than one.

    >>> match_classes(["Tomato_healthy"], ["Tomato___healthy", "Potato___healthy"])
    {'Tomato_healthy': 'Tomato___healthy'}
    """
    mapping: dict[str, str] = {}
    unknown: list[str] = []
    for name in folder_names:
        hit = find_class(name, bundle_classes)
        if hit is None:
            same_key = _same_key(name, bundle_classes)
            if len(same_key) > 1:
                raise DataError(
                    f"class '{name}' matches several model classes {same_key} once separators "
                    f"and case are ignored; rename the folder to one of them exactly"
                )
            unknown.append(name)
            continue
        mapping[name] = hit
    if unknown and not ignore_unknown:
        raise DataError(
            f"the model does not know class(es) {unknown}; it knows {list(bundle_classes)}. "
            f"Rename the folder(s), or pass --ignore-unknown to skip their images"
        )
    if unknown:
        _logger.warning("skipping %d class(es) the model does not know: %s", len(unknown), unknown)
    targets = list(mapping.values())
    for target in sorted({t for t in targets if targets.count(t) > 1}):
        sources = [k for k, v in mapping.items() if v == target]
        _logger.warning("folders %s all map to model class '%s'", sources, target)
    return mapping
