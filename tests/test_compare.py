"""The comparison layer: both bases joined on a grid, relations, fragility, the flagship."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from analysis.compare import activation_side, compare, fragility, relations, weight_side
from slt_superposition.errors import InputError

GRID = ("feature_probability", "importance_decay", "seed")


def _polygon(n: int, radius: float = 1.0) -> np.ndarray:
    """W: (2, n), the columns a regular n-gon of the given radius."""
    angles = 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)])


def _train_like(Ws: list[np.ndarray], fps: list[float]) -> xr.Dataset:
    """A minimal 'train'-shaped dataset: one W per feature probability, one seed."""
    W = np.stack(Ws)[:, None, None]  # (fp, importance_decay, seed, hidden, feature)
    return xr.Dataset(
        {"W": (GRID + ("hidden", "feature"), W), "loss": (GRID, np.zeros(W.shape[:3]))},
        coords={"feature_probability": fps, "importance_decay": [1.0], "seed": [0]},
        attrs={"model": "tms"},
    )


def _llc_like(values: list[float], std: float = 0.1, chains: int = 4) -> xr.Dataset:
    shape = (len(values), 1, 1)
    return xr.Dataset(
        {
            "llc_mean": (GRID, np.reshape(values, shape)),
            "llc_std": (GRID, np.full(shape, std)),
            "llc_se": (GRID, np.full(shape, std / np.sqrt(chains))),  # as llc_dataset: std / sqrt(healthy chains)
            "n_diverged": (GRID, np.zeros(shape, int)),
            "mala_acceptance": (GRID + ("chain",), np.full(shape + (chains,), 0.9)),
        }
    )


def test_constructed_pentagon_is_overcomplete_with_d_i_two_fifths():
    train = _train_like([_polygon(5)], [0.05])
    act = activation_side(train).squeeze()
    assert float(act["overcompleteness"]) == pytest.approx(2.5)
    assert int(act["n_represented"]) == 5
    np.testing.assert_allclose(act["sorted_feature_dimensionality"].values.ravel(), 0.4, atol=1e-12)
    assert float(act["features_per_dimension"]) == pytest.approx(2.5)


def test_relations_and_fragility_on_a_constructed_grid():
    # p = 1: an orthogonal pair plus three zero columns (k = m = 2); p = 0.1 and 0.01: a pentagon
    square = np.zeros((2, 5))
    square[0, 0] = square[1, 1] = 1.0
    train = _train_like([square, _polygon(5), _polygon(5)], [1.0, 0.1, 0.01])
    ds = compare(train, _llc_like([7.5, 5.0, 4.0]))
    d = 2 * 5 + 5
    assert int(ds["n_parameters"]) == d
    np.testing.assert_allclose(ds["d_eff_fraction"].values.ravel(), 2 * np.array([7.5, 5.0, 4.0]) / d)
    # 2 llc = d is not undercomplete; below d by many standard errors is
    np.testing.assert_array_equal(ds["weights_undercomplete"].values.ravel(), [False, True, True])
    np.testing.assert_array_equal(ds["activations_overcomplete"].values.ravel(), [False, True, True])
    both = ds["undercomplete_weights_overcomplete_activations"].values.ravel()
    np.testing.assert_array_equal(both, [False, True, True])
    # the geometry changes between p = 0.1 and p = 1 (the next larger p), not between 0.01 and 0.1
    changes = ds["geometry_changes"].sel(importance_decay=1.0, seed=0)
    assert bool(changes.sel(feature_probability=0.1)) and not bool(changes.sel(feature_probability=0.01))
    assert not bool(changes.sel(feature_probability=1.0))  # no neighbour above
    # d llc / d log p by finite differences in log p: one-sided at the ends
    slope = ds["dllc_dlogp"].sel(importance_decay=1.0, seed=0)
    expected_low = (5.0 - 4.0) / (np.log(0.1) - np.log(0.01))
    assert float(slope.sel(feature_probability=0.01)) == pytest.approx(expected_low)
    for name in ("overcompleteness", "d_eff", "dllc_dlogp", "geometry_changes"):
        assert "long_name" in ds[name].attrs and "units" in ds[name].attrs


def test_weight_side_bound_flags_come_from_the_hessian_rank():
    llc = _llc_like([3.0, 9.0])
    basis = xr.Dataset(
        {
            "hessian_rank": (GRID, np.array([10, 10]).reshape(2, 1, 1)),
            "gn_rank": (GRID, np.array([10, 10]).reshape(2, 1, 1)),
            "grad_norm": (GRID, np.zeros((2, 1, 1))),
        }
    )
    out = weight_side(llc, 15, basis)  # bounds: 5 <= llc <= 5 + 5/4
    np.testing.assert_array_equal(out["violates_bound"].values.ravel(), [True, True])
    np.testing.assert_allclose(out["bound_excess"].values.ravel(), [3.0 - 5.0, 9.0 - 6.25])


def test_fragility_is_zero_for_a_flat_grid():
    train = _train_like([_polygon(5)] * 3, [1.0, 0.1, 0.01])
    ds = activation_side(train).merge(_llc_like([4.0, 4.0, 4.0])[["llc_mean"]])
    out = fragility(ds)
    assert not out["geometry_changes"].any()
    np.testing.assert_allclose(out["dllc_dlogp"].values, 0.0)


def test_relations_reads_the_budget_or_falls_back_to_d_eff():
    # with the degeneracy budget: undercomplete where the excess is above 2 of its SE; k > m = 2 overcomplete
    ds = xr.Dataset({"excess_degeneracy": ("i", [3.0, 1.0, 3.0]), "excess_degeneracy_se": ("i", [1.0, 1.0, 1.0]),
                     "n_represented": ("i", [5, 5, 2])}, attrs={"n_hidden": 2})
    out = relations(ds)
    np.testing.assert_array_equal(out["weights_undercomplete"].values, [True, False, True])
    np.testing.assert_array_equal(out["activations_overcomplete"].values, [True, True, False])
    np.testing.assert_array_equal(out["undercomplete_weights_overcomplete_activations"].values, [True, False, False])
    assert "excess_degeneracy" in out["weights_undercomplete"].attrs["long_name"]
    # without it: d_eff = 2 llc below d = 15 by more than 2 SE of d_eff (4 SE of llc)
    ds = xr.Dataset({"d_eff": ("i", [10.0, 14.0, 10.0]), "llc_standard_error": ("i", [0.5, 0.5, 2.0]),
                     "n_parameters": 15, "n_represented": ("i", [5, 5, 5])}, attrs={"n_hidden": 2})
    np.testing.assert_array_equal(relations(ds)["weights_undercomplete"].values, [True, False, False])


def test_flagship_refuses_a_foreign_sweep_folder_before_anything_runs(tmp_path):
    # the development part runs beside the models, so the sweep's folder is checked before it starts
    from experiments.weights_vs_activations import QUICK, run

    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="no sweep manifest"):
        run(tmp_path, config=QUICK, progress=False)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["notes.txt", "sweep"]


def test_flagship_stops_its_development_part_when_a_model_fails(tmp_path, monkeypatch, capsys):
    # the development part runs in a thread beside the models: a model's error is said at once and the
    # development part is told to stop, instead of the error waiting minutes for it to finish
    from experiments import weights_vs_activations as flagship

    saw_stop = []

    def development(config, out_dir, progress=True, stop=None):
        saw_stop.append(stop.wait(120))
        raise flagship.DevelopmentStopped("stopped")

    def broken_model(*args, **kwargs):
        raise RuntimeError("model broke")

    monkeypatch.setattr(flagship, "run_development", development)
    monkeypatch.setattr(flagship, "compute_model", broken_model)
    with pytest.raises(RuntimeError, match="model broke"):
        flagship.run(tmp_path, config=flagship.QUICK, progress=False)
    assert saw_stop == [True]
    assert "model broke; stopping the development part" in capsys.readouterr().err


def test_development_part_told_to_stop_ends_before_its_next_stage(tmp_path):
    import threading

    from experiments.weights_vs_activations import QUICK, DevelopmentStopped, run_development

    stop = threading.Event()
    stop.set()
    with pytest.raises(DevelopmentStopped):
        run_development(QUICK, tmp_path, progress=False, stop=stop)
    assert list(tmp_path.iterdir()) == []


def test_config_of_run_reads_the_run_and_refuses_what_it_cannot(tmp_path):
    import dataclasses

    from experiments.weights_vs_activations import QUICK, config_of_run
    from slt_superposition.io import save_dataset
    from slt_superposition.provenance import provenance_attrs

    with pytest.raises(InputError, match="holds no finished weights-vs-activations run"):
        config_of_run(tmp_path)
    changed = dataclasses.replace(QUICK, seeds=3, models=((4, 2),))  # as `--quick --set seeds=3 ...` stores it
    stored = dataclasses.asdict(changed) | {"feature_probabilities": changed.feature_probabilities}
    run = tmp_path / "run"
    save_dataset(xr.Dataset(attrs=provenance_attrs("compare", stored)), run / "weights_vs_activations.nc")
    assert config_of_run(run) == changed
    old = tmp_path / "old"
    save_dataset(xr.Dataset(attrs=provenance_attrs("compare", stored | {"retired_field": 1})),
                 old / "weights_vs_activations.nc")
    with pytest.raises(InputError, match="settings this version does not have \\(retired_field\\)"):
        config_of_run(old)


@pytest.mark.slow
def test_flagship_tiny_grid_is_reproducible_and_self_describing(tmp_path, capsys):
    import json
    import re

    from analysis.compare import join_models
    from experiments.weights_vs_activations import FlagshipConfig, compute_model, run
    from slt_superposition.io import save_dataset

    config = FlagshipConfig(
        models=((5, 2),), n_feature_probabilities=3, min_feature_probability=0.05, seeds=2, train_steps=600,
        llc_samples=512, llc_chains=2, llc_batch_size=128, check_steps=100, calibration_chains=2,
        calibration_step_sizes=(1e-5, 1e-4, 1e-3), calibration_sweep_steps=100, calibration_min_steps=50,
        calibration_max_steps=200, calibration_long_check_steps=400, hessian_samples=256, sae_samples=512,
        sae_steps=50, sae_restarts=1, development_steps=200, development_seeds=1, development_snapshots=2,
        development_samples=700, development_max_steps=200, development_long_check_steps=400,
        susceptibility_eval_samples=64,
    )
    first = run(tmp_path / "a", config=config, progress=False)
    # reproducible: the model's chunk computed again (everything weights_vs_activations.nc holds;
    # the second pass skips the development part and the figures, which the file does not hold)
    again = join_models([compute_model(5, 2, config, tmp_path / "b", progress=False)])
    save_dataset(again, tmp_path / "b" / "weights_vs_activations.nc")
    a = xr.open_dataset(tmp_path / "a" / "weights_vs_activations.nc").load()
    b = xr.open_dataset(tmp_path / "b" / "weights_vs_activations.nc").load()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert json.loads(a.attrs["config"])["train_steps"] == config.train_steps
    assert set(first.data_vars) == set(again.data_vars)
    for name in ("llc_mean", "d_eff_fraction", "hessian_rank", "gn_rank", "overcompleteness",
                 "features_per_dimension", "sae_recovered_overcompleteness", "geometry_changes"):
        assert name in a, name
        assert a[name].attrs.get("long_name"), name
        assert "units" in a[name].attrs, name
    assert a.attrs["slt_superposition_kind"] == "compare"
    # both bases read the refined point: k from its W, beside k at the trained weights (train_n5_m2.nc)
    refined_norms = np.linalg.norm(a["W_refined"].sel(model="n5_m2").transpose(..., "hidden", "feature").values, axis=-2)
    np.testing.assert_array_equal(a["n_represented"].sel(model="n5_m2").values, (refined_norms > 0.5).sum(-1))
    trained = xr.open_dataset(tmp_path / "a" / "train_n5_m2.nc").squeeze("importance_decay")
    trained_norms = np.linalg.norm(trained["W"].transpose(..., "hidden", "feature").values, axis=-2)
    np.testing.assert_array_equal(a["n_represented_trained"].sel(model="n5_m2").values, (trained_norms > 0.5).sum(-1))
    moved = int((a["n_represented_trained"] != a["n_represented"]).sum())
    far = int((a["refinement_move"] > 0.1).sum())
    assert f"refinement changed k on {moved} of 6 instances (`n_represented_trained`) and moved the weights by more " \
           f"than 10% of their norm on {far} (median move" in (tmp_path / "a" / "report.md").read_text()
    assert ((a["refinement_move"] > 0) & np.isfinite(a["refinement_move"])).all()
    assert not np.array_equal(a["W_refined"].sel(model="n5_m2").values,
                              trained["W"].transpose(*a["W_refined"].sel(model="n5_m2").dims).values)
    # where every instance's chains ended (analysis.chain_excursions), from the estimate's own final positions
    left, far = a["llc_chains_left"].values, a["llc_chain_distance_max"].values
    assert left.shape == far.shape == a["llc_mean"].shape
    assert ((left >= 0) & (left <= config.llc_chains)).all() and (np.isfinite(far) & (far >= 0)).all()
    # every instance calibrated (no interpolation): per-instance settings and stored checks
    calibration = xr.open_dataset(tmp_path / "a" / "calibration" / "n5_m2.nc")
    np.testing.assert_array_equal(a["llc_step_size"].values.ravel(),
                                  calibration["chosen_step_size"].transpose("feature_probability", "importance_decay",
                                                                            "seed").values.ravel())
    for name in ("llc_trusted", "llc_step_check_rel_diff", "llc_quadratic", "llc_calibration_converged"):
        assert name in a, name
    assert not (a["llc_trusted"] & ~a["llc_calibration_converged"]).any()
    report = (tmp_path / "a" / "report.md").read_text()
    assert report.count("reproduce weights-vs-activations") == 1
    # SAEs are trained on seed 0 only (sae_seeds=1): 3 feature probabilities x 1 seed
    assert "Of the 3 instances the SAE was trained on" in report
    assert xr.open_dataset(tmp_path / "a" / "calibration" / "development.nc").attrs["slt_superposition_kind"] == \
        "calibration"
    # the development snapshots keep their stored checks' verdict (the figure draws untrusted ones open)
    dev = xr.open_dataset(tmp_path / "a" / "development.nc").load()
    assert dev["llc_trusted"].dtype == bool and dev["llc_trusted"].shape == dev["llc_mean"].shape
    # and where each snapshot's chains ended, against the snapshot
    assert dev["llc_chains_left"].shape == dev["llc_chain_distance_max"].shape == dev["llc_mean"].shape
    chains = json.loads(dev.attrs["config"])["sgld"]["num_chains"]
    assert ((dev["llc_chains_left"] >= 0) & (dev["llc_chains_left"] <= chains)).all()
    assert "other features live than at the snapshot, per class" in report
    assert json.loads(dev.attrs["config"])["n_samples"] == 700  # development_samples, not llc_samples
    # the development's closed-form full batch runs Metropolis-adjusted chains: realised acceptance rates
    assert json.loads(dev.attrs["config"])["sgld"]["metropolis"] is True
    assert "Metropolis proposals accepted" in dev["mala_acceptance"].attrs["long_name"]
    assert ((dev["mala_acceptance"] >= 0) & (dev["mala_acceptance"] <= 1)).all()
    assert "Metropolis-adjusted" in str(xr.open_dataset(tmp_path / "a" / "calibration" / "development.nc")["verdict"].values)
    assert "with Metropolis-adjusted chains" in report
    # a study that rebuilds the run's models (experiments.minibatch_bias --flagship) reads the run's own
    # settings, not the default size's, and gets the run's refined points bit for bit
    import jax

    from experiments.minibatch_bias import flagship_comparison, flagship_model
    from experiments.weights_vs_activations import config_of_run

    assert config_of_run(tmp_path / "a") == config
    model = flagship_model(str(tmp_path / "a"), "n5_m2")
    refined = a["W_refined"].sel(model="n5_m2").transpose("feature_probability", "seed", "hidden", "feature").values
    np.testing.assert_array_equal(np.asarray(model.params["W"]), refined.reshape((-1,) + refined.shape[2:]))
    assert jax.tree_util.tree_leaves(model.data)[0].shape[1] == config.llc_samples
    flagship_comparison(str(tmp_path / "a"), ["n5_m2"])
    assert f"n5_m2: 6 instances, n = {config.llc_samples}" in capsys.readouterr().out
    with pytest.raises(InputError, match="has no model 'n6_m2'"):
        flagship_model(str(tmp_path / "a"), "n6_m2")
    from experiments.refinement_changes_k import main as refinement_changes_k

    refinement_changes_k([str(tmp_path / "a")])  # the run's settings, so the count the run stored
    assert f"n5_m2: k changed by refinement on {moved} of 6 instances" in capsys.readouterr().out
    # the final weights also estimated at a critical point of L_n, and the report says so
    assert (dev["grad_norm_final_refined"] < dev["grad_norm_final"]).all()
    assert np.isfinite(dev["llc_final_refined"]).all() and dev["llc_final_refined"].attrs["long_name"]
    assert "At a critical point of L_n (the final weights refined" in report
    for figure in ("sparsity_curves.png", "scatter.png", "fragility.png", "development.png",
                   "fragility_susceptibility.png"):
        assert (tmp_path / "a" / figure).stat().st_size > 0
    # the fragility section: susceptibilities from the LLC's own chains (replayed bit for bit), retraining on seed 0
    for name in ("susceptibility_norm", "susceptibility_norm_se", "susceptibility_dimensionality", "replay_llc",
                 "retrain_delta_norm", "retrain_delta_dimensionality", "retrain_delta_k", "feature_norm_trained"):
        assert a[name].attrs.get("long_name") and "units" in a[name].attrs, name
    np.testing.assert_array_equal(a["replay_llc"].values, a["llc_mean"].values)
    assert a["susceptibility_norm"].dims == ("model", "feature_probability", "seed", "perturbed_feature", "feature")
    assert np.isfinite(a["susceptibility_norm"]).all()
    retrained = np.isfinite(a["retrain_delta_norm"]).all("feature")  # feature 0 perturbed, on seed 0 only
    assert retrained.sel(seed=0, perturbed_feature=0).all() and not retrained.sel(seed=1).any()
    assert not retrained.sel(perturbed_feature=1).any()
    assert "## Susceptibilities and retraining" in report
    found = re.search(r"region (\d+) instances, median [-\d.na]+; outside (\d+)", report)
    assert found and int(found[1]) + int(found[2]) == 6  # every instance (3 p x 2 seeds) on one side
    # what the run says so far, from its finished chunks: the report's per-model findings, then the checks' power
    import contextlib
    import io

    from analysis.flagship_summary import main as summarize

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summarize([str(tmp_path / "a" / "sweep")])
    summary = printed.getvalue()
    model_finding = next(line for line in report.splitlines() if line.startswith("- **n=5, m=2**"))
    assert model_finding in summary.splitlines()
    assert "Stored checks of 100 steps" in summary and "| n5_m2 | batch |" in summary
    again = io.StringIO()
    with contextlib.redirect_stdout(again):
        summarize([str(tmp_path / "a")])  # the run's folder finds its sweep folder
    assert again.getvalue() == summary


def test_degeneracy_budget_adds_up():
    from analysis.compare import degeneracy_budget

    # n = 6, m = 2: a 5-gon with one dead column (b < 0: 3 flat parameters) and a 6-gon
    pentagon = np.zeros((2, 6))
    pentagon[:, :5] = _polygon(5, 1.17)
    train = _train_like([pentagon, _polygon(6, 1.32)], [0.1, 0.01])
    train["b"] = (GRID + ("feature",), np.array([[-0.28] * 5 + [-0.5], [-0.62] * 6])[:, None, None])
    train.attrs["data"] = "high_sparsity_limit"  # the k-gon classes' data: one feature active at a time
    llc = _llc_like([7.0, 6.0], std=0.2)
    ds = compare(train, llc)
    d = 18
    np.testing.assert_array_equal(ds["orbit_dimension"].values.ravel(), [1, 1])
    np.testing.assert_array_equal(ds["dead_flat_parameters"].values.ravel(), [3, 0])
    total = ds["orbit_dimension"] + ds["dead_flat_parameters"] + 2 * ds["llc_mean"] + ds["excess_degeneracy"]
    np.testing.assert_allclose(total.values, d)
    np.testing.assert_allclose(ds["excess_degeneracy"].values.ravel(), [0.0, 5.0])
    np.testing.assert_allclose(ds["excess_degeneracy_se"].values.ravel(), 2 * 0.2 / 2)  # 2 SE(llc), 4 chains
    # undercomplete means degeneracy beyond symmetry and dead features: the 5-gon at lambda 7 is not
    np.testing.assert_array_equal(ds["weights_undercomplete"].values.ravel(), [False, True])
    assert not ds["budget_out_of_range"].any()
    # 2 llc above the symmetry bound d - orbit - dead_flat by more than 2 SE is out of range
    weights = ds[["llc_mean", "llc_standard_error", "n_parameters"]]
    over = degeneracy_budget(train, weights.assign(llc_mean=weights["llc_mean"] + 2.0))
    np.testing.assert_array_equal(over["budget_out_of_range"].values.ravel(), [True, False])
    # features active together (sparse_uniform, the default; or no data attr): the dead column's weights
    # are curved through the co-active features, its bias alone is flat: the bound is m = 2 looser
    for data in ("sparse_uniform", None):
        train.attrs.pop("data")
        if data:
            train.attrs["data"] = data
        co_active = degeneracy_budget(train, weights.assign(llc_mean=weights["llc_mean"] + 2.0))
        np.testing.assert_array_equal(co_active["dead_flat_parameters"].values.ravel(), [1, 0])
        np.testing.assert_array_equal(co_active["symmetry_bound"].values.ravel(), [16, 17])  # against 14, 17
        train.attrs["data"] = "x"


def test_dead_flat_bias_needs_every_co_active_input_to_stay_off():
    """A short dead column whose output one co-active feature would switch on is not flat in its bias."""
    from analysis.compare import dead_flat_parameters

    W = xr.DataArray(np.array([[1.0, 0.0, 0.3], [0.0, 1.0, 0.0]]), dims=("hidden", "feature"))
    b = xr.DataArray(np.array([0.0, 0.0, -0.2]), dims="feature")  # column 2: |W_2|^2 = 0.09 <= 0.2
    # one feature at a time: input e_0 alone switches it on (0.3 - 0.2 > 0), so not even its bias is flat
    assert int(dead_flat_parameters(W, b, "high_sparsity_limit")) == 0
    assert int(dead_flat_parameters(W, b, "sparse_uniform")) == 0  # with feature 0 beside it: 0.3 + 0.09 - 0.2 > 0
    assert int(dead_flat_parameters(W, b.copy(data=[0.0, 0.0, -0.5]), "sparse_uniform")) == 1  # 0.39 - 0.5 <= 0
    # b_2 = -0.5: off on every input, but output 0 is on on input e_2 (0.3 + 0 > 0): its bias alone is flat
    assert int(dead_flat_parameters(W, b.copy(data=[0.0, 0.0, -0.5]), "high_sparsity_limit")) == 1


@pytest.mark.parametrize("live_bias, flat", [(-0.1, 9), (0.1, 3)])
def test_dead_columns_weights_are_curved_where_a_live_output_is_on(live_bias, flat):
    """One feature at a time (the k-gon classes' data): three zero columns beside a triangle. With the
    live biases negative every dead parameter is flat, m + 1 per column; with them positive the live
    outputs are on on every input, and move with W_j . W_i: only the dead biases are flat. The count
    equals the population Hessian's zero eigenvalues (it was 9 in both cases)."""
    from analysis.compare import dead_flat_parameters
    from slt_superposition.theory import population_hessian

    W = np.zeros((2, 6))
    W[:, :3] = _polygon(3, 1.0)
    b = np.array([live_bias] * 3 + [-0.5] * 3)
    zero = int((np.abs(np.linalg.eigvalsh(population_hessian(W, b))) < 1e-8).sum())
    counted = int(dead_flat_parameters(xr.DataArray(W, dims=("hidden", "feature")), xr.DataArray(b, dims="feature"),
                                       "high_sparsity_limit"))
    assert counted == flat == zero


def test_orbit_dimension_follows_the_rank():
    from analysis.compare import orbit_dimension

    W = np.zeros((3, 3, 4))  # m = 3: rank 3, 2, 1
    W[0, :, :3] = np.eye(3)
    W[1, :2, :2] = np.eye(2)
    W[2, 0, 0] = 1.0
    da = xr.DataArray(W, dims=("instance", "hidden", "feature"))
    np.testing.assert_array_equal(orbit_dimension(da).values, [3, 3 - 0, 3 - 1])
    np.testing.assert_array_equal(orbit_dimension(da, "tms_relu_hidden").values, [0, 0, 0])


def test_findings_show_the_budget():
    from analysis.compare_plots import findings

    pentagon = np.zeros((2, 6))
    pentagon[:, :5] = _polygon(5, 1.17)
    train = _train_like([pentagon, _polygon(6, 1.32)], [0.1, 0.01])
    train["b"] = (GRID + ("feature",), np.array([[-0.28] * 5 + [-0.5], [-0.62] * 6])[:, None, None])
    train.attrs["data"] = "high_sparsity_limit"  # the classes' data: the dead column's 3 parameters are flat
    ds = compare(train, _llc_like([7.0, 6.0], std=0.2)).assign(n_features=6, n_hidden=2)  # as the flagship stacks
    text = findings(ds)[0]
    assert "d = 18 = orbit 1 + dead-flat 1.5 + 2 llc 13.00 + excess 2.50" in text
    assert "excess > 2 SE) in 50% of instances, in most seeds at p = 0.01" in text
    assert "out of range in 0%" in text
    # where the chains ended: the report splits the estimates by whether a chain left w*'s live set
    ends = ds.assign(llc_chains_left=(GRID, np.array([2, 0])[:, None, None]),
                     llc_chain_distance_max=(GRID, np.array([0.8, 0.1])[:, None, None]),
                     llc_trusted=(GRID, np.zeros((2, 1, 1), bool)))
    text = findings(ends)[0]
    assert "On 50% of instances at least one chain ended with other features live than at w*" in text
    assert ("Median 2 llc / d 0.78 on those, 0.67 where every chain stayed; above the symmetry bound 0% and 0% "
            "(`python -m analysis.excursion_table`).") in text


def test_the_weight_basis_reads_the_hessian_of_the_llcs_own_loss(tiny_grid):
    """The flagship refines every instance to a critical point of L_n (the LLC's loss); the Hessian
    ranks were read on the first 512 of its 4096 samples (quick), another loss, at a point not
    critical for it: the rank's gradient floor was that loss's gradient, and its saddles were read as
    "not a minimum". By default the ranks now read L_n: the gradient there is refinement's."""
    import dataclasses

    import jax

    from experiments.weights_vs_activations import QUICK, _refined_inputs, _weight_basis

    config = dataclasses.replace(QUICK, llc_samples=1024)
    assert config.hessian_samples is None
    inputs = _refined_inputs(tiny_grid, config, jax.random.key(0))
    on_l_n = _weight_basis(inputs, tiny_grid, config)
    np.testing.assert_allclose(on_l_n["grad_norm"].values, inputs[3]["after"], rtol=1e-3, atol=1e-6)
    on_part = _weight_basis(inputs, tiny_grid, dataclasses.replace(config, hessian_samples=128))
    assert (on_part["grad_norm"].values > 10 * on_l_n["grad_norm"].values).all()


def test_development_trust_requires_its_calibration_to_have_settled():
    """Every snapshot runs the chain length of one development calibration; where its length rule did
    not settle, no snapshot is trusted, as the flagship's estimates are not (3 of 4 refined final points
    read trusted beside an unsettled development calibration)."""
    from experiments.weights_vs_activations import require_development_settled

    dev = xr.Dataset({"llc_trusted": (("seed", "snapshot"), np.array([[True, False], [True, True]])),
                      "llc_final_refined_trusted": (("seed",), np.array([True, False]))})
    unsettled = require_development_settled(dev, False)
    assert not unsettled["llc_trusted"].any() and not unsettled["llc_final_refined_trusted"].any()
    assert unsettled.attrs["calibration_converged"] == 0
    settled = require_development_settled(dev, True)
    assert settled["llc_trusted"].equals(dev["llc_trusted"]) and settled.attrs["calibration_converged"] == 1
