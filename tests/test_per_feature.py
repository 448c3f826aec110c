"""The per-feature dataset, its stacking over models and its figure (plumbing on a tiny grid; the
science checks of weight-refined LLCs are in test_refined_llc.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from analysis.measures import feature_norms
from analysis.per_feature import PerFeatureSettings, per_feature_dataset
from analysis.per_feature_plots import plot_per_feature
from experiments.per_feature_basis import combine

TINY = PerFeatureSettings(n_samples=256, num_chains=2, min_steps=100, max_steps=200, sampler_time=0.05)


@pytest.fixture(scope="module")
def per_feature(tiny_grid):
    return per_feature_dataset(tiny_grid, TINY, key=jax.random.key(0))


def test_dims_and_variables(per_feature, tiny_grid):
    ds = per_feature
    for name in ("llc_weight", "llc_weight_se", "llc_data", "feature_dimensionality", "interference", "represented",
                 "block_hessian_rank", "step_size", "num_steps"):
        assert ds[name].dims == ("feature_probability", "importance_decay", "seed", "feature"), name
    assert ds["llc"].dims == ("feature_probability", "importance_decay", "seed")
    np.testing.assert_allclose(ds["feature_norm"].values,
                               feature_norms(tiny_grid["W"]).transpose(*ds["feature_norm"].dims).values)
    assert np.all(ds["block_hessian_rank"].values <= 3)  # a column of m = 2 has 3 parameters
    assert np.all(np.isfinite(ds["llc_weight"].values)) and np.all(np.isfinite(ds["llc_data"].values))
    # the checks a masked estimate carries: no divergence and R-hat, combined in llc_weight_checked
    expected = (ds["llc_weight_n_diverged"] == 0) & ~(ds["llc_weight_rhat"] > 1.1)
    np.testing.assert_array_equal(ds["llc_weight_checked"].values, expected.values)
    assert ds.attrs["data_num_chains"] == TINY.num_chains  # data-refined chains default to the weight-refined ones
    # each block's chain length follows its own step size (sampler time / eps, clipped)
    steps = np.clip(np.ceil(TINY.sampler_time / ds["step_size"].values), TINY.min_steps, TINY.max_steps)
    np.testing.assert_array_equal(ds["num_steps"].values, steps)


def test_models_stack_with_padding_and_the_figure_has_a_panel_each(per_feature):
    one = per_feature.copy()
    one["feature_exists"] = ("feature", np.ones(one.sizes["feature"], bool))
    small = one.isel(feature=slice(0, 3))
    stacked = combine([one.expand_dims(model=np.array(["a"], dtype=object)),
                       small.expand_dims(model=np.array(["b"], dtype=object))])
    assert stacked.sizes["feature"] == 5
    assert list(stacked["feature_exists"].sel(model="b").values) == [True] * 3 + [False] * 2
    assert bool(stacked["represented"].sel(model="b").isel(feature=4).any()) is False
    fig = plot_per_feature(stacked)
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 2
    assert axes[0].get_xlabel() == "feature dimensionality D_i"
    assert axes[0].get_ylabel().startswith("2 llc_i / (m + 1)")
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert "not represented" in labels


def test_a_model_without_block_spectra_is_refused_on_one_line(tiny_grid, monkeypatch):
    """Beyond the dense-Hessian size the blocks have no spectrum (NaN), so no step size: one line, not
    chains at a step size of 0 (what the NaN spectrum read as before) or NaN."""
    import slt_superposition.refined as refined
    from slt_superposition.errors import InputError

    monkeypatch.setattr(refined, "MAX_DENSE_PARAMETERS", 4)
    with pytest.raises(InputError, match="dense Hessian"):
        per_feature_dataset(tiny_grid, TINY, key=jax.random.key(0))
