"""experiments.refinement_changes_k: k at the trained weights against k at the refined point."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from experiments.refinement_changes_k import k_trained_and_refined
from experiments.weights_vs_activations import QUICK
from toy_models.train import TrainConfig, train_grid


def test_k_is_counted_at_the_trained_weights_and_at_the_refined_point():
    train = train_grid(TrainConfig(n_features=5, n_hidden=2, feature_probabilities=(0.1,), seeds=2, steps=200,
                                   batch_size=256), progress=False)
    config = dataclasses.replace(QUICK, llc_samples=512, refine_steps=50)
    k_t, k_r = k_trained_and_refined(train, config, jax.random.key(0))
    assert k_t.shape == k_r.shape == (1, 1, 2)
    norms = np.linalg.norm(train["W"].transpose("feature_probability", "importance_decay", "seed", "hidden",
                                                "feature").values, axis=-2)
    np.testing.assert_array_equal(k_t, (norms > 0.5).sum(-1))  # the trained count is the represented rule
    assert ((k_r >= 0) & (k_r <= 5)).all()
