"""Compiled programs kept on disk between runs of the console script (JAX's persistent cache).

Compiling is most of the CPU time of a short run: the quick flagship compiles about 370 XLA
programs, the chain programs alone 1 to 15 s each (docs/benchmarks.md, "Compiling"). The same
programs come back run after run (same model shapes, same settings), and JAX can keep compiled
programs in a folder and load them instead of compiling again. A loaded program is the same
executable, so no number changes (the test suite has run this way since its start).

`enable_for_console_script()` turns it on for the `slt-superposition` command: at
`$SLT_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/slt-superposition/jax`, else
`~/.cache/slt-superposition/jax`, every program cached (`MIN_COMPILE_SECONDS`). The folder is kept
under `MAX_BYTES` when the script starts (`prune`: the least recently used files go first), not
by JAX's own size cap, whose bookkeeping (a file lock and a scan of the folder on every write)
cost about 0.12 s per compiled program here (`benchmarks/compile_time.py --cache-overhead`).

It leaves JAX alone when the user chose a cache folder already (`JAX_COMPILATION_CACHE_DIR`, or
`jax_compilation_cache_dir` set in-process, as the tests do), or with `SLT_COMPILATION_CACHE=0`.
A folder that cannot be written leaves the cache off with one line on stderr; the run goes on.
Python callers get JAX's own default (no cache) unless they set it, as JAX documents.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

MAX_BYTES = 2 * 1024**3  # the folder's cap; a quick flagship's programs take about 9 MB
MIN_COMPILE_SECONDS = 0.0  # every program: the small ones add up (hundreds per run)


def default_folder(environ=os.environ) -> Path:
    """Where the console script keeps compiled programs (module doc)."""
    if environ.get("SLT_COMPILATION_CACHE_DIR"):
        return Path(environ["SLT_COMPILATION_CACHE_DIR"]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "slt-superposition" / "jax"


def enable_for_console_script(environ=os.environ) -> Path | None:
    """Turn on JAX's persistent compilation cache at `default_folder()` (module doc); returns the
    folder, or None where the cache stays as the user left it (their own folder, or off)."""
    import jax

    if environ.get("SLT_COMPILATION_CACHE", "1") == "0":
        return None
    if environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return None  # the user's own cache folder and settings
    folder = default_folder(environ)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        print(f"slt-superposition: compiled programs not kept between runs: cannot write {folder} "
              f"({err.strerror or err}); set SLT_COMPILATION_CACHE_DIR, or SLT_COMPILATION_CACHE=0 to silence this",
              file=sys.stderr)
        return None
    prune(folder, MAX_BYTES)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder


def prune(folder: Path, max_bytes: int) -> int:
    """Remove the least recently used files of `folder` (by access or modification time, whichever
    is later) until its files take at most `max_bytes`; returns how many were removed. A file that
    another run removes or reads meanwhile is skipped (JAX reads a missing program as a miss)."""
    entries = []
    for path in folder.iterdir():
        try:
            info = path.stat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            entries.append((max(info.st_atime, info.st_mtime), info.st_size, path))
    total, removed = sum(size for _, size, _ in entries), 0
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= max_bytes:
            break
        try:
            path.unlink()
        except OSError:
            continue
        total, removed = total - size, removed + 1
    return removed
