"""analysis/chain_excursions.py and experiments/tms_chain_excursions.py: where chains ended, against w*."""

from __future__ import annotations

import jax
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from analysis.chain_excursions import chain_excursions, live_features, rotation_aligned_distance
from experiments.tms_chain_excursions import relabelled_distance


def _rotation(angle: float) -> np.ndarray:
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def test_rotation_costs_nothing_and_a_relabelled_copy_is_far_until_relabelling_is_allowed():
    rng = np.random.default_rng(0)
    W0, b0 = rng.normal(size=(2, 6)), rng.normal(size=6)
    R = _rotation(0.7)
    assert rotation_aligned_distance(R @ W0, b0, W0, b0) < 1e-7
    reflected = np.diag([1.0, -1.0]) @ W0  # O(m), reflections included
    assert rotation_aligned_distance(reflected, b0, W0, b0) < 1e-7
    order = [3, 0, 5, 1, 2, 4]
    W, b = R @ W0[:, order], b0[order]
    assert rotation_aligned_distance(W, b, W0, b0) > 0.3
    assert relabelled_distance(W, b, W0, b0) < 1e-7
    # against a brute-force search over rotation angles and both orientations
    moved, b_moved = W0 + 0.3 * rng.normal(size=W0.shape), b0 + 0.1
    scale = np.sqrt((W0 ** 2).sum() + (b0 ** 2).sum())
    brute = min(np.sqrt(((F @ _rotation(t) @ moved - W0) ** 2).sum() + ((b_moved - b0) ** 2).sum()) / scale
                for t in np.linspace(0, 2 * np.pi, 20001) for F in (np.eye(2), np.diag([1.0, -1.0])))
    np.testing.assert_allclose(rotation_aligned_distance(moved, b_moved, W0, b0), brute, rtol=1e-5)


def test_live_features_use_half_the_reference_largest_norm():
    W0 = np.array([[1.0, 0.0, 0.9, 0.02], [0.0, 1.0, 0.3, 0.0]])  # norms 1, 1, 0.95, 0.02
    np.testing.assert_array_equal(live_features(W0, W0), [True, True, True, False])
    swapped = W0[:, [3, 1, 2, 0]]  # feature 0 dead, feature 3 live
    np.testing.assert_array_equal(live_features(swapped, W0), [False, True, True, True])
    # most features dead (a dense feature probability): the median column norm is about 0, and half of
    # it made every column live; two live features stay two, and jitter of the dead ones changes nothing
    rng = np.random.default_rng(0)
    dense = np.zeros((2, 6))
    dense[:, :2] = np.eye(2)
    dense[:, 2:] = 1e-3 * rng.normal(size=(2, 4))
    expected = [True, True, False, False, False, False]
    np.testing.assert_array_equal(live_features(dense, dense), expected)
    np.testing.assert_array_equal(live_features(dense + 0.02 * rng.normal(size=(2, 6)), dense), expected)


def test_divergent_chains_non_finite_ends_are_left_out():
    W0, b0 = np.array([[1.0, 0.0, 0.7], [0.0, 1.0, 0.7]]), np.array([0.1, 0.1, -0.2])
    flat = np.concatenate([W0.ravel(), b0])
    ends = np.stack([flat + 0.01, np.full(flat.shape, np.nan)])[None]  # (instance, chain, d)
    llc = xr.Dataset({"llc_mean": ("instance", [1.0]), "final_position": (("instance", "chain", "parameter"), ends),
                      "diverged": (("instance", "chain"), np.array([[False, True]]))})
    out = chain_excursions(llc, W0[None], b0[None])
    assert out["llc_chains_left"].values.tolist() == [0]
    assert 0 < out["llc_chain_distance_max"].values[0] < 0.05


def test_chain_excursions_reads_final_positions_in_ravel_order():
    rng = np.random.default_rng(1)
    W0 = np.array([[1.0, 0.0, 0.7, 0.01], [0.0, 1.0, 0.7, 0.0]])
    b0 = np.array([0.1, 0.1, -0.2, 0.3])
    stay = {"W": _rotation(1.0) @ W0, "b": b0}  # on the orbit: distance 0, same live set
    swap = {"W": W0[:, [3, 1, 2, 0]], "b": b0}  # feature 0 dead instead of feature 3
    near = {"W": W0 + 0.01 * rng.normal(size=W0.shape), "b": b0}
    flat = lambda p: np.asarray(ravel_pytree(jax.tree_util.tree_map(np.float32, p))[0])
    ends = np.stack([np.stack([flat(stay), flat(near)]), np.stack([flat(swap), flat(near)])])  # (instance, chain, d)
    llc = xr.Dataset({"llc_mean": ("instance", [1.0, 2.0]),
                      "final_position": (("instance", "chain", "parameter"), ends),
                      "diverged": (("instance", "chain"), np.array([[False, False], [False, True]]))})
    out = chain_excursions(llc, np.stack([W0, W0]), np.stack([b0, b0]))
    np.testing.assert_array_equal(out["llc_chains_left"].values, [0, 1])
    assert out["llc_chain_distance_max"].values[0] < 0.02  # the rotated chain is at distance 0
    assert out["llc_chain_distance_max"].values[1] > 0.3  # the swapped one, the divergent one left out
