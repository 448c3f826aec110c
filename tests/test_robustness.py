"""Bad files and bad weights give clear errors naming the problem, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from slt_superposition.cli import main
from slt_superposition.io import open_result, save_dataset
from slt_superposition.provenance import SCHEMA_VERSION, provenance_attrs


def _train_like(path, *, schema=None, nan=False):
    W = np.random.default_rng(0).normal(size=(1, 1, 1, 2, 5)).astype(np.float32)
    if nan:
        W[0, 0, 0, 1, 3] = np.nan
    dims = ("feature_probability", "importance_decay", "seed")
    ds = xr.Dataset(
        {"W": (dims + ("hidden", "feature"), W), "b": (dims + ("feature",), np.zeros((1, 1, 1, 5), np.float32)),
         "loss": (dims, np.zeros((1, 1, 1), np.float32))},
        coords={"feature_probability": [0.05], "importance_decay": [1.0], "seed": [0]},
        attrs=provenance_attrs("train", {"n_features": 5, "n_hidden": 2, "feature_probabilities": [0.05], "seeds": [0]}),
    )
    ds.attrs.update(n_features=5, n_hidden=2, model="tms", data="sparse_uniform")
    if schema is not None:
        ds.attrs["schema_version"] = schema
    save_dataset(ds, path)
    return path


def test_truncated_netcdf_is_named(tmp_path, capsys):
    path = _train_like(tmp_path / "t.nc")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(Exception, match=r"not a readable netCDF-4 \(HDF5\) file"):
        open_result(path)
    assert main(["plot", str(path), "--out", str(tmp_path / "fig")]) == 2
    assert "not a readable netCDF-4 (HDF5) file" in capsys.readouterr().err


def test_older_schema_version_is_named(tmp_path, capsys):
    path = _train_like(tmp_path / "old.nc", schema=SCHEMA_VERSION - 1)
    for argv in (["plot", str(path), "--out", str(tmp_path / "fig")], ["llc", str(path), "--out", str(tmp_path / "l.nc")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and f"schema version {SCHEMA_VERSION - 1}" in err


def test_not_our_dataset_is_named(tmp_path, capsys):
    path = tmp_path / "foreign.nc"
    xr.Dataset({"x": ("a", [1.0])}).to_netcdf(path, engine="h5netcdf")
    assert main(["plot", str(path), "--out", str(tmp_path / "fig")]) == 2
    assert "not a slt-superposition result dataset" in capsys.readouterr().err
    sweep = tmp_path / "sweep"  # a resumable sweep's chunk is named as one
    sweep.mkdir()
    (sweep / "manifest.json").write_text("{}")
    xr.Dataset({"x": ("a", [1.0])}).to_netcdf(sweep / "chunk-0000.nc", engine="h5netcdf")
    assert main(["plot", str(sweep / "chunk-0000.nc"), "--out", str(tmp_path / "fig")]) == 2
    err = capsys.readouterr().err
    assert "not a slt-superposition result dataset" in err and "one finished chunk of a resumable sweep" in err
    assert err.count("\n") == 1


def test_nan_weights_are_named_by_llc(tmp_path, capsys):
    path = _train_like(tmp_path / "nan.nc", nan=True)
    code = main(["llc", str(path), "--out", str(tmp_path / "l.nc"), "--step-size", "1e-4"])
    err = capsys.readouterr().err
    assert code == 2, err[-500:]
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and ("NaN" in error_lines[0] or "finite" in error_lines[0]), err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------
# Nothing lost, nothing silent: each case below once lost data, printed a traceback or
# reported garbage as a result.

import os
import subprocess
import sys

from slt_superposition.errors import InputError as _InputError


def _one_error_line(capsys, argv, fragment):
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err[-800:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], err[-800:]
    assert "Traceback" not in err
    return captured


LLC_TINY = ["--chains", "2", "--steps", "40", "--burnin", "10", "--n-samples", "64", "--batch-size", "16"]


def test_output_never_replaces_input(tmp_path, capsys):
    path = _train_like(tmp_path / "x.calibration.nc")
    before = path.read_bytes()
    os.symlink(path.name, tmp_path / "alias.nc")
    for out in (path, tmp_path / "alias.nc", tmp_path / "." / path.name):
        _one_error_line(capsys, ["llc", str(path), *LLC_TINY, "--out", str(out)], "would replace the input")
    # the calibration sweep goes next to --out as <out>.calibration.nc: here that is the input
    _one_error_line(capsys, ["llc", str(path), *LLC_TINY, "--calibrate", "--out", str(tmp_path / "x.nc")],
                    "would replace the input")
    assert path.read_bytes() == before
    with pytest.raises(_InputError, match="would replace the input"):
        save_dataset(open_result(path), tmp_path / "alias.nc", inputs=[path])


@pytest.mark.parametrize("extra, fragment", [
    (["--chains", "1"], "--chains must be at least 2"),
    (["--trace-every", "500"], "--trace-every 500 is longer than the 30 steps after burn-in"),
    (["--seed", "-1"], "--seed must be a whole number in [0, 4294967295]"),
    (["--batch-size", "65"], "--batch-size 65 is larger than the number of samples n=64"),
    (["--n-samples", "100000000000"], "needs about"),
    (["--steps", "1000000000000"], "needs about"),
    (["--burnin", "40"], "--burnin must be in [0, --steps) and --steps at least 2, got --burnin 40 --steps 40"),
])
def test_llc_bad_settings_are_one_line(tmp_path, capsys, extra, fragment):
    path = _train_like(tmp_path / "t.nc")
    _one_error_line(capsys, ["llc", str(path), *LLC_TINY, *extra, "--out", str(tmp_path / "l.nc")], fragment)
    assert not (tmp_path / "l.nc").exists()


def test_one_rule_for_seeds_and_batch_sizes(tmp_path, capsys):
    from slt_superposition.errors import check_batch_size, check_seed

    # train and llc refuse the same seeds with the same words
    for argv in (["train", "-n", "3", "-m", "2", "-p", "0.1", "--seed", "-1"],
                 ["llc", str(_train_like(tmp_path / "t.nc")), *LLC_TINY, "--seed", "-1"]):
        _one_error_line(capsys, [*argv, "--out", str(tmp_path / "o.nc")], "must be a whole number in [0, 4294967295]")
    for bad in (-1, 2**32, 1.5, True):
        with pytest.raises(_InputError, match="whole number"):
            check_seed(bad)
    assert check_seed(np.uint32(7)) == 7
    with pytest.raises(_InputError, match="larger than the number of samples"):
        check_batch_size(11, 10)  # never clipped to n
    assert check_batch_size(10, 10) == 10
    # sae draws its batches from --samples activations: the same rule
    _one_error_line(capsys, ["sae", str(_train_like(tmp_path / "t.nc")), "--samples", "100", "--batch-size", "256",
                             "--out", str(tmp_path / "s.nc")], "--batch-size 256 is larger than the number of samples n=100")
    # the other small rules of train and launch
    _one_error_line(capsys, ["train", "-n", "3", "-m", "2", "-p", "0.1", "--seeds", "2", "--seed", "3", "--out",
                             str(tmp_path / "o.nc")], "--seeds 2 and --seed give the seeds twice")
    # --seeds 1 given alongside --seed is a conflict too (the default is not an explicit 1)
    _one_error_line(capsys, ["train", "-n", "3", "-m", "2", "-p", "0.1", "--seeds", "1", "--seed", "3", "--out",
                             str(tmp_path / "o.nc")], "--seeds 1 and --seed give the seeds twice")
    _one_error_line(capsys, ["train", "-n", "3", "-m", "2", "-p", "0.1", "-r", "inf", "--out", str(tmp_path / "o.nc")],
                    "importance decay must be positive and finite, got inf")
    _one_error_line(capsys, ["launch", "--port", "-1", "--", "train", "-n", "3"], "--port must be a TCP port in 0..65535")


def test_train_dataset_without_W_is_named(tmp_path, capsys):
    path = _train_like(tmp_path / "t.nc")
    ds = open_result(path)
    save_dataset(ds.drop_vars("W"), tmp_path / "noW.nc")
    _one_error_line(capsys, ["llc", str(tmp_path / "noW.nc"), "--out", str(tmp_path / "l.nc")], "without its variable 'W'")
    _one_error_line(capsys, ["plot", str(tmp_path / "noW.nc"), "--out", str(tmp_path / "fig")], "without its variable 'W'")
    assert not (tmp_path / "fig").exists()  # nothing created for a file it cannot plot


@pytest.mark.parametrize("extra, fragment", [
    (["--steps", "1000000000000"], "steps must be below 2147483648"),
    (["--batch-size", "100000000000"], "needs about"),
    (["--seeds", "1000000000"], "(at most 16777216)"),
    (["-n", "100000", "-m", "100000"], "needs about"),
])
def test_absurd_training_sizes_are_one_line(tmp_path, capsys, extra, fragment):
    argv = ["train", "-n", "5", "-m", "2", "-p", "0.05", "--no-progress", *extra, "--out", str(tmp_path / "x.nc")]
    _one_error_line(capsys, argv, fragment)
    assert not (tmp_path / "x.nc").exists()


def test_memory_estimate_against_available():
    from slt_superposition.memory import require_memory, train_bytes

    # the estimate scales with what a run holds: instances x parameters, one block's batch
    small = train_bytes(4, 5, 2, batch_size=1024, eval_samples=16384, n_snapshots=0, loss_curve_points=100)
    assert small < 2**22  # 4 pentagon models fit in a few MiB
    assert train_bytes(400, 5, 2, batch_size=1024, eval_samples=16384, n_snapshots=0, loss_curve_points=100) > small
    require_memory(small, "x", "y", available=2**23)
    with pytest.raises(_InputError, match="needs about .* more than the .* available"):
        require_memory(small, "x", "y", available=2**10)


def test_train_with_diverging_weights_fails_loudly(tmp_path, capsys):
    out = tmp_path / "nan.nc"
    argv = ["train", "-n", "5", "-m", "2", "-p", "0.05", "--seeds", "2", "--steps", "50", "--batch-size", "32",
            "--loss-curve-points", "5", "--lr", "1e30", "--no-progress", "--out", str(out)]
    captured = _one_error_line(capsys, argv, "training diverged: 2 of 2 instances have non-finite weights")
    assert "(feature_probability=0.05, importance_decay=1, seed=0; feature_probability=0.05, importance_decay=1, " \
           "seed=1)" in captured.err  # each diverged instance named by its grid coordinates
    assert "final loss min" not in captured.out  # no finite-looking loss for NaN weights
    assert "no instance has finite weights" in captured.out
    assert out.exists()  # kept for inspection, and llc refuses it by name
    _one_error_line(capsys, ["llc", str(out), *LLC_TINY, "--out", str(tmp_path / "l.nc")], "non-finite")


def test_train_whose_loss_overflows_with_finite_weights_fails_loudly(tmp_path, capsys):
    # lr 1e9: W grows to ~1e9, still finite, but the loss overflows float32; that is a diverged run too
    out = tmp_path / "big.nc"
    argv = ["train", "-n", "5", "-m", "2", "-p", "0.1", "--steps", "10", "--lr", "1e9", "--no-progress",
            "--out", str(out)]
    _one_error_line(capsys, argv, "training diverged: 1 of 1 instances have non-finite weights or final loss")
    ds = xr.open_dataset(out)
    assert np.isfinite(ds["W"]).all() and not np.isfinite(ds["loss"]).any()  # the case the weights alone miss
    # llc and sae refuse it by name (the chains would diverge and blame the step size)
    _one_error_line(capsys, ["llc", str(out), *LLC_TINY, "--out", str(tmp_path / "l.nc")],
                    f"{out}: training diverged: 1 of 1 instances have non-finite weights or final loss")
    _one_error_line(capsys, ["sae", str(out), "--steps", "5", "--out", str(tmp_path / "s.nc")],
                    "lower the learning rate and train again")
    assert not (tmp_path / "l.nc").exists() and not (tmp_path / "s.nc").exists()


def test_llc_summary_counts_diverged_instances():
    from slt_superposition.commands.llc import summary

    result = xr.Dataset({"llc_mean": ("instance", [0.5, np.nan, 1.5, 1.0]),
                         "n_diverged": ("instance", [0, 4, 1, 0])}, coords={"chain": np.arange(4)})
    line = summary(result)
    assert "over 3 of 4 instances: min 0.500, median 1.000, max 1.500" in line
    assert "1 instance(s) without an estimate" in line and "diverged chains: 5 of 16" in line
    assert "nan" not in line
    assert "no estimate for any of the 2 instances (all chains diverged);" in summary(result.isel(instance=[1, 1]))
    assert "minibatch bias" not in line  # full-batch results (or older datasets) store no prediction
    result["batch_bias_predicted"] = ("instance", [0.004, np.nan, 0.012, 0.006])
    assert "minibatch bias predicted (batch_bias_predicted) median +0.6%, largest +1.2%" in summary(result)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_results_are_readable_under_the_umask(tmp_path, umask, mode):
    from slt_superposition.sweep import MANIFEST, chunk_path, run_sweep

    old = os.umask(umask)
    try:
        path = _train_like(tmp_path / "t.nc")
        compute = lambda chunk: xr.Dataset({"y": ("p", np.array(chunk["p"]) ** 2)}, coords={"p": chunk["p"]})
        run_sweep("toy", {}, [{"p": [1.0]}], compute, tmp_path / "sweep", progress=False)
    finally:
        os.umask(old)
    for written in (path, tmp_path / "sweep" / MANIFEST, chunk_path(tmp_path / "sweep", 0)):
        assert os.stat(written).st_mode & 0o777 == mode, (written, oct(os.stat(written).st_mode))


HOLD_LOCK = """
import sys, time
from slt_superposition.io import output_lock
with output_lock(sys.argv[1], folder=sys.argv[2] == "folder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold_lock(path, folder=False):
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), "folder" if folder else "file"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_run_into_the_same_out_is_refused(tmp_path, capsys):
    from slt_superposition.sweep import run_sweep

    out = tmp_path / "grid.nc"
    holder = _hold_lock(out)
    try:
        argv = ["train", "-n", "3", "-m", "2", "-p", "0.1", "--steps", "20", "--batch-size", "8",
                "--loss-curve-points", "2", "--no-progress", "--out", str(out)]
        _one_error_line(capsys, argv, f"another run (pid {holder.pid}) is writing")
        path = _train_like(tmp_path / "t.nc")
        _one_error_line(capsys, ["llc", str(path), *LLC_TINY, "--out", str(out)], "another run")
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock, the stale lock file blocks nothing
        holder.wait()
    assert main(argv) == 0 and out.exists() and not (tmp_path / "grid.nc.lock").exists()
    capsys.readouterr()

    sweep_dir = tmp_path / "sweep"
    holder = _hold_lock(sweep_dir, folder=True)
    try:
        with pytest.raises(_InputError, match="another run"):
            run_sweep("toy", {}, [{"p": [1.0]}], lambda c: xr.Dataset({"y": ("p", c["p"])}, coords={"p": c["p"]}),
                      sweep_dir, progress=False)
        # reproduce locks its whole output folder
        _one_error_line(capsys, ["reproduce", "tms-pentagon", "--quick", "--out", str(sweep_dir)], "another run")
    finally:
        holder.kill()
        holder.wait()


def test_an_output_replaces_only_its_own_kind(tmp_path, capsys):
    # a rerun replaces its own earlier result; another kind of result, or a file this package did not
    # write, is refused before anything runs (a train grid replaced an llc estimate, exit 0)
    argv = ["train", "-n", "5", "-m", "2", "-p", "0.1", "--steps", "10", "--no-progress"]
    first = tmp_path / "t.nc"
    assert main([*argv, "--out", str(first)]) == 0
    assert main([*argv, "--out", str(first)]) == 0  # the same kind again: replaced
    other = tmp_path / "l.nc"
    save_dataset(xr.Dataset(attrs={"slt_superposition_kind": "llc"}), other)
    before = other.read_bytes()
    _one_error_line(capsys, [*argv, "--out", str(other)], f"{other} holds a 'llc' result; refusing to replace it")
    foreign = tmp_path / "notes.nc"
    foreign.write_text("my notes")
    _one_error_line(capsys, [*argv, "--out", str(foreign)], "holds a file that is not a slt-superposition result")
    assert other.read_bytes() == before and foreign.read_text() == "my notes"
    with pytest.raises(_InputError, match="save_dataset writes an xarray Dataset, got a dict"):
        save_dataset({"a": 1}, tmp_path / "d.nc")
    with pytest.raises(_InputError, match="cannot write .*d.nc: TypeError"):
        save_dataset(xr.Dataset(attrs={"slt_superposition_kind": "train", "x": {"a": 1}}), tmp_path / "d.nc")
    assert not list(tmp_path.glob("d.nc*"))  # nothing half-written left behind


def test_outputs_of_train_llc_and_sae_are_nc_names(tmp_path, capsys):
    """`--out results` is more often meant as a folder than as a dataset: train, llc and sae ask for a
    .nc name on one line, before anything runs, and write nothing."""
    trained = _train_like(tmp_path / "t.nc")
    _one_error_line(capsys, ["train", "-n", "3", "-m", "2", "-p", "0.1", "--out", str(tmp_path / "results")],
                    f"output {tmp_path / 'results'} is not a .nc file name")
    _one_error_line(capsys, ["llc", str(trained), "--out", str(tmp_path / "llc.h5")],
                    f"--out {tmp_path / 'llc.nc'}")
    _one_error_line(capsys, ["sae", str(trained), "--out", str(tmp_path / "sae")],
                    f"--out {tmp_path / 'sae' / 'result.nc'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.nc"]
