"""N processes, one result: `slt-superposition launch` runs 2 local CPU processes under
`jax.distributed`, and what they write is bit for bit what 1 process writes.

Each check starts real processes (the launcher, the CLI), as a user or a cluster would; a
process joins the run from the environment the launcher gives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import xarray as xr

from slt_superposition.commands.launch import process_argv, process_env
from slt_superposition.errors import InputError
from slt_superposition.sweep import chunk_path

LAUNCH = [sys.executable, "-m", "slt_superposition.commands.launch"]
CLI = [sys.executable, "-m", "slt_superposition"]
TRAIN = ["train", "-n", "5", "-m", "2", "-p", "0.05,0.2,0.6", "--seeds", "3", "--steps", "120", "--batch-size", "32",
         "--loss-curve-points", "4", "--snapshot-steps", "60", "--no-progress"]
LLC = ["--chains", "2", "--steps", "60", "--burnin", "20", "--n-samples", "128", "--batch-size", "32"]


def _run(argv, timeout=300, env=None):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _open(path) -> xr.Dataset:
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def assert_same_bits(a: xr.Dataset, b: xr.Dataset) -> None:
    assert sorted(a.data_vars) == sorted(b.data_vars)
    for name in a.variables:
        x, y = a[name].values, b[name].values
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (name, np.abs(x - y).max())
    assert a.attrs["config"] == b.attrs["config"]


def test_launcher_argv_and_environment():
    assert process_argv(["train", "--out", "x.nc"])[-4:] == ["slt_superposition", "train", "--out", "x.nc"]
    with pytest.raises(InputError, match="launch runs train, llc, reproduce"):
        process_argv(["plot", "x.nc"])
    with pytest.raises(InputError, match="give the command"):
        process_argv([])
    env = process_env(1, 2, 1234)
    assert (env["JAX_COORDINATOR_ADDRESS"], env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("127.0.0.1:1234", "2", "1")
    assert env["JAX_PLATFORMS"] == "cpu"


def test_two_processes_train_and_llc_bit_identical_to_one(tmp_path):
    one, two = tmp_path / "one.nc", tmp_path / "two.nc"
    _run([*CLI, *TRAIN, "--out", str(one)])
    launched = _run([*LAUNCH, "--processes", "2", "--", *TRAIN, "--out", str(two)])
    assert "process 1 of 2" in launched.stderr and "trained 9 instances" in launched.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.nc", "two.nc"]  # written once, no leftovers
    assert_same_bits(_open(one), _open(two))
    # one process with 2 devices (--all-devices) too
    devices = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    _run([*CLI, *TRAIN, "--all-devices", "--out", str(tmp_path / "devices.nc")], env=devices)
    assert_same_bits(_open(one), _open(tmp_path / "devices.nc"))

    # a batched LLC of every instance of that grid, split over the 2 processes
    _run([*CLI, "llc", str(one), *LLC, "--out", str(tmp_path / "llc1.nc")])
    _run([*LAUNCH, "--processes", "2", "--", "llc", str(one), *LLC, "--out", str(tmp_path / "llc2.nc")])
    assert_same_bits(_open(tmp_path / "llc1.nc"), _open(tmp_path / "llc2.nc"))


SWEEP = textwrap.dedent(
    """
    # a resumable sweep over feature probabilities, each chunk a trained grid; argv: run_dir, pause
    import sys, time
    from slt_superposition.sharding import maybe_initialize_distributed
    maybe_initialize_distributed()  # from the environment `launch` sets; a no-op alone
    from slt_superposition.io import save_dataset
    from slt_superposition.sweep import run_sweep
    from toy_models.train import TrainConfig, train_grid

    base = dict(n_features=5, n_hidden=2, seeds=3, steps=60, batch_size=32, chunk_steps=30,
                loss_curve_points=3, eval_samples=256)
    chunks = [{"p": [p]} for p in (0.05, 0.1, 0.2, 0.4)]

    def compute(chunk):
        ds = train_grid(TrainConfig(feature_probabilities=chunk["p"], **base), progress=False)
        time.sleep(float(sys.argv[2]))
        return ds

    ds = run_sweep("two-processes", base, chunks, compute, sys.argv[1], progress=False)
    save_dataset(ds, sys.argv[1] + ".nc")
    """
)


@pytest.fixture(scope="module")
def sweep_script(tmp_path_factory):
    """The sweep script, and its dataset from one uninterrupted process."""
    folder = tmp_path_factory.mktemp("sweep")
    script = folder / "sweep.py"
    script.write_text(SWEEP)
    _run([sys.executable, str(script), str(folder / "one"), "0"])
    return script, _open(folder / "one.nc")


@pytest.mark.parametrize("victim", [0, 1], ids=["writer-killed", "other-killed"])
def test_two_process_sweep_survives_sigkill_and_matches_one_process(tmp_path, victim, sweep_script):
    script, one = sweep_script
    run_dir = tmp_path / "two"
    launcher = subprocess.Popen([*LAUNCH, "--processes", "2", "--", str(script), str(run_dir), "1.0"],
                                stderr=subprocess.PIPE, text=True)
    pids = {}
    while len(pids) < 2:
        line = launcher.stderr.readline()
        assert line, "launcher ended before starting its processes"
        if line.startswith("launch: process"):
            pids[int(line.split()[2])] = int(line.rsplit("pid", 1)[1])
    deadline = time.time() + 240
    while not chunk_path(run_dir, 0).exists():
        assert launcher.poll() is None and time.time() < deadline, "sweep ended or stalled before the kill"
        time.sleep(0.05)
    os.kill(pids[victim], signal.SIGKILL)  # process 0 writes the chunks; process 1 only computes
    rest = launcher.communicate(timeout=120)[1]
    assert launcher.returncode != 0 and "stopped the others" in rest, rest[-2000:]
    done = sorted(p.name for p in run_dir.glob("chunk-*.nc"))
    assert 1 <= len(done) < 4, done

    # rerun: resumes from the finished chunks (process 0 decides), then equals one process
    _run([*LAUNCH, "--processes", "2", "--", str(script), str(run_dir), "0"])
    two = _open(str(run_dir) + ".nc")
    assert two.sizes["feature_probability"] == 4
    assert_same_bits(one, two)
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*lock"))


def test_a_failing_process_stops_the_run_with_its_status(tmp_path):
    proc = subprocess.run([*LAUNCH, "--processes", "2", "--", "train", "-n", "3", "-m", "2", "-p", "2.0",
                           "--out", str(tmp_path / "x.nc")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: feature probability must be in (0, 1]" in proc.stderr


def test_launch_as_a_cli_subcommand(capsys):
    """`register` adds `launch` to an app as the CLI does; options after `--` go to the command."""
    import typer

    from slt_superposition.commands import launch

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.callback()(lambda: None)
    launch.register(app)
    with pytest.raises(InputError, match="--processes must be at least 1"):
        app(args=["launch", "--processes", "0", "--", "train", "-n", "5", "--out", "x.nc"], standalone_mode=False)
    with pytest.raises(InputError, match="launch runs train, llc, reproduce"):
        app(args=["launch", "--", "plot", "--out", "figures"], standalone_mode=False)


def test_a_lost_peer_is_one_line_and_other_errors_still_raise(monkeypatch, capsys):
    """A collective that fails because another process died (what process 0 of `launch` met when its
    peer was killed: a ninety-line JaxRuntimeError traceback) is one line and exit status 1, only in a
    multi-process run; any other error still raises."""
    import jax

    from slt_superposition import cli

    lost = jax.errors.JaxRuntimeError("UNKNOWN: Gloo AllGather failed: [../gloo/transport/tcp/pair.cc:534] "
                                      "Connection closed by peer [127.0.0.1]:1234\nmore lines")

    def fail(args=None):
        raise lost

    monkeypatch.setattr(cli, "app", fail)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: another process of this 2-process run is gone (UNKNOWN: Gloo AllGather failed")
    assert err.count("\n") == 1
    monkeypatch.setattr(jax, "process_count", lambda: 1)  # one process: not a lost peer, the error stands
    with pytest.raises(jax.errors.JaxRuntimeError):
        cli.main([])
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    other = ValueError("Connection closed by peer")  # not a JAX runtime error
    monkeypatch.setattr(cli, "app", lambda args=None: (_ for _ in ()).throw(other))
    with pytest.raises(ValueError):
        cli.main([])
