"""cropdoc.classnames: Unicode-safe matching of class names (the ASCII rules are in
test_evaluation_metrics.py, readable labels in test_inspect.py)."""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest

from cropdoc.classnames import class_key, find_class, match_classes
from cropdoc.errors import DataError

NON_LATIN = ["玉米___锈病", "玉米___叶斑病", "Кукуруза___ржавчина", "Кукуруза___здоровый"]


def test_composed_and_decomposed_accents_match() -> None:
    nfc = unicodedata.normalize("NFC", "Maïs_rouille")
    nfd = unicodedata.normalize("NFD", "Maïs_rouille")
    assert nfc != nfd  # the test means something only if the spellings differ
    assert class_key(nfc) == class_key(nfd)
    assert find_class(nfd, ["Blé___rouille", nfc]) == nfc
    assert match_classes([nfd, "MAÏS rouille"], [nfc]) == {nfd: nfc, "MAÏS rouille": nfc}


def test_accents_still_distinguish_names() -> None:
    # Normalising must not strip accents: "é" and "e" are different letters.
    assert class_key("Thé___rouille") != class_key("The___rouille")


@pytest.mark.parametrize("name", NON_LATIN)
def test_non_latin_names_keep_their_letters(name: str) -> None:
    key = class_key(name)
    letters = [ch for ch in name if ch != "_"]
    assert len(key) == len(letters)  # nothing but the separators dropped
    assert find_class(name.replace("___", " "), NON_LATIN) == name


def test_different_non_latin_names_never_collide() -> None:
    assert len({class_key(n) for n in NON_LATIN}) == len(NON_LATIN)
    with pytest.raises(DataError, match="does not know"):
        match_classes(["玉米___白粉病"], NON_LATIN)


def test_case_folding_beyond_ascii() -> None:
    assert class_key("КУКУРУЗА___РЖАВЧИНА") == class_key("Кукуруза___ржавчина")
    assert class_key("Straße") == class_key("STRASSE")  # casefold, not lower()
    assert class_key("Ｔｏｍａｔｏ＿healthy") == class_key("Tomato_healthy")  # full-width


def test_a_name_of_separators_only_matches_only_itself() -> None:
    assert class_key("___") == ""
    assert find_class("___", ["--", "a"]) is None
    assert find_class("--", ["--", "a"]) == "--"


def test_foundation_modules_import_neither_torch_nor_matplotlib() -> None:
    # In a fresh interpreter: this test process has long imported both.
    code = (
        "import sys, cropdoc.classnames, cropdoc.diseases, cropdoc.resources\n"
        "heavy = sorted(m for m in ('torch', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
