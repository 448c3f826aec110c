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
Differences from the paper: b_pre starts at the mean of the activations (the paper uses the
geometric median; for toy activations the difference is immaterial), the reconstruction loss is
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

The nnx `TopKSAE` module wraps the same parameter dict for users who want a module object;
the pure functions `sae_init_params`, `sae_encode`, `sae_decode`, `sae_loss` are what is jitted.
"""

from __future__ import annotations

import math
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


def sae_loss(params, x, *, k: int, variance, latent_mask=None, dead_mask=None, k_aux: int = 1, aux_coef=1 / 32):
    """Normalised reconstruction loss + aux_coef * AuxK, for `x: (batch, hidden)`.

    `variance`: mean |x - mean x|^2 of the whole activation set (the normaliser).
    `dead_mask: (latent,)` marks dead latents (None: no AuxK term). Returns
    `(loss, (z, normalised_mse))`.
    """
    pre = sae_preactivations(params, x, latent_mask)
    z = _topk_codes(pre, k)
    x_hat = sae_decode(params, z)
    mse = jnp.mean(jnp.sum((x - x_hat) ** 2, axis=-1)) / variance
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
    hidden, latent)` (columns); NaN decoder columns (padding) are ignored. `feature_mask (...,
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
        if feature_mask is not None:
            best = best.where(feature_mask)
        return best.mean("feature").assign_attrs(long_name="mean max cosine similarity (MMCS)", units="1")
    t, dec = np.asarray(true_directions, np.float64), np.asarray(decoder, np.float64)
    t = t / np.maximum(np.linalg.norm(t, axis=-2, keepdims=True), 1e-30)
    dec = dec / np.linalg.norm(dec, axis=-2, keepdims=True)
    cos = np.einsum("...hf,...hl->...fl", t, dec)
    best = np.where(np.isnan(cos), -np.inf, cos).max(axis=-1)
    if feature_mask is not None:
        best = np.where(feature_mask, best, np.nan)
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


def _train_program(activations, eval_activations, init_keys, step_keys, masks, *, k, k_aux, aux_coef,
                   batch_size, dead_after_steps, learning_rate, log_every):
    """Train every (instance, dict size) in one scan; activations `(instance, sample, hidden)`."""
    optimizer = optax.adam(learning_rate, eps=6.25e-10)
    n_inst, n_samples, d_in = activations.shape
    n_sizes, n_latents = masks.shape
    mean = activations.mean(axis=1)  # (instance, hidden)
    variance = jnp.mean(jnp.sum((activations - mean[:, None]) ** 2, axis=-1), axis=1)  # (instance,)

    def init_one(key, b_pre):
        params = sae_init_params(key, d_in, n_latents, b_pre)
        return params, optimizer.init(params), jnp.zeros((n_latents,), jnp.int32)

    state = jax.vmap(lambda keys, b: jax.vmap(lambda kk: init_one(kk, b))(keys))(init_keys, mean)

    def update_one(state, batch, mask, var):
        params, opt_state, since_fired = state
        dead = (since_fired >= dead_after_steps) & mask
        grad_fn = jax.value_and_grad(sae_loss, has_aux=True)
        (loss, (z, mse)), grads = grad_fn(
            params, batch, k=k, variance=var, latent_mask=mask, dead_mask=dead, k_aux=k_aux, aux_coef=aux_coef
        )
        W = params["W_dec"]
        grads["W_dec"] = grads["W_dec"] - W * jnp.sum(grads["W_dec"] * W, axis=0, keepdims=True)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params["W_dec"] = params["W_dec"] / jnp.linalg.norm(params["W_dec"], axis=0, keepdims=True)
        fired = jnp.any(z > 0, axis=0)
        since_fired = jnp.where(fired, 0, since_fired + 1)
        return (params, opt_state, since_fired), mse

    def update_instance(state, acts, var, key):
        batch = acts[jax.random.randint(key, (batch_size,), 0, n_samples)]
        return jax.vmap(update_one, in_axes=(0, None, 0, None))(state, batch, masks, var)

    def step(state, keys):
        return jax.vmap(update_instance)(state, activations, variance, keys)

    def log_block(state, keys):  # log_every steps, logging the mean normalised MSE
        state, mse = jax.lax.scan(step, state, keys)
        return state, mse.mean(axis=0)

    n_steps = step_keys.shape[0]
    blocks = jax.tree_util.tree_map(
        lambda x: x.reshape((n_steps // log_every, log_every) + x.shape[1:]), step_keys)
    state, curve = jax.lax.scan(log_block, state, blocks)
    params = state[0]

    def evaluate(params, acts, mask):
        z = sae_encode(params, acts, k, mask)
        x_hat = sae_decode(params, z)
        centred = acts - acts.mean(axis=0)
        fvu_value = jnp.sum((acts - x_hat) ** 2) / jnp.sum(centred**2)
        never = ~jnp.any(z > 0, axis=0) & mask
        return fvu_value, jnp.sum(never) / jnp.sum(mask)

    on_data = lambda data: jax.vmap(lambda p, a: jax.vmap(evaluate, in_axes=(0, None, 0))(p, a, masks))(params, data)
    train_fvu, _ = on_data(activations)
    fvu_value, dead = on_data(eval_activations)
    return params, train_fvu, fvu_value, dead, curve


_train_program_jit = jax.jit(
    _train_program,
    static_argnames=("k", "k_aux", "aux_coef", "batch_size", "dead_after_steps", "learning_rate", "log_every"),
)


def train_sae(
    activations,
    *,
    dict_sizes: Sequence[int],
    k: int,
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
) -> xr.Dataset:
    """Train TopK SAEs of every size in `dict_sizes` on every instance's activations, in one program.

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

    Returns a Dataset over `(*instance_dims, dict_size, hidden, latent)`: `decoder` (unit
    columns, NaN beyond each size), `encoder`, `b_enc`, `b_pre`, `fvu`, `dead_fraction`,
    `loss_curve(step)` (normalised MSE, mean over each block of `log_every` steps), with
    provenance attrs of kind 'sae'.
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
    eval_acts = acts if eval_activations is None else np.asarray(
        getattr(eval_activations, "values", eval_activations), np.float32)
    require(eval_acts.shape[:-2] == acts.shape[:-2] and eval_acts.shape[-1] == acts.shape[-1],
            f"eval_activations shape {eval_acts.shape} does not match activations {acts.shape}")
    require(np.all(np.isfinite(acts)) and np.all(np.isfinite(eval_acts)), "activations contain NaN or inf")
    sizes = [int(s) for s in dict_sizes]
    require(len(sizes) > 0 and len(set(sizes)) == len(sizes) and min(sizes) >= 1,
            f"dict_sizes must be distinct positive integers, got {list(dict_sizes)}")
    require(1 <= k <= min(sizes), f"k must be in 1..{min(sizes)} (the smallest dictionary), got {k}")
    require(steps >= log_every and steps % log_every == 0,
            f"steps ({steps}) must be a positive multiple of log_every ({log_every})")
    require(batch_size >= 1, f"batch_size must be positive, got {batch_size}")
    require(restarts >= 1, f"restarts must be positive, got {restarts}")
    inst_shape = acts.shape[:-2]
    n_samples, d_in = acts.shape[-2:]
    k_aux = max(1, d_in // 2) if k_aux is None else int(k_aux)
    require(1 <= k_aux <= max(sizes), f"k_aux must be in 1..{max(sizes)}, got {k_aux}")
    n_inst = math.prod(inst_shape)
    n_latents = max(sizes)
    masks = jnp.arange(n_latents)[None, :] < jnp.asarray(sizes)[:, None]  # (dict_size, latent)
    # every restart is one more padded dictionary in the vmap: axis (dict_size * restart)
    masks_all = jnp.repeat(masks, restarts, axis=0)

    init_key, data_key = jax.random.split(key)
    init_keys = jax.random.split(init_key, (n_inst, len(sizes) * restarts))
    step_keys = jax.random.split(data_key, (steps, n_inst))
    params, train_fvu, fvu_value, dead, curve = _train_program_jit(
        jnp.asarray(acts.reshape(n_inst, n_samples, d_in)),
        jnp.asarray(eval_acts.reshape(n_inst, -1, d_in)),
        init_keys, step_keys, masks_all,
        k=k, k_aux=k_aux, aux_coef=float(aux_coef), batch_size=batch_size,
        dead_after_steps=max(1, -(-dead_after_tokens // batch_size)), learning_rate=float(learning_rate),
        log_every=log_every,
    )
    # keep, per (instance, dict size), the restart with the lowest FVU on the training activations
    train_fvu = np.asarray(train_fvu).reshape(n_inst, len(sizes), restarts)
    best = np.argmin(train_fvu, axis=-1)  # (instance, dict_size)

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
    config = dict(dict_sizes=sizes, k=k, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                  aux_coef=aux_coef, k_aux=k_aux, dead_after_tokens=dead_after_tokens, log_every=log_every,
                  restarts=restarts,
                  key=np.asarray(jax.random.key_data(key)).tolist())
    return xr.Dataset(
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
        },
        coords={**instance_coords, "dict_size": sizes, "latent": np.arange(n_latents), "restart": np.arange(restarts),
                "step": log_every * np.arange(1, steps // log_every + 1)},
        attrs=provenance_attrs("sae", config),
    )
