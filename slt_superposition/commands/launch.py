"""The `launch` subcommand: run one command as N local JAX processes (CPU), one result.

    slt-superposition launch --processes 2 -- train -n 5 -m 2 -p 0.05 --seeds 8 --out grid.nc

starts N copies of ``slt-superposition COMMAND ...`` (or of ``python SCRIPT.py ...``) on
this machine, each told by the environment (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) to join one `jax.distributed` run with the CPU
collectives. Each process owns one CPU device; the instances are split over them; process 0
writes the result and its output is shown, the others' output only when one fails. It is
the way to try a multi-process run on one machine; on a cluster the scheduler starts the
processes instead (docs/scaling.md).

If any process exits with an error (or is killed), the others are stopped (a process
waiting on a dead peer would wait forever) and `launch` exits with that status; rerunning
the same command resumes a resumable sweep from its finished chunks.

Also runnable without the CLI registry: ``python -m slt_superposition.commands.launch``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import typer

from slt_superposition.errors import InputError

COMMANDS = ("train", "llc", "reproduce")
GRACE_S = 5.0  # seconds between SIGTERM and SIGKILL when stopping the other processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for the coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_argv(command: list[str]) -> list[str]:
    """The argv each process runs: ``python -m slt_superposition COMMAND ...`` or ``python SCRIPT.py ...``."""
    if not command:
        raise InputError("give the command to run after '--', e.g. launch --processes 2 -- train ... --out grid.nc")
    head, rest = command[0], command[1:]
    if head.endswith(".py"):
        if not Path(head).is_file():
            raise InputError(f"no such script: {head}")
        return [sys.executable, head, *rest]
    if head not in COMMANDS:
        raise InputError(f"launch runs {', '.join(COMMANDS)} or a Python script (*.py), got '{head}'")
    return [sys.executable, "-m", "slt_superposition", head, *rest]


def process_env(index: int, count: int, port: int) -> dict[str, str]:
    """The environment of local process `index` of `count`: JAX's distributed variables, CPU only."""
    env = dict(os.environ)
    env.update(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES=str(count),
        JAX_PROCESS_ID=str(index),
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
    )
    env.pop("SLT_DISTRIBUTED", None)
    return env


def _stop(procs: list[subprocess.Popen]) -> None:
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for p in alive:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_processes(command: list[str], processes: int, *, port: int | None = None) -> int:
    """Start `processes` local processes of `command` and wait; returns the exit status
    (0 when all succeed, else the first failure's status; 130 when interrupted)."""
    if processes < 1:
        raise InputError(f"--processes must be at least 1, got {processes}")
    argv = process_argv(command)
    port = free_port() if port is None else port
    logs = [tempfile.TemporaryFile() if i else None for i in range(processes)]
    procs = []
    for i in range(processes):
        out = None if i == 0 else logs[i]
        procs.append(subprocess.Popen(argv, env=process_env(i, processes, port), stdout=out,
                                      stderr=None if i == 0 else subprocess.STDOUT))
        print(f"launch: process {i} of {processes}, pid {procs[-1].pid}", file=sys.stderr, flush=True)
    status = 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                index, status = failed[0]
                _stop(procs)
                cause = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
                print(f"launch: process {index} ended with {cause}; stopped the others", file=sys.stderr)
                if index and logs[index] is not None:
                    logs[index].seek(0)
                    tail = logs[index].read().decode(errors="replace").strip().splitlines()[-15:]
                    for line in tail:
                        print(f"[process {index}] {line}", file=sys.stderr)
                status = 128 - status if status < 0 else status
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        _stop(procs)
        status = 130
    finally:
        for log in logs:
            if log is not None:
                log.close()
    return status


def launch(
    command: List[str] = typer.Argument(
        ..., help="After '--': train, llc or reproduce with its options, or a Python script (*.py) and its arguments."),
    processes: int = typer.Option(2, "--processes", help="Number of local processes (one CPU device each)."),
    port: int = typer.Option(0, "--port", help="Coordinator port on 127.0.0.1 (0 = any free port)."),
) -> None:
    """Run COMMAND as N local JAX processes (jax.distributed, CPU collectives): one result,
    written once by process 0, the same bits as one process.

    Example: slt-superposition launch --processes 2 -- train -n 5 -m 2 -p 0.05 --seeds 8 --out grid.nc
    """
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be a TCP port in 0..65535 (0: any free one), got {port}")
    status = run_processes(list(command), processes, port=port or None)
    if status:
        raise typer.Exit(status)


def register(app: typer.Typer) -> None:
    """Add the `launch` command to `app`."""
    app.command("launch", context_settings={"allow_interspersed_args": False})(launch)


def main(argv: list[str] | None = None) -> int:
    """`python -m slt_superposition.commands.launch --processes N -- COMMAND ...`."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(context_settings={"allow_interspersed_args": False})(launch)
    try:
        app(args=argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
