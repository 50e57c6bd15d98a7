"""Server processes: how many, with how many inference threads each, and how they start.

One Python process parses HTTP and multipart under one GIL: measured on 2 cores with 16
clients, one process used 1.3 of the 2 cores (349 img/s against 573 offline), while two
processes with one onnxruntime thread each served 572 img/s. So the default is one
process per core, at most :data:`MAX_AUTO_PROCESSES` (each holds its own model, ~0.5 GB
private memory with torch), sharing the cores' threads between them.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

from ..cpu import usable_cpus
from ..errors import ConfigError
from ..inference import Predictor, load_predictor
from .app import ServeSettings, create_app

__all__ = [
    "MAX_AUTO_PROCESSES",
    "WORKER_ENV",
    "ProcessPlan",
    "app_from_env",
    "plan_processes",
    "run_server",
    "worker_env",
]

_logger = logging.getLogger(__name__)

#: The most processes chosen automatically (more rarely pays for its memory).
MAX_AUTO_PROCESSES = 4
#: Environment variable through which the parent tells each worker process what to
#: serve (see :func:`app_from_env`).
WORKER_ENV = "CROPDOC_SERVE_WORKER"


@dataclass(frozen=True)
class ProcessPlan:
    """How a server uses the machine.

    Attributes:
        processes: server processes sharing the port.
        threads: inference threads per process (None: the libraries' own choice, for a
            lone process that has every core).
    """

    processes: int
    threads: int | None


def plan_processes(requested: int | None = None, *, cpus: int | None = None) -> ProcessPlan:
    """Processes and threads for a server on ``cpus`` cores (default: this process's).

    Args:
        requested: processes asked for; 0 or None picks one per core, at most
            :data:`MAX_AUTO_PROCESSES`.
        cpus: cores to plan for.

    Raises:
        ConfigError: ``requested`` is negative.

    >>> plan_processes(0, cpus=8)
    ProcessPlan(processes=4, threads=2)
    """
    if requested is not None and requested < 0:
        raise ConfigError(
            f"--processes must be 0 (one per core, at most {MAX_AUTO_PROCESSES}) or more, "
            f"got {requested}"
        )
    cores = cpus or usable_cpus()
    processes = requested or min(cores, MAX_AUTO_PROCESSES)
    threads = None if processes == 1 else max(1, cores // processes)
    return ProcessPlan(processes, threads)


def worker_env(
    bundle: str, backend: str, settings: ServeSettings, threads: int | None, device: str = "cpu"
) -> str:
    """The :data:`WORKER_ENV` value for worker processes serving ``bundle``."""
    spec: dict[str, Any] = {"bundle": bundle, "backend": backend, "threads": threads}
    return json.dumps({**spec, "device": device, "settings": asdict(settings)})


def app_from_env() -> Any:
    """App factory for worker processes (``uvicorn cropdoc.serve.workers:app_from_env
    --factory``), reading what to serve from :data:`WORKER_ENV`."""
    spec = json.loads(os.environ[WORKER_ENV])
    predictor = load_predictor(
        spec["bundle"],
        backend=spec["backend"],
        threads=spec["threads"],
        device=spec.get("device", "cpu"),
    )
    return create_app(predictor, ServeSettings(**spec["settings"]))


def run_server(
    predictor: Predictor,
    settings: ServeSettings,
    *,
    host: str,
    port: int,
    plan: ProcessPlan,
    device: str = "cpu",
) -> None:
    """Serve ``predictor`` with uvicorn until interrupted, in ``plan.processes`` processes.

    With one process the loaded predictor is served directly; with more, each worker
    loads the same bundle and backend itself (so ``predictor`` must have a bundle folder).

    Args:
        predictor: a loaded predictor; its backend is what every worker loads.
        settings: limits and thresholds.
        host: interface to listen on.
        port: TCP port.
        plan: processes and threads (see :func:`plan_processes`).
        device: where the torch backend computes in the workers.
    """
    import uvicorn

    if plan.processes == 1:
        application = create_app(predictor, settings)
        uvicorn.run(application, host=host, port=port, log_level="info", access_log=True)
        return
    if predictor.bundle_dir is None:
        raise ConfigError("serving several processes needs a predictor loaded from a bundle")
    device = device if predictor.backend == "torch" else "cpu"
    spec = worker_env(
        str(predictor.bundle_dir.resolve()), predictor.backend, settings, plan.threads, device
    )
    os.environ[WORKER_ENV] = spec
    uvicorn.run(
        "cropdoc.serve.workers:app_from_env",
        factory=True,
        workers=plan.processes,
        host=host,
        port=port,
        log_level="info",
        access_log=True,
    )
