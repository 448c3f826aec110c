"""The console script `slt-superposition` (and ``python -m slt_superposition``).

Splits the CPU into one JAX device per core (`cpu_devices`) before anything starts JAX's
backend, unless ``SLT_SPLIT_CPU=0``, the user chose a device count, or this is one process of
a multi-process run; wherever the process will have several CPU devices (its own split or the
user's count) computations are dispatched inline, which keeps threads that launch programs over
several devices from waiting on each other for good (`cpu_devices` module doc). Compiled
programs are kept on disk between runs (`compile_cache`: JAX's persistent cache, unless the user
chose their own folder or ``SLT_COMPILATION_CACHE=0``); a command line that only asks for help
skips both (nothing computes). Then hands over to
`slt_superposition.cli.main`. `cli.main` itself does not touch the devices, so calling it
from a program that already computed (a notebook, the tests) changes nothing.
"""

from __future__ import annotations

import os
import sys


def joins_multiprocess_run(argv: list[str], environ=os.environ) -> bool:
    """True when the options or environment make this one process of a `jax.distributed` run."""
    if environ.get("JAX_COORDINATOR_ADDRESS") or environ.get("SLT_DISTRIBUTED", "") not in ("", "0"):
        return True
    return any(arg == "--coordinator" or arg.startswith("--coordinator=") for arg in argv)


def only_asks_for_help(argv: list[str]) -> bool:
    """True when the command line only prints help (no arguments, or ``--help`` anywhere): nothing
    will compute, so JAX need not be imported (which takes seconds)."""
    return not argv or "--help" in argv


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with every CPU core as a device; returns the exit status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if only_asks_for_help(arguments):
        from slt_superposition.cli import main as cli_main

        return cli_main(argv)
    if not joins_multiprocess_run(arguments):
        from slt_superposition.cpu_devices import dispatch_inline_with_several_devices, split_cpu_into_cores

        split = os.environ.get("SLT_SPLIT_CPU", "1") != "0" and split_cpu_into_cores() is not None
        if not split:  # the user's own JAX_NUM_CPU_DEVICES or XLA_FLAGS count (the split sets the mode itself)
            dispatch_inline_with_several_devices()
    from slt_superposition.compile_cache import enable_for_console_script

    enable_for_console_script()
    from slt_superposition.cli import main as cli_main

    return cli_main(argv)
