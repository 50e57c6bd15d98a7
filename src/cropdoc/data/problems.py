"""What a scan left out, summed up: one :class:`Problem` per kind, readable at any size.

A download with 20,000 conflicting files must give one line, not 20,000: each kind of
problem is a count, a few examples and one sentence that says what was done and what to
do; the full lists stay in ``scan_report.json``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scan import ScanReport

__all__ = ["EXAMPLES", "Problem", "find_problems"]

#: Examples named per problem line.
EXAMPLES = 3

# kind -> what it is and what was done (the count goes in front).
_NOTES = {
    "copy_folders": "folder(s) holding only copies of other class folders, not a class; left out",
    "nested_copies": "folder(s) named like another class inside a class folder (a nested "
    "copy); left out",
    "unknown_split_classes": "class folder(s) in a val/test folder with no train folder of "
    "that name; left out",
    "ignored_folders": "folder(s) beside the train/val/test folders; left out",
    "loose_images": "image(s) not inside a class folder; left out",
    "merged_folders": "class name(s) written in two Unicode forms (NFC and NFD); each read "
    "as one class",
}


@dataclass(frozen=True)
class Problem:
    """One kind of problem in a dataset folder."""

    kind: str
    count: int
    examples: tuple[str, ...]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "examples": list(self.examples),
            "message": self.message,
        }


def _examples(items: list[str]) -> str:
    return ", ".join(items[:EXAMPLES]) + (", ..." if len(items) > EXAMPLES else "")


def _line(kind: str, count: int, what: str, examples: list[str]) -> Problem:
    message = f"{count} {what}: {_examples(examples)}"
    return Problem(kind, count, tuple(examples[:EXAMPLES]), message)


def _bad_file_problems(report: ScanReport) -> list[Problem]:
    by_reason: dict[str, list[str]] = defaultdict(list)
    for b in report.bad_files:
        kind = b.reason.split(":", 1)[0].strip() or b.reason
        by_reason[kind].append(report.relative(b.path))
    order = Counter({k: len(v) for k, v in by_reason.items()}).most_common()
    return [
        _line("bad_files", n, f"bad file(s) ({reason}); left out", by_reason[reason])
        for reason, n in order
    ]


def _conflict_problem(report: ScanReport) -> Problem | None:
    groups = report.label_conflicts
    if not groups:
        return None
    n_files = sum(len(g) for g in groups)
    done = (
        "kept, as --label-conflicts keep asks"
        if report.conflicts_kept
        else "left out of training and evaluation (--label-conflicts keep uses them)"
    )
    return _line(
        "label_conflicts",
        n_files,
        f"file(s) in {len(groups)} group(s) byte-identical to a file of another class "
        f"(label conflicts); {done}",
        [" = ".join(g) for g in groups],
    )


def find_problems(report: ScanReport) -> list[Problem]:
    """The problems of a scan, most serious kinds first; empty for a clean folder."""
    problems = _bad_file_problems(report)
    conflict = _conflict_problem(report)
    if conflict is not None:
        problems.append(conflict)
    for kind, what in _NOTES.items():
        items = report.notes.get(kind) or []
        if items:
            problems.append(_line(kind, len(items), what, items))
    return problems
