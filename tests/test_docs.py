"""The docs stay true: every test a document cites, and every file it links to, exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]

# `tests/x.py`, `tests/x.py::name`, or a bare `::name` that belongs to the file cited last.
CITATION = re.compile(r"(?<![\w/.])(tests/[\w/]+\.py)(?:::(\w+))?|(?<![\w:])::(\w+)")


def _defines(source: str, name: str) -> bool:
    return re.search(rf"^(?:async )?def {name}\(", source, re.M) is not None


def broken_citations(text: str, root: Path = ROOT) -> list[str]:
    """The citations in ``text`` that name a file or a test that does not exist.

    A cited test exists when its file defines it at the top level with ``def`` or ``async def``.

    Args:
        text: A document.
        root: The folder the cited paths are relative to.
    """
    broken: list[str] = []
    last: str | None = None
    for match in CITATION.finditer(text):
        path, name, bare = match.groups()
        if path:
            last = path
            if not (root / path).is_file():
                broken.append(path)
                continue
        elif last is None:
            broken.append(f"::{bare} (no file cited before it)")
            continue
        name = name or bare
        if name and (not (root / last).is_file() or not _defines((root / last).read_text(), name)):
            broken.append(f"{last}::{name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_cite_existing_tests(doc):
    assert broken_citations(doc.read_text()) == [], f"{doc.relative_to(ROOT)} cites tests that do not exist"


@pytest.mark.parametrize("doc,least", [("docs/security.md", 20), ("docs/api.md", 15)])
def test_contract_docs_cite_their_tests(doc, least):
    assert len(CITATION.findall((ROOT / doc).read_text())) >= least


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_docs_link_to_existing_files(doc):
    links = re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", doc.read_text())  # relative links; URLs have a ':'
    missing = [link for link in links if not (doc.parent / link).exists()]
    assert missing == [], f"{doc.relative_to(ROOT)} links to files that do not exist"


def test_checker_finds_bare_names_async_tests_and_missing_files(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_a():\n    pass\n\n\nasync def test_b():\n    pass\n")
    text = (
        "`tests/test_x.py::test_a`, `::test_b` and `::test_gone`; "
        "`tests/test_missing.py`, then `tests/test_x.py` again and `::test_a`; std::vector is no citation."
    )
    assert broken_citations(text, tmp_path) == ["tests/test_x.py::test_gone", "tests/test_missing.py"]
    assert broken_citations("`::test_a` before any file", tmp_path) == ["::test_a (no file cited before it)"]
