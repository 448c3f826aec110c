"""The console script keeps compiled programs on disk (`compile_cache`): where, when not, and that a
second run loads every program instead of compiling it and writes the same bits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import xarray as xr

from slt_superposition.compile_cache import default_folder, enable_for_console_script

TINY = ["-n", "5", "-m", "2", "-p", "0.1", "--seeds", "2", "--steps", "40", "--batch-size", "32"]


def _console_env(**extra) -> dict:
    """The environment of a user who set no JAX cache folder (the suite sets one for itself)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")
           and k != "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"}
    return env | extra


def test_default_folder_order(tmp_path):
    assert default_folder({"SLT_COMPILATION_CACHE_DIR": str(tmp_path / "a"), "XDG_CACHE_HOME": "/x"}) == tmp_path / "a"
    assert default_folder({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "slt-superposition" / "jax"
    assert default_folder({}) == Path("~/.cache/slt-superposition/jax").expanduser()


def test_the_users_choice_is_left_alone(tmp_path):
    # off on request, and never over a cache folder the user (here: the test suite) already chose
    assert enable_for_console_script({"SLT_COMPILATION_CACHE": "0", "SLT_COMPILATION_CACHE_DIR": str(tmp_path)}) is None
    assert enable_for_console_script({"JAX_COMPILATION_CACHE_DIR": "/elsewhere",
                                      "SLT_COMPILATION_CACHE_DIR": str(tmp_path)}) is None
    assert not any(tmp_path.iterdir())


def test_an_unwritable_folder_is_one_line_and_the_run_goes_on():
    proc = subprocess.run([sys.executable, "-m", "slt_superposition", "--version"], capture_output=True, text=True,
                          timeout=120, env=_console_env(SLT_COMPILATION_CACHE_DIR="/proc/no-such-folder"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "slt-superposition: compiled programs not kept between runs: cannot write /proc/no-such-folder"), lines


def test_a_second_run_loads_every_program_and_writes_the_same_bits(tmp_path):
    cache = tmp_path / "cache"
    env = _console_env(SLT_COMPILATION_CACHE_DIR=str(cache))
    run = lambda out: subprocess.run([sys.executable, "-m", "slt_superposition", "train", *TINY, "--out", str(out)],
                                     capture_output=True, text=True, timeout=300, env=env)
    first = run(tmp_path / "a.nc")
    assert first.returncode == 0, first.stderr
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) >= 3  # the training program and its helpers, every one kept
    second = run(tmp_path / "b.nc")
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing compiled again: no new entry
    a, b = xr.open_dataset(tmp_path / "a.nc").load(), xr.open_dataset(tmp_path / "b.nc").load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    for name in a.data_vars:
        assert a[name].values.tobytes() == b[name].values.tobytes(), name


def test_prune_removes_the_least_recently_used_files_first(tmp_path):
    from slt_superposition.compile_cache import prune

    for i in range(5):
        path = tmp_path / f"entry{i}"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1000 + i, 1000 + i))  # entry0 the least recently used
    assert prune(tmp_path, 500) == 0
    assert prune(tmp_path, 250) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry3", "entry4"]
