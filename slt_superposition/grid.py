"""The training grid's dims, and the grid <-> flat instance axis.

A grid of toy models is every combination of `GRID_DIMS` (feature_probability x
importance_decay x seed); the compiled programs see it as one flat `instance` axis in C order
over those dims. `flatten` and `unflatten` are xarray's `stack` and `unstack` on that axis, so
the order lives in one place:

    flat = flatten(ds["W"])                  # (instance, hidden, feature) numpy array
    W = unflatten(flat, ds, ("hidden", "feature"))   # back to (grid..., hidden, feature)
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import xarray as xr

from slt_superposition.errors import require

GRID_DIMS = ("feature_probability", "importance_decay", "seed")
INSTANCE = "instance"


def complete(ds, dims: Sequence[str] = GRID_DIMS):
    """`ds` (a Dataset or DataArray) with every grid dim present (a `.sel` may have dropped
    some: they come back with length 1) and in front, in `dims` order."""
    for dim in dims:
        if dim not in ds.dims:
            ds = ds.expand_dims(dim)
    return ds.transpose(*dims, ...)


def grid_coords(ds, dims: Sequence[str] = GRID_DIMS) -> dict[str, np.ndarray]:
    """dim -> coordinate values of `ds`'s grid dims (after `complete`)."""
    ds = complete(ds, dims)
    return {d: ds[d].values for d in dims}


def grid_shape(ds, dims: Sequence[str] = GRID_DIMS) -> tuple[int, ...]:
    """The sizes of `ds`'s grid dims (after `complete`)."""
    ds = complete(ds, dims)
    return tuple(ds.sizes[d] for d in dims)


def flatten(da: xr.DataArray, dims: Sequence[str] = GRID_DIMS) -> np.ndarray:
    """`da`'s values with its grid dims stacked into one leading instance axis (C order over
    `dims`), the other dims after it in their order: `(instance, *rest)`, a C-ordered array."""
    da = complete(da, dims)
    return np.ascontiguousarray(da.stack({INSTANCE: list(dims)}).transpose(INSTANCE, ...).values)


def instance_index(grid: Mapping[str, Sequence] | xr.Dataset | xr.DataArray,
                   dims: Sequence[str] = GRID_DIMS) -> xr.Coordinates:
    """The stacked `instance` coordinate (a MultiIndex, C order) of a grid given as a dataset
    (its `dims`) or as a mapping dim -> coordinate values (every dim of the mapping, in order)."""
    coords = grid_coords(grid, dims) if isinstance(grid, (xr.Dataset, xr.DataArray)) else dict(grid)
    for d, values in coords.items():
        require(len(np.unique(values)) == len(values), f"grid coordinate '{d}' repeats a value")
    return xr.Dataset(coords={d: np.asarray(v) for d, v in coords.items()}).stack({INSTANCE: list(coords)}).coords


def unflatten(values, grid: Mapping[str, Sequence] | xr.Dataset | xr.DataArray, dims: Sequence[str] = (),
              name: str | None = None) -> xr.DataArray:
    """Put the grid dims back on an array with a leading instance axis.

    values: `(instance, *rest)` in the order of `flatten`; grid: a dataset whose grid dims give
    the coordinates (`GRID_DIMS`), or a mapping dim -> coordinate values (any dims, in order);
    dims: names of the trailing axes (default `dim_1`, ...). Returns a DataArray with dims
    `(grid..., *dims)`.
    """
    index = instance_index(grid)
    grid_dims = [d for d in index if d != INSTANCE]
    values = np.asarray(values)
    n_inst = index.sizes[INSTANCE]
    require(values.ndim >= 1 and values.shape[0] == n_inst,
            f"expected {n_inst} instances, got {values.shape[0] if values.ndim else 'a scalar'}")
    rest = values.shape[1:]
    dims = tuple(dims) or tuple(f"dim_{i + 1}" for i in range(len(rest)))
    require(len(dims) == len(rest), f"{len(rest)} trailing axes but {len(dims)} dim names")
    da = xr.DataArray(values, dims=(INSTANCE,) + dims, coords=index, name=name).unstack(INSTANCE)
    da = da.transpose(*grid_dims, *dims)
    # C order, as a reshape gives: numpy's reductions sum in memory order, so a strided copy of the
    # same values would change their last bits downstream
    return da.copy(data=np.ascontiguousarray(da.values))
