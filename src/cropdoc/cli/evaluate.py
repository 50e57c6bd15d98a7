"""``cropdoc evaluate`` and ``cropdoc compare``."""

from __future__ import annotations
