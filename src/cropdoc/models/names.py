"""Parameter and module names: matched on dot boundaries, without wrapper prefixes.

A prefix ``features.1`` covers ``features.1.0.weight`` but not ``features.10.0.weight``;
``module.`` (DataParallel/DDP) and ``_orig_mod.`` (``torch.compile``) are stripped first,
so the same spec prefixes work on wrapped and raw models.
"""

from __future__ import annotations

__all__ = ["canonical_name", "under"]

# Prefixes added by wrappers around the raw model; names are matched without them.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def canonical_name(name: str) -> str:
    """``name`` without wrapper prefixes (``module.``, ``_orig_mod.``), in any nesting."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                stripped = True
    return name


def under(name: str, prefix: str) -> bool:
    """True if ``name`` is ``prefix`` or lies under it, on a dot boundary."""
    return name == prefix or name.startswith(prefix + ".")
