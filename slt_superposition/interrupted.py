"""What a Ctrl-C left behind: the line the CLI prints when a command is interrupted.

Results are written only when complete (atomically), except the chunks of resumable sweeps
(`slt_superposition.sweep`), which are written one by one under the output folder and reused
when the same command runs again. So the line counts the finished chunks of every sweep
under `--out` and says whether rerunning resumes or starts over.
"""

from __future__ import annotations

import json
from pathlib import Path

from slt_superposition.sweep import MANIFEST, chunk_path

OUT_FLAGS = ("--out", "-o")


def out_argument(argv: list[str]) -> Path | None:
    """The value of --out/-o in `argv` (either 'FLAG VALUE' or '--out=VALUE'), else None."""
    for i, token in enumerate(argv):
        if token in OUT_FLAGS and i + 1 < len(argv):
            return Path(argv[i + 1])
        if token.startswith("--out="):
            return Path(token.split("=", 1)[1])
    return None


def saved_chunks(out: Path) -> list[tuple[Path, int, int]]:
    """(sweep folder, finished chunks, all chunks) of every sweep under `out`."""
    if not out.is_dir():
        return []
    found = []
    for manifest in sorted(out.rglob(MANIFEST)):
        try:
            total = len(json.loads(manifest.read_text())["chunks"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        done = sum(chunk_path(manifest.parent, i).exists() for i in range(total))
        found.append((manifest.parent, done, total))
    return found


def interrupted_message(argv: list[str]) -> str:
    """One line: what was saved, and what rerunning the same command does."""
    out = out_argument(argv)
    sweeps = saved_chunks(out) if out is not None else []
    if sweeps:
        saved = "; ".join(f"{done} of {total} chunks in {folder}" for folder, done, total in sweeps)
        return f"interrupted: saved {saved}; rerun the same command to resume from them"
    return ("interrupted: nothing was saved (results are written only when complete); "
            "rerunning the same command starts over")
