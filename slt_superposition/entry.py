"""The console script `slt-superposition` (and ``python -m slt_superposition``).

With ``SLT_SPLIT_CPU=1`` (opt-in, experimental) splits the CPU into one JAX device per core
(`cpu_devices`) before anything starts JAX's backend, unless this is one process of a
multi-process run; then hands over to `slt_superposition.cli.main`. Off by default: one quick
flagship run of four with two CPU devices hung (its models run in two threads, each launching
programs over both devices; not yet understood). `cli.main` itself does not touch the devices, so calling it
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


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with every CPU core as a device; returns the exit status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if os.environ.get("SLT_SPLIT_CPU") == "1" and not joins_multiprocess_run(arguments):
        from slt_superposition.cpu_devices import split_cpu_into_cores

        split_cpu_into_cores()
    from slt_superposition.cli import main as cli_main

    return cli_main(argv)
