"""How long each experiment's `reproduce NAME --quick` takes on this machine, as a user's first run:
one `python -m slt_superposition` process (the console script's entry) per experiment, one after
another, each with its compiled-program cache off (`SLT_COMPILATION_CACHE=0`), so every figure
includes its compilations. Prints a markdown table (experiment, wall minutes, exit status) and the
machine line.

    python -m benchmarks.quick_times OUT [NAME ...]

OUT: a folder for the runs (one subfolder per experiment; an existing one is refused, so no earlier
run is replaced or resumed). NAME: only these experiments (default: every one with a quick size).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from experiments.registry import EXPERIMENTS


def quick_names() -> list[str]:
    """The experiments that have a quick size, in `reproduce --list` order."""
    return [name for name, e in EXPERIMENTS.items() if "quick" in e.sizes]


def time_one(name: str, out: Path) -> tuple[float, int]:
    """Wall seconds and exit status of `slt-superposition reproduce NAME --quick --out OUT`."""
    env = dict(os.environ, SLT_COMPILATION_CACHE="0")
    start = time.perf_counter()  # the console script's entry, run by this interpreter (not another install's)
    proc = subprocess.run([sys.executable, "-m", "slt_superposition", "reproduce", name, "--quick", "--no-progress",
                           "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        print(f"{name}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return seconds, proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the runs (must not exist)")
    parser.add_argument("names", nargs="*", help="experiments to time (default: every one with --quick)")
    args = parser.parse_args(argv)
    names = args.names or quick_names()
    unknown = sorted(set(names) - set(quick_names()))
    if unknown:
        parser.error(f"no quick size: {', '.join(unknown)} (these have one: {', '.join(quick_names())})")
    if args.out.exists():
        parser.error(f"{args.out} exists: give a new folder (no earlier run is replaced or resumed)")
    args.out.mkdir(parents=True)
    from benchmarks.machine import cpu_model

    print(f"{os.cpu_count()} CPUs, {cpu_model()}; compiled-program cache off (first runs)\n")
    print("| experiment | `reproduce NAME --quick` (minutes) | exit |\n|---|---|---|")
    for name in names:
        seconds, code = time_one(name, args.out / name)
        print(f"| {name} | {seconds / 60:.1f} | {code} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
