"""What a diagnosis says beside the disease facts: one text per situation, everywhere.

``cropdoc serve`` puts it in each result's ``advice``, and the offline web export ships
the same texts in its ``config.json``, so a photo gets the same words on both pages.
Foundation module: strings only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NOT_RECOGNISED", "RETAKE", "SEVERITY_ADVICE", "advice_for", "advice_table"]

#: When the model is not sure (top-1 probability below the page's threshold).
RETAKE = (
    "The model is not sure about this photo. Retake it: one leaf filling the frame, "
    "in focus, in daylight without harsh glare or shadows, on a plain background."
)
#: What an abstaining result says instead of a diagnosis (and no treatment steps).
NOT_RECOGNISED = (
    "Not recognised: this is not one of the crops/diseases this model knows, or not a "
    "clear leaf photo. No diagnosis is given. Photograph one leaf filling the frame, in "
    "focus and in daylight; if it is a crop or disease the model was not trained on, ask a "
    "local extension officer or plant clinic."
)
#: One-line summary above the detailed steps, by severity (``healthy`` for healthy leaves).
SEVERITY_ADVICE = {
    "healthy": "No disease found on this leaf. Keep checking your plants every week.",
    "high": "High risk: this disease can spread through a field within days. "
    "Start with the first step below today.",
    "moderate": "Moderate risk: act early, before it spreads to healthy leaves.",
    "unknown": "Ask a local extension officer or plant clinic to confirm before treating.",
}


def advice_for(*, healthy: bool, severity: str, low_confidence: bool, abstain: bool) -> str:
    """The advice line of one result."""
    if abstain:
        return NOT_RECOGNISED
    if low_confidence:
        return RETAKE
    return SEVERITY_ADVICE.get("healthy" if healthy else severity, SEVERITY_ADVICE["unknown"])


def advice_table() -> dict[str, Any]:
    """Every text, for a page that chooses in the browser (the offline web export)."""
    return {"retake": RETAKE, "not_recognised": NOT_RECOGNISED, "severity": SEVERITY_ADVICE}
