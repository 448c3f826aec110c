"""The flagship's fragility section: paired perturbed data, retraining at q' from the same
initialisation, susceptibilities on the LLC's own chains, and the agreement / conjecture
numbers (analysis.retrain_response, analysis.susceptibility_report, analysis.fragility_test)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import xarray as xr

from slt_superposition.llc import SGLDConfig
from toy_models.train import GRID_DIMS, llc_inputs


def test_scaled_feature_reads_the_same_draws_under_the_lowered_probability():
    """x read under p_j x f from x alone equals the generator's own draw at p' (same key)."""
    from analysis.susceptibility_report import scaled_feature
    from toy_models.data import sparse_uniform

    key, p, f = jax.random.key(3), np.float32(0.3), 0.75
    x = sparse_uniform(key, 20_000, 4, p)
    p_vec = np.full(4, p, np.float32)
    p_vec[2] = p * np.float32(f)
    direct = np.asarray(sparse_uniform(key, 20_000, 4, p_vec))
    scaled = np.asarray(scaled_feature(x, 2, f))
    # presence can differ only where u sits within rounding of the threshold f p
    assert np.mean((scaled > 0) != (direct > 0)) < 1e-3
    both = (scaled > 0) & (direct > 0)
    np.testing.assert_allclose(scaled[both], direct[both], rtol=1e-5)
    np.testing.assert_array_equal(scaled[:, [0, 1, 3]], np.asarray(x)[:, [0, 1, 3]])
    assert 0.2 < (scaled[:, 2] > 0).mean() < 0.25  # about f p = 0.225 present


def test_retraining_control_reproduces_training_and_factor_one_is_the_control(tiny_config, tiny_grid):
    from analysis.retrain_response import retrain_perturbed, training_response

    config = dataclasses.replace(tiny_config, snapshot_steps=())
    retrained = retrain_perturbed(config, (0, 3), 1.0, control=True)
    # the control and a factor-1 "perturbation" are the original training, bit for bit
    np.testing.assert_array_equal(retrained["W_control"].values, tiny_grid["W"].values)
    np.testing.assert_array_equal(retrained["W"].isel(perturbed_feature=0).values, tiny_grid["W"].values)
    response = training_response(retrained, tiny_grid["W"])
    assert float(np.abs(response["control_drift"]).max()) == 0.0
    assert float(np.abs(response["retrain_delta_norm"]).max()) == 0.0
    # a real perturbation on seed 0 only: the weights move, and the response is against the trained weights
    lowered = retrain_perturbed(dataclasses.replace(config, seeds=(0,)), (1,), 0.5)
    moved = training_response(lowered, tiny_grid["W"])
    assert moved.sizes["seed"] == 1 and "control_drift" not in moved
    assert float(np.abs(moved["retrain_delta_norm"]).max()) > 1e-3
    assert moved["retrain_delta_k"].dims == ("feature_probability", "importance_decay", "seed", "perturbed_feature")


def test_flagship_susceptibilities_shapes_and_perturbation_sizes(tiny_grid):
    """Every instance's response matrix in one program (that the chains are the LLC's own, bit
    for bit, is asserted by the flagship test: `replay_llc` equals `llc_mean`)."""
    from analysis.susceptibility_report import flagship_susceptibilities

    loss_fn, params, data = llc_inputs(tiny_grid, n_samples=256, key=jax.random.key(1))
    dims = {d: tiny_grid[d].values for d in GRID_DIMS}
    shape = tuple(len(v) for v in dims.values())
    unflat = lambda tree: jax.tree_util.tree_map(lambda x: x.reshape(shape + x.shape[1:]), tree)
    params, data = unflat(params), unflat(data)
    config = SGLDConfig(step_size=np.full(shape, 1e-4), localization=1.0, num_chains=2,
                        num_steps=np.full(shape, 200), num_burnin=np.full(shape, 100), batch_size=64)
    sus = flagship_susceptibilities(loss_fn, params, data, config=config, key=jax.random.key(2), instance_dims=dims,
                                    features=(0, 2), factor=0.75, eval_samples=128)
    assert sus["susceptibility_norm"].dims == GRID_DIMS + ("perturbed_feature", "feature")
    assert np.isfinite(sus["susceptibility_norm"]).all() and np.abs(sus["susceptibility_norm"]).max() > 0
    # every perturbation moves the loss (its sign depends on the model: fewer but larger present values)
    assert (sus["delta_loss_mean"] != 0).all()
    with pytest.raises(ValueError, match="factor"):
        flagship_susceptibilities(loss_fn, params, data, config=config, key=jax.random.key(2), instance_dims=dims,
                                  features=(0,), factor=1.5, eval_samples=128)


def _synthetic(region_scale: float) -> xr.Dataset:
    """Two models x 4 probabilities x 2 seeds; the region (first two probabilities) has chi
    `region_scale` times the rest's; retraining (seed 0) equals 2 chi plus a sign flip on one entry."""
    rng = np.random.default_rng(0)
    dims = ("model", "feature_probability", "seed")
    chi = rng.normal(size=(2, 4, 2, 2, 3))
    region = np.zeros((2, 4, 2), bool)
    region[:, :2] = True
    chi = np.where(region[..., None, None], region_scale * chi, chi)
    delta = np.full_like(chi, np.nan)
    delta[:, :, 0] = 2 * chi[:, :, 0]
    delta[0, 0, 0, 0, 0] *= -1
    coords = {"model": ["a", "b"], "feature_probability": [1.0, 0.5, 0.1, 0.01], "seed": [0, 1],
              "perturbed_feature": [0, 1], "feature": [0, 1, 2]}
    full = dims + ("perturbed_feature", "feature")
    norm = np.full((2, 4, 2, 3), 0.9)
    return xr.Dataset({
        "susceptibility_norm": (full, chi), "susceptibility_dimensionality": (full, chi / 10),
        "retrain_delta_norm": (full, delta), "retrain_delta_dimensionality": (full, delta / 10),
        "retrain_delta_k": (dims + ("perturbed_feature",), np.where(np.isnan(delta[..., 0]), np.nan, 0.0)),
        "feature_norm_trained": (dims + ("feature",), norm),
        "undercomplete_weights_overcomplete_activations": (dims, region),
    }, coords=coords)


def test_agreement_and_conjecture_numbers():
    from analysis.fragility_test import agreement_rows, conjecture_rows, pooled_conjecture, response_measures

    ds = _synthetic(region_scale=10.0)
    measures = response_measures(ds)
    # retraining = 2 chi except one flipped entry of model a, p = 1, seed 0
    agree = measures["retrain_sign_agreement"].sel(seed=0).values
    assert agree[0, 0] == pytest.approx(5 / 6) and np.all(agree.ravel()[1:] == 1.0)
    assert np.isnan(measures["retrain_sign_agreement"].sel(seed=1)).all()
    np.testing.assert_allclose(measures["retrain_rank_correlation"].sel(seed=0).values.ravel()[1:], 1.0)
    rows = agreement_rows(ds, measures)
    assert rows[1][1] == "4" and rows[1][2] == "1.00 (24)" and rows[1][-1] == "2.00"
    # every trained column is at 0.9: chi predicts a column lost where 0.9 + chi <= 0.5
    predicted = measures["predicted_delta_k"].values
    expected = -(0.9 + ds["susceptibility_norm"].values <= 0.5).sum(-1)
    np.testing.assert_array_equal(predicted, expected)
    table = conjecture_rows(ds, measures)
    assert [r[1:3] for r in table] == [("4", "4"), ("4", "4")]
    assert all(float(r[5]) > 3 and float(r[6]) < 0.05 for r in table)
    assert pooled_conjecture(ds, measures)["p_greater"] < 0.01
    # no difference: the test must not find one
    flat = _synthetic(region_scale=1.0)
    assert pooled_conjecture(flat, response_measures(flat))["p_greater"] > 0.05


def test_section_and_control_commands_give_one_line_errors_and_help(capsys):
    from analysis.excursion_table import main as excursion_table
    from analysis.fragility_test import main as fragility_test
    from analysis.retrain_response import main as retrain_response

    for command in (fragility_test, retrain_response):
        with pytest.raises(SystemExit, match="no dataset at /nonexistent"):
            command(["/nonexistent"])
    for command in (fragility_test, retrain_response, excursion_table):  # argparse formats every help string
        with pytest.raises(SystemExit) as done:
            command(["--help"])
        assert done.value.code == 0
    assert "more than 10% of their norm" in capsys.readouterr().out


def _with_config(train: xr.Dataset, **changes) -> xr.Dataset:
    """`train` with its stored TrainConfig changed (the grid's weights left as they are)."""
    import json

    config = json.loads(train.attrs["config"])
    config.update(changes)
    return train.assign_attrs(config=json.dumps(config, sort_keys=True))


def test_measurements_that_perturb_sparse_uniform_refuse_other_grids_and_bad_features(tiny_config, tiny_grid):
    """Retraining, the response matrix and the per-feature dataset perturb or condition
    `sparse_uniform`'s probabilities with the plain loss: another generator, model or importance is
    one line (they ran on the wrong distribution before: `high_sparsity_limit` retrained exactly the
    control), as is a feature index out of range (jax clamped or dropped it: a response of 0)."""
    from analysis.per_feature import per_feature_dataset
    from analysis.retrain_response import retrain_perturbed
    from analysis.susceptibility_report import flagship_susceptibility_chains, response_matrix
    from slt_superposition.errors import InputError

    with pytest.raises(InputError, match="trained on 'high_sparsity_limit' data"):
        retrain_perturbed(dataclasses.replace(tiny_config, data="high_sparsity_limit"), (0,), 0.5)
    with pytest.raises(InputError, match="trained on 'correlated_pairs' data"):
        retrain_perturbed(dataclasses.replace(tiny_config, data="correlated_pairs", n_features=4), (0,), 0.5)
    with pytest.raises(InputError, match="feature index 7 is out of range: the model has 5 features"):
        retrain_perturbed(tiny_config, (0, 7), 0.5)
    config = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=2, num_steps=20, num_burnin=5)
    with pytest.raises(InputError, match="importance decays \\[0.5\\]"):
        response_matrix(_with_config(tiny_grid, importance_decays=[0.5]), config=config, key=jax.random.key(0))
    with pytest.raises(InputError, match="model 'tms_relu_hidden'"):
        response_matrix(_with_config(tiny_grid, model="tms_relu_hidden"), config=config, key=jax.random.key(0))
    with pytest.raises(InputError, match="data-refined LLC .* 'high_sparsity_limit' data"):
        per_feature_dataset(_with_config(tiny_grid, data="high_sparsity_limit"), key=jax.random.key(0))
    loss_fn, params, data = llc_inputs(tiny_grid, n_samples=64, key=jax.random.key(1))
    dims = {d: tiny_grid[d].values for d in GRID_DIMS}
    options = dict(config=config, key=jax.random.key(2), instance_dims=dims, eval_samples=32)
    with pytest.raises(InputError, match="feature index -1 is out of range"):
        flagship_susceptibility_chains(loss_fn, params, data, features=(-1,), factor=0.5, **options)
    with pytest.raises(InputError, match="factor must be in \\(0, 1\\]"):
        flagship_susceptibility_chains(loss_fn, params, data, features=(0,), factor=1.5, **options)


def test_conjecture_rows_read_the_region_and_the_susceptibility_in_the_same_order():
    # the region mask stored (model, seed, feature_probability) against the susceptibility's
    # (model, feature_probability, seed): the instance in the region (p = 0.1, seed 1) has the large
    # value; read by position the mask picked another instance
    from analysis.fragility_test import GROUP, conjecture_rows, pooled_conjecture

    coords = {"model": ["m"], "feature_probability": [0.1, 0.3], "seed": [0, 1]}
    value = xr.DataArray([[[1.0, 9.0], [1.0, 1.0]]], dims=("model", "feature_probability", "seed"), coords=coords)
    group = xr.DataArray([[[False, True], [False, False]]], dims=value.dims, coords=coords)
    measures = xr.Dataset({"susceptibility_rms_norm": value})
    stored = xr.Dataset({GROUP: group})
    swapped = xr.Dataset({GROUP: group.transpose("model", "seed", "feature_probability")})
    rows = conjecture_rows(stored, measures)
    assert rows == conjecture_rows(swapped, measures)
    assert rows[0][1:6] == ("1", "3", "9", "1", "9.00") and rows[0][-1] == "1 of 1"
    assert pooled_conjecture(stored, measures) == pooled_conjecture(swapped, measures)


def test_predicted_delta_k_linearises_at_the_refined_point():
    """chi is read on the chains at the refined point: Delta k as predicted adds it to the refined
    norms (the trained ones were used, which refinement had moved: 0.67 where the refined gave 0.83)."""
    from analysis.fragility_test import response_measures

    ds = _synthetic(region_scale=1.0)
    ds["susceptibility_norm"][:] = 0.2
    ds["feature_norm_refined"] = ds["feature_norm_trained"] * 0 + 0.4  # below 0.5, crossing with chi: +3
    predicted = response_measures(ds)["predicted_delta_k"]
    np.testing.assert_array_equal(predicted.values, 3.0)  # 0.9 + 0.2 (trained) crosses nothing
    old = response_measures(ds.drop_vars("feature_norm_refined"))["predicted_delta_k"]
    np.testing.assert_array_equal(old.values, 0.0)  # runs stored before: the trained norms, as then
