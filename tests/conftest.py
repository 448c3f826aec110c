"""Shared fixtures: one tiny trained grid, reused by the train, CLI and plot tests."""

from __future__ import annotations

import pytest


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
