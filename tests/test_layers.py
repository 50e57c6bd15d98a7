"""The import rules of DESIGN.md ("Layers"), checked on the source with ``ast``.

faces (cli, serve, the public API) → workflows → capabilities (training, evaluation,
inference, export) → foundation: a module imports only its own layer and the layers below,
plus the capability rules (training stands alone, evaluation does not train, inference
does not export). Every import counts, module-level or inside a function, absolute or
relative. A new top-level module fails until it is given a layer in :data:`LAYERS`.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "cropdoc"

FACES, WORKFLOWS, CAPABILITIES, FOUNDATION = "faces", "workflows", "capabilities", "foundation"
ORDER = {FOUNDATION: 0, CAPABILITIES: 1, WORKFLOWS: 2, FACES: 3}
#: Top-level module of ``cropdoc`` (``""`` is ``cropdoc/__init__.py``) -> its layer.
LAYERS = {
    "": FACES,
    "__main__": FACES,
    "api": FACES,
    "cli": FACES,
    "serve": FACES,
    "workflows": WORKFLOWS,
    "training": CAPABILITIES,
    "evaluation": CAPABILITIES,
    "inference": CAPABILITIES,
    "export": CAPABILITIES,
    "data": FOUNDATION,
    "models": FOUNDATION,
    "bundle": FOUNDATION,
    "config": FOUNDATION,
    "advice": FOUNDATION,
    "classnames": FOUNDATION,
    "diseases": FOUNDATION,
    "resources": FOUNDATION,
    "preprocessing": FOUNDATION,
    "probabilities": FOUNDATION,
    "ood": FOUNDATION,
    "cpu": FOUNDATION,
    "io": FOUNDATION,
    "errors": FOUNDATION,
    "plotting": FOUNDATION,
    "version": FOUNDATION,
}
#: Capability -> the capabilities it must not import (DESIGN.md, "Layers").
FORBIDDEN = {
    "training": {"evaluation", "inference", "export"},
    "evaluation": {"training"},
    "inference": {"export", "serve"},
}
#: Modules that serving code, the web export and ``cropdoc --help`` read cheaply.
LIGHT = [
    "cropdoc.advice",
    "cropdoc.classnames",
    "cropdoc.diseases",
    "cropdoc.preprocessing",
    "cropdoc.resources",
    "cropdoc.resources.page",
]


@dataclass(frozen=True)
class Import:
    """One import statement's target, seen from the file that has it."""

    file: Path
    line: int
    importer: str  # dotted module name of the file
    target: str  # dotted module imported (``from a import b``: ``a``, or ``a.b`` if a module)
    names: tuple[str, ...]  # what ``from ... import`` takes, () for ``import``

    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    """``cropdoc.x.y`` names a module or package under ``src``."""
    base = SRC.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import in ``path`` (at any depth), relative ones resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, name, a.name, ()) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            names = tuple(a.name for a in node.names)
            # ``from . import x`` / ``from .pkg import mod``: each submodule is a target of
            # its own; the package counts only for the names that are not modules.
            modules = [n for n in names if is_module(f"{target}.{n}")]
            found += [Import(path, node.lineno, name, f"{target}.{n}", ()) for n in modules]
            if len(modules) < len(names):
                others = tuple(n for n in names if n not in modules)
                found.append(Import(path, node.lineno, name, target, others))
    return found


def top(dotted: str) -> str | None:
    """``cropdoc.training.run`` -> ``training``; ``cropdoc`` -> ``""``; non-cropdoc -> None."""
    parts = dotted.split(".")
    if parts[0] != "cropdoc":
        return None
    return parts[1] if len(parts) > 1 else ""


def layer_name(part: str) -> str:
    return f"{part or 'cropdoc'} ({LAYERS[part]})"


@functools.cache
def src_imports() -> tuple[Import, ...]:
    return tuple(i for f in sorted(PACKAGE.rglob("*.py")) for i in imports_of(f, SRC))


def check(imp: Import) -> list[tuple[str, str]]:
    """(rule, message) for each rule ``imp`` breaks."""
    broken = []
    src, dst = top(imp.importer), top(imp.target)
    head = imp.target.split(".")[0]
    if head in ("benchmarks", "tests"):
        broken.append(("outside", f"{imp.where()} {imp.importer} imports {imp.target}"))
    private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
    if private and imp.target != imp.importer:
        broken.append(
            (
                "private",
                f"{imp.where()} {imp.importer} imports {', '.join(private)} from {imp.target}",
            )
        )
    if src is None or dst is None or src not in LAYERS or dst not in LAYERS:
        return broken
    message = f"{imp.where()} {layer_name(src)} imports {imp.target} ({LAYERS[dst]})"
    if ORDER[LAYERS[dst]] > ORDER[LAYERS[src]]:
        broken.append(("upward", message))
    if dst in FORBIDDEN.get(src, ()):
        broken.append(("capability", f"{message}: {src} must not import {dst}"))
    internal = len(imp.target.split(".")) > 2
    if (
        src != dst
        and LAYERS[src] == LAYERS[dst] == CAPABILITIES
        and internal
        and is_module(imp.target)
    ):
        broken.append(("internals", f"{message}: import it from cropdoc.{dst}, not its internals"))
    return broken


def violations(rule: str) -> list[str]:
    return sorted({m for i in src_imports() for r, m in check(i) if r == rule})


def report(rule: str, what: str) -> str:
    found = violations(rule)
    return f"{len(found)} import(s) where {what}:\n  " + "\n  ".join(found)


def test_every_top_level_module_has_a_layer():
    present = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and any(p.glob("*.py")))
    }
    unknown = sorted(present - set(LAYERS))
    assert not unknown, (
        f"cropdoc.{', cropdoc.'.join(unknown)} has no layer: add it to LAYERS in "
        f"{Path(__file__).name} (see DESIGN.md, Layers)"
    )


def test_layers_import_only_downwards():
    assert not violations("upward"), report("upward", "a layer imports one above it")


def test_capabilities_keep_apart():
    assert not violations("capability"), report(
        "capability",
        "training imports evaluation/inference/export, evaluation imports "
        "training, or inference imports export/serve",
    )


def test_capabilities_import_each_other_through_the_package():
    assert not violations("internals"), report(
        "internals", "a capability reaches into another capability's modules"
    )


def test_src_never_imports_benchmarks_or_tests():
    assert not violations("outside"), report("outside", "src imports benchmarks/ or tests/")


def test_no_private_names_across_modules():
    assert not violations("private"), report("private", "a private _name is imported")


def test_tests_do_not_import_benchmarks():
    found = sorted(
        f"{i.where()} imports {i.target}"
        for f in (REPO / "tests").rglob("*.py")
        for i in imports_of(f, REPO)
        if i.target.split(".")[0] == "benchmarks"
    )
    assert not found, "tests import benchmarks/ (shared helpers go to tests/helpers.py):\n  " + (
        "\n  ".join(found)
    )


def test_the_rules_catch_what_they_should():
    # The checker itself: one bad import of each kind must be reported, a good one not.
    here = REPO / "x.py"
    bad = [
        Import(here, 1, "cropdoc.data.scan", "cropdoc.training.run", ()),
        Import(here, 2, "cropdoc.training.run", "cropdoc.evaluation", ("evaluate_bundle",)),
        Import(here, 3, "cropdoc.evaluation.x", "cropdoc.inference.predictor", ()),
        Import(here, 4, "cropdoc.cli.app", "benchmarks.common", ()),
        Import(here, 5, "cropdoc.cli.app", "cropdoc.config", ("_drop_none",)),
    ]
    rules = [{rule for rule, _ in check(i)} for i in bad]
    assert rules == [{"upward"}, {"capability"}, {"internals"}, {"outside"}, {"private"}]
    assert check(Import(here, 6, "cropdoc.workflows.train", "cropdoc.training", ())) == []
    relative = imports_of(PACKAGE / "cli" / "__init__.py", SRC)
    assert "cropdoc.cli.train" in {i.target for i in relative}


def _imports_in_fresh_python(module: str) -> list[str]:
    code = (
        f"import sys, {module}; "
        "print(','.join(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [m for m in proc.stdout.strip().split(",") if m]


def test_import_cropdoc_does_not_import_torch():
    assert "torch" not in _imports_in_fresh_python("cropdoc")


def test_the_cli_starts_without_torch():
    # `cropdoc --version`, `--help` and `data inspect` should not wait seconds for torch.
    assert "torch" not in _imports_in_fresh_python("cropdoc.cli")


@pytest.mark.parametrize("module", LIGHT)
def test_light_modules_import_neither_torch_nor_matplotlib(module: str):
    if not is_module(module):
        pytest.skip(f"{module} does not exist (yet)")
    assert _imports_in_fresh_python(module) == []
