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
    with pytest.raises(Exception, match="not a readable netCDF file"):
        open_result(path)
    assert main(["plot", str(path), "--out", str(tmp_path / "fig")]) == 2
    assert "not a readable netCDF file" in capsys.readouterr().err


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


def test_nan_weights_are_named_by_llc(tmp_path, capsys):
    path = _train_like(tmp_path / "nan.nc", nan=True)
    code = main(["llc", str(path), "--out", str(tmp_path / "l.nc"), "--step-size", "1e-4"])
    err = capsys.readouterr().err
    assert code == 2, err[-500:]
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and ("NaN" in error_lines[0] or "finite" in error_lines[0]), err
    assert "Traceback" not in err
