"""Resumable sweeps: SIGKILL mid-sweep, rerun, and get what an uninterrupted run gets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from slt_superposition.errors import InputError
from slt_superposition.sweep import check_sweep_folder, chunk_path, run_sweep

N_CHUNKS = 6

# A cheap, deterministic stand-in for a chunk of training: numbers from the chunk's own
# seed, a pause so that a kill lands mid-sweep.
STANDIN = textwrap.dedent(
    """
    import sys, time
    import numpy as np, xarray as xr
    from slt_superposition.sweep import run_sweep

    def compute(chunk):
        time.sleep(float(sys.argv[2]))
        p = np.array(chunk["feature_probability"])
        rng = np.random.default_rng(chunk["seed"])
        W = rng.normal(size=(p.size, 2, 5)).astype(np.float32) * p[:, None, None]
        ds = xr.Dataset(
            {"W": (("feature_probability", "hidden", "feature"), W, {"long_name": "weights"})},
            coords={"feature_probability": p},
            attrs={"slt_superposition_kind": "train"},
        )
        return ds

    chunks = [{"feature_probability": [0.1 * (2 * i + 1), 0.1 * (2 * i + 2)], "seed": i} for i in range(%d)]
    ds = run_sweep("standin", {"n_features": 5}, chunks, compute, sys.argv[1], progress=False)
    ds.to_netcdf(sys.argv[1] + ".final.nc", engine="h5netcdf")
    """
    % N_CHUNKS
)


def _standin(tmp_path: Path) -> Path:
    script = tmp_path / "standin.py"
    script.write_text(STANDIN)
    return script


def _run(script: Path, run_dir: Path, pause: float) -> xr.Dataset:
    subprocess.run([sys.executable, str(script), str(run_dir), str(pause)], check=True, timeout=120)
    with xr.open_dataset(str(run_dir) + ".final.nc", engine="h5netcdf") as ds:
        return ds.load()


def test_sigkill_mid_sweep_then_resume_equals_uninterrupted(tmp_path):
    script = _standin(tmp_path)
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed_dir), "0.4"])
    deadline = time.time() + 60
    while not chunk_path(killed_dir, 1).exists():
        assert proc.poll() is None and time.time() < deadline, "sweep ended or stalled before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = sorted(p.name for p in killed_dir.glob("chunk-*.nc"))
    assert 2 <= len(finished) < N_CHUNKS, finished

    resumed = _run(script, killed_dir, 0.0)
    uninterrupted = _run(script, tmp_path / "clean", 0.0)
    xr.testing.assert_identical(resumed, uninterrupted)
    assert resumed.sizes["feature_probability"] == 2 * N_CHUNKS
    assert resumed.attrs["sweep_chunks"] == N_CHUNKS


def _toy_compute(chunk):
    p = np.array(chunk["p"], dtype=np.float64)
    return xr.Dataset({"y": ("p", p**2)}, coords={"p": p})


CHUNKS = [{"p": [1.0, 2.0]}, {"p": [3.0]}]


def test_rerun_skips_finished_chunks_and_leftover_tmp_is_removed(tmp_path, capsys):
    calls = []

    def compute(chunk):
        calls.append(chunk)
        return _toy_compute(chunk)

    first = run_sweep("toy", {"a": 1}, CHUNKS, compute, tmp_path, progress=False)
    assert len(calls) == 2
    np.testing.assert_array_equal(first.y.values, [1.0, 4.0, 9.0])
    # a killed atomic write leaves our temp file behind; the chunk itself is recomputed
    chunk_path(tmp_path, 1).unlink()
    (tmp_path / "chunk-0001.nc.abc123.tmp").write_bytes(b"\x89HDF half")
    second = run_sweep("toy", {"a": 1}, CHUNKS, compute, tmp_path, progress=False)
    assert calls[2:] == [CHUNKS[1]]
    assert "half-written" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.tmp"))
    xr.testing.assert_identical(first, second)


def test_only_computes_those_chunks_and_a_full_run_completes_the_rest(tmp_path):
    calls = []

    def compute(chunk):
        calls.append(chunk)
        return _toy_compute(chunk)

    part = run_sweep("toy", {"a": 1}, CHUNKS, compute, tmp_path / "a", progress=False, only=[1])
    assert calls == [CHUNKS[1]] and part.attrs["sweep_chunks"] == 1
    np.testing.assert_array_equal(part.y.values, [9.0])
    whole = run_sweep("toy", {"a": 1}, CHUNKS, compute, tmp_path / "a", progress=False)
    assert calls[1:] == [CHUNKS[0]]  # chunk 1 is not computed again
    clean = run_sweep("toy", {"a": 1}, CHUNKS, _toy_compute, tmp_path / "clean", progress=False)
    xr.testing.assert_identical(whole, clean)
    with pytest.raises(InputError, match="has no chunk"):
        run_sweep("toy", {"a": 1}, CHUNKS, compute, tmp_path / "b", progress=False, only=[5])
    assert not (tmp_path / "b").exists()  # refused before the folder is made


def test_truncated_chunk_is_reported_not_used(tmp_path):
    run_sweep("toy", {"a": 1}, CHUNKS, _toy_compute, tmp_path, progress=False)
    path = chunk_path(tmp_path, 0)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="chunk-0000.nc is unreadable"):
        run_sweep("toy", {"a": 1}, CHUNKS, _toy_compute, tmp_path, progress=False)
    assert len(path.read_bytes()) == 200  # not overwritten


def test_other_config_in_same_folder_is_foreign(tmp_path):
    run_sweep("toy", {"a": 1}, CHUNKS, _toy_compute, tmp_path, progress=False)
    with pytest.raises(InputError, match="another configuration"):
        run_sweep("toy", {"a": 2}, CHUNKS, _toy_compute, tmp_path, progress=False)


def test_chunk_from_another_sweep_is_foreign(tmp_path):
    run_sweep("toy", {"a": 1}, CHUNKS, _toy_compute, tmp_path / "one", progress=False)
    run_sweep("toy", {"a": 2}, CHUNKS, _toy_compute, tmp_path / "two", progress=False)
    chunk_path(tmp_path / "one", 0).unlink()
    os.replace(chunk_path(tmp_path / "two", 0), chunk_path(tmp_path / "one", 0))
    with pytest.raises(InputError, match="belongs to another sweep"):
        run_sweep("toy", {"a": 1}, CHUNKS, _toy_compute, tmp_path / "one", progress=False)


def test_folder_with_unknown_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="no sweep manifest"):
        run_sweep("toy", {"a": 1}, CHUNKS, _toy_compute, tmp_path, progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


FOUR = [{"p": [1.0]}, {"p": [2.0]}, {"p": [3.0]}, {"p": [4.0]}]


def test_workers_run_chunks_side_by_side_costliest_first_same_result(tmp_path):
    started = []
    pair = threading.Barrier(2, timeout=30)  # passes only when two chunks run at the same time

    def compute(chunk):
        started.append(chunk["p"][0])
        pair.wait()
        return _toy_compute(chunk)

    side_by_side = run_sweep("toy", {"a": 1}, FOUR, compute, tmp_path / "a", progress=False, workers=2,
                             cost=lambda c: {2.0: 5.0, 4.0: 9.0}.get(c["p"][0], 1.0))
    assert set(started[:2]) == {2.0, 4.0} and set(started[2:]) == {1.0, 3.0}
    one_at_a_time = run_sweep("toy", {"a": 1}, FOUR, _toy_compute, tmp_path / "b", progress=False)
    xr.testing.assert_identical(side_by_side, one_at_a_time)
    with pytest.raises(InputError, match="workers"):
        run_sweep("toy", {"a": 1}, FOUR, _toy_compute, tmp_path / "c", progress=False, workers=0)


def test_workers_a_failing_chunk_raises_and_the_running_one_is_kept(tmp_path):
    failed = threading.Event()

    def compute(chunk):
        if chunk["p"][0] == 1.0:
            failed.set()
            raise RuntimeError("chunk 0 broke")
        if chunk["p"][0] == 2.0:
            assert failed.wait(30)  # still running when chunk 0 fails
        return _toy_compute(chunk)

    with pytest.raises(RuntimeError, match="chunk 0 broke"):
        run_sweep("toy", {"a": 1}, FOUR, compute, tmp_path / "a", progress=False, workers=2)
    assert chunk_path(tmp_path / "a", 1).exists() and not chunk_path(tmp_path / "a", 0).exists()
    resumed = run_sweep("toy", {"a": 1}, FOUR, _toy_compute, tmp_path / "a", progress=False, workers=2)
    clean = run_sweep("toy", {"a": 1}, FOUR, _toy_compute, tmp_path / "b", progress=False)
    xr.testing.assert_identical(resumed, clean)


def test_check_sweep_folder_raises_what_run_sweep_would_and_changes_nothing(tmp_path):
    check_sweep_folder("toy", {"a": 1}, CHUNKS, tmp_path / "new")  # no folder yet: nothing to say
    assert not (tmp_path / "new").exists()
    run_sweep("toy", {"a": 1}, CHUNKS, _toy_compute, tmp_path / "run", progress=False)
    check_sweep_folder("toy", {"a": 1}, CHUNKS, tmp_path / "run")  # ours: fine
    (tmp_path / "run" / "chunk-0001.nc.abc.tmp").write_bytes(b"half")
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(InputError, match="another configuration"):
        check_sweep_folder("toy", {"a": 2}, CHUNKS, tmp_path / "run")
    check_sweep_folder("toy", {"a": 1}, CHUNKS, tmp_path / "run")  # a killed write's temp file: left for run_sweep
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    (tmp_path / "file").write_text("mine")
    for check in (lambda: check_sweep_folder("toy", {"a": 1}, CHUNKS, tmp_path / "file"),
                  lambda: run_sweep("toy", {"a": 1}, CHUNKS, _toy_compute, tmp_path / "file", progress=False)):
        with pytest.raises(InputError, match="sweep folder .*file is a file"):
            check()
    assert (tmp_path / "file").read_text() == "mine"
