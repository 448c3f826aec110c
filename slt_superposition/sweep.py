"""Resumable sweeps: a long experiment as chunks of its grid, each saved atomically.

    ds = run_sweep("phase-diagram", config, chunks, compute_chunk, "results/pd/sweep")

`chunks` is a list of JSON-able descriptions (e.g. ``{"feature_probability": [0.1, 0.2]}``);
``compute_chunk(chunk) -> xr.Dataset`` computes one. The run folder holds

    manifest.json          name, config, chunk list and their hash (written first, atomically)
    chunk-0000.nc ...      one finished chunk each, written by `io.save_dataset` (temp + rename)

Rerunning the same call skips the chunks whose files exist and ends with the same dataset
as an uninterrupted run: the result is always combined from the files on disk, so a run
that was killed and resumed and one that was not go through the same bytes. (An
instance's numbers must not depend on which chunk it ran in: derive its keys from its
seed and grid position, not from the chunk.)

What is never used or overwritten, but reported as an `InputError`:
* a manifest of another config (its hash differs): a foreign run folder;
* files in the folder that are not ours (no manifest, or names we did not write);
* a chunk file that does not open (truncated, corrupt) or carries another sweep's hash.

A leftover ``chunk-NNNN.nc.*.tmp`` is the temp file of an atomic write that was killed
before its rename: by construction it is incomplete and no chunk of ours points at it.
It is reported on stderr and removed, and its chunk is recomputed; that is what makes a
SIGKILL at any moment resumable.

With `workers=2` (one process), two chunks are computed at once, each in its own thread, the
costliest first where `cost` says which; each chunk is saved as it finishes, so a killed run
resumes the same way.

While a sweep runs it holds the folder's lock (`io.output_lock`): a second run into the
same folder is refused at once instead of computing the same chunks again.

Several processes (`jax.distributed`): every process calls `run_sweep` with the same
arguments and computes every chunk together with the others (`compute_chunk` shards its
instances over all processes' devices). Process 0 alone reads and writes the run folder:
it decides which chunks are done (so a rerun resumes whichever process died), writes each
new chunk, and at the end sends every chunk file's bytes to the others, so all processes
combine the same bytes into the same dataset. The other processes never touch `run_dir`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import xarray as xr

from slt_superposition.errors import InputError, require
from slt_superposition.io import ENGINE, LOCK_NAME, is_writer, output_lock, save_dataset, write_text

MANIFEST = "manifest.json"
_CHUNK = re.compile(r"chunk-(\d{4,})\.nc")
_CHUNK_TMP = re.compile(r"chunk-(\d{4,})\.nc\..+\.tmp")
_MANIFEST_TMP = re.compile(r"manifest\.json\..+\.tmp")
SWEEP_ATTRS = ("sweep_name", "sweep_hash", "sweep_chunk")


def sweep_hash(name: str, config: dict[str, Any], chunks: Sequence[Any]) -> str:
    """A stable hash (sha256, hex) of everything that decides a sweep's numbers."""
    text = json.dumps({"name": name, "config": config, "chunks": list(chunks)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def chunk_path(run_dir: Path, index: int) -> Path:
    return Path(run_dir) / f"chunk-{index:04d}.nc"


def is_chunk_file(path: Path) -> bool:
    """Whether `path` is one finished chunk of a resumable sweep (a chunk file beside its manifest)."""
    path = Path(path)
    return bool(_CHUNK.fullmatch(path.name)) and (path.parent / MANIFEST).exists()


def _write_json_atomic(obj: Any, path: Path) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=True))


def _check_folder(run_dir: Path, digest: str, n_chunks: int, clean: bool = True) -> None:
    """Validate the run folder against this sweep; clean our own killed temp files (`clean`)."""
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    manifest = run_dir / MANIFEST
    if not manifest.exists():
        foreign = [n for n in names if not (_CHUNK_TMP.fullmatch(n) or _MANIFEST_TMP.fullmatch(n))]
        if foreign:
            raise InputError(
                f"{run_dir} is not empty and holds no sweep manifest ({foreign[0]!r} ...): "
                "not a run folder of ours; choose another output folder"
            )
    else:
        try:
            found = json.loads(manifest.read_text()).get("hash")
        except (OSError, ValueError, AttributeError):
            raise InputError(f"{manifest} is not a readable sweep manifest; delete the folder to start over") from None
        require(
            found == digest,
            f"{run_dir} holds a sweep of another configuration (hash {str(found)[:12]}, this one {digest[:12]}); "
            "choose another output folder or delete it to start over",
        )
    for name in names:
        if name == MANIFEST:
            continue
        chunk = _CHUNK.fullmatch(name)
        if chunk:
            require(int(chunk.group(1)) < n_chunks, f"{run_dir / name} is not a chunk of this sweep ({n_chunks} chunks)")
        elif _CHUNK_TMP.fullmatch(name) or _MANIFEST_TMP.fullmatch(name):
            if clean:
                print(f"note: removing {run_dir / name}, a half-written file left by an interrupted run",
                      file=sys.stderr)
                (run_dir / name).unlink()
        else:
            raise InputError(f"{run_dir / name} was not written by this sweep; move it out of the run folder")


def check_sweep_folder(name: str, config: dict[str, Any], chunks: Sequence[Any], run_dir: str | os.PathLike) -> None:
    """The `InputError` that `run_sweep` with these arguments would raise for its folder (another
    sweep's, or files not ours), raised now, changing nothing: for work that should start only once
    the sweep is known to run (the flagship's development part, run beside the sweep)."""
    run_dir = Path(run_dir)
    _require_not_a_file(run_dir)
    if run_dir.exists():
        _check_folder(run_dir, sweep_hash(name, config, chunks), len(chunks), clean=False)


def _load_chunk(path: Path, digest: str, index: int, content: bytes | None = None) -> xr.Dataset:
    """Open chunk `index` from `path` (or from `content`, its bytes) and check it is ours."""
    try:
        with xr.open_dataset(path if content is None else io.BytesIO(content), engine=ENGINE) as ds:
            ds = ds.load()
    except Exception as err:  # h5py raises many types for a truncated file
        raise InputError(
            f"{path} is unreadable ({type(err).__name__}): truncated or corrupt; delete it to recompute that chunk"
        ) from None
    require(
        ds.attrs.get("sweep_hash") == digest and int(ds.attrs.get("sweep_chunk", -1)) == index,
        f"{path} belongs to another sweep (or another chunk); not using it",
    )
    return ds


def _require_not_a_file(run_dir: Path) -> None:
    require(not run_dir.exists() or run_dir.is_dir(), f"sweep folder {run_dir} is a file")


def _make_folder(run_dir: Path) -> None:
    _require_not_a_file(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create sweep folder {run_dir}: {err.strerror}") from None


def _prepare(run_dir: Path, name: str, config: dict[str, Any], chunks: Sequence[Any], digest: str) -> list[int]:
    """Check the folder, write the manifest if new, validate finished chunks; returns their indices."""
    _check_folder(run_dir, digest, len(chunks))
    if not (run_dir / MANIFEST).exists():
        _write_json_atomic({"name": name, "hash": digest, "config": config, "chunks": list(chunks)}, run_dir / MANIFEST)
    done = [i for i in range(len(chunks)) if chunk_path(run_dir, i).exists()]
    for i in done:  # validate before computing anything
        _load_chunk(chunk_path(run_dir, i), digest, i).close()
    return done


def default_combine(datasets: list[xr.Dataset]) -> xr.Dataset:
    """Combine chunks by their coordinates; variables without a chunked dim are taken from the first."""
    return xr.combine_by_coords(datasets, data_vars="minimal", coords="minimal", compat="override", join="outer",
                                combine_attrs="override")


def _in_threads(fn: Callable[[int], None], items: Sequence[int], workers: int) -> None:
    """`fn(i)` for every item, `workers` at a time in threads; the first error is raised once the
    running calls have ended (their results kept), and the items not yet started are dropped."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(fn, i) for i in items]
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in finished and f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
    if failed:
        raise failed[0].exception()


def run_sweep(
    name: str,
    config: dict[str, Any],
    chunks: Sequence[Any],
    compute_chunk: Callable[[Any], xr.Dataset],
    run_dir: str | os.PathLike,
    *,
    combine: Callable[[list[xr.Dataset]], xr.Dataset] = default_combine,
    progress: bool = True,
    only: Collection[int] | None = None,
    workers: int = 1,
    cost: Callable[[Any], float] | None = None,
) -> xr.Dataset:
    """Compute every chunk not yet on disk, then return all chunks combined.

    `config` and `chunks` must be JSON-able and fully decide the numbers (their hash
    names the sweep). `compute_chunk(chunk)` returns one chunk's dataset. The returned
    dataset has the attrs that `combine` gives it (the default: the first chunk's) plus ``sweep_name``, ``sweep_hash``,
    ``sweep_chunks`` (the number of chunks combined).

    only: indices of the chunks to compute in this call (None: all). The result then combines
    the finished chunks on disk (those and any earlier runs'), a part of the sweep until a run
    without `only` completes the rest; the folder and its hash are the whole sweep's either way.

    workers: chunks computed at once, each in its own thread (one process only; several
    processes compute every chunk together, one at a time). A chunk's numbers must not depend
    on what runs beside it (no shared mutable state in `compute_chunk`); each finished chunk is
    saved as it finishes, and when one fails, the chunks not yet started are not started.
    cost: `cost(chunk)`, a guess of a chunk's time: with several workers the costliest start
    first (ties in chunk order), so a long chunk does not run alone at the end.
    """
    from slt_superposition.progress import make_bar
    from slt_superposition.sharding import broadcast_bytes, broadcast_json, is_multiprocess

    require(len(chunks) > 0, f"sweep '{name}' has no chunks")
    require(isinstance(workers, int) and workers >= 1, f"workers must be a whole number >= 1, got {workers!r}")
    if only is not None:
        require(all(0 <= int(i) < len(chunks) for i in only), f"sweep '{name}' has no chunk {sorted(only)}")
    run_dir = Path(run_dir)
    digest = sweep_hash(name, config, chunks)
    writer, several = is_writer(), is_multiprocess()
    if writer:
        _make_folder(run_dir)
    with output_lock(run_dir, folder=True):  # a no-op on processes other than 0
        # process 0 decides what is done; every process then computes the same chunks
        try:
            done = _prepare(run_dir, name, config, chunks, digest) if writer else []
            state = {"done": done}
        except InputError as err:
            state = {"error": str(err)}
        state = broadcast_json(state)
        if "error" in state:
            raise InputError(state["error"])
        done = set(state["done"])
        todo = [i for i in range(len(chunks)) if i not in done and (only is None or i in set(only))]
        kept = sorted(done | set(todo))
        bar = make_bar(len(done) + len(todo), name, progress, initial=len(done), unit="chunk")

        def compute_and_save(i: int) -> None:
            ds = compute_chunk(chunks[i])
            ds = ds.assign_attrs(sweep_name=name, sweep_hash=digest, sweep_chunk=i)
            save_dataset(ds, chunk_path(run_dir, i))  # process 0 only
            bar.update(1)

        if workers == 1 or several or len(todo) < 2:
            for i in todo:
                compute_and_save(i)
        else:
            first = sorted(todo, key=lambda i: -cost(chunks[i])) if cost is not None else todo
            _in_threads(compute_and_save, first, workers)
        bar.close()

        # every process combines the bytes on process 0's disk (one process: read directly)
        parts = []
        for i in kept:
            path = chunk_path(run_dir, i)
            content = broadcast_bytes(path.read_bytes() if writer else None) if several else None
            parts.append(_load_chunk(path, digest, i, content))
    combined = combine(parts)
    attrs = {k: v for k, v in combined.attrs.items() if k not in SWEEP_ATTRS}
    attrs.update(sweep_name=name, sweep_hash=digest, sweep_chunks=len(kept))
    combined.attrs = attrs
    return combined
