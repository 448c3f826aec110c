"""Saving and opening result datasets (netCDF via h5netcdf).

Writes are atomic: the dataset goes to a temporary file in the target folder, which is
then renamed over the target, so a killed process never leaves a half-written result
under the real name. The file gets the mode any new file gets under the user's umask
(0644 under the usual 022), not the 0600 of a temporary file, so colleagues sharing a
results folder can read it. Opening validates that the file is one of ours, of a schema
version this code reads, with the variables its kind must have, and names the problem in
an `InputError` otherwise.

Nothing lost: `check_writable(out, inputs=[...])` refuses an output that is one of the
inputs (the same file under any name: symlink, hard link, ``./x.nc``); `output_lock`
refuses a second run writing the same output while the first is alive; in a run of
several processes (`jax.distributed`) only process 0 writes (`is_writer`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import xarray as xr

from slt_superposition.errors import InputError, describe_failure
from slt_superposition.provenance import SCHEMA_VERSION

ENGINE = "h5netcdf"

# variables (and dims they must carry) that each dataset kind needs to be used at all
REQUIRED_VARIABLES = {
    "train": {"W": ("hidden", "feature"), "b": ("feature",)},
    "llc": {"llc_mean": (), "llc_per_chain": ("chain",)},
}


def is_writer() -> bool:
    """True in the process that writes results: the only one, or process 0 of a
    `jax.distributed` run (every process computes the same result; one writes it)."""
    if "jax" not in sys.modules:
        return True
    import jax

    return jax.process_index() == 0


def file_mode() -> int:
    """The mode a new file gets under this process's umask (0o644 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (symlinks, hard links, relative spellings)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(path: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """`InputError` if the output `path` is one of `inputs`: outputs never replace inputs."""
    for source in inputs:
        if same_file(path, source):
            raise InputError(f"output {path} is the input {source}; writing it would replace the input: "
                             "choose another output name")


def check_writable(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = (),
                   kind: str | None = None, netcdf: bool = False) -> Path:
    """Fail early (before any compute) if `path` cannot be written, or is one of `inputs`, or (with
    the `kind` of dataset to be written) holds something else than a result of that kind
    (`check_replaceable`), or (with `netcdf`: a command's `--out`) does not end in `.nc`: a
    name such as `--out results` is more often meant as a folder than as a dataset's name.

    Only the writing process checks the folder (`is_writer`); every process checks `inputs`."""
    path = Path(path)
    check_not_input(path, inputs)
    if netcdf and path.is_dir():
        raise InputError(f"output path {path} is a folder, expected a file name: e.g. --out {path / 'result.nc'}")
    if netcdf and path.suffix != ".nc":
        raise InputError(f"output {path} is not a .nc file name (a result dataset is one netCDF file): e.g. "
                         f"--out {path.with_suffix('.nc') if path.suffix else path / 'result.nc'}")
    if not is_writer():
        return path
    if kind is not None:
        check_replaceable(path, kind)
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


def check_replaceable(path: Path, kind: str) -> None:
    """`InputError` where `path` exists and is not a result dataset of `kind`: a rerun replaces its
    own earlier result, never another kind of result (a train grid over an llc estimate) or a file
    this package did not write."""
    if not path.is_file():
        return
    try:
        with xr.open_dataset(path, engine=ENGINE) as existing:
            found = existing.attrs.get("slt_superposition_kind")
    except Exception:  # noqa: BLE001 - not netCDF, or damaged: not ours to replace either way
        found = None
    if found != kind:
        what = f"a '{found}' result" if found else "a file that is not a slt-superposition result"
        raise InputError(f"{path} holds {what}; refusing to replace it with a '{kind}' one (choose another "
                         f"output path, or remove it first)")


def save_dataset(ds: xr.Dataset, path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Write `ds` to `path` atomically (temp file + rename), readable under the umask.

    Refuses (`InputError`) a `path` that is one of `inputs`, and an existing file at `path` that is
    not a result of `ds`'s kind (its `slt_superposition_kind` attr; `check_replaceable`). `open_result`
    reads back the datasets that carry that attr (every result of this package). In a multi-process
    run only process 0 writes (`is_writer`); the others return the path without touching it.
    Returns the path.
    """
    if not isinstance(ds, xr.Dataset):
        raise InputError(f"save_dataset writes an xarray Dataset, got a {type(ds).__name__}")
    path = Path(path)
    if not is_writer():
        return path
    path = check_writable(path, inputs=inputs, kind=ds.attrs.get("slt_superposition_kind"))
    try:
        return write_atomic(path, lambda tmp: ds.to_netcdf(tmp, engine=ENGINE))
    except (TypeError, ValueError) as err:  # e.g. an attr netCDF cannot hold (None, a dict)
        raise InputError(f"cannot write {path}: {describe_failure(err)}") from None


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """`write(tmp)` into a temporary file beside `path`, then rename it over `path`: a reader
    never sees a half-written file, and a failure leaves no temporary behind. The file gets
    the user's umask (not mkstemp's 0600). Returns the path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (`write_atomic`)."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


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
        raise InputError(f"{path} is not a readable netCDF-4 (HDF5) file ({type(err).__name__})") from None
    found = ds.attrs.get("slt_superposition_kind")
    if found is None:
        from slt_superposition.sweep import is_chunk_file  # sweep imports this module

        hint = (f"; it is one finished chunk of a resumable sweep, whose run writes its datasets next to "
                f"{path.parent.name}/ when every chunk is done" if is_chunk_file(path) else "")
        raise InputError(f"{path} is not a slt-superposition result dataset (no 'slt_superposition_kind' attr){hint}")
    version = int(ds.attrs.get("schema_version", -1))
    if version != SCHEMA_VERSION:
        raise InputError(
            f"{path} has schema version {version}; this version of slt-superposition reads {SCHEMA_VERSION}"
        )
    if kind is not None and found != kind:
        raise InputError(f"{path} is a '{found}' dataset, expected a '{kind}' dataset")
    for name, dims in REQUIRED_VARIABLES.get(found, {}).items():
        if name not in ds.variables:
            raise InputError(f"{path} is a '{found}' dataset without its variable '{name}' (damaged or edited)")
        missing = [dim for dim in dims if dim not in ds[name].dims]
        if missing:
            raise InputError(f"{path}: variable '{name}' lacks dimension '{missing[0]}' (damaged or edited)")
    return ds


LOCK_NAME = ".slt-superposition.lock"


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, *, folder: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on output `path` (a file or a folder) while the block runs.

    A second run into the same output, while the first is alive, gets an `InputError`
    instead of doing all the work again and racing the first one's writes. The lock is an
    advisory `flock` on ``<path>.lock`` (`folder`: on ``<path>/.slt-superposition.lock``),
    which the kernel releases when the process dies, so a killed run never leaves a stale
    lock; the file is removed on exit. Only the writing process locks (`is_writer`).
    """
    path = Path(path)
    if not is_writer():
        yield path
        return
    lock = path / LOCK_NAME if folder else path.with_name(path.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {lock.parent}: {err.strerror}") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
        except OSError as err:
            raise InputError(f"cannot create lock file {lock}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InputError(f"another run (pid {holder}) is writing {path} right now; wait for it to finish "
                             "or choose another output") from None
        try:  # the previous holder may have removed the file between our open and flock
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)
