"""TopK sparse autoencoder (Gao et al. 2024) on hidden activations, MMCS, FVU, recovered overcompleteness.

    z     = TopK(ReLU(W_enc (x - b_pre) + b_enc))      W_enc: (latent, hidden)
    x_hat = W_dec z + b_pre                             W_dec: (hidden, latent), unit-norm columns
    loss  = |x - x_hat|^2 / Var(x)  +  aux_coef * AuxK

Training follows Gao et al.: Adam; W_enc initialised to W_dec^T; before each Adam step the
gradient component parallel to each decoder column is projected out, and after it the columns
are renormalised to unit length. AuxK: a latent is *dead* once it has not been among the
TopK of any sample for `dead_after_tokens` training samples (counted in steps of
`batch_size` samples); the residual e = x - x_hat (no gradient) is then reconstructed from the
`k_aux` largest pre-activations among dead latents only, and |e - e_hat|^2 / Var(e) is added
with weight `aux_coef` (1/32 as in the paper), which pulls dead latents back towards data.
b_pre starts at the geometric median of the activations, as in the paper (Weiszfeld iterations
from the mean; on sparse toy activations most samples are exactly 0, and so is the median). It
is trained, and can drift: on a TMS square (two antipodal pairs) with k = 1, b_pre moves out
along a feature's column and the dictionary reorganises around it, at a *lower* TopK(1) loss
than the true dictionary's where samples with two active features are common
(docs/experiments/sae_recovery.md); `train_b_pre=False` holds it at the median. Differences
from the paper: the reconstruction loss is
normalised by the variance of the whole activation set rather than of each batch (a batch of a
very sparse toy model can be all zeros), and `k_aux` defaults to max(1, hidden // 2) (the paper:
a power of two near d_model / 2).

One program for every (instance, dictionary size): parameters are padded to the largest
dictionary size L_max and every dictionary carries a `latent_mask` (True for its first
`dict_size` latents). Masked latents get pre-activation -inf, so they never enter the TopK, never
reconstruct anything, receive zero gradient (hence zero Adam updates) and are never 'dead'; the
training is then `vmap` over dictionary sizes inside `vmap` over instances inside one `lax.scan`
over steps. The price is compute on the padding (sum of L_max over sizes instead of sum of
sizes), negligible at toy widths. In the result, decoder columns beyond a dictionary's size are NaN.

Kinds (`kind=`), all with the same encoder, decoder and AuxK; only the codes or the loss differ:

- `topk`: the above (Gao et al. 2024).
- `batch-topk`: the k * batch largest ReLU pre-activations of the whole batch are kept (a sample
  may use more or fewer than k latents); k is a mean and need not be whole: on sparse data it
  should be the expected number of active features (a pentagon at p = 0.05: k = 0.25; with k = 1
  three quarters of the codes go to all-zero samples and the dictionary is not recovered). At evaluation a fixed threshold replaces the batch: the
  (k * N)-th largest ReLU pre-activation over the N training activations, so codes are
  `pre * (pre > threshold)` and the mean L0 on the training set is k (stored as `threshold`).
- `multi-topk`: loss L(k) + L(4k) / 8, where L(k') is the normalised reconstruction MSE from the
  TopK(k') codes (Gao et al. 2024, section 5.3): the dictionary is trained to reconstruct at both
  k and 4k, a progressive code. Evaluation uses k.
- `matryoshka`: TopK(k) codes over the whole dictionary; the loss is the mean, over nested
  prefixes j (the first j latents), of the normalised MSE of the reconstruction from those j
  latents' codes alone (Bussmann et al. 2025, arXiv 2503.17547; they use BatchTopK and a few
  prefix sizes; here per-sample TopK and, by default, every prefix 1..dict_size, the finest
  nesting). Early latents must reconstruct on their own, so the latents come out ordered.

The nnx `TopKSAE` module wraps the same parameter dict for users who want a module object;
the pure functions `sae_init_params`, `sae_encode`, `sae_decode`, `sae_loss` are what is jitted.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr
from flax import nnx

from slt_superposition.errors import require
from slt_superposition.provenance import provenance_attrs

# --------------------------------------------------------------------------- the model


def sae_init_params(key, d_in: int, n_latents: int, b_pre=None) -> dict[str, jax.Array]:
    """Random unit-norm decoder columns, tied encoder W_enc = W_dec^T, zero b_enc.

    Returns `{"W_enc": (latent, hidden), "b_enc": (latent,), "W_dec": (hidden, latent),
    "b_pre": (hidden,)}`; `b_pre` defaults to zeros.
    """
    W_dec = jax.random.normal(key, (d_in, n_latents), dtype=jnp.float32)
    W_dec = W_dec / jnp.linalg.norm(W_dec, axis=0, keepdims=True)
    b_pre = jnp.zeros((d_in,), jnp.float32) if b_pre is None else jnp.asarray(b_pre, jnp.float32)
    return {"W_enc": W_dec.T, "b_enc": jnp.zeros((n_latents,), jnp.float32), "W_dec": W_dec, "b_pre": b_pre}


# up to this many latents the TopK mask counts, for each entry, the entries above it (a
# (batch, latent, latent) comparison); XLA:CPU's top_k sorts every row and was 40x slower at 21
# latents, where it made the SAE the slowest stage of the flagship
_RANK_MASK_MAX_LATENTS = 64


def _topk_codes(pre: jax.Array, k: int) -> jax.Array:
    """Keep the k largest entries of each row of `pre: (..., latent)` (then ReLU), zero the rest."""
    # keep x where x >= the k-th largest value, i.e. where fewer than k entries exceed x (the
    # same set either way; ties have probability zero for continuous activations)
    pre_const = jax.lax.stop_gradient(pre)
    if pre.shape[-1] <= _RANK_MASK_MAX_LATENTS:
        keep = jnp.sum(pre_const[..., None, :] > pre_const[..., :, None], axis=-1) < k
    else:
        keep = pre_const >= jax.lax.top_k(pre_const, k)[0][..., -1:]
    return jnp.where(keep, jax.nn.relu(pre), 0.0)


def sae_preactivations(params, x: jax.Array, latent_mask=None) -> jax.Array:
    """`x: (batch, hidden)` -> W_enc (x - b_pre) + b_enc `(batch, latent)`, -inf on masked latents."""
    pre = (x - params["b_pre"]) @ params["W_enc"].T + params["b_enc"]
    return pre if latent_mask is None else jnp.where(latent_mask, pre, -jnp.inf)


def sae_encode(params, x: jax.Array, k: int, latent_mask=None) -> jax.Array:
    """Codes z = TopK(ReLU(pre)) `(batch, latent)` for `x: (batch, hidden)`."""
    return _topk_codes(sae_preactivations(params, x, latent_mask), k)


def sae_decode(params, z: jax.Array) -> jax.Array:
    """x_hat = W_dec z + b_pre: `(batch, latent)` -> `(batch, hidden)`."""
    return z @ params["W_dec"].T + params["b_pre"]


KINDS = ("topk", "batch-topk", "multi-topk", "matryoshka")
SCHEDULES = ("constant", "decay")  # decay: linear to 0 over the last 20% of the steps (Gao et al.)


def _n_kept(k, n_samples: int):
    """round(k * n_samples), at least 1; `k` may be a traced scalar (one program for many k)."""
    return jnp.maximum(1, jnp.round(jnp.asarray(k, jnp.float32) * n_samples).astype(jnp.int32))


def batch_topk_codes(pre: jax.Array, k: float) -> jax.Array:
    """BatchTopK: keep the `round(k * batch)` largest entries of `pre: (batch, latent)` as a whole
    (then ReLU); `k` is the mean number of codes per sample and need not be whole."""
    pre_const = jax.lax.stop_gradient(pre)
    flat = jnp.sort(pre_const.reshape(-1))
    threshold = flat[flat.shape[0] - _n_kept(k, pre.shape[0])]
    return jnp.where(pre_const >= threshold, jax.nn.relu(pre), 0.0)


def threshold_codes(pre: jax.Array, threshold) -> jax.Array:
    """JumpReLU-style codes `pre * (pre > threshold)` (BatchTopK at inference); `pre: (..., latent)`."""
    return jnp.where(pre > threshold, jax.nn.relu(pre), 0.0)


def _normalised_mse(x, x_hat, variance):
    return jnp.mean(jnp.sum((x - x_hat) ** 2, axis=-1)) / variance


def prefix_mse(params, x, z, variance) -> jax.Array:
    """Normalised MSE of the reconstruction from the first j latents' codes, for every j: `(latent,)`.

    `x: (batch, hidden)`, `z: (batch, latent)`; entry j-1 uses latents 0..j-1 (cumulative sum of the
    latents' contributions z_l d_l).
    """
    contributions = z[:, None, :] * params["W_dec"][None]  # (batch, hidden, latent)
    x_hat = jnp.cumsum(contributions, axis=-1) + params["b_pre"][None, :, None]
    return jnp.mean(jnp.sum((x[:, :, None] - x_hat) ** 2, axis=1), axis=0) / variance


def sae_loss(params, x, *, k: int, variance, latent_mask=None, dead_mask=None, k_aux: int = 1, aux_coef=1 / 32,
             kind: str = "topk", prefix_weights=None):
    """Training loss of an SAE of `kind` (see the module docstring) + aux_coef * AuxK, `x: (batch, hidden)`.

    `variance`: mean |x - mean x|^2 of the whole activation set (the normaliser).
    `dead_mask: (latent,)` marks dead latents (None: no AuxK term). `prefix_weights: (latent,)`
    (matryoshka only): weight of the prefix of each length (entry j-1: the first j latents);
    None weights every prefix within `latent_mask` equally. Returns `(loss, (z, normalised_mse))`
    with `z` the codes and `normalised_mse` the reconstruction term at k.
    """
    pre = sae_preactivations(params, x, latent_mask)
    z = batch_topk_codes(pre, k) if kind == "batch-topk" else _topk_codes(pre, k)
    x_hat = sae_decode(params, z)
    mse = _normalised_mse(x, x_hat, variance)
    if kind == "multi-topk":
        loss = mse + _normalised_mse(x, sae_decode(params, _topk_codes(pre, min(4 * k, pre.shape[-1]))), variance) / 8
    elif kind == "matryoshka":
        weights = prefix_weights
        if weights is None:
            weights = jnp.ones(pre.shape[-1]) if latent_mask is None else latent_mask.astype(jnp.float32)
        loss = jnp.sum(weights * prefix_mse(params, x, z, variance)) / jnp.sum(weights)
    else:
        loss = mse
    if dead_mask is not None:
        e = jax.lax.stop_gradient(x - x_hat)
        z_aux = _topk_codes(jnp.where(dead_mask, pre, -jnp.inf), k_aux)
        e_hat = z_aux @ params["W_dec"].T
        e_var = jnp.mean(jnp.sum((e - e.mean(axis=0)) ** 2, axis=-1))
        aux = jnp.mean(jnp.sum((e - e_hat) ** 2, axis=-1)) / jnp.where(e_var > 0, e_var, 1.0)
        loss = loss + aux_coef * jnp.where(jnp.any(dead_mask), aux, 0.0)
    return loss, (z, mse)


class TopKSAE(nnx.Module):
    """A TopK SAE as an nnx module over the same parameter dict as the pure functions."""

    def __init__(self, d_in: int, n_latents: int, k: int, *, rngs: nnx.Rngs):
        init = sae_init_params(rngs.params(), d_in, n_latents)
        self.W_enc, self.b_enc = nnx.Param(init["W_enc"]), nnx.Param(init["b_enc"])
        self.W_dec, self.b_pre = nnx.Param(init["W_dec"]), nnx.Param(init["b_pre"])
        self.k = k

    @classmethod
    def from_params(cls, params, k: int) -> "TopKSAE":
        d_in, n_latents = params["W_dec"].shape
        model = cls(d_in, n_latents, k, rngs=nnx.Rngs(0))
        for name in ("W_enc", "b_enc", "W_dec", "b_pre"):
            getattr(model, name)[...] = jnp.asarray(params[name])
        return model

    @property
    def params(self) -> dict[str, jax.Array]:
        return {name: getattr(self, name)[...] for name in ("W_enc", "b_enc", "W_dec", "b_pre")}

    def encode(self, x: jax.Array) -> jax.Array:
        """`x: (batch, hidden)` -> `z: (batch, latent)`."""
        return sae_encode(self.params, x, self.k)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x: (batch, hidden)` -> `x_hat: (batch, hidden)`."""
        return sae_decode(self.params, self.encode(x))


# --------------------------------------------------------------------------- measures


def fvu(x, x_hat) -> float:
    """Fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean(x)|^2 over `(batch, hidden)`."""
    x, x_hat = np.asarray(x, np.float64), np.asarray(x_hat, np.float64)
    return float(np.sum((x - x_hat) ** 2) / np.sum((x - x.mean(axis=0)) ** 2))


def mmcs(true_directions, decoder, *, feature_mask=None):
    """Mean max cosine similarity: mean over true features g of max_j cos(g, d_j).

    `true_directions: (..., hidden, feature)` (columns; for a TMS, W), `decoder: (...,
    hidden, latent)` (columns); NaN decoder columns (padding) are ignored, and a decoder with no
    column but NaN ones gives NaN. `feature_mask (...,
    feature)` restricts the mean to some features (e.g. the represented ones: a zero column has
    no direction). DataArrays (dims `hidden`, `feature`, `latent`) broadcast over their other
    dims and give a DataArray; 2-D arrays give a float.
    """
    if isinstance(true_directions, xr.DataArray) or isinstance(decoder, xr.DataArray):
        t = true_directions if isinstance(true_directions, xr.DataArray) else xr.DataArray(
            np.asarray(true_directions), dims=("hidden", "feature"))
        dec = decoder if isinstance(decoder, xr.DataArray) else xr.DataArray(
            np.asarray(decoder), dims=("hidden", "latent"))
        t = t / np.maximum(np.sqrt((t**2).sum("hidden")), 1e-30)
        dec = dec / np.sqrt((dec**2).sum("hidden", skipna=False))
        best = xr.dot(t, dec, dim="hidden").fillna(-np.inf).max("latent")
        best = best.where(best > -np.inf)  # no decoder column at all (every one NaN): unknown, not -inf
        if feature_mask is not None:
            best = best.where(feature_mask)
        return best.mean("feature").assign_attrs(long_name="mean max cosine similarity (MMCS)", units="1")
    t, dec = np.asarray(true_directions, np.float64), np.asarray(decoder, np.float64)
    t = t / np.maximum(np.linalg.norm(t, axis=-2, keepdims=True), 1e-30)
    dec = dec / np.linalg.norm(dec, axis=-2, keepdims=True)
    cos = np.einsum("...hf,...hl->...fl", t, dec)
    best = np.where(np.isnan(cos), -np.inf, cos).max(axis=-1)
    best = np.where(best > -np.inf, best, np.nan)  # no decoder column at all (every one NaN): unknown
    if feature_mask is not None:
        best = np.where(feature_mask, best, np.nan)
    with warnings.catch_warnings():  # every feature NaN (masked out, or no decoder): NaN, said by the value
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.nanmean(best, axis=-1)
    return float(out) if out.ndim == 0 else out


def recovered_overcompleteness(
    sae: xr.Dataset, true_directions, *, mmcs_threshold: float = 0.9, fvu_threshold: float = 0.05, feature_mask=None
) -> xr.DataArray:
    """Smallest dictionary size with MMCS >= `mmcs_threshold` and FVU <= `fvu_threshold`, over m.

    `sae`: a `train_sae` result; `true_directions: (..., hidden, feature)` as in `mmcs`. MMCS
    alone is not enough: a dictionary with fewer latents than features can reach MMCS 0.9 by
    sitting between neighbouring features (a 4-latent dictionary on a pentagon: (3 + 2 cos 36
    deg) / 5 = 0.92), but it then fails to reconstruct the missing feature; the FVU target
    (0.05: at most 5% of the activation variance left unexplained) rules that out. NaN where no
    trained size qualifies. The result is the activation basis measured as one must in a real
    network (W unknown), to compare with the represented-feature count k/m.
    """
    score = mmcs(true_directions, sae["decoder"], feature_mask=feature_mask)
    ok = (score >= mmcs_threshold) & (sae["fvu"] <= fvu_threshold)
    size = xr.where(ok, sae["dict_size"], np.inf).min("dict_size")
    m = sae.sizes["hidden"]
    return xr.where(np.isfinite(size), size / m, np.nan).assign_attrs(
        long_name="recovered overcompleteness (smallest SAE dictionary meeting the targets / n_hidden)",
        units="1",
        mmcs_threshold=mmcs_threshold,
        fvu_threshold=fvu_threshold,
    )


# --------------------------------------------------------------------------- training


def geometric_median(x: jax.Array, iterations: int = 50) -> jax.Array:
    """Weiszfeld's iteration for the geometric median of `x: (sample, hidden)`, from the mean.

    A sample at the current estimate would divide by zero; its weight is capped at 1 / 1e-8
    (which leaves the estimate there when more than half the samples sit at one point, as the
    all-zero activations of a sparse TMS do: the median is that point).
    """
    def step(y, _):
        w = 1.0 / jnp.maximum(jnp.linalg.norm(x - y, axis=-1), 1e-8)
        return jnp.sum(w[:, None] * x, axis=0) / jnp.sum(w), None

    return jax.lax.scan(step, x.mean(axis=0), None, length=iterations)[0]


def _learning_rate(learning_rate: float, schedule: str, steps: int):
    if schedule == "constant":
        return learning_rate
    decay_steps = max(1, steps // 5)
    return optax.join_schedules(
        [optax.constant_schedule(learning_rate), optax.linear_schedule(learning_rate, 0.0, decay_steps)],
        [steps - decay_steps])


def encode_with(params, x, *, kind: str, k: int, latent_mask=None, threshold=None) -> jax.Array:
    """Evaluation codes `(batch, latent)` of an SAE of `kind`: TopK(k) per sample, or for
    batch-topk the fixed `threshold` (see the module docstring)."""
    pre = sae_preactivations(params, x, latent_mask)
    return threshold_codes(pre, threshold) if kind == "batch-topk" else _topk_codes(pre, k)


def batch_topk_threshold(params, x, k: float, latent_mask=None) -> jax.Array:
    """The round(k * N)-th largest ReLU pre-activation over `x: (N, hidden)`: the inference
    threshold of a BatchTopK SAE (mean L0 about k on `x`)."""
    pre = jax.nn.relu(sae_preactivations(params, x, latent_mask)).reshape(-1)
    return jnp.sort(pre)[pre.shape[0] - _n_kept(k, x.shape[0])]


def _train_program(activations, eval_activations, init_keys, step_keys, masks, prefix_weights, k_mean, *, k, k_aux,
                   aux_coef, batch_size, dead_after_steps, learning_rate, log_every, kind, schedule, train_b_pre,
                   zero_b_pre=False, init_from_data=False, resample_at=(), resample_key=None, resample_samples=2048,
                   duplicate_cosine=0.95, rare_fraction=0.0, init_decoder=None):
    """Train every (instance, dict size) in one scan; activations `(instance, sample, hidden)`.
    `resample_at`: steps (multiples of `log_every`) after which dead and duplicate latents are
    resampled (`_resample`); empty: one scan, no resampling."""
    n_steps = step_keys.shape[0]
    optimizer = optax.adam(_learning_rate(learning_rate, schedule, n_steps), eps=6.25e-10)
    n_inst, n_samples, d_in = activations.shape
    n_sizes, n_latents = masks.shape
    mean = activations.mean(axis=1)  # (instance, hidden)
    variance = jnp.mean(jnp.sum((activations - mean[:, None]) ** 2, axis=-1), axis=1)  # (instance,)
    median = jax.vmap(geometric_median)(activations)  # (instance, hidden): b_pre's start
    if zero_b_pre:
        median = jnp.zeros_like(median)

    def init_one(key, b_pre, acts):
        params = sae_init_params(key, d_in, n_latents, b_pre)
        if init_from_data:  # decoder columns at distinct random samples (minus b_pre), as k-means starts
            centred = acts - b_pre
            norms = jnp.linalg.norm(centred, axis=-1)
            weights = (norms > 1e-8) / jnp.maximum(jnp.sum(norms > 1e-8), 1)
            index = jax.random.choice(jax.random.fold_in(key, 1), n_samples, (n_latents,), replace=False,
                                      p=weights) if n_latents <= n_samples else jnp.arange(n_latents) % n_samples
            W_dec = (centred[index] / jnp.maximum(norms[index], 1e-8)[:, None]).T
            params = {**params, "W_dec": W_dec, "W_enc": W_dec.T}
        return params, optimizer.init(params), jnp.zeros((n_latents,), jnp.int32)

    state = jax.vmap(lambda keys, b, a: jax.vmap(lambda kk: init_one(kk, b, a))(keys))(init_keys, median,
                                                                                     activations)
    if init_decoder is not None:  # (instance, hidden, latent): every restart of every size starts there
        start = init_decoder / jnp.linalg.norm(init_decoder, axis=1, keepdims=True)
        params0 = dict(state[0])
        params0["W_dec"] = jnp.broadcast_to(start[:, None], params0["W_dec"].shape)
        params0["W_enc"] = jnp.swapaxes(params0["W_dec"], -1, -2)
        state = (params0, jax.vmap(jax.vmap(optimizer.init))(params0), state[2])

    def update_one(state, batch, mask, weights, var, k_inst):
        params, opt_state, since_fired = state
        dead = (since_fired >= dead_after_steps) & mask
        grad_fn = jax.value_and_grad(sae_loss, has_aux=True)
        (loss, (z, mse)), grads = grad_fn(
            params, batch, k=k_inst if kind == "batch-topk" else k, variance=var, latent_mask=mask, dead_mask=dead, k_aux=k_aux, aux_coef=aux_coef,
            kind=kind, prefix_weights=weights,
        )
        W = params["W_dec"]
        grads["W_dec"] = grads["W_dec"] - W * jnp.sum(grads["W_dec"] * W, axis=0, keepdims=True)
        if not train_b_pre:
            grads["b_pre"] = jnp.zeros_like(grads["b_pre"])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params["W_dec"] = params["W_dec"] / jnp.linalg.norm(params["W_dec"], axis=0, keepdims=True)
        fired = jnp.any(z > 0, axis=0)
        since_fired = jnp.where(fired, 0, since_fired + 1)
        return (params, opt_state, since_fired), mse

    def update_instance(state, acts, var, key, k_inst):
        batch = acts[jax.random.randint(key, (batch_size,), 0, n_samples)]
        return jax.vmap(update_one, in_axes=(0, None, 0, 0, None, None))(state, batch, masks, prefix_weights, var,
                                                                          k_inst)

    def step(state, keys):
        return jax.vmap(update_instance)(state, activations, variance, keys, k_mean)

    def log_block(state, keys):  # log_every steps, logging the mean normalised MSE
        state, mse = jax.lax.scan(step, state, keys)
        return state, mse.mean(axis=0)

    blocks = jax.tree_util.tree_map(
        lambda x: x.reshape((n_steps // log_every, log_every) + x.shape[1:]), step_keys)
    if not resample_at:
        state, curve = jax.lax.scan(log_block, state, blocks)
    else:  # segments of equal length (their gcd) in one outer scan; resample after those in resample_at
        n_blocks = n_steps // log_every
        segment = math.gcd(n_blocks, *[step // log_every for step in resample_at])
        ends = np.arange(1, n_blocks // segment + 1) * segment * log_every
        flags = jnp.asarray(np.isin(ends, resample_at))
        segments = jax.tree_util.tree_map(lambda x: x.reshape((n_blocks // segment, segment) + x.shape[1:]), blocks)

        def resample_all(state, index):
            keys = jax.random.split(jax.random.fold_in(resample_key, index), (n_inst, n_sizes))
            one = lambda st, acts, kk, k_inst: jax.vmap(
                lambda s1, mask, key1: _resample(s1, acts, mask, key1, k=k, k_inst=k_inst, kind=kind,
                                                 n_samples=resample_samples, duplicate_cosine=duplicate_cosine,
                                                 rare_fraction=rare_fraction))(st, masks, kk)
            return jax.vmap(one)(state, activations, keys, k_mean)

        def run_segment(state, xs):
            keys, flag, index = xs
            state, c = jax.lax.scan(log_block, state, keys)
            state = jax.lax.cond(flag, resample_all, lambda st, _: st, state, index)
            return state, c

        state, curve = jax.lax.scan(run_segment, state, (segments, flags, jnp.arange(len(ends))))
        curve = curve.reshape((n_blocks,) + curve.shape[2:])
    params = state[0]

    def threshold_of(params, acts, mask, k_inst):
        return batch_topk_threshold(params, acts, k_inst, mask) if kind == "batch-topk" else jnp.float32(jnp.nan)

    thresholds = jax.vmap(lambda p, a, kk: jax.vmap(threshold_of, in_axes=(0, None, 0, None))(p, a, masks, kk))(
        params, activations, k_mean)

    def evaluate(params, acts, mask, threshold):
        z = encode_with(params, acts, kind=kind, k=k, latent_mask=mask, threshold=threshold)
        x_hat = sae_decode(params, z)
        centred = acts - acts.mean(axis=0)
        fvu_value = jnp.sum((acts - x_hat) ** 2) / jnp.sum(centred**2)
        frequency = jnp.mean(z > 0, axis=0)
        never = (frequency == 0) & mask
        return fvu_value, jnp.sum(never) / jnp.sum(mask), frequency, jnp.mean(jnp.sum(z > 0, axis=-1))

    def on_data(data):
        per_instance = lambda p, a, t: jax.vmap(evaluate, in_axes=(0, None, 0, 0))(p, a, masks, t)
        return jax.vmap(per_instance)(params, data, thresholds)

    train_fvu = on_data(activations)[0]
    fvu_value, dead, frequency, l0 = on_data(eval_activations)
    return params, train_fvu, fvu_value, dead, curve, thresholds, frequency, l0


def _resample(state, acts, mask, key, *, k, k_inst, kind, n_samples, duplicate_cosine, rare_fraction=0.0):
    """Move the dead, rare and duplicate latents of one SAE to poorly reconstructed samples.

    `state`: (params, Adam state, steps since each latent fired) of one SAE; `acts: (sample,
    hidden)`; `mask: (latent,)` its dictionary. On `n_samples` random samples: a latent is *dead*
    if it fires on none, *rare* if it fires less often than `rare_fraction` times the median latent
    (on features of equal probability, a latent stuck between two features that another latent
    mostly takes), a *duplicate* if another latent that fires at least as often (ties: the
    lower index) has decoder cosine >= `duplicate_cosine` with it (two latents sharing one feature,
    the k-means local minimum of a TopK SAE: some other latent must then cover two features).
    Each such latent gets a distinct sample drawn with probability proportional to its squared
    reconstruction error: decoder column and (tied) encoder row the unit vector of that sample
    minus b_pre, b_enc 0, Adam moments and fired counter reset (Bricken et al. 2023's neuron
    resampling, with the encoder tied as at initialisation).
    """
    params, opt_state, since_fired = state
    pick_key, draw_key = jax.random.split(key)
    x = acts[jax.random.randint(pick_key, (n_samples,), 0, acts.shape[0])]
    pre = sae_preactivations(params, x, mask)
    z = batch_topk_codes(pre, k_inst) if kind == "batch-topk" else _topk_codes(pre, k)
    error = jnp.sum((x - sae_decode(params, z)) ** 2, axis=-1)  # (sample,)
    frequency = jnp.mean(z > 0, axis=0)  # (latent,)
    W = params["W_dec"]
    cos = W.T @ W  # (latent, latent)
    index = jnp.arange(W.shape[1])
    stronger = (frequency[None, :] > frequency[:, None]) | ((frequency[None, :] == frequency[:, None])
                                                           & (index[None, :] < index[:, None]))
    duplicate = jnp.any((cos >= duplicate_cosine) & stronger & mask[None, :] & (index[None, :] != index[:, None]),
                        axis=1)
    median = jnp.nanmedian(jnp.where(mask, frequency, jnp.nan))
    bad = ((frequency == 0) | (frequency < rare_fraction * median) | duplicate) & mask
    weights = error**2
    weights = jnp.where(jnp.sum(weights) > 0, weights, jnp.ones_like(weights)) + 1e-30
    # one distinct sample per latent (only the bad latents' are used)
    chosen = jax.random.choice(draw_key, n_samples, (W.shape[1],), replace=False, p=weights / jnp.sum(weights))
    target = x[chosen] - params["b_pre"]  # (latent, hidden)
    norm = jnp.linalg.norm(target, axis=-1, keepdims=True)
    target = jnp.where(norm > 1e-8, target / jnp.maximum(norm, 1e-8), W.T)
    new = dict(params)
    new["W_dec"] = jnp.where(bad[None, :], target.T, W)
    new["W_enc"] = jnp.where(bad[:, None], target, params["W_enc"])
    new["b_enc"] = jnp.where(bad, 0.0, params["b_enc"])

    def reset(tree):
        return {"W_dec": jnp.where(bad[None, :], 0.0, tree["W_dec"]), "W_enc": jnp.where(bad[:, None], 0.0, tree["W_enc"]),
                "b_enc": jnp.where(bad, 0.0, tree["b_enc"]), "b_pre": tree["b_pre"]}

    adam = opt_state[0]
    opt_state = (adam._replace(mu=reset(adam.mu), nu=reset(adam.nu)), *opt_state[1:])
    return new, opt_state, jnp.where(bad, 0, since_fired)


_train_program_jit = jax.jit(
    _train_program,
    static_argnames=("k", "k_aux", "aux_coef", "batch_size", "dead_after_steps", "learning_rate", "log_every",
                     "kind", "schedule", "train_b_pre", "zero_b_pre", "init_from_data", "resample_at",
                     "resample_samples", "duplicate_cosine", "rare_fraction"),
)


def train_sae(
    activations,
    *,
    dict_sizes: Sequence[int],
    k,
    steps: int,
    key,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
    aux_coef: float = 1 / 32,
    k_aux: int | None = None,
    dead_after_tokens: int = 100_000,
    eval_activations=None,
    instance_dims: Sequence[str] | None = None,
    log_every: int = 10,
    restarts: int = 4,
    kind: str = "topk",
    schedule: str = "constant",
    prefixes: Sequence[int] | None = None,
    train_b_pre: bool = True,
    zero_b_pre: bool = False,
    init_from_data: bool = False,
    resample_at: Sequence[int] = (),
    duplicate_cosine: float = 0.95,
    rare_fraction: float = 0.0,
    init_decoder=None,
) -> xr.Dataset:
    """Train SAEs of `kind` (topk, batch-topk, multi-topk, matryoshka; see the module docstring)
    of every size in `dict_sizes` on every instance's activations, in one program.

    `activations`: `(sample, hidden)` or `(*instance, sample, hidden)` (array or DataArray whose
    last two dims are sample and hidden); `instance_dims` names the leading axes (default:
    a DataArray's own dims, whose coordinates are kept, else `("instance",)` for 3-D input). Each (instance, size) gets its
    own initialisation key; instances draw their own minibatches of `batch_size` with
    replacement each step. `dead_after_tokens` samples without firing make a latent dead (for
    AuxK). FVU and the dead fraction (latents that never fire) are measured on
    `eval_activations` (default: the training activations), same shape as `activations`.

    `restarts`: independent initialisations per (instance, size), trained in the same vmap;
    the one with the lowest FVU on the training activations is kept. One initialisation is
    often not enough: on the constructed pentagon a single 5-latent SAE can settle with two
    latents on one feature (MMCS well below 0.9), and such a minimum always has the higher
    FVU, which is what the selection uses (tests/test_sae.py runs the pentagon recovery).

    `k`: codes per sample, a whole number; for batch-topk the mean number per sample, which need
    not be whole and may differ per instance (a scalar, or an array / DataArray of the instance
    shape: every instance its own k in the same program).

    `schedule`: learning rate constant, or `decay` (linear to 0 over the last 20% of the steps).
    `train_b_pre` False keeps b_pre at the geometric median of the activations (Adam sees a zero
    gradient): on a sparse TMS that is 0, which rules out the drifted-b_pre minima described above.
    `zero_b_pre` starts b_pre at 0 instead of the median (for data that is a set of directions, as
    a meta-SAE's, where the origin is the natural centre). `init_from_data` starts the decoder
    columns at distinct random nonzero samples (minus b_pre), as k-means is started, instead of
    random directions: latents then start where the data is dense.
    `resample_at`: steps (multiples of `log_every`, inside the run) after which every SAE's dead
    latents and duplicates (decoder cosine >= `duplicate_cosine` with a latent that fires more
    often), and with `rare_fraction` > 0 the latents firing less often than that fraction of the
    median latent (only sensible where features are about equally frequent, as in a TMS of one
    feature probability), are moved to poorly reconstructed samples (`_resample`): the k-means-like minimum
    where two latents share one feature and a third covers two is left that way, which restarts
    alone escape only by chance (docs/experiments/sae_recovery.md). Empty: no resampling (and the
    same program as before it existed).
    `init_decoder`: `(*instance, hidden, max(dict_sizes))` decoder columns every restart of every
    size starts from (normalised; tied encoder), instead of random directions: e.g. the true
    features, to see whether training stays there and at what FVU (docs/experiments/sae_recovery.md).
    `prefixes` (matryoshka only): the nested prefix lengths whose reconstructions are averaged
    (each dictionary also uses its own full size; lengths above a dictionary's size are dropped);
    None: every length 1..dict_size.

    Returns a Dataset over `(*instance_dims, dict_size, hidden, latent)`: `decoder` (unit
    columns, NaN beyond each size), `encoder`, `b_enc`, `b_pre`, `fvu`, `dead_fraction`,
    `loss_curve(step)` (normalised MSE, mean over each block of `log_every` steps),
    `latent_frequency` (share of evaluation samples on which each latent fires), `l0` (mean
    number of active latents per evaluation sample), `threshold` (batch-topk's inference
    threshold, NaN for the other kinds), with provenance attrs of kind 'sae'.
    """
    dims_given, instance_coords = instance_dims, {}
    if isinstance(activations, xr.DataArray):
        if dims_given is None:
            dims_given = tuple(activations.dims[:-2])
        instance_coords = {name: coord for name, coord in activations.coords.items()
                           if set(coord.dims) <= set(activations.dims[:-2])}
        activations = activations.values
    acts = np.asarray(activations, np.float32)
    require(acts.ndim >= 2, "activations must be (sample, hidden) or (*instance, sample, hidden)")
    instance_dims = tuple(dims_given) if dims_given is not None else (("instance",) if acts.ndim == 3 else ())
    require(len(instance_dims) == acts.ndim - 2,
            f"instance_dims {instance_dims} do not match activations of shape {acts.shape}")
    if isinstance(eval_activations, xr.DataArray):  # by name, as the activations' instance dims
        require(set(instance_dims) <= set(eval_activations.dims),
                f"eval_activations dims {eval_activations.dims} lack the instance dims {instance_dims}")
        eval_activations = eval_activations.transpose(*instance_dims, ...)
    if isinstance(k, xr.DataArray):
        require(set(k.dims) <= set(instance_dims), f"k dims {k.dims} are not among the instance dims {instance_dims}")
        k = k.transpose(*[d for d in instance_dims if d in k.dims]).expand_dims(
            [d for d in instance_dims if d not in k.dims]).transpose(*instance_dims)
    eval_acts = acts if eval_activations is None else np.asarray(
        getattr(eval_activations, "values", eval_activations), np.float32)
    require(eval_acts.shape[:-2] == acts.shape[:-2] and eval_acts.shape[-1] == acts.shape[-1],
            f"eval_activations shape {eval_acts.shape} does not match activations {acts.shape}")
    require(np.all(np.isfinite(acts)) and np.all(np.isfinite(eval_acts)), "activations contain NaN or inf")
    sizes = [int(s) for s in dict_sizes]
    require(len(sizes) > 0 and len(set(sizes)) == len(sizes) and min(sizes) >= 1,
            f"dict_sizes must be distinct positive integers, got {list(dict_sizes)}")
    require(kind in KINDS, f"unknown SAE kind '{kind}' (known: {', '.join(KINDS)})")
    try:
        k_array = np.asarray(getattr(k, "values", k), np.float64)
    except (TypeError, ValueError):
        k_array = np.array(np.nan)
    require(np.isfinite(k_array).all(), f"k must be a finite number, got {k!r}")
    if kind == "batch-topk":
        k_values = np.broadcast_to(k_array, acts.shape[:-2])
        require(np.all((k_values > 0) & (k_values <= min(sizes))),
                f"k must be in (0, {min(sizes)}] (the smallest dictionary), got {k}")
        k_values = k_values.copy()
        k = 1
    else:
        require(k_array.ndim == 0 and float(k_array) == int(k_array) and 1 <= k_array <= min(sizes),
                f"k must be a whole number in 1..{min(sizes)} (the smallest dictionary), got {k}")
        k = int(k_array)
        k_values = np.full(acts.shape[:-2], float(k))
    require(steps >= log_every and steps % log_every == 0,
            f"steps ({steps}) must be a positive multiple of log_every ({log_every})")
    require(batch_size >= 1, f"batch_size must be positive, got {batch_size}")
    require(restarts >= 1, f"restarts must be positive, got {restarts}")
    require(schedule in SCHEDULES, f"unknown learning-rate schedule '{schedule}' (known: {', '.join(SCHEDULES)})")
    resample_at = tuple(int(step) for step in resample_at)
    require(all(0 < step < steps and step % log_every == 0 for step in resample_at)
            and list(resample_at) == sorted(set(resample_at)),
            f"resample_at must be increasing steps inside (0, {steps}) and multiples of log_every ({log_every}), "
            f"got {resample_at}")
    require(prefixes is None or kind == "matryoshka", "prefixes are for kind 'matryoshka' only")
    require(prefixes is None or (len(prefixes) > 0 and all(int(j) >= 1 for j in prefixes)),
            f"prefixes must be positive lengths, got {prefixes}")
    inst_shape = acts.shape[:-2]
    n_samples, d_in = acts.shape[-2:]
    k_aux = max(1, d_in // 2) if k_aux is None else int(k_aux)
    require(1 <= k_aux <= max(sizes), f"k_aux must be in 1..{max(sizes)}, got {k_aux}")
    n_inst = math.prod(inst_shape)
    n_latents = max(sizes)
    masks = jnp.arange(n_latents)[None, :] < jnp.asarray(sizes)[:, None]  # (dict_size, latent)
    # every restart is one more padded dictionary in the vmap: axis (dict_size * restart)
    masks_all = jnp.repeat(masks, restarts, axis=0)
    lengths = np.arange(1, n_latents + 1)
    chosen = np.ones(n_latents, bool) if prefixes is None else np.isin(lengths, [int(j) for j in prefixes])
    weights = (chosen[None, :] | (lengths[None, :] == np.asarray(sizes)[:, None])) & np.asarray(masks)
    weights_all = jnp.asarray(np.repeat(weights, restarts, axis=0), jnp.float32)

    init_key, data_key = jax.random.split(key)
    init_keys = jax.random.split(init_key, (n_inst, len(sizes) * restarts))
    step_keys = jax.random.split(data_key, (steps, n_inst))
    params, train_fvu, fvu_value, dead, curve, threshold, frequency, l0 = _train_program_jit(
        jnp.asarray(acts.reshape(n_inst, n_samples, d_in)),
        jnp.asarray(eval_acts.reshape(n_inst, -1, d_in)),
        init_keys, step_keys, masks_all, weights_all, jnp.asarray(k_values.reshape(-1), jnp.float32),
        k=k, k_aux=k_aux, aux_coef=float(aux_coef), batch_size=batch_size,
        dead_after_steps=max(1, -(-dead_after_tokens // batch_size)), learning_rate=float(learning_rate),
        log_every=log_every, kind=kind, schedule=schedule, train_b_pre=bool(train_b_pre),
        zero_b_pre=bool(zero_b_pre), init_from_data=bool(init_from_data), resample_at=resample_at,
        resample_key=jax.random.fold_in(key, 7) if resample_at else None,
        resample_samples=min(2048, n_samples), duplicate_cosine=float(duplicate_cosine),
        rare_fraction=float(rare_fraction),
        init_decoder=None if init_decoder is None else jnp.asarray(
            np.asarray(init_decoder, np.float32).reshape(n_inst, d_in, n_latents)),
    )
    # keep, per (instance, dict size), the restart with the lowest FVU on the training activations
    train_fvu = np.asarray(train_fvu).reshape(n_inst, len(sizes), restarts)
    # a NaN restart is never the best (np.argmin picks the first NaN); all NaN: the first, NaN as it is
    best = np.argmin(np.where(np.isnan(train_fvu), np.inf, train_fvu), axis=-1)  # (instance, dict_size)

    def pick(x):
        x = np.asarray(x).reshape((n_inst, len(sizes), restarts) + np.shape(x)[2:])
        index = best.reshape(best.shape + (1,) * (x.ndim - 2))
        return np.take_along_axis(x, index, axis=2)[:, :, 0].reshape(inst_shape + (len(sizes),) + x.shape[3:])

    params = {name: pick(value) for name, value in params.items()}
    keep = np.asarray(masks)  # (dict_size, latent)
    decoder = np.where(keep[:, None, :], params["W_dec"], np.nan)
    encoder = np.where(keep[:, :, None], params["W_enc"], np.nan)
    b_enc = np.where(keep, params["b_enc"], np.nan)
    curve = pick(np.moveaxis(np.asarray(curve), 0, -1))  # (*instance, dict_size, step)
    grid = (*instance_dims, "dict_size")
    config = dict(dict_sizes=sizes, k=k_values.reshape(-1).tolist() if kind == "batch-topk" else k, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                  aux_coef=aux_coef, k_aux=k_aux, dead_after_tokens=dead_after_tokens, log_every=log_every,
                  restarts=restarts, kind=kind, schedule=schedule, train_b_pre=bool(train_b_pre),
                  zero_b_pre=bool(zero_b_pre), init_from_data=bool(init_from_data),
                  init_decoder=init_decoder is not None,
                  prefixes=None if prefixes is None else [int(j) for j in prefixes],
                  **({"resample_at": list(resample_at), "duplicate_cosine": float(duplicate_cosine),
                      "rare_fraction": float(rare_fraction)}
                     if resample_at else {}),
                  key=np.asarray(jax.random.key_data(key)).tolist())
    ds = xr.Dataset(
        {
            "decoder": ((*grid, "hidden", "latent"), decoder,
                        {"long_name": "SAE decoder direction (unit column; NaN beyond dict_size)", "units": "1"}),
            "encoder": ((*grid, "latent", "hidden"), encoder, {"long_name": "SAE encoder weight", "units": "1"}),
            "b_enc": ((*grid, "latent"), b_enc, {"long_name": "SAE encoder bias", "units": "activation"}),
            "b_pre": ((*grid, "hidden"), params["b_pre"],
                      {"long_name": "SAE pre-encoder (decoder) bias", "units": "activation"}),
            "fvu": (grid, pick(fvu_value), {"long_name": "fraction of variance unexplained", "units": "1"}),
            "restart_train_fvu": ((*grid, "restart"), train_fvu.reshape(inst_shape + train_fvu.shape[1:]),
                                  {"long_name": "training-set FVU of every restart (the lowest is kept)",
                                   "units": "1"}),
            "dead_fraction": (grid, pick(dead),
                              {"long_name": "fraction of latents that never fire on the evaluation set",
                               "units": "1"}),
            "loss_curve": ((*grid, "step"), curve,
                           {"long_name": "normalised reconstruction MSE (block mean)", "units": "1"}),
            "latent_frequency": ((*grid, "latent"), np.where(keep, pick(frequency), np.nan),
                                 {"long_name": "share of evaluation samples on which the latent fires",
                                  "units": "1"}),
            "l0": (grid, pick(l0), {"long_name": "mean number of active latents per evaluation sample",
                                    "units": "1"}),
            "threshold": (grid, pick(threshold),
                          {"long_name": "batch-topk inference threshold on the pre-activation (NaN: other kinds)",
                           "units": "activation"}),
        },
        coords={**instance_coords, "dict_size": sizes, "latent": np.arange(n_latents), "restart": np.arange(restarts),
                "step": log_every * np.arange(1, steps // log_every + 1)},
        attrs=provenance_attrs("sae", config),
    )
    return _unknown_where_constant(ds, acts, instance_dims)


def _unknown_where_constant(ds: xr.Dataset, acts: np.ndarray, instance_dims: tuple) -> xr.Dataset:
    """`ds` with every variable NaN for the instances whose training activations `acts (*instance,
    sample, hidden)` do not vary (e.g. no feature fired in a sparse instance's few samples): the
    loss is normalised by their variance, 0, so such an SAE is NaN throughout, and its NaN codes
    would read as "every latent dead, l0 0". Said in a RuntimeWarning."""
    constant = ~(acts.astype(np.float64).var(axis=-2).sum(axis=-1) > 0)  # (*instance,)
    if not constant.any():
        return ds
    warnings.warn(f"{int(constant.sum())} of {constant.size} instances have activations that do not vary on the SAE "
                  f"samples (no feature active?): their SAE variables are NaN", RuntimeWarning, stacklevel=3)
    known = xr.DataArray(~constant, dims=instance_dims)
    out = ds.copy()
    for name, var in ds.data_vars.items():
        if set(instance_dims) <= set(var.dims):
            out[name] = var.where(known).transpose(*var.dims).assign_attrs(var.attrs)
    return out
