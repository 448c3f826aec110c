"""The sticky-dimension count: which features count, and the uniform-spread reference."""

import numpy as np
import pytest
import xarray as xr

from experiments.tms_sticky_dimensions import near_sticky, sticky_summary, uniform_share


def test_uniform_share_is_the_measure_of_the_sticky_intervals():
    # within 0.05 of 1 (below it), 3/4 and 2/3 (overlapping), 1/2, 2/5 and 3/8 (overlapping), inside [0.1, 1]
    covered = 0.05 + (0.8 - (2 / 3 - 0.05)) + 0.1 + (0.45 - 0.325)
    assert uniform_share(0.1, 1.0) == pytest.approx(covered / 0.9, abs=1e-4)
    np.testing.assert_array_equal(near_sticky([0.5, 0.44, 0.3, 0.97]), [True, True, False, True])


def test_weak_columns_do_not_count():
    # a pentagon (D_i = 2/5, near a sticky value) plus three weak columns (||W_i|| = 0.2)
    angle = 2 * np.pi * np.arange(5) / 5
    W = np.concatenate([np.stack([np.cos(angle), np.sin(angle)]), 0.2 * np.eye(2)[:, [0, 1, 0]]], axis=1)
    summary = sticky_summary(xr.DataArray(W, dims=("hidden", "feature")))
    assert summary["represented"] == 5
    assert summary["share_near_sticky"] == 1.0
