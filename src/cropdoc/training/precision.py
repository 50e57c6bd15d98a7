"""Choosing the numeric precision: what the user asked, or what pays off here.

``auto``: fp16 with a gradient scaler on CUDA (the seed's AMP), bf16 autocast on CPUs
with native bf16 (AVX-512 BF16 / AMX), full fp32 on Apple MPS (autocast there is not
reliable) and on other CPUs.
"""

from __future__ import annotations

import torch

__all__ = ["cpu_supports_bf16", "resolve_precision"]

_EXPLICIT = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def cpu_supports_bf16() -> bool:
    """True when this CPU computes bf16 natively (else autocast emulates it slowly)."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((check and check()) or (amx and amx()))


def resolve_precision(precision: str, accelerator: str = "auto", arch: str | None = None) -> str:
    """Map ``auto|32|bf16|16`` to a Fabric precision string for this machine."""
    if precision in _EXPLICIT:
        return _EXPLICIT[precision]
    acc = accelerator.lower()
    if acc in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        return "16-mixed"
    mps = getattr(torch.backends, "mps", None)
    if acc in ("auto", "mps") and mps is not None and mps.is_available():
        return "32-true"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"
