"""Progress bars for long stages: tqdm where enabled, a silent stand-in otherwise."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str, enabled: bool):
    """A tqdm bar (to stderr, cleared when done) yielding an object with `update(n=1)`;
    with `enabled=False` the same object does nothing."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False, disable=not enabled)
    try:
        yield bar
    finally:
        bar.close()
