"""Markdown for reports: tables whose cells cannot break the table, and the opening every
report shares (title, the command that made it, one paragraph of what it found).
"""

from __future__ import annotations

from typing import Iterable, Sequence


def escape(cell) -> str:
    """A table cell as text: pipes escaped (`\\|`), line breaks folded into spaces."""
    return " ".join(str(cell).split("\n")).replace("|", "\\|")


def table(headers: Sequence, rows: Iterable[Sequence]) -> str:
    """A GitHub-flavoured markdown table; every cell is `escape`d."""
    lines = ["| " + " | ".join(escape(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        row = list(row)
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, the table {len(headers)} columns")
        lines.append("| " + " | ".join(escape(c) for c in row) + " |")
    return "\n".join(lines)


def counts(mapping: dict) -> str:
    """'a 3, b 0, c 12' from {'a': 3, ...}: a count per category in words, not a dict repr."""
    return ", ".join(f"{key} {value}" for key, value in mapping.items())


def opening(title: str, command: str, finding: str) -> str:
    """The top of every report: '# title', the command that made it, one paragraph of what it found."""
    return f"# {title}\n\nCommand: `{command}`\n\n{' '.join(finding.split())}\n\n"
