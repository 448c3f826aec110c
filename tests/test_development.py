"""Development per class: each snapshot's critical-point class, its lambda, the figure's scale."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from analysis.compare_plots import _development_finding, _development_limits, plot_development
from analysis.development import snapshot_classes
from slt_superposition.theory import class_critical_point

# per seed, per snapshot: (k, positive dead biases) of the class point, or None for a non-polygon
PATHS = [[None, (5, 0), (5, 1)], [None, (5, 1), (6, 0)]]


def _weights(spec):
    if spec is None:  # three live columns bunched together: not a polygon
        W = np.zeros((2, 6))
        W[:, :3] = [[1.0, 0.9, 0.8], [0.0, 0.2, 0.4]]
        return W, np.full(6, -0.1)
    return class_critical_point(*spec)


def _dev(llc: np.ndarray) -> xr.Dataset:
    pairs = [[_weights(spec) for spec in row] for row in PATHS]
    W = np.array([[w for w, _ in row] for row in pairs])[None, None]  # (fp, decay, seed, snapshot, hidden, feature)
    b = np.array([[v for _, v in row] for row in pairs])[None, None]
    grid = ("feature_probability", "importance_decay", "seed", "snapshot")
    coords = {"feature_probability": [1.0], "importance_decay": [1.0], "seed": [0, 1], "snapshot": [10, 100, 1000]}
    dev = xr.Dataset({"W_snapshot": (grid + ("hidden", "feature"), W), "b_snapshot": (grid + ("feature",), b),
                      "llc_mean": (grid, llc[None, None]), "snapshot_loss": (grid, np.full((1, 1, 2, 3), 0.1)),
                      "overcompleteness": (grid, np.full((1, 1, 2, 3), 2.5))}, coords=coords, attrs={"n_hidden": 2})
    return dev.merge(snapshot_classes(dev["W_snapshot"], dev["b_snapshot"]))


def test_each_snapshot_gets_its_class_and_lambda():
    dev = _dev(np.zeros((2, 3)))
    labels = dev["class_label"].squeeze().values.astype(str)
    np.testing.assert_array_equal(labels, [["3 live (not a polygon)", "5-gon", "5-gon+1"],
                                           ["3 live (not a polygon)", "5-gon+1", "6-gon"]])
    np.testing.assert_array_equal(dev["class_llc"].squeeze().values, [[np.nan, 7.0, 8.5], [np.nan, 8.5, 8.5]])
    assert float(dev["class_loss"].squeeze()[0, 1]) == pytest.approx(0.06874, abs=1e-5)
    assert float(dev["class_loss"].squeeze()[1, 1]) == pytest.approx(0.06180, abs=1e-5)
    # the population loss at a class point is the class's loss
    np.testing.assert_allclose(dev["population_loss"].values[..., 1:], dev["class_loss"].values[..., 1:])


def test_finding_compares_final_snapshots_with_their_own_class():
    llc = np.array([[-100.0, 7.0, 9.35], [-50.0, 8.0, 7.65]])  # finals: +10% and -10% of 8.5
    text = _development_finding(_dev(llc), {})
    assert "5-gon -> 5-gon+1" in text and "no theory" in text
    assert "Median |relative error| over the 2 seeds with a theory: 10% (from -10% to +10%)" in text
    assert "A negative median (3 live (not a polygon)) marks snapshots that are not minima" in text
    assert "negative median" not in _development_finding(_dev(np.abs(llc)), {})
    assert "other features live than at the snapshot" not in text  # older datasets: no sentence
    left = _dev(llc).assign(llc_chains_left=(("feature_probability", "importance_decay", "seed", "snapshot"),
                                             [[[[3, 0, 0], [2, 1, 0]]]]))
    assert text + (" Snapshots on which a chain ended with other features live than at the snapshot, per class: "
                   "3 live (not a polygon) 2 of 2; 5-gon 0 of 1; 5-gon+1 1 of 2; 6-gon 0 of 1 (final snapshots: "
                   "0 of 2).") == _development_finding(left, {})


def test_finding_adds_the_refined_final_weights_against_their_class():
    llc = np.array([[-100.0, 7.0, 9.35], [-50.0, 8.0, 7.65]])
    dev = _dev(llc)
    seed = ("feature_probability", "importance_decay", "seed")
    dev = dev.assign({"llc_final_refined": (seed, [[[8.67, 7.0]]]), "final_refined_class_llc": (seed, [[[8.5, 7.0]]]),
                      "final_refined_class_label": (seed, [[["5-gon+1", "5-gon"]]]),
                      "grad_norm_final": (seed, [[[7e-3, 9e-3]]]), "grad_norm_final_refined": (seed, [[[8e-7, 6e-7]]]),
                      "llc_final_refined_trusted": (seed, [[[True, False]]])})
    text = _development_finding(dev, {})
    assert ("At a critical point of L_n (the final weights refined, ||grad L_n|| 7.0e-03-9.0e-03 -> at most "
            "8.0e-07): 5-gon+1 8.67 vs 8.5; 5-gon 7.00 vs 7; 1 of 2 trusted. Median |relative error| 1% "
            "(from +0% to +2%).") in text
    assert "At a critical point" not in _development_finding(_dev(llc), {})  # older datasets: no sentence
    ends = dev.assign({"llc_final_refined_chains_left": (seed, [[[0, 2]]]),
                       "llc_final_refined_chain_distance_max": (seed, [[[0.12, 0.85]]])})
    assert text + (" On 1 of 2 a chain ended with other features live than at the refined point (chains ended at "
                   "most 0.85 |w*| from it, rotation removed).") == _development_finding(ends, {})


def test_llc_axis_limits_come_from_converged_values(tmp_path):
    llc = np.array([[-100.0, 7.0, 9.35], [-50.0, 8.0, 7.65]])
    lo, hi = _development_limits(llc, np.array([7.0, 8.5]))
    assert -5 < lo < 0 and 9.35 < hi < 12  # the saddle readings near -100 do not set the scale
    assert plot_development(_dev(llc), tmp_path)[0].stat().st_size > 0


def test_full_batch_snapshots_in_the_chen_setting_use_the_closed_form_with_the_same_estimates(monkeypatch):
    import jax

    import analysis.development as development
    from slt_superposition.llc import SGLDConfig
    from toy_models.one_hot import one_hot_tms_loss
    from toy_models.train import TrainConfig, train_grid

    train = train_grid(TrainConfig(n_features=6, n_hidden=2, data="high_sparsity_limit", feature_probabilities=(1.0,),
                                   seeds=(0,), steps=300, snapshot_steps=(100, 300)), progress=False)
    sgld = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=2, num_steps=200, num_burnin=100, batch_size=None)
    loss_fn, _, data = development.llc_inputs(train, n_samples=1000, key=jax.random.key(0))
    assert development.full_batch_inputs(train, loss_fn, data)[0] is one_hot_tms_loss
    exact = development.snapshot_llc(train, sgld=sgld, n_samples=1000, key=jax.random.key(1), check_steps=50)
    monkeypatch.setattr(development, "full_batch_inputs", lambda train, loss_fn, data: (loss_fn, data))
    rows = development.snapshot_llc(train, sgld=sgld, n_samples=1000, key=jax.random.key(1), check_steps=50)
    np.testing.assert_allclose(exact["llc_mean"].values, rows["llc_mean"].values, rtol=1e-3)
    np.testing.assert_allclose(exact["init_loss"].values, rows["init_loss"].values, rtol=1e-5)
