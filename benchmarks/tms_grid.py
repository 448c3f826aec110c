"""The trained grid the calibration and refined-LLC benchmarks share: TMS 6x2, 8 seeds per
feature probability (log-spaced over [0.01, 1]), 2000 AdamW steps."""

from __future__ import annotations

import jax
import numpy as np

from toy_models.train import TrainConfig, llc_inputs, train_grid


def trained_6x2_grid(instances: int, n_samples: int):
    """`instances` (a multiple of 8) trained 6x2 TMS and their LLC inputs.

    Returns (loss_fn, params with leaves `(instance, ...)`, data `(instance, n_samples, 6)`, instance count)."""
    probabilities = tuple(float(p) for p in np.geomspace(1.0, 0.01, instances // 8))
    grid = train_grid(TrainConfig(n_features=6, n_hidden=2, feature_probabilities=probabilities, seeds=8,
                                  steps=2000), progress=False)
    loss_fn, params, data = llc_inputs(grid, n_samples=n_samples, key=jax.random.key(0))
    return loss_fn, params, data, jax.tree_util.tree_leaves(params)[0].shape[0]
