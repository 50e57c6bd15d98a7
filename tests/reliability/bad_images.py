"""Item 1: every kind of bad or awkward image, through the dataset scan and the predictor.

Each kind has a specified outcome: *reported* (a ``BadImageError`` with a stable reason,
listed in ``ScanReport.bad_files``; a per-image error from the predictor) or *converted*
(decoded to 8-bit RGB and predicted). A crash is any other exception. The HTTP path gets
the same kinds in :mod:`uploads`.

    python -m tests.reliability.bad_images [--full]
"""

from __future__ import annotations

import argparse
import io
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tests.helpers import emit, tiny_bundle, tiny_dataset

REPORTED, CONVERTED = "reported", "converted"


def _photo(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.zeros((h, w, 3), np.uint8)
    base[..., 1] = 120 + (np.arange(w)[None, :] * 100 // max(w, 1)).astype(np.uint8)
    return np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(side: int = 20000) -> bytes:
    """A 100-byte PNG whose header declares ``side`` x ``side`` pixels (never decodable)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def exif_pair() -> tuple[bytes, bytes]:
    """A JPEG stored sideways with EXIF Orientation=6, and its upright pixels as PNG."""
    stored = Image.fromarray(_photo(64, 40, seed=5))
    stored.paste((255, 0, 0), (0, 0, 12, 12))
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = _save(stored, "JPEG", quality=95, exif=exif.tobytes())
    from PIL import ImageOps

    with Image.open(io.BytesIO(jpeg)) as raw:
        upright = ImageOps.exif_transpose(raw).convert("RGB")
    return jpeg, _save(upright, "PNG")


def kinds(huge_side: tuple[int, int]) -> dict[str, tuple[str, str, Callable[[], bytes]]]:
    """name -> (file name, expected outcome, bytes factory)."""
    rgb = Image.fromarray(_photo(64, 48))
    jpeg = _save(rgb, "JPEG", quality=90)

    def bad_crc() -> bytes:
        data = bytearray(_save(rgb, "PNG"))
        data[data.index(b"IDAT") + 20] ^= 0xFF
        return bytes(data)

    def cmyk() -> bytes:
        return _save(rgb.convert("CMYK"), "JPEG")

    def png16() -> bytes:
        arr = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
        return _save(Image.fromarray(arr), "PNG")  # uint16 -> I;16

    def palette() -> bytes:
        pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        return _save(pal, "PNG", transparency=0)

    def huge() -> bytes:
        w, h = huge_side
        return _save(Image.fromarray(_photo(w, h, seed=9)), "JPEG", quality=80)

    return {
        "zero-byte": ("empty.jpg", REPORTED, lambda: b""),
        "truncated JPEG": ("cut.jpg", REPORTED, lambda: jpeg[: len(jpeg) // 2]),
        "PNG with bad CRC": ("crc.png", REPORTED, bad_crc),
        "text named .jpg": ("notes.jpg", REPORTED, lambda: b"just some notes\n" * 4),
        "HTML named .png": ("page.png", REPORTED, lambda: b"<!DOCTYPE html><html>404</html>"),
        "CMYK JPEG": ("cmyk.jpg", CONVERTED, cmyk),
        "16-bit PNG": ("deep.png", CONVERTED, png16),
        "palette PNG with transparency": ("pal.png", CONVERTED, palette),
        "grayscale": ("gray.jpg", CONVERTED, lambda: _save(rgb.convert("L"), "JPEG")),
        "EXIF-rotated phone photo": ("phone.jpg", CONVERTED, lambda: exif_pair()[0]),
        "decompression bomb 20000x20000": ("bomb.png", REPORTED, bomb_png),
        f"huge valid {huge_side[0]}x{huge_side[1]}": ("huge.jpg", CONVERTED, huge),
    }


def run(bundle: Path, work: Path, *, huge_side: tuple[int, int] = (4000, 3000)) -> dict[str, Any]:
    """Put every kind in a dataset folder and through ``Predictor.predict``; tally outcomes."""
    from cropdoc.data.images import BadImageError, open_rgb
    from cropdoc.data.scan import scan_folder
    from cropdoc.inference import load_predictor

    root = work / "bad-images"
    table = kinds(huge_side)
    for k, cls in enumerate(("a", "b")):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        # Enough good images for the class to count; their own seeds, so no file of "a"
        # is byte-identical to one of "b" (that is a label conflict, tested elsewhere).
        for i in range(3):
            Image.fromarray(_photo(40, 40, seed=10 * k + i)).save(folder / f"good{i}.jpg")
    payloads = {name: make() for name, (_, _, make) in table.items()}
    for name, (fname, _, _) in table.items():
        (root / "a" / fname).write_bytes(payloads[name])

    report = scan_folder(root)
    bad_by_name = {b.path.name: b.reason for b in report.bad_files}
    predictor = load_predictor(bundle, backend="torch")
    rows, crashes = [], 0
    for name, (fname, expected, _) in table.items():
        row: dict[str, Any] = {"kind": name, "expected": expected}
        try:
            img = open_rgb(payloads[name])
            row["open_rgb"] = f"RGB {img.mode} {img.size[0]}x{img.size[1]}"
            decoded = CONVERTED if img.mode == "RGB" else "wrong mode"
        except BadImageError as e:
            row["open_rgb"] = e.reason[:60]
            decoded = REPORTED
        except Exception as e:  # noqa: BLE001 - the figure counts crashes
            row["open_rgb"] = f"CRASH {type(e).__name__}: {e}"
            decoded, crashes = "crash", crashes + 1
        scan = REPORTED if fname in bad_by_name else CONVERTED
        row["scan"] = bad_by_name.get(fname, "kept")[:60]
        try:
            pred = predictor.predict([payloads[name]], names=[fname])[0]
            predicted = CONVERTED if pred.ok else REPORTED
            row["predict"] = pred.best.name if pred.ok and pred.best else pred.error
        except Exception as e:  # noqa: BLE001
            predicted, crashes = "crash", crashes + 1
            row["predict"] = f"CRASH {type(e).__name__}: {e}"
        row["handled_as_specified"] = decoded == scan == predicted == expected
        rows.append(row)

    # EXIF: the sideways-stored photo must be predicted exactly as its upright pixels.
    jpeg, upright_png = exif_pair()
    a, b = predictor.predict([jpeg, upright_png], top_k=predictor.meta.num_classes)
    pa = {s.name: s.probability for s in a.top}
    upright_same = a.ok and b.ok and all(abs(pa[s.name] - s.probability) < 1e-6 for s in b.top)
    exif_size = open_rgb(jpeg).size
    return {
        "item": "bad images (dataset scan, open_rgb, predictor)",
        "kinds_tried": len(rows),
        "kinds_handled_as_specified": sum(r["handled_as_specified"] for r in rows),
        "crashes": crashes,
        "exif_rotated_predicted_as_upright": upright_same and exif_size == (40, 64),
        "kinds": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="huge image near the 40 MP limit")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cropdoc-bad-"))
    run_dir = tiny_bundle(work, tiny_dataset(work))
    emit(run(run_dir / "model", work, huge_side=(7000, 5600) if args.full else (4000, 3000)))


if __name__ == "__main__":
    main()
