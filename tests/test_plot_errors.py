"""`slt-superposition plot` on a folder it cannot write, and on weights it cannot draw:
one line naming the problem, nothing lost, and no empty panels passed off as a figure."""

from __future__ import annotations

import os

import numpy as np
import pytest

from slt_superposition.cli import main
from slt_superposition.io import open_result, save_dataset


def _one_error_line(capsys, argv, fragment):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err[-800:]
    assert err.startswith("error: ") and "\n" not in err and fragment in err, err[-800:]
    return err


def _with_weights(grid, path, W):
    return save_dataset(grid.assign(W=(grid["W"].dims, W.astype(grid["W"].dtype))), path)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 555 folder; see the /proc case")
def test_read_only_folder_is_one_line_and_keeps_old_figures(tmp_path, capsys, tiny_grid):
    data = save_dataset(tiny_grid, tmp_path / "grid.nc")
    figures = tmp_path / "figures"
    assert main(["plot", str(data), "--out", str(figures)]) == 0
    before = _snapshot(figures)
    figures.chmod(0o555)
    try:
        _one_error_line(capsys, ["plot", str(data), "--out", str(figures)], f"cannot write figures into {figures}")
    finally:
        figures.chmod(0o755)
    assert _snapshot(figures) == before


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux's /proc, a folder nobody can write into")
def test_unwritable_existing_folder_is_one_line(tmp_path, capsys, tiny_grid):
    # /proc exists and is a folder, and nobody (root included) can create a file in it
    data = save_dataset(tiny_grid, tmp_path / "grid.nc")
    before = data.read_bytes()
    _one_error_line(capsys, ["plot", str(data), "--out", "/proc"], "cannot write figures into /proc")
    assert data.read_bytes() == before


def test_failed_write_midway_loses_nothing(tmp_path, capsys, tiny_grid, monkeypatch):
    """The second figure's rename fails (as on a full disk): one line, the first old figure
    replaced whole, the second old figure untouched, no temporary file left behind."""
    import slt_superposition.io as io

    data = save_dataset(tiny_grid, tmp_path / "grid.nc")
    figures = tmp_path / "figures"
    assert main(["plot", str(data), "--out", str(figures)]) == 0
    capsys.readouterr()
    for path in figures.iterdir():
        path.write_bytes(b"old " + path.name.encode())
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", failing_replace)
    _one_error_line(capsys, ["plot", str(data), "--out", str(figures)], "No space left on device")
    after = _snapshot(figures)
    assert sorted(after) == ["W_columns.png", "loss_curves.png"]  # no *.tmp left
    first, second = (os.path.basename(p) for p in calls)
    assert after[first].startswith(b"\x89PNG")
    assert after[second] == b"old " + second.encode()


def test_all_nan_weights_fail_and_write_nothing(tmp_path, capsys, tiny_grid):
    W = np.full(tiny_grid["W"].shape, np.nan)
    data = _with_weights(tiny_grid, tmp_path / "nan.nc", W)
    n = int(np.prod([tiny_grid.sizes[d] for d in ("feature_probability", "importance_decay", "seed")]))
    _one_error_line(capsys, ["plot", str(data), "--out", str(tmp_path / "fig")],
                    f"nothing to draw: the weights of all {n} instance(s) are not finite")
    assert not (tmp_path / "fig").exists()


def test_some_nan_weights_warn_and_mark_their_panels(tmp_path, capsys, tiny_grid):
    from analysis.plots import columns_figure

    W = tiny_grid["W"].values.copy()
    W[0, 0, 0, 1, 2] = np.inf
    data = _with_weights(tiny_grid, tmp_path / "one.nc", W)
    assert main(["plot", str(data), "--out", str(tmp_path / "fig")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    n = int(np.prod([tiny_grid.sizes[d] for d in ("feature_probability", "importance_decay", "seed")]))
    assert len(warnings) == 1 and f"the weights of 1 of {n} instances are not finite" in warnings[0], err

    fig = columns_figure(open_result(data))
    marked = [ax for ax in fig.axes if any("W not finite" in t.get_text() for t in ax.texts)]
    assert len(marked) == 1 and marked[0] is fig.axes[0]


def test_an_experiments_dataset_points_at_its_own_figures(tmp_path, capsys):
    # `plot` draws the package's datasets; an experiment's dataset (here a stub of one) gets its figures
    # from `reproduce`: the one line says so and names the figures beside it
    import xarray as xr

    from slt_superposition.provenance import provenance_attrs

    path = save_dataset(xr.Dataset({"x": ("case", [1.0])}, attrs=provenance_attrs("llc_localization", {})),
                        tmp_path / "llc_localization.nc")
    err = _one_error_line(capsys, ["plot", str(path)], "no plots for 'llc_localization' datasets")
    assert "drawn by `slt-superposition reproduce`" in err and ".png" not in err
    (tmp_path / "llc_localization.png").write_bytes(b"png")
    err = _one_error_line(capsys, ["plot", str(path)], f": llc_localization.png in {tmp_path}")
    assert not (tmp_path / "figures").exists()  # nothing written
