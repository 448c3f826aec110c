"""What a new user meets first: --version, --help at 80 columns, and what Ctrl-C says."""

from __future__ import annotations

import re

import numpy as np
import pytest
import xarray as xr

from slt_superposition.cli import main


def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"slt-superposition {version('slt-superposition')} (git ")
    assert "jax " in out


@pytest.mark.parametrize("command", ["train", "llc", "plot", "reproduce"])
def test_help_fits_80_columns_without_cutting_option_names(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out  # rich's ellipsis: an option name or help text cut short
    assert max(len(line) for line in out.splitlines()) <= 80
    if command == "train":
        assert "--feature-probability" in out and "--importance-decay" in out


def test_interrupt_without_sweep_says_nothing_saved(capsys, monkeypatch, tmp_path):
    import slt_superposition.io as io  # `plot` imports open_result from it when it runs

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "open_result", interrupted)
    assert main(["plot", str(tmp_path / "x.nc"), "--out", str(tmp_path / "fig")]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted: nothing was saved") and "starts over" in err


def test_interrupted_launch_leaves_the_line_to_its_process_0(capsys, monkeypatch):
    """Interrupted, `launch` exits 130 without a line of its own: its process 0 shares the terminal and
    prints the interrupted line itself (the line came twice before)."""
    from slt_superposition.commands import launch

    monkeypatch.setattr(launch, "run_processes", lambda *args, **kwargs: 130)  # what it returns on Ctrl-C
    assert main(["launch", "--processes", "2", "--", "train", "-n", "5", "-m", "2"]) == 130
    assert capsys.readouterr().err == ""


def test_interrupt_mid_sweep_counts_the_saved_chunks(tmp_path):
    from slt_superposition.interrupted import interrupted_message
    from slt_superposition.sweep import run_sweep

    def compute(chunk):
        if chunk["i"] == 2:
            raise KeyboardInterrupt
        return xr.Dataset({"x": (("i",), np.array([float(chunk["i"])]))}, coords={"i": [chunk["i"]]})

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_sweep("demo", {"a": 1}, [{"i": i} for i in range(4)], compute, out / "sweep", progress=False)
    line = interrupted_message(["reproduce", "demo", "--out", str(out)])
    assert re.fullmatch(rf"interrupted: saved 2 of 4 chunks in {re.escape(str(out / 'sweep'))}; "
                        r"rerun the same command to resume from them", line)
    assert interrupted_message(["reproduce", "demo", f"--out={out}"]) == line


def test_plot_writes_next_to_the_dataset_by_default(tmp_path, tiny_grid, capsys, monkeypatch):
    from slt_superposition.io import save_dataset

    path = save_dataset(tiny_grid, tmp_path / "run" / "tms.nc")
    monkeypatch.chdir(tmp_path)  # the working directory (a checkout) stays clean
    assert main(["plot", str(path)]) == 0
    first = tmp_path / "run" / "figures" / "tms"
    assert sorted(p.name for p in first.iterdir()) == ["W_columns.png", "loss_curves.png"]
    assert not (tmp_path / "figures").exists()
    # a second dataset of the same kind in the same folder draws beside the first, replacing nothing
    drawn = {p.name: p.read_bytes() for p in first.iterdir()}
    other = save_dataset(tiny_grid.isel(seed=[0]), tmp_path / "run" / "tms_seed0.nc")
    assert main(["plot", str(other)]) == 0
    assert {p.name: p.read_bytes() for p in first.iterdir()} == drawn
    assert sorted(p.name for p in (tmp_path / "run" / "figures" / "tms_seed0").iterdir()) == sorted(drawn)


def test_llc_calibrate_max_steps_caps_the_chain_length(tmp_path, tiny_grid, capsys):
    """--max-steps and --min-relaxation reach the calibration (bad values: one-line errors); the
    result stores whether each instance's chain-length rule settled, and `trusted` implies it."""
    import json

    import numpy as np

    from slt_superposition.io import open_result, save_dataset

    path = save_dataset(tiny_grid, tmp_path / "tms.nc")
    out = tmp_path / "llc.nc"
    assert main(["llc", str(path), "--calibrate", "--max-steps", "400", "--min-relaxation", "0", "--localization",
                 "1", "--chains", "2", "--n-samples", "256", "--batch-size", "64", "--target-acceptance", "0.8",
                 "--steps", "100", "--trace-every", "200",  # the calibration's to choose: not refused
                 "--out", str(out)]) == 0
    calibration = open_result(tmp_path / "llc.calibration.nc", kind="calibration")
    assert json.loads(calibration.attrs["config"])["max_steps"] == 400
    assert json.loads(calibration.attrs["config"])["target_acceptance"] == 0.8
    assert json.loads(calibration.attrs["config"])["min_relaxation"] == 0
    assert int(calibration["num_steps"].max()) <= 400
    result = open_result(out)
    converged = calibration["converged"].transpose(*result["trusted"].dims).values
    np.testing.assert_array_equal(result["calibration_converged"].values, converged)
    assert not (result["trusted"].values & ~converged).any()
    capsys.readouterr()
    assert main(["llc", str(path), "--calibrate", "--min-relaxation", "-1", "--out", str(tmp_path / "x.nc")]) == 2
    assert capsys.readouterr().err.strip() == "error: --min-relaxation must be >= 0 and finite, got -1.0"
    assert main(["llc", str(path), "--calibrate", "--target-acceptance", "0", "--out", str(tmp_path / "x.nc")]) == 2
    assert capsys.readouterr().err.strip() == "error: --target-acceptance must be in (0, 1], got 0.0"
    assert main(["llc", str(path), "--target-acceptance", "0.5", "--out", str(tmp_path / "x.nc")]) == 2
    assert capsys.readouterr().err.strip() == "error: --target-acceptance is a calibration setting: give --calibrate too"
    assert main(["llc", str(path), "--calibrate", "--max-steps", "1", "--out", str(tmp_path / "x.nc")]) == 2
    assert capsys.readouterr().err.strip() == "error: --max-steps must be at least 2 (a chain needs burn-in and " \
                                              "samples), got 1"
