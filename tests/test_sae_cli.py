"""`slt-superposition sae`: SAEs on a trained grid, matched against W, with one-line errors and plots."""

import numpy as np
import pytest
import xarray as xr

from slt_superposition.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae_cli")
    path = folder / "train.nc"
    assert main(["train", "-n", "5", "-m", "2", "-p", "0.05,0.5", "--seeds", "1", "--steps", "1500",
                 "--out", str(path), "--no-progress"]) == 0
    return path


def test_sae_command_writes_matched_dataset(trained, capsys):
    out = trained.parent / "sae.nc"
    assert main(["sae", str(trained), "--out", str(out), "--dict-sizes", "3,5", "--steps", "200",
                 "--samples", "1024", "--restarts", "2", "--no-progress"]) == 0
    assert "well posed" in capsys.readouterr().out
    ds = xr.open_dataset(out)
    assert ds.attrs["slt_superposition_kind"] == "sae"
    assert list(ds["dict_size"].values) == [3, 5]
    for name in ("decoder", "W", "matched_cosine", "mmcs", "fvu", "latent_frequency", "l0", "well_posed",
                 "sae_recovered", "recovered_overcompleteness", "k"):
        assert name in ds, name
    assert ds["matched_cosine"].dims == ds["fvu"].dims
    # matched cosine never exceeds MMCS (a one-to-one assignment is a restriction; MMCS is float32)
    assert bool((ds["matched_cosine"] <= ds["mmcs"] + 1e-6).all())
    # k is the expected number of active features n p, rounded into 1..m
    np.testing.assert_array_equal(ds["k"].values, [1, 2])
    # p = 0.5 is not sparse enough for recovery to be well posed (n_rep p > m / 2)
    assert not bool(ds["well_posed"].sel(feature_probability=0.5).any())


def test_sae_plot(trained):
    from analysis.sae_plots import decoder_figure, matching_figure
    from slt_superposition.io import open_result

    out = trained.parent / "sae_bt.nc"
    assert main(["sae", str(trained), "--out", str(out), "--kind", "batch-topk", "--dict-sizes", "4,5",
                 "--steps", "100", "--samples", "512", "--restarts", "1", "--no-progress"]) == 0
    ds = open_result(out, "sae")
    fig = decoder_figure(ds)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2  # one panel per instance
    assert len(fig.legends) == 1
    # every panel draws the n_rep decoder directions as dashed lines over the W columns
    dashed = [line for line in visible[0].lines if line.get_linestyle() == "--"]
    assert len(dashed) == int(ds["n_represented"].isel(feature_probability=0).squeeze())
    fig = matching_figure(ds)
    assert [ax.get_ylabel() for ax in fig.axes[:3]] == ["Hungarian-matched cosine", "MMCS", "FVU"]
    assert main(["plot", str(out)]) == 0


@pytest.mark.parametrize("args, message", [
    (["--kind", "relu"], "unknown SAE kind"),
    (["--k", "1.5"], "whole number"),
    (["--k", "9"], "smallest dictionary"),
    (["--dict-sizes", "3,3"], "distinct"),
    (["--steps", "0"], "positive"),
])
def test_sae_command_one_line_errors(trained, tmp_path, capsys, args, message):
    assert main(["sae", str(trained), "--out", str(tmp_path / "x.nc"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_sae_command_never_replaces_its_input(trained, capsys):
    before = trained.read_bytes()
    assert main(["sae", str(trained), "--out", str(trained)]) == 2
    assert trained.read_bytes() == before
    assert main(["sae", str(trained.parent / "missing.nc"), "--out", str(trained.parent / "y.nc")]) == 2


def test_default_k_is_at_most_the_smallest_dictionary(trained, capsys):
    """At p = 0.5 the default k is round(5 x 0.5) = 2; with one-latent dictionaries it is 1 (a
    dictionary of one latent cannot have two codes active), not an error about a k the user never set."""
    out = trained.parent / "sae_one_latent.nc"
    assert main(["sae", str(trained), "--out", str(out), "--dict-sizes", "1", "--steps", "20",
                 "--samples", "256", "--no-progress"]) == 0
    np.testing.assert_array_equal(xr.open_dataset(out)["k"].values, [1, 1])


def test_decoder_figure_counts_represented_features_as_the_measures_do():
    """A column of norm exactly 0.5 is not represented (`measures.represented_features`: > 0.5), so
    the m > 2 panel has a row for each of the other two features only."""
    from analysis.measures import n_represented
    from analysis.sae_plots import decoder_figure

    W = np.diag([1.0, 0.5, 1.0])  # (hidden, feature)
    ds = xr.Dataset({"W": (("hidden", "feature"), W),
                     "decoder": (("dict_size", "hidden", "latent"), np.eye(3)[None]),
                     "n_represented": ((), 2), "sae_matched_cosine": ((), 1.0)},
                    coords={"dict_size": [2]})
    assert int(n_represented(ds["W"])) == 2
    image = decoder_figure(ds).axes[0].images[0]
    assert image.get_array().shape == (2, 3)
