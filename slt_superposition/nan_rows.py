"""Means, standard deviations and maxima over the last axis, ignoring NaN, without warnings.

numpy's `nanmean`, `nanstd` and `nanmax` warn (RuntimeWarning) on an all-NaN row, and silencing
that with `warnings.catch_warnings()` is not safe while other threads run (it swaps the
process-wide filter list, and two threads that overlap can leave a filter behind; the flagship
computes two models at once, in threads). These reduce only the rows that have enough values
and give NaN for the others, so nothing warns; where a row has enough values the result is
numpy's own, bit for bit.

    nan_mean(x)            # x: (..., k) -> (...), NaN where a row is all NaN
    nan_std(x, ddof=1)     # NaN where a row has at most ddof values
    nan_max(x)
"""

from __future__ import annotations

import numpy as np


def _rows(x, reduce, min_count: int) -> np.ndarray:
    x = np.asarray(x)
    out = np.full(x.shape[:-1], np.nan, dtype=np.result_type(x.dtype, np.float32))
    enough = np.sum(~np.isnan(x), axis=-1) >= min_count
    if enough.any():
        out[enough] = reduce(x[enough], axis=-1)
    return out


def nan_mean(x) -> np.ndarray:
    """`np.nanmean(x, axis=-1)`, NaN (and no warning) where a row is all NaN; `(..., k) -> (...)`."""
    return _rows(x, np.nanmean, 1)


def nan_std(x, ddof: int = 0) -> np.ndarray:
    """`np.nanstd(x, axis=-1, ddof=ddof)`, NaN (and no warning) where a row has at most `ddof` values."""
    return _rows(x, lambda rows, axis: np.nanstd(rows, axis=axis, ddof=ddof), ddof + 1)


def nan_max(x) -> np.ndarray:
    """`np.nanmax(x, axis=-1)`, NaN (and no warning) where a row is all NaN; `(..., k) -> (...)`."""
    return _rows(x, np.nanmax, 1)
