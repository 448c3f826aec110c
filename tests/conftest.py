"""Shared fixtures: one tiny trained grid, reused by the train, CLI and plot tests.

One JAX compilation cache for the whole run: both xdist workers and every process a test
starts (the CLI, `launch`, the 4-device checks) inherit `JAX_COMPILATION_CACHE_DIR`, so a program
one of them compiled is loaded, not compiled again, by the others. A loaded program is the same
executable, so no number changes; the folder is removed when the run ends. A cache the caller
set already is left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest


def pytest_configure(config):
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # an xdist worker (it inherited the controller's), or the caller's own cache
    config.jax_cache_dir = tempfile.mkdtemp(prefix="slt-superposition-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config.jax_cache_dir
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # every program, not only slow ones


def pytest_unconfigure(config):
    if getattr(config, "jax_cache_dir", None):
        shutil.rmtree(config.jax_cache_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _close_figures():
    """After each test, close the pyplot figures it drew and did not save (`figure_style.save`
    closes those it writes): pyplot keeps every figure open, and a worker's tests drew more than
    matplotlib's 20 (its RuntimeWarning). A closed figure can still be inspected."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture(scope="session")
def tiny_config():
    from toy_models.train import TrainConfig

    return TrainConfig(n_features=5, n_hidden=2, feature_probabilities=(0.05, 0.2), seeds=(0, 3),
                       steps=300, batch_size=256, chunk_steps=100, loss_curve_points=10,
                       snapshot_steps=(0, 150, 300), eval_samples=2048)


@pytest.fixture(scope="session")
def tiny_grid(tiny_config):
    """A 2 x 1 x 2 grid of n=5, m=2 models, 300 steps (untrained-ish: for plumbing, not science)."""
    from toy_models.train import train_grid

    return train_grid(tiny_config, progress=False)
