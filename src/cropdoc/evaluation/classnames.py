"""Match class names that differ only in separators, case or commas.

PlantVillage circulates in several spellings of the same classes: the original
``Pepper,_bell___healthy``, Kaggle's ``Pepper__bell___healthy``, and copies that use one
underscore (``Tomato_Bacterial_spot``) or spaces. A model trained on one copy must be
evaluable on another, and the serving code must find disease information for any of
them, so every comparison of class names goes through :func:`class_key`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

from ..errors import DataError

__all__ = ["class_key", "find_class", "match_classes"]

_logger = logging.getLogger(__name__)

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def class_key(name: str) -> str:
    """The comparison key of a class name: lower case, letters and digits only.

    >>> class_key("Pepper,_bell___healthy") == class_key("Pepper__bell___healthy")
    True
    >>> class_key("Tomato_Bacterial_spot")
    'tomatobacterialspot'
    """
    return _NOT_ALNUM.sub("", name.casefold())


def find_class(name: str, classes: Sequence[str]) -> str | None:
    """The entry of ``classes`` that ``name`` means, or None.

    An exact match wins; otherwise the one class with the same :func:`class_key`. Two
    classes sharing a key are ambiguous, so neither is returned.
    """
    if name in classes:
        return name
    hits = [c for c in classes if class_key(c) == class_key(name)]
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
            same_key = [c for c in bundle_classes if class_key(c) == class_key(name)]
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
