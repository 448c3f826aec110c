"""One line describing the machine a benchmark ran on (the CPU model matters: the same
programs ran 1.5x to 2x apart on the two CPU models the project's runs have met)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe() -> str:
    """e.g. "x86_64, AMD EPYC, 2 CPUs; jax 0.10.2 on cpu (2 devices)" (imports jax: call after
    `slt_superposition.cpu_devices.split_cpu_into_cores`)."""
    import jax

    return (f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs; jax {jax.__version__} on "
            f"{jax.default_backend()} ({jax.local_device_count()} device(s))")
