"""Ground truth for the SAE matching scores and the SAE kinds' losses (BatchTopK, Multi-TopK, Matryoshka)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from analysis.sae import (
    batch_topk_codes,
    batch_topk_threshold,
    mmcs,
    prefix_mse,
    sae_init_params,
    sae_loss,
    train_sae,
)
from analysis.sae_match import assignment, matched_cosine, recovered
from slt_superposition.errors import InputError
from slt_superposition.theory import kgon_params

PENTAGON = kgon_params(5, 1.0, 0.0, n_features=5)["W"]  # unit pentagon, W: (hidden 2, feature 5)


def test_idealized_dictionary_scores_one():
    """A decoder made of the true directions (any order, any positive scale, extra latents, NaN
    padding) scores exactly 1 on both MMCS and the Hungarian-matched cosine."""
    rng = np.random.default_rng(0)
    true = rng.normal(size=(5, 8))
    perm = rng.permutation(8)
    decoder = np.concatenate([true[:, perm] * rng.uniform(0.5, 3, 8), rng.normal(size=(5, 3)),
                              np.full((5, 2), np.nan)], axis=1)
    assert matched_cosine(true, decoder) == pytest.approx(1.0)
    assert mmcs(true, decoder) == pytest.approx(1.0)
    features, latents = assignment(true, decoder)
    np.testing.assert_array_equal(latents[np.argsort(features)], np.argsort(perm))
    assert bool(recovered(true, decoder))


def test_matching_penalises_shared_latents():
    """One latent between two orthogonal features: MMCS 1/sqrt(2), matched cosine half that (the
    second feature gets no latent); a feature with no latent counts 0, a masked-out one not at all."""
    eye = np.eye(2)
    between = np.array([[1.0], [1.0]])
    assert mmcs(eye, between) == pytest.approx(2**-0.5)
    assert matched_cosine(eye, between) == pytest.approx(2**-0.5 / 2)
    assert matched_cosine(eye, eye[:, :1]) == pytest.approx(0.5)
    assert matched_cosine(eye, eye[:, :1], feature_mask=np.array([True, False])) == pytest.approx(1.0)
    assert not bool(recovered(eye, between))


def test_matched_cosine_broadcasts_over_instances():
    t = xr.DataArray(np.stack([PENTAGON, PENTAGON]), dims=("instance", "hidden", "feature"))
    d = xr.DataArray(np.stack([PENTAGON, PENTAGON[:, [0, 0, 2, 3, 4]]]), dims=("instance", "hidden", "latent"))
    score = matched_cosine(t, d)
    assert score.dims == ("instance",)
    assert score.values[0] == pytest.approx(1.0)
    # feature 1 is matched to the duplicate of feature 0: cos 72 degrees
    assert score.values[1] == pytest.approx((4 + np.cos(2 * np.pi / 5)) / 5)
    np.testing.assert_allclose(matched_cosine(t.values, d.values), score.values)


@pytest.fixture(scope="module")
def batch():
    params = sae_init_params(jax.random.key(0), 3, 8)
    params["b_enc"] = jax.random.normal(jax.random.key(2), (8,)) * 0.1
    x = jax.random.normal(jax.random.key(1), (32, 3))
    variance = float(jnp.mean(jnp.sum((x - x.mean(0)) ** 2, -1)))
    return params, x, variance


def _np_topk(pre, k):
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[:, :k]
    rows = np.arange(pre.shape[0])[:, None]
    out[rows, idx] = np.maximum(pre[rows, idx], 0)
    return out


def _np_mse(params, x, z, variance):
    x_hat = z @ np.asarray(params["W_dec"]).T + np.asarray(params["b_pre"])
    return np.mean(np.sum((np.asarray(x) - x_hat) ** 2, -1)) / variance


def _np_pre(params, x):
    return np.asarray((x - params["b_pre"]) @ params["W_enc"].T + params["b_enc"], np.float64)


def test_multi_topk_loss_is_L_k_plus_L_4k_over_8(batch):
    params, x, variance = batch
    pre = _np_pre(params, x)
    expected = _np_mse(params, x, _np_topk(pre, 1), variance) + _np_mse(params, x, _np_topk(pre, 4), variance) / 8
    loss, (z, mse) = sae_loss(params, x, k=1, variance=variance, kind="multi-topk")
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(mse) == pytest.approx(_np_mse(params, x, _np_topk(pre, 1), variance), rel=1e-5)
    assert float(loss) > float(mse)


def test_matryoshka_loss_is_mean_over_prefixes(batch):
    params, x, variance = batch
    pre = _np_pre(params, x)
    z = _np_topk(pre, 2)
    per_prefix = []
    for j in range(1, 9):
        zj = z.copy()
        zj[:, j:] = 0  # only the first j latents' codes
        per_prefix.append(_np_mse(params, x, zj, variance))
    np.testing.assert_allclose(prefix_mse(params, x, jnp.asarray(z, jnp.float32), variance), per_prefix, rtol=1e-5)
    loss, _ = sae_loss(params, x, k=2, variance=variance, kind="matryoshka")
    assert float(loss) == pytest.approx(np.mean(per_prefix), rel=1e-5)
    weights = jnp.zeros(8).at[jnp.array([1, 7])].set(1.0)  # prefixes of 2 and 8 latents
    loss, _ = sae_loss(params, x, k=2, variance=variance, kind="matryoshka", prefix_weights=weights)
    assert float(loss) == pytest.approx((per_prefix[1] + per_prefix[7]) / 2, rel=1e-5)
    # a masked dictionary of 5 latents averages its prefixes 1..5 only
    mask = jnp.arange(8) < 5
    pre_masked = np.where(np.asarray(mask), pre, -np.inf)
    zm = _np_topk(pre_masked, 2)
    expected = np.mean([_np_mse(params, x, np.where(np.arange(8) < j, zm, 0), variance) for j in range(1, 6)])
    loss, _ = sae_loss(params, x, k=2, variance=variance, kind="matryoshka", latent_mask=mask)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_batch_topk_keeps_k_times_batch_codes(batch):
    params, x, variance = batch
    pre = jnp.asarray(_np_pre(params, x), jnp.float32)
    z = batch_topk_codes(pre, 2)
    assert int(jnp.sum(z != 0)) <= 2 * x.shape[0]
    kept = np.sort(np.asarray(pre).ravel())[-2 * x.shape[0]:]
    np.testing.assert_allclose(np.sort(np.asarray(z)[np.asarray(z) != 0]), kept[kept > 0], rtol=1e-6)
    # per-sample counts vary (that is the point of BatchTopK)
    assert len(set(np.sum(np.asarray(z) != 0, axis=1).tolist())) > 1
    # the inference threshold gives mean L0 = k on the same data
    threshold = batch_topk_threshold(params, x, 2)
    assert float(jnp.mean(jnp.sum(jax.nn.relu(pre) > threshold, axis=1))) == pytest.approx(2 - 1 / 32, abs=1 / 32)
    loss, (codes, mse) = sae_loss(params, x, k=2, variance=variance, kind="batch-topk")
    np.testing.assert_array_equal(codes, z)
    assert float(loss) == pytest.approx(_np_mse(params, x, np.asarray(z), variance), rel=1e-5)


def test_variant_input_errors():
    h = np.zeros((50, 2), np.float32)
    with pytest.raises(InputError, match="kind"):
        train_sae(h, dict_sizes=[3], k=1, steps=10, key=jax.random.key(0), kind="relu")
    with pytest.raises(InputError, match="schedule"):
        train_sae(h, dict_sizes=[3], k=1, steps=10, key=jax.random.key(0), schedule="cosine")
    with pytest.raises(InputError, match="prefixes"):
        train_sae(h, dict_sizes=[3], k=1, steps=10, key=jax.random.key(0), prefixes=[1, 2])


@pytest.fixture(scope="module")
def pentagon_activations():
    from toy_models.data import sparse_uniform

    x = sparse_uniform(jax.random.key(0), 20000, 5, 0.05)
    return np.asarray(x @ PENTAGON.T)  # (sample, hidden)


def _pentagon_sae(activations, kind):
    return train_sae(activations, dict_sizes=[5], k=1, steps=2000, key=jax.random.key(1), restarts=4, kind=kind,
                     schedule="decay", train_b_pre=False)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["topk", "matryoshka"])
def test_every_kind_recovers_the_pentagon(pentagon_activations, kind):
    """A 5-latent TopK or Matryoshka SAE finds the pentagon's 5 directions: matched cosine >= 0.99
    (b_pre held at the activations' median, 0, as the flagship and `slt-superposition sae` train)."""
    ds = _pentagon_sae(pentagon_activations, kind)
    decoder = ds.decoder.sel(dict_size=5).values
    assert matched_cosine(PENTAGON, decoder) >= 0.99
    assert float(ds.fvu.sel(dict_size=5)) <= 0.05
    assert ds.attrs["slt_superposition_kind"] == "sae"
    assert np.isnan(float(ds.threshold.sel(dict_size=5)))
    assert float(ds.l0.sel(dict_size=5)) <= 1.0


@pytest.mark.slow
def test_multi_topk_trades_k_for_4k_on_the_pentagon(pentagon_activations):
    """With 5 latents, Multi-TopK's L(4k) term asks for a good code with 4 of 5 latents active, which
    the pentagon's interference (cos 72 deg = 0.31) makes costly: it gives up reconstruction at k = 1
    (measured: training FVU 0.14-0.15 against TopK's <= 0.05, and matched cosine 0.78 with a trained
    b_pre, 0.91 with b_pre fixed) for a far better code at k' = 4 than TopK's."""
    from analysis.sae_codes import fvu_at
    from analysis.sae_meta import trained_sae_params

    h = pentagon_activations
    topk = trained_sae_params(_pentagon_sae(h, "topk"), 5)
    multi = trained_sae_params(_pentagon_sae(h, "multi-topk"), 5)
    assert fvu_at(multi, h, 1) > fvu_at(topk, h, 1)
    assert fvu_at(multi, h, 4) < fvu_at(topk, h, 4)


@pytest.mark.slow
def test_batch_topk_on_the_pentagon(pentagon_activations):
    """BatchTopK with k = the expected number of active features (5 x 0.05): the inference threshold
    gives that mean L0 and the FVU is low, and the directions come out near the pentagon's but not at
    0.99: measured (this data, 4 restarts, decayed LR) 0.85, 0.97 and 0.99 matched cosine for batch 1024
    / 2000 steps, batch 256 / 2000 steps and batch 256 / 6000 steps, at the same FVU 0.022 each, so
    the FVU does not pin the directions down and restarts chosen by FVU cannot either."""
    ds = train_sae(pentagon_activations, dict_sizes=[5], k=0.25, steps=2000, key=jax.random.key(1), restarts=4,
                   kind="batch-topk", schedule="decay")
    assert np.isfinite(float(ds.threshold.sel(dict_size=5)))
    assert float(ds.l0.sel(dict_size=5)) == pytest.approx(0.25, rel=0.05)
    assert float(ds.fvu.sel(dict_size=5)) <= 0.05
    assert matched_cosine(PENTAGON, ds.decoder.sel(dict_size=5).values) >= 0.8
