"""Progress bars for long stages: tqdm on stderr, readable in a terminal and in a log file.

In a terminal a bar redraws in place and is cleared when done. When stderr is a file (a batch
job's log), tqdm's in-place redraws would pile up as one carriage-return line; there each
redraw becomes its own line (`LineFile`), at most every `LOG_INTERVAL` seconds, and the last
one stays, so a log shows a long stage advancing and where it ended.
"""

from __future__ import annotations

import contextlib
import sys

LOG_INTERVAL = 30.0  # seconds between progress lines when stderr is not a terminal


class LineFile:
    """A stream for tqdm when output goes to a file: each redraw becomes its own line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        for part in text.split("\r"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()


def make_bar(total: int | None, desc: str, enabled: bool = True, **kwargs):
    """A tqdm bar on stderr set up for a terminal or a log file (see the module docstring);
    disabled (every method a no-op) with `enabled=False`."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    options = dict(leave=not interactive, mininterval=0.5 if interactive else LOG_INTERVAL,
                   maxinterval=10.0 if interactive else 10 * LOG_INTERVAL,  # tqdm's monitor would redraw every 10 s
                   file=sys.stderr if interactive else LineFile(sys.stderr), dynamic_ncols=interactive)
    return tqdm(total=total, desc=desc, disable=not enabled, **{**options, **kwargs})


@contextlib.contextmanager
def progress_bar(total: int | None, desc: str, enabled: bool, **kwargs):
    """`make_bar` as a context: yields an object with `update(n=1)` and closes it at the end;
    with `enabled=False` the same object does nothing."""
    bar = make_bar(total, desc, enabled, **kwargs)
    try:
        yield bar
    finally:
        bar.close()
