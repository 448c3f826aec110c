"""The console script splits the CPU into one JAX device per core (cpu_devices; SLT_SPLIT_CPU=0 keeps one),
unless the user chose a count or the process joins a multi-process run; with several devices it
dispatches inline, so threads launching programs over them cannot stop each other for good;
importing the package must not start JAX's backend, or the split would come too late."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from slt_superposition.cpu_devices import MAX_DEVICES, chosen_by_user, core_count, split_cpu_into_cores
from slt_superposition.entry import joins_multiprocess_run, only_asks_for_help


def _clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "SLT_DISTRIBUTED", "SLT_SPLIT_CPU")}
    return dict(env, JAX_PLATFORMS="cpu", **extra)


def _version_line(**extra) -> str:
    proc = subprocess.run([sys.executable, "-m", "slt_superposition", "--version"], capture_output=True, text=True,
                          timeout=300, env=_clean_env(**extra))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_the_console_script_makes_one_device_per_core():
    cores = min(core_count(), MAX_DEVICES)
    assert _version_line().endswith(f"on cpu ({cores} device{'s' if cores > 1 else ''})")
    assert _version_line(SLT_SPLIT_CPU="1").endswith(f"on cpu ({cores} device{'s' if cores > 1 else ''})")
    assert _version_line(SLT_SPLIT_CPU="0").endswith("on cpu (1 device)")  # the way out


def test_the_users_count_and_a_multiprocess_run_are_left_alone():
    assert _version_line(JAX_NUM_CPU_DEVICES="1").endswith("on cpu (1 device)")
    assert _version_line(JAX_NUM_CPU_DEVICES="3").endswith("on cpu (3 devices)")
    # one process of a jax.distributed run keeps the one device `launch` gives it
    assert _version_line(JAX_COORDINATOR_ADDRESS="127.0.0.1:1").endswith("on cpu (1 device)")


def test_importing_the_package_does_not_start_jax():
    code = ("from jax._src import xla_bridge\n"
            "import slt_superposition, slt_superposition.cli, toy_models.train, analysis, experiments\n"
            "print(xla_bridge.backends_are_initialized())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=_clean_env(), cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_help_does_not_import_jax():
    # help computes nothing: neither the package, nor the command line, nor its help imports JAX
    # (seconds of the two-core machine's time before a usage line)
    assert only_asks_for_help([]) and only_asks_for_help(["llc", "--help"])
    assert not only_asks_for_help(["--version"]) and not only_asks_for_help(["llc", "in.nc"])
    code = ("import sys\n"
            "from slt_superposition.entry import main\n"
            "codes = [main(['--help']), main(['llc', '--help']), main(['reproduce', '--help'])]\n"
            "print(codes, sorted(m for m in ('jax', 'xarray', 'blackjax', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=_clean_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Estimate the local learning coefficient" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[0, 0, 0] []"


def test_split_is_a_no_op_once_jax_has_computed():
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()
    assert split_cpu_into_cores() is None  # too late: the devices stay as they are


def test_who_chose_and_who_joins():
    assert chosen_by_user({"JAX_NUM_CPU_DEVICES": "2"}) and not chosen_by_user({"XLA_FLAGS": "--xla_cpu_ftz"})
    assert chosen_by_user({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert joins_multiprocess_run(["train", "--coordinator", "h:1"], {})
    assert joins_multiprocess_run(["llc", "--coordinator=h:1"], {})
    assert joins_multiprocess_run([], {"SLT_DISTRIBUTED": "1"}) and not joins_multiprocess_run([], {"SLT_DISTRIBUTED": "0"})
    assert not joins_multiprocess_run(["train", "--out", "x.nc"], {})


def _dispatch_after(code: str, **extra) -> str:
    """Run `code` in a fresh process, then print whether JAX dispatches CPU computations asynchronously."""
    probe = code + "\nfrom jax._src import xla_bridge\nprint(xla_bridge._CPU_ENABLE_ASYNC_DISPATCH.value)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env=_clean_env(**extra))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_several_devices_dispatch_inline_one_device_stays_asynchronous():
    split = "from slt_superposition.cpu_devices import split_cpu_into_cores\nsplit_cpu_into_cores({})"
    assert _dispatch_after(split.format(2)) == "False"
    assert _dispatch_after(split.format(1)) == "True"
    guard = "from slt_superposition.cpu_devices import dispatch_inline_with_several_devices as g\nprint(g())"
    assert _dispatch_after(guard, JAX_NUM_CPU_DEVICES="2") == "False"  # the user's own count
    assert _dispatch_after(guard, XLA_FLAGS="--xla_force_host_platform_device_count=3") == "False"
    assert _dispatch_after(guard) == "True"  # one device: nothing to guard


def test_threads_launching_two_device_programs_keep_going():
    """The case that stopped a flagship run for good (tests/multidevice/threaded_launches.py): two
    threads launch two-device programs while a third queues one-device work. Every thread must keep
    finishing rounds for 20 s; with asynchronous dispatch it stalled within 2 s."""
    script = Path(__file__).parent / "multidevice" / "threaded_launches.py"
    proc = subprocess.run([sys.executable, str(script), "20"], capture_output=True, text=True, timeout=400,
                          env=_clean_env(), cwd=script.parents[2])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    devices, rounds = proc.stdout.split("rounds")
    assert devices.split()[-1] == "2" and min(map(int, rounds.split())) > 0, proc.stdout
