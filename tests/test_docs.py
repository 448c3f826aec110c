"""The documentation stands on its own: every relative link in README.md and docs/ resolves
inside the repository, and nothing points outside it (a user of the package has only this)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(page.read_text())
            if not re.match(r"[a-z]+://|#|mailto:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(page):
    for target in relative_links(page):
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{page.name} links outside the repository: {target}"
        assert path.exists(), f"{page.name} links to a missing file: {target}"


def test_no_page_cites_files_outside_the_repository():
    for page in PAGES:
        assert "../shared" not in page.read_text(), page
    assert (ROOT / "docs" / "design.md").exists() and (ROOT / "docs" / "references.md").exists()
