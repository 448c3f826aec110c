"""Both bases along a training run: the LLC and k/m of every weight snapshot.

Chen et al. (2023) train the TMS with 6 features and 2 hidden neurons on x = mu e_i and see
the loss plateau near regular k-gons and then jump to a (k+1)-gon. `development` trains a
grid with weight snapshots, then estimates the LLC of every snapshot of every instance in one
compiled program (snapshots are one more batched axis), and measures k/m per snapshot. In
the Chen et al. setting (6 features, 2 hidden, x = mu e_i) each snapshot also gets its
critical-point class (`slt_superposition.theory.critical_point_class`) and the class's
theoretical lambda, so every estimate can be compared with the lambda of its own class.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from analysis.chain_excursions import chain_excursions
from analysis.measures import n_represented, overcompleteness
from slt_superposition.checks import CHECK_STEPS
from slt_superposition.llc import SGLDConfig, estimate_llc_batched
from slt_superposition.theory import KGON_N_FEATURES, KGON_N_HIDDEN, critical_point_class
from slt_superposition.grid import GRID_DIMS, complete, grid_coords, unflatten
from toy_models.one_hot import one_hot_moments_batched, one_hot_tms_loss
from toy_models.train import TrainConfig, config_from_dataset, llc_inputs, train_grid


def snapshot_params(train: xr.Dataset) -> dict[str, jax.Array]:
    """{"W": (grid..., snapshot, m, n), "b": (grid..., snapshot, n)} from a `train` dataset."""
    W = complete(train["W_snapshot"]).transpose(*GRID_DIMS, "snapshot", "hidden", "feature").values
    b = complete(train["b_snapshot"]).transpose(*GRID_DIMS, "snapshot", "feature").values
    return {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


def snapshot_llc(train: xr.Dataset, *, sgld: SGLDConfig, n_samples: int, key, check_steps: int = CHECK_STEPS,
                 refine_final: bool = False) -> xr.Dataset:
    """The LLC of every snapshot of every instance of `train`, in one program.

    Each snapshot is sampled against its own instance's data (n_samples draws); its stored bias
    checks are paired runs of at most `check_steps` steps. At full batch (`sgld.batch_size` None)
    in the Chen et al. setting the loss is the closed form of `full_batch_inputs`. Returns an
    `llc` dataset with dims (feature_probability, importance_decay, seed, snapshot, chain, ...).

    `refine_final`: also every instance's final weights refined to a critical point of the same
    L_n (`analysis.refine.refine_batched`, as the flagship's grid refines before its LLCs),
    estimated in the same program as one more point after the snapshots. The snapshots are
    estimated where training left them; the final weights, trained on fresh batches, sit near a
    critical point of the population loss, not of this L_n, and chains from there find lower
    loss: the estimate reads low by about nbeta times the loss gap, which grows with n
    (docs/experiments/weights_vs_activations.md). Adds, over the grid dims:
    `llc_final_refined`, `llc_final_refined_std`, `llc_final_refined_trusted`, `grad_norm_final`
    and `grad_norm_final_refined` (||grad L_n|| before and after), `W_final_refined`,
    `b_final_refined`, and where that estimate's chains ended (`analysis.chain_excursions`):
    `llc_final_refined_chains_left`, `llc_final_refined_chain_distance_max`.
    """
    data_key, chain_key = jax.random.split(key)
    loss_fn, final, data = llc_inputs(train, n_samples=n_samples, key=data_key)  # leaves (instance, ...)
    if sgld.batch_size is None:  # per instance, before the snapshot copies: the moments sort n rows each
        loss_fn, data = full_batch_inputs(train, loss_fn, data)
    params = snapshot_params(train)
    n_snap = train.sizes["snapshot"]
    def on_grid(x, copies: int = 1):
        """(instance, *rest) -> (grid..., copies, *rest)."""
        values = unflatten(x, train, [f"axis_{i}" for i in range(1, np.ndim(x))]).values
        return jnp.repeat(jnp.expand_dims(jnp.asarray(values), len(GRID_DIMS)), copies, axis=len(GRID_DIMS))

    if refine_final:
        from analysis.refine import refine_batched

        refined, before, after = refine_batched(loss_fn, final, data)
        params = jax.tree_util.tree_map(  # (grid..., snapshot + 1, ...): the refined point last
            lambda p, r: jnp.concatenate([p, on_grid(r)], axis=len(GRID_DIMS)), params, refined)
    points = n_snap + int(refine_final)

    data = jax.tree_util.tree_map(lambda x: on_grid(x, points), data)  # the same data for every point
    steps = train["snapshot"].values
    dims = grid_coords(train) | {"snapshot": np.append(steps, -1) if refine_final else steps}
    llc = estimate_llc_batched(loss_fn, params, data, config=sgld, key=chain_key, instance_dims=dims,
                               check_steps=check_steps)
    if not refine_final:
        return llc
    at = llc.isel(snapshot=-1, drop=True)
    norm = lambda values, long_name: unflatten(np.asarray(values), train).assign_attrs(long_name=long_name, units="1")
    out = llc.isel(snapshot=slice(0, n_snap))
    out["llc_final_refined"] = at["llc_mean"].assign_attrs(
        long_name="LLC at the final weights refined to a critical point of L_n (the snapshots' data)")
    out["llc_final_refined_std"] = at["llc_std"].assign_attrs(long_name="std over chains of llc_final_refined")
    out["llc_final_refined_trusted"] = at["trusted"].assign_attrs(
        long_name="llc_final_refined's stored bias checks all passed")
    out["grad_norm_final"] = norm(before, "||grad L_n|| at the final trained weights")
    out["grad_norm_final_refined"] = norm(after, "||grad L_n|| at the refined point, where llc_final_refined is measured")
    out["W_final_refined"] = unflatten(refined["W"], train, ["hidden", "feature"]).assign_attrs(
        long_name="final weights refined to a critical point of L_n", units="1")
    out["b_final_refined"] = unflatten(refined["b"], train, ["feature"]).assign_attrs(
        long_name="final biases refined to a critical point of L_n", units="1")
    inst = at["llc_mean"].dims
    ends = chain_excursions(at, out["W_final_refined"].transpose(*inst, "hidden", "feature").values,
                            out["b_final_refined"].transpose(*inst, "feature").values)
    out["llc_final_refined_chains_left"] = ends["llc_chains_left"]
    out["llc_final_refined_chain_distance_max"] = ends["llc_chain_distance_max"]
    return out


def full_batch_inputs(train: xr.Dataset, loss_fn, data):
    """(loss_fn, data) for full-batch SGLD: in the Chen et al. setting (one-hot data, unit
    importance, no hidden ReLU) the closed form of L_n on each instance's sorted moments
    (`toy_models.one_hot`: the same L_n, at a cost independent of n); else the inputs unchanged.
    `data` as `llc_inputs` gives it, leaves `(instance..., n, features)`."""
    config = config_from_dataset(train)
    if not (is_chen_setting(config.n_features, config.n_hidden, config.data) and config.model == "tms"
            and bool(np.all(np.asarray(data["importance"]) == 1.0))):
        return loss_fn, data
    return one_hot_tms_loss, one_hot_moments_batched(data["x"])


def is_chen_setting(n_features: int, n_hidden: int, data: str) -> bool:
    """Chen et al.'s setting, where the critical-point classes are derived: 6 features, 2 hidden, x = mu e_i."""
    return (n_features, n_hidden, data) == (KGON_N_FEATURES, KGON_N_HIDDEN, "high_sparsity_limit")


def snapshot_classes(W: xr.DataArray, b: xr.DataArray) -> xr.Dataset:
    """The critical-point class of every snapshot (Chen et al. setting only).

    `W`: (..., hidden, feature), `b`: (..., feature) with the same leading dims. Returns over
    the leading dims: `class_label` (e.g. "5-gon+1"), `class_k`, `class_positive_dead`,
    `class_llc` (the class's theoretical lambda, NaN where there is no theory),
    `population_loss` (exact, at the snapshot) and `class_loss` (at the class's critical point).
    """
    lead = [d for d in W.dims if d not in ("hidden", "feature")]
    Wv = W.transpose(*lead, "hidden", "feature").values
    bv = b.transpose(*lead, "feature").values
    shape = Wv.shape[:-2]
    out = {name: np.empty(shape, dtype) for name, dtype in
           [("class_label", object), ("class_k", int), ("class_positive_dead", int), ("class_llc", float),
            ("population_loss", float), ("class_loss", float)]}
    for idx in np.ndindex(shape):
        c = critical_point_class(Wv[idx], bv[idx])
        out["class_label"][idx] = c.label
        out["class_k"][idx] = c.k
        out["class_positive_dead"][idx] = c.positive_dead
        out["class_llc"][idx] = np.nan if c.llc is None else c.llc
        out["population_loss"][idx] = c.loss
        out["class_loss"][idx] = np.nan if c.critical_loss is None else c.critical_loss
    coords = {d: W[d] for d in lead if d in W.coords}
    attrs = {
        "class_label": ("critical-point class: k-gon, +j for j dead features with positive bias", None),
        "class_k": ("live features (||W_i|| > 0.5)", "1"),
        "class_positive_dead": ("dead features with positive bias", "1"),
        "class_llc": ("theoretical lambda of the snapshot's class (NaN: no theory)", "1"),
        "population_loss": ("exact population loss at the snapshot", "loss"),
        "class_loss": ("exact population loss at the class's critical point (NaN: no class point)", "loss"),
    }
    data = {}
    for name, values in out.items():
        long_name, units = attrs[name]
        values = values.astype(str) if name == "class_label" else values
        data[name] = xr.DataArray(values, dims=lead, coords=coords,
                                  attrs={"long_name": long_name} | ({"units": units} if units else {}))
    return xr.Dataset(data)


FINAL_REFINED = ("llc_final_refined", "llc_final_refined_std", "llc_final_refined_trusted", "grad_norm_final",
                 "grad_norm_final_refined", "W_final_refined", "b_final_refined", "llc_final_refined_chains_left",
                 "llc_final_refined_chain_distance_max")


def development(config: TrainConfig, *, sgld: SGLDConfig, n_samples: int, key, check_steps: int = CHECK_STEPS,
                progress: bool = True) -> xr.Dataset:
    """Train `config` (which must ask for `snapshot_steps`) and measure every snapshot.

    Returns a dataset over (grid..., snapshot) with `llc_mean`, `llc_std`, `n_represented`,
    `overcompleteness`, `snapshot_loss` (the LLC's init loss: the loss at the snapshot on the
    LLC data), `mala_acceptance`, `llc_trusted` (the estimate's stored bias checks, of at most
    `check_steps` steps, all passed: `slt_superposition.checks`), the weights `W_snapshot` and
    `b_snapshot`, where each snapshot's chains ended against it (`llc_chains_left`,
    `llc_chain_distance_max`: `analysis.chain_excursions`; a snapshot that is not a critical
    point sends its chains downhill, away from it), plus the final training `loss_curve` and
    the final weights' LLC at a critical point of L_n (`FINAL_REFINED`, from
    `snapshot_llc(..., refine_final=True)`); in the Chen et al. setting also the
    `snapshot_classes` variables and the refined point's class (`final_refined_class_label`,
    `final_refined_class_llc`).
    """
    if not config.snapshot_steps:
        config = dataclasses.replace(config, snapshot_steps=tuple(np.unique(np.geomspace(1, config.steps, 30).astype(int))))
    train = train_grid(config, progress=progress)
    llc = snapshot_llc(train, sgld=sgld, n_samples=n_samples, key=key, check_steps=check_steps, refine_final=True)
    W = train["W_snapshot"]
    k = n_represented(W)
    out = xr.Dataset(
        {
            "llc_mean": llc["llc_mean"],
            "llc_std": llc["llc_std"],
            "mala_acceptance": llc["mala_acceptance"].mean("chain").assign_attrs(
                long_name=f"{llc['mala_acceptance'].attrs['long_name']}, mean over chains", units="1"),
            "llc_trusted": llc["trusted"],
            "snapshot_loss": llc["init_loss"].assign_attrs(long_name="loss at the snapshot (LLC data)", units="loss"),
            "n_represented": k,
            "overcompleteness": overcompleteness(W).assign_attrs(
                long_name="represented features per hidden dimension k/m", units="1"),
            "loss_curve": train["loss_curve"],
            "W_snapshot": W,
            "b_snapshot": train["b_snapshot"],
        },
        attrs={"n_features": config.n_features, "n_hidden": config.n_hidden, "data": config.data},
    )
    inst = llc["llc_mean"].dims  # where each snapshot's chains ended, against the snapshot
    out = out.merge(chain_excursions(llc, W.transpose(*inst, "hidden", "feature").values,
                                     train["b_snapshot"].transpose(*inst, "feature").values))
    for name in FINAL_REFINED:
        out[name] = llc[name]
    if is_chen_setting(config.n_features, config.n_hidden, config.data):
        out = out.merge(snapshot_classes(W, train["b_snapshot"]))
        classes = snapshot_classes(llc["W_final_refined"], llc["b_final_refined"])
        out["final_refined_class_label"] = classes["class_label"].assign_attrs(
            long_name="critical-point class of the refined final weights")
        out["final_refined_class_llc"] = classes["class_llc"].assign_attrs(
            long_name="theoretical lambda of the refined final weights' class (NaN: no theory)")
    return out
