"""Where SAE recovery is well posed, how it is scored, and the code-level measures on ground truth."""

import numpy as np
import pytest
import xarray as xr

from analysis.sae_codes import code_correlation, fvu_at, order_correlation, outside_topk_r2
from analysis.sae_meta import best_subsets
from analysis.sae_recovery import recovery_line, recovery_scores, well_posed

ANGLE = 2 * np.pi * np.arange(5) / 5
PENTAGON = np.stack([np.cos(ANGLE), np.sin(ANGLE)])  # (hidden 2, feature 5)


def _W(columns, p):
    W = np.stack([columns] * len(p))
    return xr.DataArray(W, dims=("feature_probability", "hidden", "feature"), coords={"feature_probability": p})


def test_well_posed_line():
    # pentagon: n_rep = 5 > m = 2; n_rep p <= m / 2 = 1 up to p = 0.2
    W = _W(PENTAGON, [0.05, 0.2, 0.21, 0.5])
    np.testing.assert_array_equal(well_posed(W).values, [True, True, False, False])
    # two represented columns in two dimensions: not overcomplete, never well posed
    two = PENTAGON.copy()
    two[:, 2:] = 0.0
    np.testing.assert_array_equal(well_posed(_W(two, [0.01])).values, [False])


def _sae_from(decoders, sizes):
    """A 'train_sae'-shaped dataset (feature_probability, dict_size, hidden, latent) from given decoders."""
    L = max(sizes)
    dec = np.full((len(decoders), len(sizes), 2, L), np.nan)
    for i, d in enumerate(decoders):
        for j, s in enumerate(sizes):
            dec[i, j, :, :s] = d[:, :s]
    dims = ("feature_probability", "dict_size")
    return xr.Dataset({"decoder": ((*dims, "hidden", "latent"), dec),
                       "fvu": (dims, np.zeros((len(decoders), len(sizes)))),
                       "dead_fraction": (dims, np.zeros((len(decoders), len(sizes))))},
                      coords={"dict_size": sizes})


def test_recovery_scores_at_n_rep():
    W = _W(PENTAGON, [0.05, 0.1])
    good = PENTAGON[:, [3, 1, 4, 0, 2]]
    bad = PENTAGON[:, [0, 0, 1, 2, 3]]  # feature 4 has no latent of its own
    scores = recovery_scores(_sae_from([good, bad], [3, 5]), W)
    np.testing.assert_allclose(scores["sae_matched_cosine"].values, [1.0, (4 + np.cos(2 * np.pi / 5)) / 5])
    np.testing.assert_array_equal(scores["sae_recovered"].values, [True, False])
    ds = xr.Dataset({"sae_recovered": scores["sae_recovered"].astype(float),
                     "sae_matched_cosine": scores["sae_matched_cosine"],
                     "sae_well_posed": well_posed(W).astype(float),
                     "sae_dead_at_n_rep": scores["sae_dead_at_n_rep"], "sae_fvu_at_n_rep": scores["sae_fvu_at_n_rep"]})
    assert "1 of 2 instances (50%)" in recovery_line(ds)


def _ideal_params():
    return {"W_dec": PENTAGON.astype(np.float32), "W_enc": PENTAGON.T.astype(np.float32),
            "b_enc": np.zeros(5, np.float32), "b_pre": np.zeros(2, np.float32)}


def test_codes_of_an_idealized_sae():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(4000, 5)) * (rng.uniform(size=(4000, 5)) < 0.05)
    h = (x @ PENTAGON.T).astype(np.float32)
    params = _ideal_params()
    single = (x > 0).sum(1) <= 1
    # on samples with at most one active feature, TopK(1) of the tied pentagon SAE is exact
    assert fvu_at(params, h[single], 1) == pytest.approx(0.0, abs=1e-10)
    # more latents than needed cannot help a tied encoder on single-feature samples: interference enters
    assert fvu_at(params, h[single], 3) > fvu_at(params, h[single], 1)
    features = np.arange(5)
    assert code_correlation(params, h, x, 1, features, features) > 0.9
    info = outside_topk_r2(params, h, x, 1, features)
    assert info["codes"] > 0.8 and set(info) == {"codes", "outside", "negative"}
    assert order_correlation([0, 1, 2, 3], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_best_subsets_drop_the_cheapest_direction_first():
    angle = 2 * np.pi * np.arange(6) / 6
    hexagon = np.stack([np.cos(angle), np.sin(angle)])
    cost = np.array([1.0, 1.0, 1.0, 0.05, 1.0, 1.0])
    kept, lost = best_subsets(hexagon, cost, [6, 5])
    np.testing.assert_array_equal(kept[1], [True, True, True, False, True, True])
    assert lost[0] == pytest.approx(0.0, abs=1e-12)
    assert lost[1] == pytest.approx(0.05 * 0.75)  # dropped onto a neighbour at 60 degrees


def test_best_subsets_with_a_zero_column_drop_it_first():
    # a zero column (a feature the model does not carry, cost 0) has no direction: it is dropped at no
    # cost instead of making every subset's loss NaN (a TypeError before); non-finite W is one line
    from slt_superposition.errors import InputError

    W = np.concatenate([PENTAGON[:, :4], np.zeros((2, 1))], axis=1)
    kept, lost = best_subsets(W, np.array([1.0, 1.0, 1.0, 1.0, 0.0]), [4, 5])
    np.testing.assert_array_equal(kept[0], [True, True, True, True, False])
    np.testing.assert_allclose(lost, 0.0, atol=1e-12)
    with pytest.raises(InputError, match="finite W"):
        best_subsets(np.full((2, 3), np.nan), np.ones(3), [2])

def test_resample_steps_scale_with_the_run():
    from analysis.sae_recovery import resample_steps

    assert resample_steps(3000) == (600, 1200, 1800)
    assert resample_steps(800) == (160, 320, 480)
    assert resample_steps(20) == (10,)  # 4 and 8 round to 0 and are dropped; 12 rounds to 10


def test_recovery_report_counts_the_target_per_model_and_overall(tmp_path):
    from experiments.sae_recovery import target_met, write_report

    row = lambda setting, model, got, posed: {"setting": setting, "model": model, "recovered": got,
                                              "well_posed": posed, "dead": 0.0, "fvu": 0.03, "matched": 0.99}
    rows = [row("a", "n4_m2", 14, 14), row("a", "n20_m5", 8, 12), row("b", "n4_m2", 13, 14), row("b", "n20_m5", 11, 12)]
    met, total, per_model = target_met(rows, "a")
    # 22 of 26 overall (85%) and n20_m5 at 67%: not met; b: 24 of 26 (92%), lowest model 92%: met
    assert not met and total == pytest.approx(22 / 26) and per_model["n20_m5"] == pytest.approx(8 / 12)
    assert target_met(rows, "b")[0]
    text = write_report(rows, ["a", "b"], tmp_path, tmp_path / "sae_recovery.png").read_text()
    assert "a 22 of 26 (85%; lowest model 67%): target not met" in text
    assert "b 24 of 26 (92%; lowest model 92%): target met" in text
    assert "| b | n20_m5 | 11 / 12 |" in text


def test_recovery_is_unknown_where_no_sae_had_n_rep_latents():
    # the pentagon needs 5 latents; with dictionaries of 3 and 4 its recovery is not measured (it read
    # False before, and the CLI counted it as a failure)
    from analysis.sae_recovery import recovery_share

    W = _W(PENTAGON, [0.05, 0.1])
    scores = recovery_scores(_sae_from([PENTAGON, PENTAGON], [3, 4]), W)
    assert np.isnan(scores["sae_recovered"].values).all()
    assert recovery_share(scores["sae_recovered"], well_posed(W)) == (0, 0)
    known = recovery_scores(_sae_from([PENTAGON, PENTAGON[:, [0, 0, 1, 2, 3]]], [3, 5]), W)
    assert recovery_share(known["sae_recovered"], well_posed(W)) == (1, 2)


def test_matched_cosine_is_unknown_not_zero_and_broadcasts_as_mmcs():
    from analysis.sae import mmcs
    from analysis.sae_match import matched_cosine, recovered

    nan_decoder = np.full_like(PENTAGON, np.nan)
    assert np.isnan(mmcs(PENTAGON, nan_decoder)) and np.isnan(matched_cosine(PENTAGON, nan_decoder))
    # a NaN true column masked out leaves the other features' matching alone (it removed every latent)
    W = PENTAGON.copy()
    W[:, 2] = np.nan
    mask = np.array([1, 1, 0, 1, 1], bool)
    assert matched_cosine(W, PENTAGON, feature_mask=mask) == pytest.approx(1.0)
    assert np.isnan(matched_cosine(W, PENTAGON))  # selected and without a direction: unknown
    # a zero decoder column is no latent: its feature is left unmatched and scores 0
    zero = PENTAGON.copy()
    zero[:, 2] = 0.0
    assert matched_cosine(PENTAGON, zero) == pytest.approx(0.8)
    # leading dims broadcast from the right in both scores (matched_cosine aligned them from the left)
    t = np.stack([PENTAGON, PENTAGON[:, [1, 2, 3, 4, 0]] * [[1], [-1]]])  # (2, hidden, feature)
    d = np.stack([t, t])  # (2, 2, hidden, latent): d[i, j] = t[j]
    np.testing.assert_allclose(matched_cosine(t, d), mmcs(t, d))
    np.testing.assert_allclose(matched_cosine(t, d), [[1.0, 1.0], [1.0, 1.0]])
    assert recovered(t[None], d).all()
