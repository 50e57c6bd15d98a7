"""Serving under load: 16 concurrent clients vs the offline batch throughput of the backend.

Target 5 of issue 6. Starts the cropdoc app (``create_app`` under uvicorn, exactly what
``cropdoc serve`` runs) in a child process bound to 127.0.0.1, then 16 client threads
POST 256 px JPEG leaf photos to ``/predict`` for ``duration`` seconds (at most
``max_requests`` in all). Offline throughput is ``Predictor.predict`` on the same JPEG
bytes at batch 32 with the same backend, measured in this process before the load.
The server is ``cropdoc serve`` itself, run three ways: defaults (micro-batching, one
worker process per core), ``--batch-max 1`` (no batching), ``--processes 1`` (one process).

    python -m benchmarks.serve_load --quick
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image
from tests.helpers import free_port, process_tree

from .common import emit, machine, median, ratio, samples

REAL_BUNDLE = Path(__file__).resolve().parents[1] / "runs" / "mini" / "model"


def _jpegs(n: int) -> list[bytes]:
    out = []
    for path, _ in samples(n):
        with Image.open(path) as img:
            buf = io.BytesIO()
            img.convert("RGB").resize((256, 256)).save(buf, format="JPEG", quality=90)
            out.append(buf.getvalue())
    return out


def _multipart(jpeg: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="leaf.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        + jpeg
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _wait_ready(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"server on port {port} did not come up")


def _cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU time of a process and its descendants (Linux ``/proc``)."""
    total = 0.0
    for p in process_tree(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def load(
    port: int, bodies: list[tuple[bytes, str]], clients: int, duration: float, max_requests: int
) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    sent = [0]
    stop_at = time.perf_counter() + duration

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k
        while time.perf_counter() < stop_at:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            body, ctype = bodies[i % len(bodies)]
            i += clients
            t = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200 and json.loads(data)["results"][0]["ok"]
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                ok, data = False, str(e).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                if not ok:
                    errors.append(data[:200].decode(errors="replace"))

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "requests": len(lat),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": wall,
        "images_per_s": len(lat) / wall,
        "p50_ms": median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("nan"),
    }


def offline_throughput(bundle: str, backend: str, jpegs: list[bytes], reps: int = 3) -> float:
    from cropdoc.export import ensure_export
    from cropdoc.inference import load_predictor

    ensure_export(bundle, backend)  # as `cropdoc serve` does before loading
    predictor = load_predictor(bundle, backend=backend)
    predictor.predict(jpegs[:32], batch_size=32)
    rates = []
    for _ in range(reps):
        t = time.perf_counter()
        predictor.predict(jpegs, batch_size=32)
        rates.append(len(jpegs) / (time.perf_counter() - t))
    return median(rates)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--bundle", default=str(REAL_BUNDLE))
    p.add_argument("--backend", default="onnx")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--max-requests", type=int, default=20000)
    p.add_argument("--processes", type=int, default=0, help="cropdoc serve --processes (0: auto)")
    args = p.parse_args(argv)
    duration = args.duration or (10.0 if args.quick else 30.0)
    jpegs = _jpegs(128)
    bodies = [_multipart(j) for j in jpegs]
    offline = offline_throughput(args.bundle, args.backend, jpegs)
    runs: dict[str, Any] = {}
    configs = (
        ("micro-batching", 32, args.processes),
        ("no batching", 1, args.processes),
        ("one process", 32, 1),
    )
    for label, batch_max, workers in configs:
        port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Exactly what a user runs: `cropdoc serve`, here on a loopback port.
        cmd = [
            sys.executable,
            "-m",
            "cropdoc",
            "serve",
            args.bundle,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend",
            args.backend,
            "--batch-max",
            str(batch_max),
            "--processes",
            str(workers),
        ]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        server = subprocess.Popen(cmd, env=env, **quiet)
        try:
            _wait_ready(port)
            me = os.getpid()  # the client threads live in this process
            cpu0 = {"server": _cpu_seconds(server.pid), "clients": _cpu_seconds(me, tree=False)}
            runs[label] = load(port, bodies, args.clients, duration, args.max_requests)
            cpu1 = {"server": _cpu_seconds(server.pid), "clients": _cpu_seconds(me, tree=False)}
            # Where the two cores went: the load generator shares them with the server.
            runs[label]["cpu_s"] = {k: cpu1[k] - cpu0[k] for k in cpu0}
        finally:
            server.terminate()
            server.wait(timeout=30)
    ours = runs["micro-batching"]["images_per_s"]
    result = {
        "benchmark": "serve_load",
        "bundle": args.bundle,
        "backend": args.backend,
        "clients": args.clients,
        "duration_s": duration,
        "offline_batch32_images_per_s": offline,
        "runs": runs,
        "ratio_to_offline": ratio(ours, offline),
        "ratio_no_batching_to_offline": ratio(runs["no batching"]["images_per_s"], offline),
        "ratio_one_process_to_offline": ratio(runs["one process"]["images_per_s"], offline),
        "machine": machine(),
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
