"""slt_superposition.grid: the grid <-> flat instance axis is C order over GRID_DIMS, both ways."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from slt_superposition.errors import InputError
from slt_superposition.grid import GRID_DIMS, complete, flatten, unflatten

COORDS = {"feature_probability": np.array([1.0, 0.1, 0.05]), "importance_decay": np.array([1.0]),
          "seed": np.array([3, 1])}  # descending and unsorted coordinates keep their order


def test_unflatten_is_the_c_order_reshape_and_flatten_inverts_it():
    values = np.arange(6 * 2 * 5, dtype=np.float32).reshape(6, 2, 5)
    W = unflatten(values, COORDS, ("hidden", "feature"), name="W")
    assert W.dims == GRID_DIMS + ("hidden", "feature") and W.name == "W"
    assert all(list(W[d].values) == list(c) for d, c in COORDS.items())
    np.testing.assert_array_equal(W.values, values.reshape(3, 1, 2, 2, 5))
    # C-ordered like a reshape: numpy sums in memory order, so a strided copy changes last bits downstream
    assert W.values.flags["C_CONTIGUOUS"]
    back = flatten(W.transpose("hidden", ...))  # any dim order in, instance axis first out
    assert back.flags["C_CONTIGUOUS"] and back.dtype == np.float32
    np.testing.assert_array_equal(back, values)


def test_a_selection_that_dropped_a_dim_comes_back_with_length_one():
    W = unflatten(np.ones((6, 4)), COORDS, ("feature",))
    one = W.sel(seed=3)
    assert complete(one).dims == GRID_DIMS + ("feature",) and complete(one).sizes["seed"] == 1
    assert flatten(one).shape == (3, 4)


def test_wrong_counts_are_input_errors():
    with pytest.raises(InputError, match="expected 6 instances, got 5"):
        unflatten(np.ones((5, 2)), COORDS, ("feature",))
    with pytest.raises(InputError, match="1 trailing axes but 2 dim names"):
        unflatten(np.ones((6, 2)), COORDS, ("a", "b"))
    with pytest.raises(InputError, match="repeats a value"):
        unflatten(np.ones(4), {"seed": [0, 0], "p": [1.0, 2.0]})


def test_grid_given_as_a_dataset():
    ds = xr.Dataset(coords=COORDS)
    np.testing.assert_array_equal(unflatten(np.arange(6), ds).values.ravel(), np.arange(6))
