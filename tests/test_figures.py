"""The figures themselves: panel counts, axis labels and legend entries of the returned Figures
(not only that a file was written), and the saved files at a paper's resolution."""

from __future__ import annotations

import jax
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from analysis import plots as train_plots  # noqa: E402
from slt_superposition import figure_style as fs  # noqa: E402
from slt_superposition import plots as llc_plots  # noqa: E402


def visible_axes(fig):
    """The data panels (colorbars excluded) that are drawn."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def legend_texts(fig) -> list[str]:
    texts = []
    for legend in list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]:
        texts += [t.get_text() for t in legend.get_texts()]
    return texts


@pytest.fixture(scope="module")
def llc_grid(tiny_grid):
    """The LLC of the 2 x 1 x 2 tiny grid: 3 chains x 120 steps, 40 burn-in."""
    from slt_superposition import SGLDConfig, estimate_llc_batched
    from toy_models.train import GRID_DIMS, llc_inputs

    loss_fn, params, data = llc_inputs(tiny_grid, n_samples=256, key=jax.random.key(0))
    config = SGLDConfig(step_size=1e-4, localization=100.0, num_chains=3, num_steps=120, num_burnin=40,
                        batch_size=64)
    return estimate_llc_batched(loss_fn, params, data, config=config, key=jax.random.key(1),
                                instance_dims={d: tiny_grid[d].values for d in GRID_DIMS})


def test_columns_figure_one_panel_per_instance_on_one_scale(tiny_grid):
    fig = train_plots.columns_figure(tiny_grid)
    panels = visible_axes(fig)
    assert len(panels) == 4  # 2 feature probabilities x 2 seeds
    # rows are feature probabilities, titled by their coordinates
    assert panels[0].get_title() == "p = 0.05, seed 0" and panels[2].get_title() == "p = 0.2, seed 0"
    assert {ax.get_xlim() for ax in panels} == {panels[0].get_xlim()}  # one scale: lengths compare
    assert panels[0].get_ylabel() == "hidden unit 2" and panels[2].get_xlabel() == "hidden unit 1"
    assert len(panels[0].get_xticks()) == 3  # the scale is shown
    texts = legend_texts(fig)
    assert [f"feature {i} (I = 1)" for i in range(5)] == texts[:5]
    assert any("= 1" in t for t in texts) and any(t.startswith("not represented") for t in texts)


def test_dead_column_drawn_open(tiny_grid):
    W = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # feature 2 dead
    with fs.style():
        fig, axes = fs.subplots()
        train_plots.draw_columns(axes[0, 0], W)
    tips = [line for line in axes[0, 0].lines if line.get_marker() == "o"]
    assert [line.get_markerfacecolor() for line in tips][2] == "white"
    assert all(line.get_markerfacecolor() != "white" for line in tips[:2])


def test_loss_curves_legend_names_every_feature_probability(tiny_grid):
    fig = train_plots.loss_curves_figure(tiny_grid)
    (ax,) = visible_axes(fig)
    assert ax.get_xlabel() == "training step" and ax.get_ylabel().startswith("training loss")
    assert ax.get_yscale() == "log"
    texts = legend_texts(fig)
    assert "p = 0.05" in texts and "p = 0.2" in texts and any(t.startswith("range over 2 seeds") for t in texts)
    assert len(ax.lines) == 2  # one mean line per feature probability, not one per instance


def test_other_m_figures(tiny_grid):
    ds = tiny_grid.isel(hidden=[0, 1, 0]).assign_coords(hidden=[0, 1, 2])
    gram = train_plots.gram_figure(ds)
    assert len(visible_axes(gram)) == 4
    assert any(ax.get_label() == "<colorbar>" and "W_j" in ax.get_ylabel() for ax in gram.axes)
    dims = train_plots.dimensionality_figure(ds)
    ax = visible_axes(dims)[0]
    assert "D_i" in ax.get_ylabel() and "features per dimension" in ax.get_xlabel()


def test_llc_traces_summarised_with_burnin_and_legend(llc_grid):
    fig = llc_plots.llc_traces_figure(llc_grid)
    panels = visible_axes(fig)
    assert len(panels) == 4
    for ax in panels:
        # mean + THIN_CHAINS thin chains + zero line + the lambda/nbeta level: not one line per chain
        assert len([line for line in ax.lines if len(line.get_xdata()) > 2]) == 1 + llc_plots.THIN_CHAINS
        assert ax.patches or ax.collections  # burn-in span and chain band
        assert "hat" in ax.get_title() and "MALA" in ax.get_title()
    assert panels[0].get_ylabel() and panels[-1].get_xlabel() == "SGLD step"
    texts = legend_texts(fig)
    assert any(t.startswith("mean over 3 chains") for t in texts)
    assert "range over chains" in texts and "burn-in (left out)" in texts
    assert fig._suptitle is not None and "SE over chains" in fig._suptitle.get_text()


def test_llc_estimates_against_feature_probability(llc_grid):
    fig = llc_plots.llc_estimates_figure(llc_grid)
    (ax,) = visible_axes(fig)
    assert ax.get_xlabel() == fs.label("feature_probability") and ax.get_xscale() == "log"
    assert ax.get_ylabel() == fs.label("llc")
    texts = legend_texts(fig)
    assert any("1 SE over chains" in t for t in texts)  # error bars defined
    assert any(t.startswith("mean over the 2 seed") for t in texts)
    # every instance drawn at its own feature probability
    xs = np.concatenate([c.get_segments()[0][:, 0] for c in ax.collections if c.get_segments()])
    assert np.all((xs > 0.03) & (xs < 0.3))


def test_single_instance_has_no_estimates_figure(llc_grid):
    one = llc_grid.isel(feature_probability=0, importance_decay=0, seed=0)
    assert llc_plots.llc_estimates_figure(one) is None
    assert len(visible_axes(llc_plots.llc_traces_figure(one))) == 1


def test_saved_files_are_high_resolution(llc_grid, tmp_path):
    paths = llc_plots.plot_llc(llc_grid, tmp_path)
    assert [p.name for p in paths] == ["llc_traces.png", "llc_estimates.png"]
    from PIL import Image

    width, _ = Image.open(paths[0]).size
    assert width >= fs.PAGE * fs.DPI * 0.8  # sharp at full text width
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind


def test_calibration_figure_shows_each_decision(tiny_grid):
    from slt_superposition import calibrate
    from toy_models.train import llc_inputs

    loss_fn, params, data = llc_inputs(tiny_grid, n_samples=256, key=jax.random.key(0))
    first = jax.tree_util.tree_map(lambda x: x[0], (params, data))
    _, sweep = calibrate(loss_fn, *first, key=jax.random.key(2), batch_size=64, num_chains=2,
                         step_sizes=(1e-6, 1e-5, 1e-4), sweep_steps=100, min_steps=100, max_steps=400)
    fig = llc_plots.calibration_figure(sweep)
    panels = visible_axes(fig)
    assert len(panels) == 3
    assert [ax.get_xlabel() for ax in panels[:2]] == [fs.label("step_size")] * 2
    assert panels[0].get_ylabel() == "MALA acceptance" and panels[1].get_ylabel() == fs.label("llc")
    texts = legend_texts(fig)
    threshold = float(sweep.attrs["acceptance_threshold"])
    assert f"acceptance threshold {threshold:.2f}" in texts  # the dotted line is explained
    assert "chosen step size and its estimate" in texts
    assert any(t.startswith("chosen eps = ") for t in texts) and any(t.startswith("chosen length") for t in texts)


def _compare_dataset():
    """A two-model comparison dataset with the variables the flagship figures read."""
    import xarray as xr

    rng = np.random.default_rng(0)
    p = np.array([1.0, 0.1, 0.01])
    models = []
    for name, n, m, scale in (("n5_m2", 5, 2, 1.0), ("n20_m5", 20, 5, 8.0)):
        shape = (3, 2)
        dims = ("feature_probability", "seed")
        models.append(xr.Dataset(
            {"d_eff_fraction": (dims, rng.uniform(0.3, 1.2, shape)),
             "overcompleteness": (dims, rng.uniform(1.0, 2.5, shape)),
             "geometry_changes": (dims, rng.uniform(size=shape) > 0.5),
             # the same change of 2 llc / d per log p in both models: scale is d / 2
             "dllc_dlogp": (dims, np.full(shape, 0.5 * scale * (n * m + n) / 15.0))},
            coords={"feature_probability": p, "seed": [0, 1], "n_features": n, "n_hidden": m}).expand_dims(model=[name]))
    return xr.concat(models, "model", coords="different", compat="equals")


def test_fragility_normalised_by_d():
    from analysis.compare_plots import fragility_figure

    ds = _compare_dataset()
    ds["dllc_dlogp"].loc[dict(model="n5_m2")] = 0.5 * 15 / 2  # 2/d x |dllc/dlogp| = 0.5 for d = 15
    ds["dllc_dlogp"].loc[dict(model="n20_m5")] = 0.5 * 120 / 2  # and for d = 120
    fig = fragility_figure(ds)
    change, slope = visible_axes(fig)
    assert slope.get_title() == "|d (2 llc / d) / d log p|"
    np.testing.assert_allclose(slope.images[0].get_array(), 0.5)  # both models on one scale
    assert [t.get_text() for t in slope.get_yticklabels()] == ["n = 5, m = 2", "n = 20, m = 5"]
    assert all(ax.get_xlabel() == fs.label("feature_probability") for ax in (change, slope))
    assert len(slope.texts) == 6  # every cell's value printed


def test_sparsity_curves_and_scatter_explain_every_mark():
    from analysis.compare_plots import scatter_figure, sparsity_curves_figure

    ds = _compare_dataset()
    fig = sparsity_curves_figure(ds)
    assert len(visible_axes(fig)) == 4  # 2 rows x 2 models
    texts = legend_texts(fig)
    assert {"mean over seeds", "one seed"} <= set(texts) and any("sd over seeds" in t for t in texts)
    scatter = scatter_figure(ds)
    texts = legend_texts(scatter)
    assert {"n = 5, m = 2", "n = 20, m = 5"} <= set(texts)
    assert any(ax.get_label() == "<colorbar>" and ax.get_ylabel() == fs.label("feature_probability")
               for ax in scatter.axes)


def test_portraits_one_row_per_model_on_one_scale(tiny_grid):
    from analysis.compare_plots import portraits_figure

    six = tiny_grid.isel(feature=[0, 1, 2, 3, 4, 0]).assign_coords(feature=np.arange(6))
    fig = portraits_figure([tiny_grid, six], n_panels=2)
    panels = visible_axes(fig)
    assert len(panels) == 4
    assert panels[0].get_title().startswith("n = 5, p = ") and panels[2].get_title().startswith("n = 6, p = ")
    assert {ax.get_xlim() for ax in panels} == {panels[0].get_xlim()}
    assert "feature 5" in legend_texts(fig)


def test_calibration_grid_figure_per_instance_decisions(tmp_path):
    import xarray as xr

    inst = ("feature_probability", "seed")
    coords = {"feature_probability": [1.0, 0.1, 0.01], "seed": [0, 1]}
    full = lambda value: np.full((3, 2), value)
    long_llc = np.stack([full(2.0), full(np.nan)], axis=-1)  # the walk stopped after one round
    ds = xr.Dataset({"chosen_step_size": (inst, full(1e-4)), "step_size_bound": (inst, full(3e-4)),
                     "chosen_num_steps": (inst, full(20_000)), "converged": (inst, np.eye(3, 2, dtype=bool)),
                     "llc_long_check": (inst + ("long_check",), long_llc), "llc_quadratic": (inst, full(2.5)),
                     "batch_check_rel_diff": (inst + ("batch_check",), full(0.01)[..., None]),
                     "batch_check_passed": (inst + ("batch_check",), full(True)[..., None])},
                    coords=coords, attrs={"slt_superposition_kind": "calibration"})
    assert llc_plots.calibration_instance_dims(ds) == ["feature_probability", "seed"]
    fig = llc_plots.calibration_grid_figure(ds)
    panels = visible_axes(fig)
    assert [ax.get_title() for ax in panels] == ["(a) step size", "(b) chain length", "(c) LLC at the chosen settings",
                                               "(d) minibatch against full batch"]
    assert all(ax.get_xlabel() == fs.label("feature_probability") and ax.get_xscale() == "log" for ax in panels)
    # (c) draws the last finite long-chain estimate of each instance: 2.0, not NaN
    drawn = np.concatenate([line.get_ydata() for line in panels[2].lines if line.get_marker() == "o"])
    np.testing.assert_allclose(drawn, 2.0)
    # open markers for the instances whose length rule did not converge (4 of 6)
    open_b = [line for line in panels[1].lines if line.get_markerfacecolor() == "white"]
    assert sum(len(line.get_xdata()) for line in open_b) == 4
    assert any(t.startswith("length rule not converged") for t in legend_texts(fig))
    # a full-batch calibration ran no minibatch check (batch_check of size 0): panel (d) says so, and
    # Metropolis-adjusted chains' legend says the curvature bound is not applied to them
    import json

    full_batch = ds.isel(batch_check=slice(0, 0)).assign_attrs(config=json.dumps({"metropolis": True}))
    fig = llc_plots.calibration_grid_figure(full_batch)
    (d,) = [ax for ax in visible_axes(fig) if ax.get_title() == "(d) minibatch against full batch"]
    assert [t.get_text() for t in d.texts] == ["full batch:\nno minibatch check"] and not d.lines
    assert any("not applied to Metropolis-adjusted chains" in t for t in legend_texts(fig))
    assert not any("not applied" in t for t in legend_texts(llc_plots.calibration_grid_figure(ds)))


def test_untrusted_estimates_drawn_open_not_hidden(llc_grid):
    ds = llc_grid.copy()
    ds["trusted"] = ds["llc_mean"].notnull() & (ds["seed"] == 0)  # seed 3 untrusted: 2 of 4
    fig = llc_plots.llc_estimates_figure(ds)
    (ax,) = visible_axes(fig)
    assert "not trusted: a stored bias check failed (2 of 4)" in legend_texts(fig)
    faces = [line.get_markerfacecolor() for line in ax.lines if line.get_marker() == "o"]
    assert faces.count("white") >= 1 and len(faces) >= 2
    drawn = sum(len(line.get_xdata()) for line in ax.lines if line.get_marker() == "o")
    assert drawn == 4  # every instance is drawn, trusted or not


def test_geometry_changes_have_no_value_at_the_largest_feature_probability():
    """`geometry_changes` compares each instance with the next larger p; the largest has none (False in
    the dataset). The figure leaves its cell blank and the shares count the pairs only (0.00 was drawn
    there, and the report's share divided by every instance)."""
    from analysis.compare_plots import fragility_figure

    ds = _compare_dataset()
    ds["geometry_changes"].values[:] = [[[False, False], [True, True], [True, False]]] * 2  # p = 1, 0.1, 0.01
    change, _ = visible_axes(fragility_figure(ds))
    cells = np.ma.filled(change.images[0].get_array().astype(float), np.nan)
    np.testing.assert_array_equal(cells, [[np.nan, 1.0, 0.5]] * 2)
    assert change.get_title() == "geometry changes at the next larger p"
    assert len(change.texts) == 4  # the two blank cells print nothing


def test_probability_colours_read_off_their_colorbar():
    """A point's colour is where its p sits on the colorbar (the points used 5-85% of the colour map,
    the bar all of it: p = 1 read as about 0.5 against a 0.01-1 bar)."""
    p = np.array([1.0, 0.398, 0.158, 0.01])
    colours, mappable = fs.probability_colours(p)
    np.testing.assert_allclose([mappable.to_rgba(v) for v in p], colours, atol=1e-12)
