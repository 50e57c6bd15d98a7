"""onnxruntime-web for the offline page: fetched with the user's npm, verified, cached.

The web export ships onnxruntime-web's JavaScript and WebAssembly next to the page, so it
runs with no network and no CDN. Those files are third-party and never live in this
repository: they come from the npm package at :data:`ORT_WEB_VERSION`, fetched once with
``npm pack`` (the user's own npm client, registry and proxy settings), and are trusted
only when they match hashes pinned here: the tarball's sha512 must equal
:data:`ORT_WEB_INTEGRITY` (npm's ``dist.integrity`` for that version, which the registry
reports too), and every file taken from it must match :data:`ORT_WEB_FILES`. The checked
files are cached in ``$XDG_CACHE_HOME/cropdoc/onnxruntime-web/<version>/``; machines
without npm pass a local copy (the ``.tgz`` or its unpacked folder), which is held to the
same per-file hashes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .common import ExportError

__all__ = [
    "ORT_WEB_FILES",
    "ORT_WEB_INTEGRITY",
    "ORT_WEB_PACKAGE",
    "ORT_WEB_VERSION",
    "ort_web_cache_dir",
    "ort_web_files",
]

_logger = logging.getLogger(__name__)

ORT_WEB_PACKAGE = "onnxruntime-web"
ORT_WEB_VERSION = "1.30.0"
#: ``npm view onnxruntime-web@1.30.0 dist.integrity``: the sha512 of the published tarball.
ORT_WEB_INTEGRITY = (
    "sha512-"
    "q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
)
#: The files the page needs (path inside the package -> sha256): the WebAssembly-only
#: build (global ``ort``), its Emscripten loader and the SIMD binary; ``package.json``
#: carries the version and the MIT licence (also in each file's header).
ORT_WEB_FILES = {
    "dist/ort.wasm.min.js": "faece07e84faa9001f5104bbe4e5c70861d06cb2376a0dea1fa0ad33a67adc81",
    "dist/ort-wasm-simd-threaded.mjs": (
        "e13f7f94fc51b4ca72b12faeb1ee95f4ace6dfbc8939bc718aabdc0a27c4299b"
    ),
    "dist/ort-wasm-simd-threaded.wasm": (
        "3398c10d07d229bd91b364548e130e0e51a8e5704b88c7c083ebbeb78842dee2"
    ),
    "package.json": "16f69f755509990539aeb1c8445884960e91adcacab2e8dca8e44ee43601df5c",
}
_SPEC = f"{ORT_WEB_PACKAGE}@{ORT_WEB_VERSION}"
_NPM_TIMEOUT_S = 600


def _how_to() -> str:
    return (
        f"the web export needs {_SPEC}: install npm (Node.js) so cropdoc can fetch it once, "
        f"or download it elsewhere (`npm pack {_SPEC}`) and pass --ort-web "
        f"{ORT_WEB_PACKAGE}-{ORT_WEB_VERSION}.tgz (or its unpacked folder)"
    )


def ort_web_cache_dir() -> Path:
    """Where the verified files are kept (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cropdoc" / ORT_WEB_PACKAGE / ORT_WEB_VERSION


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _integrity(path: Path) -> str:
    """npm's Subresource-Integrity form of a file's sha512."""
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _verified(folder: Path, origin: str) -> dict[str, Path]:
    """The needed files under ``folder`` (a package root), each checked against its hash."""
    found: dict[str, Path] = {}
    for name, expected in ORT_WEB_FILES.items():
        path = folder / name
        if not path.is_file():
            raise ExportError(f"{origin} has no {name}: it is not {_SPEC}; {_how_to()}")
        if _sha256(path) != expected:
            raise ExportError(
                f"{origin}: {name} does not match the sha256 pinned for {_SPEC} (a different "
                f"version or a modified copy); {_how_to()}"
            )
        found[name] = path
    return found


def _extract(tarball: Path, dest: Path) -> None:
    """Extract only the needed regular files from an npm tarball (``package/...``)."""
    wanted = {f"package/{name}": name for name in ORT_WEB_FILES}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar.getmembers():
                name = wanted.get(member.name)
                if name is None or not member.isfile():
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ExportError(f"{tarball} is not a readable npm tarball ({e}); {_how_to()}") from e


def _package_root(path: Path) -> Path:
    """The package folder of an unpacked copy: itself, ``package/`` or ``node_modules/...``."""
    for candidate in (path, path / "package", path / "node_modules" / ORT_WEB_PACKAGE):
        if (candidate / "package.json").is_file():
            return candidate
    raise ExportError(f"{path} holds no {ORT_WEB_PACKAGE} package.json; {_how_to()}")


def _npm_pack(workdir: Path) -> Path:
    """``npm pack`` the pinned version into ``workdir``; check npm's integrity and ours."""
    npm = shutil.which("npm")
    if npm is None:
        raise ExportError(f"npm was not found; {_how_to()}")
    cmd = [npm, "pack", _SPEC, "--json", "--ignore-scripts", "--pack-destination", str(workdir)]
    _logger.info("fetching %s with %s (once; cached in %s)", _SPEC, npm, ort_web_cache_dir())
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_NPM_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ExportError(f"`npm pack {_SPEC}` failed ({e}); {_how_to()}") from e
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExportError(f"`npm pack {_SPEC}` failed ({last}); {_how_to()}")
    try:
        info = json.loads(proc.stdout)[0]
        reported, tarball = info["integrity"], workdir / info["filename"]
    except (ValueError, LookupError, TypeError) as e:
        raise ExportError(f"unexpected output from `npm pack --json`: {e}") from e
    actual = _integrity(tarball)
    if not reported == actual == ORT_WEB_INTEGRITY:
        raise ExportError(
            f"{_SPEC} from npm does not match its pinned integrity (pinned {ORT_WEB_INTEGRITY}, "
            f"npm reported {reported}, the file hashes to {actual}); refusing to use it"
        )
    return tarball


def _fill_cache(cache: Path, source: Path | None) -> None:
    """Stage the verified files (from ``source`` or npm) and move them into ``cache``."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ort-web-", dir=cache.parent) as tmp:
        staged = Path(tmp) / "files"
        staged.mkdir()
        if source is None or source.is_file():
            tarball = source if source is not None else _npm_pack(Path(tmp))
            if source is not None and _integrity(source) != ORT_WEB_INTEGRITY:
                raise ExportError(
                    f"{source} is not the published {_SPEC} tarball (its sha512 differs from "
                    f"{ORT_WEB_INTEGRITY}); {_how_to()}"
                )
            _extract(tarball, staged)
            _verified(staged, str(tarball))
        else:
            root = _package_root(source)
            for name, path in _verified(root, str(source)).items():
                (staged / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, staged / name)
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(staged, cache)


def ort_web_files(source: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The verified onnxruntime-web files, ``{path in package: local file}``.

    Args:
        source: a local ``onnxruntime-web-<version>.tgz`` or unpacked package folder
            (for machines without npm); None: the cache, else ``npm pack``.

    Raises:
        ExportError: no npm and no local copy, a failed fetch, or a copy whose hashes do
            not match the pinned version (the message says what to do).
    """
    cache = ort_web_cache_dir()
    if source is not None:
        path = Path(source)
        if not path.exists():
            raise ExportError(f"--ort-web {path} does not exist; {_how_to()}")
        _fill_cache(cache, path)
    else:
        try:
            return _verified(cache, f"the cache {cache}")
        except ExportError:
            if cache.exists():
                _logger.warning("the cached %s in %s is incomplete; fetching again", _SPEC, cache)
        _fill_cache(cache, None)
    return _verified(cache, f"the cache {cache}")
