"""Meta-SAEs on an idealized SAE: with one rare feature, the narrower meta-SAE drops that one first."""

import jax
import numpy as np
import pytest

from analysis.sae_meta import (
    activation_fvu,
    drop_cost,
    idealized_contributions,
    kept_features,
    meta_reconstruct,
    train_meta_sae,
)
from toy_models.data import sparse_uniform

ANGLE = 2 * np.pi * np.arange(6) / 6
HEXAGON = np.stack([np.cos(ANGLE), np.sin(ANGLE)])  # W: (hidden 2, feature 6)
P = np.array([0.1, 0.1, 0.1, 0.005, 0.1, 0.1])  # feature 3 is rare


def test_meta_reconstruct_and_costs():
    # a meta decoder holding 5 of the 6 hexagon directions: the 6th maps to a neighbour at 60 degrees
    meta = HEXAGON[:, [0, 1, 2, 4, 5]]
    recon = meta_reconstruct(HEXAGON, meta)
    np.testing.assert_allclose(recon[:, [0, 1, 2, 4, 5]], HEXAGON[:, [0, 1, 2, 4, 5]], atol=1e-12)
    assert np.linalg.norm(recon[:, 3]) == pytest.approx(0.5)  # cos 60 degrees
    np.testing.assert_array_equal(kept_features(HEXAGON, meta), [True, True, True, False, True, True])
    np.testing.assert_allclose(drop_cost(HEXAGON, P), P / 3)
    x = np.eye(6)
    assert activation_fvu(x @ HEXAGON.T, x, HEXAGON, np.zeros(2)) == pytest.approx(0.0, abs=1e-12)
    # no meta latent at all (an all-NaN meta decoder): every direction reconstructs to 0, as documented
    np.testing.assert_array_equal(meta_reconstruct(HEXAGON, np.full((2, 3), np.nan)), np.zeros((2, 6)))


@pytest.mark.slow
def test_meta_sae_on_idealized_sae_drops_the_rare_feature_first():
    x = np.asarray(sparse_uniform(jax.random.key(0), 40_000, 6, P))
    contributions, features = idealized_contributions(HEXAGON, x)
    np.testing.assert_allclose(contributions, x[x > 0][:, None] * HEXAGON.T[features], rtol=1e-6)
    meta = train_meta_sae(contributions, [5, 6], key=jax.random.key(1), steps=2000)
    # width 6: every direction kept; width 5: all but the rare one
    np.testing.assert_array_equal(kept_features(HEXAGON, meta.decoder.sel(dict_size=6).values), [True] * 6)
    np.testing.assert_array_equal(kept_features(HEXAGON, meta.decoder.sel(dict_size=5).values),
                                  [True, True, True, False, True, True])


@pytest.mark.slow
def test_meta_sae_quick_run(tmp_path):
    """`reproduce meta-sae --quick`: dataset, figure, report; the best subset of W drops the cheapest
    feature first, and the meta-SAEs' loss order correlates negatively with the cost of dropping."""
    from experiments.meta_sae import order_summary, run

    ds = run(tmp_path, size="quick", progress=False)
    for name in ("meta_sae.nc", "meta_sae.png", "report.md"):
        assert (tmp_path / name).exists()
    assert order_summary(ds, "best subset of W")[2]
    for sae in ("idealized", "trained"):
        assert order_summary(ds, sae)[1] < 0
    # a narrower meta-dictionary never reconstructs the activations better than the widest one
    fvu = ds["activation_fvu"].sel(sae="best subset of W").values
    assert np.all(np.diff(fvu) >= 0)  # widths run 7 down to 2
