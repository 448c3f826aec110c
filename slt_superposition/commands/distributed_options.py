"""The options that make `train`, `llc` and `reproduce` one process of a multi-process run.

Each of those commands takes them and calls
`slt_superposition.sharding.maybe_initialize_distributed` before any JAX work; without
them (and without ``JAX_COORDINATOR_ADDRESS`` or ``SLT_DISTRIBUTED=1`` in the environment)
a run is a single process. `slt-superposition launch` sets the environment for local
processes; docs/scaling.md shows a cluster (SLURM) set-up.
"""

from __future__ import annotations

import typer

COORDINATOR = typer.Option(
    None, "--coordinator",
    help="host:port of process 0 in a multi-process run (jax.distributed); default: JAX_COORDINATOR_ADDRESS, or "
         "the cluster's own variables with SLT_DISTRIBUTED=1.")
NUM_PROCESSES = typer.Option(None, "--num-processes", help="Processes in the run (with --coordinator).")
PROCESS_ID = typer.Option(None, "--process-id", help="This process's index, 0 .. N-1 (with --coordinator).")


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """Join the multi-process run the options or environment name; True if there is one."""
    from slt_superposition.sharding import maybe_initialize_distributed

    return maybe_initialize_distributed(coordinator, num_processes, process_id)
