"""experiments/tms_chain_excursions.py: the distances it reports, with and without relabelling."""

from __future__ import annotations

import numpy as np

from experiments.tms_chain_excursions import aligned_distance, live_set


def test_a_rotated_relabelled_copy_is_far_until_relabelling_is_allowed():
    rng = np.random.default_rng(0)
    W0, b0 = rng.normal(size=(2, 6)), rng.normal(size=6)
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    assert aligned_distance(R @ W0, b0, W0, b0, permute=False) < 1e-12  # the orbit costs nothing
    order = [3, 0, 5, 1, 2, 4]
    W, b = R @ W0[:, order], b0[order]
    assert aligned_distance(W, b, W0, b0, permute=False) > 0.3
    assert aligned_distance(W, b, W0, b0, permute=True) < 1e-12
    # a real move stays a move under both
    moved = W0 + 0.1 * rng.normal(size=W0.shape)
    assert 0.01 < aligned_distance(moved, b0, W0, b0, permute=True) <= aligned_distance(moved, b0, W0, b0, permute=False)


def test_live_set_uses_half_the_reference_median_norm():
    W0 = np.array([[1.0, 0.0, 0.9, 0.02], [0.0, 1.0, 0.3, 0.0]])  # norms 1, 1, 0.95, 0.02: median 0.97
    assert live_set(W0, W0) == frozenset({0, 1, 2})
    swapped = W0[:, [3, 1, 2, 0]]  # feature 0 dead, feature 3 live
    assert live_set(swapped, W0) == frozenset({1, 2, 3})
