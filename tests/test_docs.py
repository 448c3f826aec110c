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


def test_readme_python_snippet_imports_and_calls_what_exists():
    """The README's Python snippet (run as written by docs/run_tour.sh; too slow for the suite) imports
    names that exist and calls them with keywords their signatures take."""
    import ast
    import importlib
    import inspect

    text = (ROOT / "README.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    tree = ast.parse(snippet)
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                names[alias.asname or alias.name] = getattr(module, alias.name)
    assert {"calibrate_batched", "estimate_llc_batched", "train_grid"} <= set(names)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id in names]
    assert len(calls) >= 5
    for call in calls:
        parameters = inspect.signature(names[call.func.id]).parameters
        if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            continue
        for keyword in call.keywords:
            assert keyword.arg in parameters, f"{call.func.id} takes no keyword {keyword.arg}"


def test_readme_names_every_experiment_and_its_quick_rule():
    """Every experiment `reproduce --list` shows is named in the README (those with a page in its
    table, next to the page), and the experiments the README says have no --quick are exactly those."""
    from experiments.registry import EXPERIMENTS

    text = (ROOT / "README.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and "reproduce " in line]
    for name in EXPERIMENTS:
        assert f"`{name}`" in text or f"reproduce {name}`" in text, f"README does not name experiment {name}"
        page = ROOT / "docs" / "experiments" / (name.replace("-", "_") + ".md")
        if page.exists():
            assert any(f"reproduce {name}`" in row and page.name in row for row in rows), \
                f"README's table has no row for {name} with its page"
    no_quick = [name for name, e in EXPERIMENTS.items()
                if "quick" not in e.sizes and (ROOT / "docs" / "experiments" / (name.replace("-", "_") + ".md")).exists()]
    assert no_quick == ["tms-critical-points"]
    assert "all but tms-critical-points (exact) take `--quick`" in text
