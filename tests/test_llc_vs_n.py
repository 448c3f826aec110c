"""The n study's report on a stub dataset (no SGLD): the table, the findings and the figure."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from experiments.tms_llc_vs_n import VARIABLES, findings, plot, table


def _stub() -> xr.Dataset:
    ns = [2**12, 2**14, 2**16]
    llc = np.array([[[7.0, 8.0, 8.6]]])  # one model, one p: the last point above the bound 8.5 by 0.1
    dims = ("model", "feature_probability", "n")
    ds = xr.Dataset({name: (dims, np.ones((1, 1, 3))) for name in VARIABLES},
                    coords={"model": ["n6_m2"], "feature_probability": [1.0], "n": ns})
    ds["llc"] = (dims, llc)
    ds["llc_se"] = (dims, np.array([[[0.1, 0.1, 0.02]]]))
    ds["n_parameters"] = (dims, np.full((1, 1, 3), 18.0))
    ds["symmetry_bound"] = (dims, np.full((1, 1, 3), 8.5))
    ds["population_quadratic_prediction"] = (dims, np.full((1, 1, 3), np.nan))
    ds["two_llc_over_d"] = 2 * ds["llc"] / ds["n_parameters"]
    return ds


def test_findings_say_how_2llc_over_d_moves_and_where_it_exceeds_the_bound(tmp_path):
    ds = _stub()
    (text,) = findings(ds)
    assert "2 llc / d from 0.778 at n = 2^12 to 0.956 at 2^16 (last step +0.067)" in text
    assert "above the symmetry bound by more than 2 SE at 1 of 3 n" in text
    lines = table(ds).splitlines()
    assert len(lines) == 5 and lines[4].startswith("| n6_m2 | 1 | 2^16 | 8.60 +- 0.02 | 0.956 | 8.5 |")
    assert plot(ds, tmp_path).stat().st_size > 0


def test_run_is_a_resumable_sweep_over_models(tmp_path, monkeypatch):
    """run() on stub measurements: every model a chunk; a rerun measures nothing again and gives
    the same dataset; the chen model fills only the dense column."""
    import xarray as xr

    import experiments.tms_llc_vs_n as lvn

    calls = []

    def train(model, fps, steps):
        p = [1.0] if lvn.MODELS[model][2] == "high_sparsity_limit" else list(fps)
        return xr.Dataset(coords={"feature_probability": p})

    def measure(model, train, i, n, calibration):
        calls.append((model, i, n))
        return dict({name: 1.0 for name in lvn.VARIABLES}, llc=float(len(calls)), n_parameters=18.0,
                    symmetry_bound=8.5, llc_se=0.1)

    monkeypatch.setattr(lvn, "_train", train)
    monkeypatch.setattr(lvn, "measure_point", measure)
    monkeypatch.setattr(lvn, "plot", lambda ds, out_dir: None)
    first = lvn.run(tmp_path, size="quick", progress=False)
    q = lvn.QUICK
    assert len(calls) == (1 + len(q["sparsities"])) * len(q["log2_n"])  # chen: the dense column only
    assert list(first["model"].values) == list(q["models"])
    assert np.isnan(first["llc"].sel(model="chen").values[1:]).all()
    again = lvn.run(tmp_path, size="quick", progress=False)
    assert len(calls) == (1 + len(q["sparsities"])) * len(q["log2_n"])
    xr.testing.assert_identical(first, again)
    assert f"reproduce tms-llc-vs-n --quick --out {tmp_path}" in (tmp_path / "report.md").read_text()


def test_run_extends_an_earlier_runs_instances(tmp_path, monkeypatch):
    """only / sparsities / log2_n select the points; train_from measures the saved grid of an
    earlier run (nothing trained again), the grid is saved beside the results, and the report's
    command line carries the options."""
    import experiments.tms_llc_vs_n as lvn
    from slt_superposition.errors import InputError

    calls, trained = [], []
    real_train = lvn._train

    def train(model, fps, steps):
        trained.append(model)
        return real_train(model, fps, 100)

    def measure(model, train, i, n, calibration):
        calls.append((model, float(train["feature_probability"].values[i]), n))
        return dict({name: 1.0 for name in lvn.VARIABLES}, n_parameters=18.0, symmetry_bound=8.5, llc_se=0.1)

    monkeypatch.setattr(lvn, "_train", train)
    monkeypatch.setattr(lvn, "measure_point", measure)
    monkeypatch.setattr(lvn, "plot", lambda ds, out_dir: None)
    first = tmp_path / "first"
    lvn.run(first, size="quick", progress=False, only=["n6_m2"])
    assert trained == ["n6_m2"] and (first / "train_n6_m2.nc").exists()
    calls.clear()
    second = tmp_path / "second"
    ds = lvn.run(second, size="full", progress=False, only=["n6_m2"], sparsities=(0.05,), log2_n=(18, 19),
                 train_from=str(first))
    assert trained == ["n6_m2"]  # loaded, not trained again
    assert [(m, round(p, 6), n) for m, p, n in calls] == [("n6_m2", 0.05, 2**18), ("n6_m2", 0.05, 2**19)]
    assert list(ds["n"].values) == [2**18, 2**19] and list(ds["model"].values) == ["n6_m2"]
    assert (second / "train_n6_m2.nc").exists()
    command = (second / "report.md").read_text().splitlines()[2]
    assert "--only n6_m2" in command and "log2_n=(18, 19)" in command and "train_from=" in command
    with pytest.raises(InputError, match="no such file"):
        lvn.run(tmp_path / "third", size="full", progress=False, only=["n20_m5"], train_from=str(first))
    # a new run into the first folder (its sweep removed, as the refusal of a changed sweep says) saves
    # the grid it measures: the train file never stays behind from the earlier run
    import shutil

    import xarray as xr

    shutil.rmtree(first / "cases")
    lvn.run(first, size="quick", progress=False, only=["n6_m2"], sparsities=(0.05,))
    with xr.open_dataset(first / "train_n6_m2.nc") as saved:
        assert saved["feature_probability"].values.tolist() == [0.05]
