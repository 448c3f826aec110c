"""The flagship's estimates split by whether a chain left w*'s live set (analysis.excursion_table)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from analysis.excursion_table import excursion_rows, format_rows, main


def _grid() -> xr.Dataset:
    dims = ("model", "feature_probability", "seed")
    coords = {"model": ["a", "b"], "feature_probability": [1.0, 0.1], "seed": [0, 1]}
    llc = np.array([[[5.0, 9.0], [4.0, 6.0]], [[1.0, 2.0], [3.0, 4.0]]])
    return xr.Dataset({
        "llc_mean": (dims, llc),
        "excess_degeneracy": (dims, 16.0 - 2 * llc),  # symmetry bound 16: only 9 is above it by more than 2 SE
        "excess_degeneracy_se": (dims, np.full(llc.shape, 0.2)),
        "d_eff_fraction": (dims, 2 * llc / 20),
        "llc_trusted": (dims, np.array([[[True, False], [True, True]], [[False, False], [False, True]]])),
        "llc_chains_left": (dims, np.array([[[0, 2], [1, 0]], [[0, 0], [0, 0]]])),
        "llc_chain_distance_max": (dims, np.array([[[0.1, 0.9], [0.7, 0.2]], [[0.1, 0.2], [0.3, 0.4]]])),
    }, coords=coords)


def test_rows_split_each_model_by_whether_a_chain_left():
    rows = {(r["model"], r["side"]): r for r in excursion_rows(_grid())}
    left, stayed = rows[("a", "left")], rows[("a", "stayed")]
    assert (left["instances"], left["of"], stayed["instances"]) == (2, 4, 2)
    assert left["d_eff_fraction"] == np.median([0.9, 0.4]) and stayed["d_eff_fraction"] == np.median([0.5, 0.6])
    assert (left["above_bound"], stayed["above_bound"]) == (0.5, 0.0)  # the 9.0 left
    assert (left["trusted"], stayed["trusted"]) == (0.5, 1.0)
    assert left["distance"] == np.median([0.9, 0.7])
    assert rows[("b", "left")]["instances"] == 0 and np.isnan(rows[("b", "left")]["trusted"])
    table = format_rows(excursion_rows(_grid()))
    assert table[2] == "| a | a chain left w*'s live set | 2 of 4 | 0.65 | 50% | 50% | 0.80 |"
    assert table[4] == "| b | a chain left w*'s live set | 0 of 4 | - | - | - | - |"


def test_command_refuses_a_dataset_without_the_measure(tmp_path, capsys):
    path = tmp_path / "old.nc"
    _grid().drop_vars("llc_chains_left").to_netcdf(path)
    try:
        main([str(path)])
    except SystemExit as stop:
        assert "has no llc_chains_left" in str(stop)
    else:
        raise AssertionError("an old dataset must be refused")
    _grid().to_netcdf(tmp_path / "new.nc")
    main([str(tmp_path / "new.nc"), "--by-probability"])
    printed = capsys.readouterr().out
    assert "| a | every chain stayed | 2 of 4 |" in printed
    # per feature probability (1, 0.1): the share of seeds with a chain left, the share above the bound
    assert "a left:    0.50   0.50\na above:   0.50   0.00" in printed
    assert "b left:    0.00   0.00" in printed


def test_rows_split_by_how_far_refinement_moved_the_weights(tmp_path, capsys):
    grid = _grid().assign(refinement_move=(("model", "feature_probability", "seed"),
                                           np.array([[[1.2, 0.02], [0.3, 0.01]], [[0.0, 0.0], [0.0, 0.5]]])))
    rows = {(r["model"], r["side"]): r for r in excursion_rows(grid, "refinement-move")}
    moved, near = rows[("a", "moved")], rows[("a", "near")]
    assert (moved["instances"], near["instances"]) == (2, 2)  # 1.2 and 0.3 moved more than 10%
    assert moved["d_eff_fraction"] == np.median([0.5, 0.4]) and (moved["above_bound"], near["above_bound"]) == (0.0, 0.5)
    assert rows[("b", "moved")]["instances"] == 1
    grid.to_netcdf(tmp_path / "moved.nc")
    main([str(tmp_path / "moved.nc"), "--split", "refinement-move"])
    assert "| a | refinement moved > 10% of \\|w\\| | 2 of 4 |" in capsys.readouterr().out
    run = tmp_path / "run"  # a run's folder reads its weights_vs_activations.nc
    run.mkdir()
    (tmp_path / "moved.nc").rename(run / "weights_vs_activations.nc")
    main([str(run), "--split", "refinement-move"])
    assert "| a | refinement moved > 10% of \\|w\\| | 2 of 4 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no dataset at"):
        main([str(tmp_path / "absent")])
    _grid().to_netcdf(tmp_path / "old.nc")
    try:
        main([str(tmp_path / "old.nc"), "--split", "refinement-move"])
    except SystemExit as stop:
        assert "has no refinement_move" in str(stop)
    else:
        raise AssertionError("a dataset without refinement_move must be refused for that split")
