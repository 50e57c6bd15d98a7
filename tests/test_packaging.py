"""Packaging: installing cropdoc keeps the user's torch, and ships its resources."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {Requirement(r).name: Requirement(r) for r in project["dependencies"]}


def test_torch_has_lower_bounds_only() -> None:
    """A library states the oldest torch it supports; a pin would replace a user's torch."""
    reqs = _requirements()
    for name in ("torch", "torchvision"):
        operators = {spec.operator for spec in reqs[name].specifier}
        assert operators == {">="}, f"{name}: {reqs[name]} must be a lower bound only"
        # A newer release than the one CI tests with is accepted.
        assert reqs[name].specifier.contains("99.0")


def test_ci_pins_exactly_the_tested_versions() -> None:
    pins = {}
    for line in (ROOT / ".ci/constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            pins[req.name] = req
    reqs = _requirements()
    for name in ("torch", "torchvision"):
        (spec,) = pins[name].specifier
        assert spec.operator == "=="
        assert reqs[name].specifier.contains(spec.version), (name, spec.version)
    assert "-c .ci/constraints.txt" in (ROOT / ".ci/run").read_text()
