"""Provenance attrs carried by every result dataset: config, seeds, versions, commit.

netCDF attributes hold only strings and numbers, so structured values are stored as
JSON strings (``config``, ``package_versions``) and read back with `read_config`.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
PACKAGES = ("slt-superposition", "jax", "jaxlib", "flax", "optax", "numpy", "scipy", "xarray")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide the numbers (a copy; read once per process)."""
    return dict(_package_versions())


@functools.lru_cache(maxsize=1)
def _package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the source tree this package runs from ('unknown' outside git)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )
        if commit != "unknown" and dirty.stdout.strip():
            commit += "-dirty"
        return commit
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def jsonable(value: Any) -> Any:
    """`value` with numpy arrays and scalars as lists and numbers, paths as strings (for JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def provenance_attrs(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    """Attrs for a result dataset of `kind` ('train', 'llc', 'compare', ...).

    `config` must hold everything needed to rerun (including seeds); it is stored as JSON.
    """
    import jax

    return {
        "slt_superposition_kind": kind,
        "schema_version": SCHEMA_VERSION,
        "config": json.dumps(jsonable(config), sort_keys=True),
        "package_versions": json.dumps(package_versions(), sort_keys=True),
        "git_commit": git_commit(),
        "platform": f"{platform.platform()} python {platform.python_version()} jax-backend {jax.default_backend()} "
                    f"matmul-precision {jax.config.jax_default_matmul_precision}",
    }


def read_config(attrs: dict[str, Any]) -> dict[str, Any]:
    """The config dict stored by `provenance_attrs`."""
    return json.loads(attrs["config"])
