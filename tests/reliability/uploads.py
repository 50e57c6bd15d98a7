"""Items 5 and 6: hostile uploads and load against a real ``cropdoc serve`` on 127.0.0.1.

Fuzz (item 5): a seeded generator of malformed requests (random bytes, truncated and
bit-flipped images, every bad-image kind of item 1, huge headers, wrong fields and content
types, broken multipart, many files, hostile file names); every request gets a bounded
timeout. Bar: 5xx = 0, no traceback in the server log, server alive and still predicting.

Load (item 6): valid single-image requests from concurrent clients. Bars: errors = 0,
server RSS growth after warm-up < 50 MB. p50/p99 latency are reported, not asserted.

    python -m tests.reliability.uploads                # CI size: 150 fuzz, 200 x 8
    python -m tests.reliability.uploads --full         # 600 fuzz, 1000 x 32
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.helpers import Server, emit, rss_mb, running_server, tiny_bundle, tiny_dataset

_TIMEOUT = 30.0
RSS_BAR_MB = 50.0


def _valid_images(data: Path, n: int = 8) -> list[bytes]:
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [p.read_bytes() for p in files[:: max(1, len(files) // n)][:n]]


def _bad_kinds() -> list[tuple[str, bytes]]:
    from .bad_images import kinds

    return [(fname, make()) for _, (fname, _, make) in kinds((1200, 900)).items()]


class Fuzzer:
    """Builds one malformed request per call: ``(kind, httpx request kwargs)``."""

    def __init__(self, seed: int, valid: list[bytes], bad: list[tuple[str, bytes]]) -> None:
        self.rng = random.Random(seed)
        self.valid = valid
        self.bad = bad

    def _name(self) -> str:
        r = self.rng
        return r.choice(
            [
                "leaf.jpg",
                "../../../../etc/passwd",
                "..\\..\\windows\\win.ini",
                "/abs/path.png",
                "a" * r.randint(200, 5000) + ".jpg",
                "nul\x00byte.jpg",
                "ünï😀cødé.png",
                "",
                "x.exe",
            ]
        )

    def _ctype(self) -> str:
        return self.rng.choice(
            ["image/jpeg", "image/png", "text/html", "application/octet-stream", "", "x/y;z"]
        )

    def _image(self) -> bytes:
        return self.rng.choice(self.valid)

    def request(self) -> tuple[str, dict[str, Any]]:
        r = self.rng
        kind = r.choice(
            [
                "random bytes",
                "truncated image",
                "bit-flipped image",
                "bad-image kind",
                "valid image, hostile name",
                "huge header",
                "wrong field",
                "many files",
                "broken multipart",
                "wrong content type",
                "empty body",
                "no files field",
                "mixed good and bad",
            ]
        )
        files: list[tuple[str, tuple[str, bytes, str]]]
        if kind == "random bytes":
            blob = r.randbytes(r.choice([0, 1, 10, 1000, r.randint(0, 200_000)]))
            return kind, {"files": [("files", (self._name(), blob, self._ctype()))]}
        if kind == "truncated image":
            img = self._image()
            return kind, {
                "files": [("files", ("t.jpg", img[: r.randint(0, len(img))], "image/jpeg"))]
            }
        if kind == "bit-flipped image":
            img = bytearray(self._image())
            for _ in range(r.randint(1, 20)):
                img[r.randrange(len(img))] ^= 1 << r.randrange(8)
            return kind, {"files": [("files", ("f.jpg", bytes(img), "image/jpeg"))]}
        if kind == "bad-image kind":
            fname, blob = r.choice(self.bad)
            return kind, {"files": [("files", (fname, blob, self._ctype()))]}
        if kind == "valid image, hostile name":
            return kind, {"files": [("files", (self._name(), self._image(), self._ctype()))]}
        if kind == "huge header":
            size = r.choice([8_000, 60_000, 200_000])
            return kind, {
                "files": [("files", ("a.jpg", self._image(), "image/jpeg"))],
                "headers": {"X-Junk": "a" * size},
            }
        if kind == "wrong field":
            field = r.choice(["file", "image", "", "files[]", "FILES"])
            return kind, {"files": [(field, ("a.jpg", self._image(), "image/jpeg"))]}
        if kind == "many files":
            n = r.choice([9, 20, 100, 500])
            files = [
                ("files", (f"{i}.jpg", b"\xff\xd8" + r.randbytes(16), "image/jpeg"))
                for i in range(n)
            ]
            return kind, {"files": files}
        if kind == "broken multipart":
            boundary = r.choice(["x", "", "-" * 80, "a b", "bound\r\nary"])
            body = r.choice(
                [
                    b"--x\r\nnot really multipart",
                    b"--x\r\nContent-Disposition: form-data; name=files\r\n\r\nabc",
                    b"--x--",
                    r.randbytes(r.randint(0, 5000)),
                    b"--x\r\nContent-Disposition: form-data; name=files; filename=a.jpg\r\n"
                    + b"Content-Type: image/jpeg\r\n\r\n"
                    + self._image()
                    + b"\r\n--x",
                ]
            )
            return kind, {
                "content": body,
                "headers": {"content-type": f"multipart/form-data; boundary={boundary}"},
            }
        if kind == "wrong content type":
            ctype = r.choice(
                ["application/json", "text/plain", "multipart/form-data", "image/jpeg", "a/b"]
            )
            return kind, {"content": self._image(), "headers": {"content-type": ctype}}
        if kind == "empty body":
            return kind, {
                "content": b"",
                "headers": {"content-type": "multipart/form-data; boundary=x"},
            }
        if kind == "no files field":
            return kind, {"data": {"note": "hello"}}
        files = [("files", ("good.jpg", self._image(), "image/jpeg"))]
        files += [("files", (fname, blob, "image/png")) for fname, blob in r.sample(self.bad, 3)]
        return kind, {"files": files}


def fuzz(
    server: Server, n: int, seed: int, valid: list[bytes], deadline_s: float
) -> dict[str, Any]:
    """Send ``n`` fuzzed requests one by one (bounded by ``deadline_s``); tally statuses."""
    import httpx

    fuzzer = Fuzzer(seed, valid, _bad_kinds())
    statuses: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    five_xx: list[str] = []
    sent = 0
    stop = time.monotonic() + deadline_s
    with httpx.Client(base_url=server.url, timeout=_TIMEOUT) as client:
        for _ in range(n):
            if time.monotonic() > stop:
                break
            kind, kwargs = fuzzer.request()
            try:
                status = str(client.post("/predict", **kwargs).status_code)
            except httpx.LocalProtocolError:  # e.g. CR/LF in a header: never leaves the client
                status = "not sent (client refused)"
            except httpx.HTTPError as e:  # the server may close a connection it refuses
                status = f"closed ({type(e).__name__})"
            sent += 1
            statuses[status] += 1
            by_kind.setdefault(kind, Counter())[status] += 1
            if status.startswith("5"):
                five_xx.append(kind)
    alive = server.alive() and httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    check = httpx.post(
        f"{server.url}/predict", files=[("files", ("ok.jpg", valid[0], "image/jpeg"))], timeout=30
    )
    log = server.log.read_text(errors="replace")
    return {
        "item": "hostile uploads (fuzz)",
        "requests": sent,
        "seed": seed,
        "status_counts": dict(sorted(statuses.items())),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "5xx": len(five_xx),
        "5xx_kinds": sorted(set(five_xx)),
        "server_alive_after": bool(alive),
        "valid_prediction_after": check.status_code == 200 and check.json()["results"][0]["ok"],
        "tracebacks_in_log": log.count("Traceback"),
    }


def load(
    server: Server, n: int, clients: int, valid: list[bytes], deadline_s: float, warmup: int = 50
) -> dict[str, Any]:
    """``n`` valid requests from ``clients`` threads, after ``warmup`` requests; RSS and p99."""
    import httpx

    def one(client: httpx.Client, i: int) -> tuple[float, int | str]:
        t = time.perf_counter()
        try:
            res = client.post(
                "/predict", files=[("files", (f"{i}.jpg", valid[i % len(valid)], "image/jpeg"))]
            )
            ok: int | str = res.status_code if res.json()["results"][0]["ok"] else "not ok"
        except (httpx.HTTPError, ValueError, KeyError) as e:
            ok = type(e).__name__
        return time.perf_counter() - t, ok

    with httpx.Client(base_url=server.url, timeout=_TIMEOUT) as client:
        for i in range(warmup):
            one(client, i)
    rss_warm = rss_mb(server.pid)
    local = threading.local()
    stop = time.monotonic() + deadline_s

    def task(i: int) -> tuple[float, int | str] | None:
        if time.monotonic() > stop:
            return None
        if not hasattr(local, "client"):
            limits = httpx.Limits(max_connections=1)
            local.client = httpx.Client(base_url=server.url, timeout=_TIMEOUT, limits=limits)
        return one(local.client, i)

    started = time.perf_counter()
    peak = rss_warm
    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(task, i) for i in range(n)]
        results = []
        for f in futures:
            results.append(f.result())
            peak = max(peak, rss_mb(server.pid))
    wall = time.perf_counter() - started
    done = [r for r in results if r is not None]
    latencies = sorted(t for t, _ in done)
    errors = Counter(str(s) for _, s in done if s != 200)
    rss_after = rss_mb(server.pid)

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1)

    return {
        "item": "load and memory",
        "requests": len(done),
        "skipped_by_deadline": n - len(done),
        "clients": clients,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "wall_s": round(wall, 1),
        "throughput_rps": round(len(done) / wall, 1),
        "latency_ms": {
            "p50": pct(0.50),
            "p90": pct(0.90),
            "p99": pct(0.99),
            "max": round(latencies[-1] * 1000, 1),
            "mean": round(statistics.fmean(latencies) * 1000, 1),
        },
        "rss_mb": {
            "after_warmup": round(rss_warm, 1),
            "peak": round(peak, 1),
            "after": round(rss_after, 1),
            "growth_after_warmup": round(rss_after - rss_warm, 1),
        },
        "rss_bar_mb": RSS_BAR_MB,
    }


def run(
    bundle: Path,
    work: Path,
    data: Path,
    *,
    fuzz_n: int = 150,
    load_n: int = 200,
    clients: int = 8,
    seed: int = 7,
    deadline_s: float = 600,
) -> dict[str, Any]:
    """Start one server, fuzz it, then load it; the server is always stopped."""
    valid = _valid_images(data)
    log = work / "server.log"
    with running_server(bundle, log, "--backend", "onnx") as server:
        fuzz_fig = fuzz(server, fuzz_n, seed, valid, deadline_s)
        load_fig = load(server, load_n, clients, valid, deadline_s)
        fuzz_fig["tracebacks_in_log"] = log.read_text(errors="replace").count("Traceback")
    return {"fuzz": fuzz_fig, "load": load_fig}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="600 fuzz, 1000 requests x 32")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cropdoc-uploads-"))
    data = tiny_dataset(work)
    run_dir = tiny_bundle(work, data)
    sizes = {"fuzz_n": 600, "load_n": 1000, "clients": 32} if args.full else {}
    emit(run(run_dir / "model", work, data, seed=args.seed, **sizes))


if __name__ == "__main__":
    main()
