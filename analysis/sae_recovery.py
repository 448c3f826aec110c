"""Where SAE recovery of a TMS's features is well posed, and whether an SAE achieved it.

A TMS instance (W: (hidden m, feature n), feature probability p) gives activations h = W x, a
nonnegative combination of the represented columns W_i (||W_i|| > 0.5) of the active features.
Recovering the columns from h alone (what an SAE attempts) is *well posed* here when

1. the activations are overcomplete: more represented features than hidden dimensions
   (n_rep > m); with n_rep <= m the represented columns are (close to) a basis and a sparse
   dictionary is not needed to explain h, and
2. they are sparse enough: the expected number of active represented features n_rep p is at
   most m / 2. An s-sparse combination of a frame's columns is the only one of that sparsity
   when every 2s columns are linearly independent (spark > 2s); a generic frame in m dimensions
   has spark m + 1, so s <= m / 2 is the largest sparsity for which the code of a typical sample
   is unique. Beyond it, many samples have several sparse explanations and the SAE's dictionary
   need not be W.

Recovery is scored at the *right dictionary size*, n_rep latents, over the represented
features: Hungarian-matched cosine and MMCS (`analysis.sae_match`) both >= 0.95.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from analysis.measures import n_represented, represented_features
from analysis.sae import mmcs
from analysis.sae_match import matched_cosine
from slt_superposition.errors import require

RECOVERY_THRESHOLD = 0.95


def expected_active(W: xr.DataArray, feature_probability) -> xr.DataArray:
    """n_rep p: the expected number of active represented features per sample."""
    return (n_represented(W) * feature_probability).assign_attrs(
        long_name="expected active represented features per sample (n_rep p)", units="features")


def well_posed(W: xr.DataArray, feature_probability=None) -> xr.DataArray:
    """True where recovery is well posed: n_rep > m and n_rep p <= m / 2 (module docstring).

    `W: (..., hidden, feature)`; `feature_probability` defaults to W's coordinate of that name.
    """
    p = W["feature_probability"] if feature_probability is None else feature_probability
    m = W.sizes["hidden"]
    ok = (n_represented(W) > m) & (expected_active(W, p) <= m / 2)
    return ok.assign_attrs(long_name="SAE recovery well posed (n_rep > m and n_rep p <= m/2)", units="1")


def recovery_scores(sae: xr.Dataset, W: xr.DataArray) -> xr.Dataset:
    """Matched cosine, MMCS, FVU and dead fraction of the SAE with n_rep latents, and `recovered`
    (both scores >= 0.95), over the represented features, per instance. `sae`: a `train_sae` result
    over the same instance dims as `W`."""
    represented = represented_features(W)
    matched = matched_cosine(W, sae["decoder"], feature_mask=represented)
    best = mmcs(W, sae["decoder"], feature_mask=represented)
    n_rep = n_represented(W)
    at = lambda v: v.where(v["dict_size"] == n_rep).max("dict_size")
    out = xr.Dataset({
        "sae_matched_cosine": at(matched).assign_attrs(
            long_name="Hungarian-matched cosine of the SAE with n_rep latents", units="1"),
        "sae_mmcs_at_n_rep": at(best).assign_attrs(long_name="MMCS of the SAE with n_rep latents", units="1"),
        "sae_fvu_at_n_rep": at(sae["fvu"]).assign_attrs(long_name="FVU of the SAE with n_rep latents", units="1"),
        "sae_dead_at_n_rep": at(sae["dead_fraction"]).assign_attrs(
            long_name="dead-latent fraction of the SAE with n_rep latents", units="1"),
    })
    # NaN (unknown) where no SAE with n_rep latents was trained, or its scores are unknown: not False
    known = out["sae_matched_cosine"].notnull() & out["sae_mmcs_at_n_rep"].notnull()
    out["sae_recovered"] = ((out["sae_matched_cosine"] >= RECOVERY_THRESHOLD)
                            & (out["sae_mmcs_at_n_rep"] >= RECOVERY_THRESHOLD)).where(known).assign_attrs(
        long_name=f"SAE with n_rep latents recovers W (matched cosine and MMCS >= {RECOVERY_THRESHOLD}; NaN where "
                  f"no SAE had n_rep latents)", units="1")
    return out


def recovery_share(recovered: xr.DataArray, posed: xr.DataArray) -> tuple[int, int]:
    """(recovered, well posed) instance counts; an instance whose `recovered` is unknown (NaN: no
    SAE with n_rep latents) counts in neither."""
    recovered = np.asarray(recovered, np.float64)
    posed = np.asarray(posed, bool) & ~np.isnan(recovered)
    return int(np.sum((recovered == 1) & posed)), int(np.sum(posed))


def hidden_activations(train: xr.Dataset, *, n_samples: int, key) -> xr.DataArray:
    """Hidden activations of every instance of a 'train' dataset, `(*grid dims, sample, hidden)`,
    on `n_samples` fresh draws of its own data (as `toy_models.train.llc_inputs`)."""
    import jax

    from toy_models.tms import tms_hidden
    from toy_models.train import GRID_DIMS, config_from_dataset, llc_inputs

    relu = config_from_dataset(train).model == "tms_relu_hidden"
    _, params, data = llc_inputs(train, n_samples=n_samples, key=key)
    h = jax.vmap(lambda p, x: tms_hidden(p, x, relu_hidden=relu))(params, data["x"])
    grid_shape = tuple(train.sizes[d] for d in GRID_DIMS)
    return xr.DataArray(np.asarray(h).reshape(grid_shape + h.shape[1:]), dims=(*GRID_DIMS, "sample", "hidden"),
                        coords={d: train[d].values for d in GRID_DIMS})


def k_for(n_features: int, n_hidden: int, feature_probability: float) -> int:
    """TopK's k for a TMS: the expected number of active features n p, rounded (Python's `round`:
    halves to the even neighbour, 2.5 -> 2, 3.5 -> 4), in 1..m (with n the represented features n_rep:
    the expected number of active represented features)."""
    return int(min(max(1, round(n_features * float(feature_probability))), n_hidden))


K_RULES = ("features", "represented")
RESAMPLE_FRACTIONS = (0.2, 0.4, 0.6)  # resampling points, as fractions of the SAE training steps
RARE_FRACTION = 0.25  # a latent firing less often than this fraction of the median latent is resampled


def resample_steps(steps: int, log_every: int = 10) -> tuple[int, ...]:
    """The steps after which `grid_saes` resamples dead, rare and duplicate latents: 20, 40 and 60% of
    `steps`, rounded down to multiples of `log_every` (none that round to 0)."""
    return tuple(sorted({s for s in (int(f * steps) // log_every * log_every for f in RESAMPLE_FRACTIONS)
                         if 0 < s < steps}))


def grid_saes(train: xr.Dataset, *, n_samples: int, key, dict_sizes, kind: str = "topk", progress: bool = False,
              k_rule: str = "features", resample: bool = False, **train_kwargs) -> xr.Dataset:
    """`train_sae` on every instance of a 'train' dataset; returns the SAE dataset over its grid dims.

    k: for batch-topk, each instance's expected number of active represented features n_rep p
    (at least 0.01, at most the smallest dictionary), all in one program; for the other kinds
    `k_for` with n the number of features (`k_rule="features"`: round(n p), the same for every
    instance of a feature probability) or each instance's represented features
    (`k_rule="represented"`: round(n_rep p)), one program per distinct k, at most m and at most the
    smallest dictionary (a dictionary of fewer latents than k cannot have k codes active).
    `resample`: resample dead, rare and duplicate latents at 20, 40 and 60% of the steps
    (`analysis.sae.train_sae`'s `resample_at`, `rare_fraction` RARE_FRACTION).
    """
    import jax

    from analysis.sae import train_sae
    from slt_superposition.progress import progress_bar

    require(k_rule in K_RULES, f"unknown k rule '{k_rule}' (known: {', '.join(K_RULES)})")
    acts = hidden_activations(train, n_samples=n_samples, key=key)
    n, m = train.sizes["feature"], train.sizes["hidden"]
    if resample:
        train_kwargs = {**train_kwargs, "resample_at": resample_steps(train_kwargs["steps"]),
                        "rare_fraction": RARE_FRACTION}
    if kind == "batch-topk":
        k = expected_active(train["W"], train["feature_probability"]).clip(0.01, min(dict_sizes))
        k = k.transpose(*acts.dims[:-2])
        sae = train_sae(acts, dict_sizes=dict_sizes, k=k.values, kind=kind, key=key, **train_kwargs)
        sae["k"] = k.assign_attrs(long_name="SAE k (mean codes per sample: n_rep p)", units="latents")
        return sae
    grid_dims = acts.dims[:-2]
    p = train["feature_probability"]
    count = n_represented(train["W"]) if k_rule == "represented" else xr.full_like(p, n, dtype=int)
    largest = min(m, min(int(size) for size in dict_sizes))
    ks = xr.apply_ufunc(np.vectorize(lambda c, q: k_for(int(c), largest, float(q))), count, p)
    k_grid = ks.broadcast_like(acts.isel(sample=0, hidden=0, drop=True)).transpose(*grid_dims)
    flat = acts.values.reshape((-1,) + acts.shape[-2:])
    k_flat = k_grid.values.reshape(-1)
    parts, order = [], []
    with progress_bar(len(np.unique(k_flat)), "SAEs (one program per k)", progress) as bar:
        for i, k in enumerate(np.unique(k_flat)):
            index = np.flatnonzero(k_flat == k)
            parts.append(train_sae(flat[index], dict_sizes=dict_sizes, k=int(k), kind=kind, instance_dims=("instance",),
                                   key=jax.random.fold_in(key, i), **train_kwargs))
            order.append(index)
            bar.update(1)
    sae = xr.concat(parts, "instance", combine_attrs="override").isel(instance=np.argsort(np.concatenate(order)))
    shape = k_grid.shape
    sae = xr.Dataset({name: (grid_dims + v.dims[1:], v.values.reshape(shape + v.shape[1:]), v.attrs)
                      if "instance" in v.dims else v for name, v in sae.data_vars.items()},
                     coords={**{d: acts[d] for d in grid_dims}, **{c: sae[c] for c in sae.coords if c != "instance"}},
                     attrs=sae.attrs)
    sae["k"] = ks.assign_attrs(long_name="SAE k (codes per sample)", units="latents",
                               rule="round(n_rep p)" if k_rule == "represented" else "round(n p)")
    return sae


def recovery_line(ds: xr.Dataset) -> str:
    """One markdown paragraph for a report: per model (dim `model` if present) the recovered share of
    the well-posed instances that have an SAE, with median dead fraction and FVU at n_rep latents."""
    if "sae_recovered" not in ds:
        return ""
    models = list(ds["model"].values) if "model" in ds.dims else [None]
    parts, total_got, total_posed = [], 0, 0
    for model in models:
        one = ds if model is None else ds.sel(model=model)
        has_sae = one["sae_matched_cosine"].notnull()
        posed = (one["sae_well_posed"] == 1) & has_sae
        got, n_posed = recovery_share(one["sae_recovered"].fillna(0).astype(bool), posed)
        total_got, total_posed = total_got + got, total_posed + n_posed
        dead = float(one["sae_dead_at_n_rep"].where(posed).median()) if n_posed else float("nan")
        fvu = float(one["sae_fvu_at_n_rep"].where(posed).median()) if n_posed else float("nan")
        parts.append(f"{model or 'all'} {got}/{n_posed} (dead latents {dead:.2f}, FVU {fvu:.3f})")
    share = total_got / total_posed if total_posed else float("nan")
    return (f"**SAE recovery target** (matched cosine and MMCS >= {RECOVERY_THRESHOLD} with n_rep latents, where "
            f"recovery is well posed: n_rep > m and n_rep p <= m/2): {total_got} of {total_posed} instances "
            f"({share:.0%}); per model, recovered / well posed (median dead-latent fraction, FVU at n_rep): "
            + "; ".join(parts) + ".")
