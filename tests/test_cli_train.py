"""`slt-superposition train` and `plot` on training grids: results, and bad input as one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from slt_superposition.cli import main
from slt_superposition.io import open_result

TINY = ["-n", "3", "-m", "2", "--steps", "20", "--batch-size", "32", "--loss-curve-points", "4", "--no-progress"]


def assert_one_line_error(capsys, argv, fragment):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and fragment in err, err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("extra, fragment", [
    (["-p", "1.5"], "feature probability"),
    (["-p", "0"], "feature probability"),
    (["-p", "abc"], "--feature-probability"),
    (["-p", "0.1", "--steps", "0"], "steps"),
    (["-p", "0.1", "-n", "0"], "n_features"),
    (["-p", "0.1", "-m", "-2"], "n_hidden"),
    (["-p", "0.1", "--batch-size", "0"], "batch_size"),
    (["-p", "0.1", "--seeds", "0"], "seeds"),
    (["-p", "0.1", "--model", "cnn"], "unknown model"),
])
def test_bad_input_one_line_exit_2(capsys, tmp_path, extra, fragment):
    argv = ["train", *TINY, *extra, "--out", str(tmp_path / "x.nc")]
    assert_one_line_error(capsys, argv, fragment)
    assert not (tmp_path / "x.nc").exists()


def test_unwritable_output_fails_before_training(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert_one_line_error(capsys, ["train", *TINY, "-p", "0.1", "--out", str(blocker / "x.nc")], "cannot")
    # root passes os.access checks on read-only file systems; the probe catches those too
    assert_one_line_error(capsys, ["train", *TINY, "-p", "0.1", "--out", "/proc/x.nc"], "cannot")
    assert_one_line_error(capsys, ["train", *TINY, "-p", "0.1", "--out", str(tmp_path)], "folder")


def test_train_sweep_comma_lists_and_plot(capsys, tmp_path):
    out = tmp_path / "grid.nc"
    assert main(["train", *TINY, "-p", "0.1,0.5", "-p", "1", "-r", "0.9", "--seeds", "2",
                 "--snapshot-steps", "0,10", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    ds = open_result(out, kind="train")
    assert list(ds["feature_probability"].values) == [0.1, 0.5, 1.0]
    assert list(ds["seed"].values) == [0, 1] and list(ds["snapshot"].values) == [0, 10]
    assert main(["plot", str(out), "--out", str(tmp_path / "fig")]) == 0
    printed = capsys.readouterr().out.split()
    assert any(p.endswith("W_columns.png") for p in printed)
    assert all((tmp_path / "fig" / p.split("/")[-1]).stat().st_size > 1000 for p in printed)


def test_plot_rejects_foreign_files(capsys, tmp_path):
    text = tmp_path / "notes.nc"
    text.write_text("not netcdf")
    assert_one_line_error(capsys, ["plot", str(text), "--out", str(tmp_path)], "not a readable netCDF")
    import xarray as xr

    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"a": ("x", [1.0])}).to_netcdf(foreign, engine="h5netcdf")
    assert_one_line_error(capsys, ["plot", str(foreign), "--out", str(tmp_path)], "not a slt-superposition result")


def test_plot_training_other_m(tmp_path, tiny_grid):
    from analysis.plots import plot_training
    from toy_models.train import TrainConfig, train_grid

    paths = plot_training(tiny_grid, tmp_path / "m2")
    assert [p.name for p in paths] == ["W_columns.png", "loss_curves.png"]
    ds = train_grid(TrainConfig(n_features=6, n_hidden=3, feature_probabilities=(0.1, 1.0), steps=20, batch_size=32,
                                loss_curve_points=4, eval_samples=64), progress=False)
    paths = plot_training(ds, tmp_path / "m3")
    assert [p.name for p in paths] == ["WtW.png", "feature_dimensionality.png", "loss_curves.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_entry_point_subprocess(tmp_path):
    # the real `python -m slt_superposition`: a bad value -> exit 2 and one line; no traceback
    proc = subprocess.run([sys.executable, "-m", "slt_superposition", "train", *TINY, "-p", "2",
                           "--out", str(tmp_path / "x.nc")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: feature probability must be in (0, 1], got 2.0"
