"""The spec lives in ``docs/``: every ``docs/<page>.md §N`` citation in the code, tests, benchmarks
and README names a page that exists and a section heading that page has; no citation points
outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
CITATION = re.compile(
    r"docs/(?P<page>[a-z_]+)\.md((?P<secs>(?:[ ,/and–-]*§+(?:[A-Z]\.)?[0-9]+(?:\.[0-9]+)*)+))?"
)
SECTION = re.compile(r"§+(?P<num>(?:[A-Z]\.)?[0-9]+(?:\.[0-9]+)*)")


def _sources() -> list[Path]:
    files = [REPO / "README.md", REPO / "CONTRIBUTING.md"]
    for folder in ("tbx", "tests", "benchmarks", "docs"):
        files += [
            p
            for p in (REPO / folder).rglob("*")
            if p.suffix in {".py", ".yaml", ".md", ".sh", ".html", ".js"}
        ]
    return [p for p in files if p.is_file()]


def _headings(page: Path) -> set[str]:
    """Section numbers of a page's headings: ``# 2. …`` → 2, ``## 2.4 …`` → 2.4, ``## D.3 …`` → D.3."""
    nums = set()
    for line in page.read_text().splitlines():
        m = re.match(r"#+\s+((?:[A-Z]\.)?[0-9]+(?:\.[0-9]+)*)\.?\s", line)
        if m:
            nums.add(m.group(1))
    return nums


def _citations() -> list[tuple[Path, int, str, str | None]]:
    found = []
    for path in _sources():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in CITATION.finditer(line):
                secs = [s.group("num") for s in SECTION.finditer(m.group("secs") or "")] or [None]
                found += [(path, lineno, m.group("page"), sec) for sec in secs]
    return found


def test_headings_parser_reads_numbered_headings(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# 4. Title\n## 4.3 Detection\ntext § 9\n## D.12 Round trip\n### 4.3.1 Sub\n")
    assert _headings(page) == {"4", "4.3", "D.12", "4.3.1"}


def test_every_citation_resolves():
    cites = _citations()
    assert len(cites) > 100, "the code should cite the spec pages"
    headings = {p.stem: _headings(p) for p in DOCS.glob("*.md")}
    bad = [
        f"{path.relative_to(REPO)}:{line}: docs/{page}.md §{sec}"
        for path, line, page, sec in cites
        if page not in headings or (sec is not None and sec not in headings[page])
    ]
    assert not bad, "unresolved citations:\n" + "\n".join(bad[:20])


@pytest.mark.parametrize("stale", ["SPEC" + " §", "shared/docs/" + "SPEC"])
def test_no_citation_points_outside_the_repository(stale):
    hits = [
        f"{p.relative_to(REPO)}:{i}"
        for p in _sources()
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if stale in line
    ]
    assert not hits, f"{stale!r} still cited at: " + ", ".join(hits[:20])
