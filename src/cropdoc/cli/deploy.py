"""``cropdoc predict``, ``cropdoc export`` and ``cropdoc serve``."""

from __future__ import annotations
