"""The leaf page: one HTML page for ``cropdoc serve`` and the offline web export.

Both pages show the same result card (``card.css``, ``card.js``: top 3 with confidence
bars, crop, disease, severity, treatment, "Not recognised" when the model abstains), so
they are built from one template, ``page.html``; each page adds its own head tags,
subtitle, footer and scripts (serve's uploads the photo, the offline page runs the model).
Foundation module: strings only, no torch.

>>> "CropdocCard" in leaf_page(subtitle="s", footer="f", scripts="")
True
"""

from __future__ import annotations

from html import escape

from . import read_text

__all__ = ["leaf_page"]


def leaf_page(*, subtitle: str, footer: str, scripts: str, head: str = "") -> str:
    """The page, with the card's styles and renderer inlined.

    Args:
        subtitle: the line under the title (plain text).
        footer: the footer's HTML.
        scripts: HTML after the card's script (``<script>`` tags of the page's own logic).
        head: extra tags for ``<head>`` (icons, manifest).
    """
    return (
        read_text("page/page.html")
        .replace("{{HEAD}}", head)
        .replace("{{CSS}}", read_text("page/card.css"))
        .replace("{{SUBTITLE}}", escape(subtitle))
        .replace("{{FOOTER}}", footer)
        .replace("{{SCRIPTS}}", f"<script>\n{read_text('page/card.js')}</script>\n{scripts}")
    )
