"""nan_rows: numpy's NaN-ignoring row reductions, bit for bit, with NaN instead of a warning for
rows without enough values (the flagship runs models in threads, where silencing warnings with
`warnings.catch_warnings` is not safe)."""

import warnings

import numpy as np
import pytest

from slt_superposition.nan_rows import nan_max, nan_mean, nan_std


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_with_values_equal_numpy_and_empty_rows_are_nan_without_a_warning(dtype):
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(dtype)
    x[1, :2] = np.nan  # two values left
    x[2, 1:] = np.nan  # one value left
    x[3] = np.nan  # none left
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, std, top = nan_mean(x), nan_std(x, ddof=1), nan_max(x)
    for got, expected, rows in ((mean, np.nanmean(x[[0, 1, 2, 4]], axis=-1), [0, 1, 2, 4]),
                                (std, np.nanstd(x[[0, 1, 4]], axis=-1, ddof=1), [0, 1, 4]),
                                (top, np.nanmax(x[[0, 1, 2, 4]], axis=-1), [0, 1, 2, 4])):
        assert got.dtype == dtype
        np.testing.assert_array_equal(got[rows], expected)  # bit for bit
        assert np.isnan(np.delete(got, rows)).all()
    assert nan_mean(np.full((2, 3, 0), 1.0)).shape == (2, 3)
