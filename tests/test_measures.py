"""Elhage et al. measures on constructed weight matrices with known answers."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from analysis import measures as M
from slt_superposition.errors import InputError


def W_of(columns) -> xr.DataArray:
    """columns: (feature, hidden) rows -> DataArray (hidden, feature)."""
    return xr.DataArray(np.asarray(columns, np.float64).T, dims=("hidden", "feature"))


def polygon(k: int, length: float = 1.0) -> xr.DataArray:
    angles = 2 * np.pi * np.arange(k) / k
    return W_of(length * np.stack([np.cos(angles), np.sin(angles)], 1))


def test_orthonormal_set():
    W = xr.DataArray(np.eye(3, 5), dims=("hidden", "feature"))  # 3 orthonormal columns, 2 zero
    np.testing.assert_allclose(M.feature_norms(W), [1, 1, 1, 0, 0])
    np.testing.assert_allclose(M.feature_dimensionality(W), [1, 1, 1, 0, 0])
    np.testing.assert_allclose(M.interference(W), 0, atol=1e-12)
    assert int(M.n_represented(W)) == 3
    np.testing.assert_allclose(M.dimensions_per_feature(W), 1.0)
    np.testing.assert_allclose(M.overcompleteness(W), 1.0)


@pytest.mark.parametrize("length", [1.0, 1.17])
def test_regular_pentagon(length):
    W = polygon(5, length)
    np.testing.assert_allclose(M.feature_dimensionality(W), 2 / 5, rtol=1e-12)  # scale free
    np.testing.assert_allclose(M.dimensions_per_feature(W), 2 / (5 * length**2))
    assert int(M.n_represented(W)) == 5
    np.testing.assert_allclose(M.overcompleteness(W), 5 / 2)
    # sum_j cos^2(2 pi j / 5) over j != 0 = 5/2 - 1 (times length^2)
    np.testing.assert_allclose(M.interference(W), 1.5 * length**2, rtol=1e-12)


def test_sticky_polygons():
    np.testing.assert_allclose(M.feature_dimensionality(polygon(3)), 2 / 3)
    tetrahedron = W_of([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    np.testing.assert_allclose(M.feature_dimensionality(tetrahedron), 3 / 4)


def test_antipodal_pair_and_zero_column():
    W = W_of([[1.0], [-1.0], [0.0]])
    D = M.feature_dimensionality(W)
    np.testing.assert_allclose(D, [0.5, 0.5, 0.0])
    assert not np.isnan(D).any()
    np.testing.assert_allclose(M.interference(W), [1, 1, 0])
    np.testing.assert_array_equal(M.represented_features(W), [True, True, False])
    # a column holding NaN is unknown, not a zero column; the NaN stays with its feature
    broken = W_of([[1.0], [np.nan], [0.0]])
    D = M.feature_dimensionality(broken).values
    assert np.isnan(D[1]) and D[2] == 0.0
    assert np.isnan(np.asarray(M.feature_dimensionality_array(jnp.asarray(broken.values)))[1])


def test_extra_dims_are_carried_and_named():
    stacked = xr.concat([polygon(5), xr.DataArray(np.eye(2, 5), dims=("hidden", "feature"))], dim="seed")
    stacked = stacked.assign_coords(seed=[10, 11]).transpose("hidden", "seed", "feature")
    D = M.feature_dimensionality(stacked)
    assert D.dims == ("seed", "feature") and list(D.seed.values) == [10, 11]
    np.testing.assert_allclose(D.sel(seed=10), 0.4)
    np.testing.assert_allclose(D.sel(seed=11), [1, 1, 0, 0, 0])
    assert M.dimensions_per_feature(stacked).dims == ("seed",)
    np.testing.assert_array_equal(M.n_represented(stacked), [5, 2])
    assert D.attrs["long_name"]


def test_array_versions_match_under_jax():
    W = np.random.default_rng(0).normal(size=(3, 4, 7))
    W[1, :, 2] = 0.0
    for fn in (M.feature_dimensionality_array, M.interference_array, M.feature_norms_array,
               M.dimensions_per_feature_array):
        np.testing.assert_allclose(np.asarray(fn(jnp.asarray(W, jnp.float32))), fn(W), rtol=1e-4, atol=1e-6)


def test_missing_dims():
    with pytest.raises(InputError, match="hidden"):
        M.feature_dimensionality(xr.DataArray(np.ones((2, 3)), dims=("a", "feature")))
