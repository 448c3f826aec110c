"""Saving and opening result datasets (netCDF via h5netcdf).

Writes are atomic: the dataset goes to a temporary file in the target folder, which is
then renamed over the target, so a killed process never leaves a half-written result
under the real name. Opening validates that the file is one of ours, of a schema version
this code reads, and names the problem in an `InputError` otherwise.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import xarray as xr

from slt_superposition.errors import InputError
from slt_superposition.provenance import SCHEMA_VERSION

ENGINE = "h5netcdf"


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before any compute) if `path` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {parent}: {err.strerror}") from None
    if path.is_dir():
        raise InputError(f"output path {path} is a folder, expected a file name")
    # os.access says yes to root even where writing fails (read-only or virtual file
    # systems such as /proc), so try it: create and delete a scratch file next to `path`.
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise InputError(f"cannot write to output folder {parent}: {err.strerror}") from None
    return path


def save_dataset(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write `ds` to `path` atomically (temp file + rename). Returns the path."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine=ENGINE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def open_result(path: str | os.PathLike, kind: str | None = None) -> xr.Dataset:
    """Open a result dataset written by this package, loaded into memory.

    Raises `InputError` if the file is missing, unreadable (corrupt or not netCDF), not
    written by slt-superposition, of another `kind` than asked, or of another schema version.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    try:
        with xr.open_dataset(path, engine=ENGINE) as ds:
            ds = ds.load()
    except Exception as err:  # h5py/netCDF raise many types for a corrupt file
        raise InputError(f"{path} is not a readable netCDF file ({type(err).__name__})") from None
    found = ds.attrs.get("slt_superposition_kind")
    if found is None:
        raise InputError(f"{path} is not a slt-superposition result dataset (no 'slt_superposition_kind' attr)")
    version = int(ds.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise InputError(
            f"{path} has schema version {version}; this version of slt-superposition reads {SCHEMA_VERSION}"
        )
    if kind is not None and found != kind:
        raise InputError(f"{path} is a '{found}' dataset, expected a '{kind}' dataset")
    return ds
