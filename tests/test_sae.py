"""TopK SAE: trivial cases of MMCS / FVU, and recovery of a constructed pentagon's directions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from analysis.sae import (
    TopKSAE,
    fvu,
    mmcs,
    recovered_overcompleteness,
    sae_decode,
    sae_encode,
    sae_init_params,
    train_sae,
)
from slt_superposition.errors import InputError
from slt_superposition.theory import kgon_params
from toy_models.data import sparse_uniform

PENTAGON = kgon_params(5, 1.0, 0.0, n_features=5)["W"]  # unit pentagon, W: (hidden 2, feature 5)
SAE_ARGS = dict(dict_sizes=[3, 5, 8], k=1, steps=2000, batch_size=256, restarts=4)


def test_mmcs_trivial_cases():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(4, 6))
    # decoder = the true directions, rescaled, permuted, plus extra columns and NaN padding
    decoder = np.concatenate([3.0 * true[:, ::-1], rng.normal(size=(4, 2)), np.full((4, 3), np.nan)], axis=1)
    assert mmcs(true, decoder) == pytest.approx(1.0)
    assert mmcs(true, -true) < 1.0  # sign matters: TopK codes are nonnegative
    # one decoder column along feature 0 only: features orthogonal to it score 0
    eye = np.eye(3)
    assert mmcs(eye, eye[:, :1]) == pytest.approx(1 / 3)
    assert mmcs(eye, eye[:, :1], feature_mask=np.array([True, False, False])) == pytest.approx(1.0)
    t = xr.DataArray(np.stack([true, true]), dims=("instance", "hidden", "feature"))
    d = xr.DataArray(decoder, dims=("hidden", "latent"))
    np.testing.assert_allclose(mmcs(t, d).values, [1.0, 1.0])
    # a decoder with no column but NaN ones (a failed SAE) has no MMCS: NaN, not -inf
    empty = np.full((4, 3), np.nan)
    assert np.isnan(mmcs(true, empty))
    assert np.isnan(mmcs(t, xr.DataArray(empty, dims=("hidden", "latent"))).values).all()


def test_fvu_trivial_cases():
    x = np.random.default_rng(1).normal(size=(100, 3))
    assert fvu(x, x) == 0.0
    assert fvu(x, np.broadcast_to(x.mean(axis=0), x.shape)) == pytest.approx(1.0)


def test_module_matches_pure_functions():
    params = sae_init_params(jax.random.PRNGKey(0), 3, 7)
    x = jax.random.normal(jax.random.PRNGKey(1), (10, 3))
    sae = TopKSAE.from_params(params, k=2)
    z = sae.encode(x)
    assert int(jnp.max(jnp.sum(z > 0, axis=1))) <= 2 and bool(jnp.all(z >= 0))
    np.testing.assert_array_equal(sae(x), sae_decode(params, sae_encode(params, x, 2)))
    np.testing.assert_allclose(jnp.linalg.norm(params["W_dec"], axis=0), 1.0, rtol=1e-6)


def test_input_errors_before_compilation():
    h = np.zeros((50, 2), np.float32)
    with pytest.raises(InputError):
        train_sae(h, dict_sizes=[3, 5], k=4, steps=10, key=jax.random.PRNGKey(0))
    with pytest.raises(InputError):
        train_sae(h, dict_sizes=[3, 3], k=1, steps=10, key=jax.random.PRNGKey(0))
    with pytest.raises(InputError):
        train_sae(h, dict_sizes=[3], k=1, steps=15, key=jax.random.PRNGKey(0))
    # one line each, the kind before its k (a traceback, or a k error for an unknown kind, before)
    for k, match in ((np.nan, "k must be a finite number"), (np.inf, "k must be a finite number"),
                     ("two", "k must be a finite number"), (1.5, "whole number")):
        with pytest.raises(InputError, match=match):
            train_sae(h, dict_sizes=[3], k=k, steps=10, key=jax.random.PRNGKey(0))
    with pytest.raises(InputError, match="unknown SAE kind 'bogus'"):
        train_sae(h, dict_sizes=[3], k=0.5, steps=10, kind="bogus", key=jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def pentagon_activations():
    """Two instances of h = W x for the constructed pentagon, x ~ sparse_uniform at p = 0.05."""
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    x = jnp.stack([sparse_uniform(key, 20000, 5, 0.05) for key in keys])  # (instance, sample, feature)
    return np.asarray(x @ PENTAGON.T)  # (instance, sample, hidden)


@pytest.fixture(scope="module")
def pentagon_sae(pentagon_activations):
    return train_sae(pentagon_activations, key=jax.random.PRNGKey(1), **SAE_ARGS)


@pytest.mark.slow
def test_sae_recovers_pentagon(pentagon_sae):
    ds = pentagon_sae
    assert ds.decoder.dims == ("instance", "dict_size", "hidden", "latent")
    assert ds.attrs["slt_superposition_kind"] == "sae"
    score = mmcs(xr.DataArray(PENTAGON, dims=("hidden", "feature")), ds.decoder)
    assert score.dims == ("instance", "dict_size")
    # 5 latents find the 5 directions; 3 latents cannot (their best is (1 + 4 cos 36 deg) / 5 = 0.85)
    assert np.all(score.sel(dict_size=5).values >= 0.95)
    assert np.all(score.sel(dict_size=3).values < 0.9)
    assert np.all(ds.fvu.sel(dict_size=5).values <= 0.05)
    # the recovered overcompleteness equals k/m = 5/2
    np.testing.assert_array_equal(recovered_overcompleteness(ds, PENTAGON).values, [2.5, 2.5])
    # decoder columns are unit norm, padding is NaN
    norms = np.sqrt((ds.decoder.sel(dict_size=5) ** 2).sum("hidden", skipna=False))
    np.testing.assert_allclose(norms.isel(latent=slice(0, 5)).values, 1.0, rtol=1e-5)
    assert np.all(np.isnan(norms.isel(latent=slice(5, None)).values))
    for var in ds.data_vars.values():
        assert "long_name" in var.attrs and "units" in var.attrs


@pytest.mark.slow
def test_sae_is_deterministic(pentagon_activations, pentagon_sae):
    again = train_sae(pentagon_activations, key=jax.random.PRNGKey(1), **SAE_ARGS)
    xr.testing.assert_identical(again.drop_attrs(), pentagon_sae.drop_attrs())


def test_topk_rank_mask_matches_top_k():
    """The counting mask used for small dictionaries keeps exactly the entries top_k keeps."""
    from analysis.sae import _RANK_MASK_MAX_LATENTS, _topk_codes

    for n_latents in (21, _RANK_MASK_MAX_LATENTS + 1):
        pre = jax.random.normal(jax.random.key(n_latents), (3, 64, n_latents))
        pre = pre.at[..., n_latents - 4:].set(-jnp.inf)  # masked (padding) latents
        for k in (1, 3):
            expected = jnp.where(pre >= jax.lax.top_k(pre, k)[0][..., -1:], jax.nn.relu(pre), 0.0)
            np.testing.assert_array_equal(_topk_codes(pre, k), expected)
            assert int(jnp.max(jnp.sum(_topk_codes(pre, k) != 0, axis=-1))) <= k


def test_resampling_moves_a_duplicate_latent_to_the_uncovered_feature():
    import optax

    from analysis.sae import _resample

    # single-feature samples of a pentagon; the dictionary has latents 0 and 1 both on feature 0
    # (1 is nudged towards feature 4 and fires only on its samples, less often than 0 on feature 0's) and
    # no latent on feature 4
    rng = np.random.default_rng(0)
    which = rng.choice(5, 600, p=[0.4, 0.15, 0.15, 0.15, 0.15])
    x = rng.uniform(0.2, 1.0, size=(600, 1)) * np.eye(5, dtype=np.float32)[which]
    h = jnp.asarray(x @ PENTAGON.T, jnp.float32)
    nudged = PENTAGON[:, 0] + np.array([0.0, -0.05], np.float32)
    decoder = np.stack([PENTAGON[:, 0], nudged / np.linalg.norm(nudged), PENTAGON[:, 1], PENTAGON[:, 2],
                        PENTAGON[:, 3]], axis=1).astype(np.float32)
    params = {"W_dec": jnp.asarray(decoder), "W_enc": jnp.asarray(decoder.T), "b_enc": jnp.zeros(5),
              "b_pre": jnp.zeros(2)}
    opt_state = optax.adam(1e-3).init(params)
    mask = jnp.ones(5, bool)
    new, _, _ = _resample((params, opt_state, jnp.zeros(5, jnp.int32)), h, mask, jax.random.key(0), k=1, k_inst=1.0,
                          kind="topk", n_samples=600, duplicate_cosine=0.95)
    moved = np.asarray(new["W_dec"])
    # only the duplicate moved, onto the feature nothing covered (its samples carry all the error)
    np.testing.assert_array_equal(moved[:, [0, 2, 3, 4]], decoder[:, [0, 2, 3, 4]])
    assert float(moved[:, 1] @ PENTAGON[:, 4]) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.asarray(new["W_enc"])[1], moved[:, 1])
    # a dictionary without dead or duplicate latents is left as it is
    same, _, _ = _resample((new, opt_state, jnp.zeros(5, jnp.int32)), h, mask, jax.random.key(0), k=1, k_inst=1.0,
                           kind="topk", n_samples=600, duplicate_cosine=0.95)
    np.testing.assert_array_equal(np.asarray(same["W_dec"]), moved)


def test_constant_activations_give_a_nan_sae_not_dead_latents(pentagon_activations):
    # an instance whose activations never vary (no feature fired) normalises its loss by 0: its SAE
    # is NaN, which read as "every latent dead, l0 0" before
    acts = pentagon_activations[:, :2000].copy()
    acts[1] = 0.0
    with pytest.warns(RuntimeWarning, match="1 of 2 instances have activations that do not vary"):
        ds = train_sae(acts, dict_sizes=[2, 3], k=1, steps=20, batch_size=32, restarts=1, key=jax.random.key(0))
    for name in ("fvu", "dead_fraction", "l0", "latent_frequency", "decoder", "restart_train_fvu"):
        assert np.isnan(ds[name].isel(instance=1)).all(), name
        assert np.isfinite(ds[name].isel(instance=0)).any(), name
    assert np.isfinite(ds["fvu"].isel(instance=0)).all()


def test_instance_arrays_are_read_by_dim_name(pentagon_activations):
    # a k or eval_activations DataArray stored in another dim order than the activations is read by
    # name: it trained one instance with another's k before (or raised a broadcast traceback)
    acts = xr.DataArray(pentagon_activations[:, :2000].reshape(1, 2, 2000, 2), dims=("a", "b", "sample", "hidden"))
    k = xr.DataArray([[0.5, 1.5]], dims=("a", "b"))
    args = dict(dict_sizes=[2], steps=20, batch_size=32, restarts=1, kind="batch-topk", key=jax.random.key(0))
    one = train_sae(acts, k=k, eval_activations=acts, **args)
    other = train_sae(acts, k=k.transpose("b", "a"), eval_activations=acts.transpose("b", "a", "sample", "hidden"),
                      **args)
    xr.testing.assert_identical(one, other)
    assert one["l0"].sel(b=1).item() > one["l0"].sel(b=0).item()


def test_a_nan_restart_is_never_kept(pentagon_activations, monkeypatch):
    import analysis.sae as sae_module

    program = sae_module._train_program_jit

    def one_restart_nan(*args, **kwargs):  # restart 0 of every (instance, size) ends NaN (train and eval FVU)
        out = list(program(*args, **kwargs))
        out[1], out[2] = (jnp.asarray(a).at[:, 0].set(jnp.nan) for a in out[1:3])
        return tuple(out)

    monkeypatch.setattr(sae_module, "_train_program_jit", one_restart_nan)
    ds = train_sae(pentagon_activations[:, :2000], dict_sizes=[5], k=1, steps=20, batch_size=32, restarts=2,
                   key=jax.random.key(0))
    assert np.isnan(ds["restart_train_fvu"].isel(restart=0)).all()
    assert np.isfinite(ds["fvu"]).all()
