"""The actual response of training to a data perturbation: retrain every instance of a grid at
q' from the same initialisation and data stream, and measure what moved (issue 12, item 4).

A perturbation is "feature j's probability times `factor`" (the flagship uses factor < 1, so
every instance, p = 1 included, can be perturbed). Retraining uses the grid's own compiled
training step (`toy_models.train.trainer_functions`) with a per-feature probability vector: the
same initial weights, the same batch keys and so the same uniform draws u per entry, read under
p' (present iff u < p', value u / p'), so q and q' are paired exactly as in the susceptibility's
loss difference (`analysis.susceptibility_report.scaled_feature`).

The response is retrained(q') minus the unperturbed weights. With `control=True` every instance
is also retrained unperturbed in the same program and the response is taken against that
control: the original grid ran in a program of another size, and XLA may round a vmap of
another size differently in the last bit, which a long training run could amplify;
`control_drift` (|control - original|) measures that floor. Measured: the control reproduces
the original weights bit for bit (tests/test_fragility.py on a small grid; the quick flagship's
n20_m5 grid, 12 instances retrained in 48 rows), so the flagship retrains without it (half the
cost at one perturbation) and compares with the original weights.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
import xarray as xr

from analysis.measures import REPRESENTED_THRESHOLD, feature_dimensionality_array, feature_norms_array
from analysis.tms_susceptibility import check_features, require_sparse_uniform
from toy_models.train import GRID_DIMS, TrainConfig, instance_inputs, trainer_functions


def perturbed_probabilities(feature_probability, n_features: int, features: Sequence[int], factor: float) -> np.ndarray:
    """`(instance, 1 + len(features), n_features)` float32: each instance's probability vector,
    unperturbed (index 0, the control) and with feature `features[k]`'s probability times
    `factor` (index k + 1), capped at 1."""
    p = np.asarray(feature_probability, np.float32)
    base = np.broadcast_to(p[:, None, None], (p.size, 1 + len(features), n_features)).copy()
    for k, j in enumerate(features):
        base[:, k + 1, j] = np.minimum(np.float32(1.0), base[:, k + 1, j] * np.float32(factor))
    return base


def retrain_perturbed(config: TrainConfig, features: Sequence[int], factor: float, *,
                      control: bool = False) -> xr.Dataset:
    """Retrain every instance of the grid `config` at each perturbation (and unperturbed with
    `control`), from its own initialisation and batch keys, in one compiled program
    (`(instance x (P [+ 1]))` rows). Pass `dataclasses.replace(config, seeds=...)` to retrain a
    subset of seeds: an instance's keys depend only on its seed.

    Returns W `(grid..., perturbed_feature, hidden, feature)`, b `(grid..., perturbed_feature,
    feature)` and with `control` also `W_control (grid..., hidden, feature)`, `b_control`."""
    require_sparse_uniform(config, "retraining at a perturbed feature probability")
    features = check_features(features, config.n_features)
    n_pert = 1 + len(features)
    init, chunk = trainer_functions(config)
    inputs = instance_inputs(config)
    n_inst, n, m = config.n_instances, config.n_features, config.n_hidden
    probabilities = perturbed_probabilities(np.asarray(inputs["feature_probability"]), n, features, factor)
    if not control:
        probabilities, n_pert = probabilities[:, 1:], n_pert - 1
    rows = np.repeat(np.arange(n_inst), n_pert)
    params, opt_state = init(inputs["init_key"][rows])
    per_row = (inputs["data_key"][rows], jnp.asarray(probabilities.reshape(n_inst * n_pert, n)),
               inputs["importance"][rows])
    for start in range(0, config.steps, config.chunk_steps):
        active = min(config.chunk_steps, config.steps - start)
        params, opt_state, _ = chunk(params, opt_state, *per_row, jnp.uint32(start), jnp.uint32(active),
                                     length=config.chunk_steps)
    grid = config.grid_shape
    W = np.asarray(params["W"]).reshape(grid + (n_pert, m, n))
    b = np.asarray(params["b"]).reshape(grid + (n_pert, n))
    coords = {"feature_probability": np.asarray(config.feature_probabilities),
              "importance_decay": np.asarray(config.importance_decays),
              "seed": np.asarray(config.seeds, np.int64), "perturbed_feature": np.asarray(features),
              "hidden": np.arange(m), "feature": np.arange(n)}
    first = 1 if control else 0
    out = xr.Dataset({
        "W": (GRID_DIMS + ("perturbed_feature", "hidden", "feature"), W[..., first:, :, :],
              {"long_name": f"W retrained with the perturbed feature's probability x {factor:g}"}),
        "b": (GRID_DIMS + ("perturbed_feature", "feature"), b[..., first:, :], {"long_name": "b, retrained likewise"}),
    }, coords=coords, attrs={"factor": float(factor)})
    if control:
        out["W_control"] = (GRID_DIMS + ("hidden", "feature"), W[..., 0, :, :],
                            {"long_name": "W retrained unperturbed in the same program"})
        out["b_control"] = (GRID_DIMS + ("feature",), b[..., 0, :], {"long_name": "b retrained unperturbed"})
    return out


def training_response(retrained: xr.Dataset, W_original: xr.DataArray,
                      threshold: float = REPRESENTED_THRESHOLD) -> xr.Dataset:
    """What retraining at q' changed: `retrain_delta_norm`, `retrain_delta_dimensionality`
    `(grid..., perturbed_feature, feature)` (Delta ||W_i||, Delta D_i), `retrain_delta_k (grid...,
    perturbed_feature)` (change in the number of columns with ||W_i|| > threshold), against the
    control where `retrained` has one (then also `control_drift (grid...)`, max_i | ||W_i|| of
    the control - of the original |), else against `W_original` (the trained grid's W, selected
    to the retrained instances)."""
    original = W_original.sel({d: retrained[d].values for d in GRID_DIMS}).transpose(*GRID_DIMS, "hidden", "feature")
    W = retrained["W"].values
    Wc = retrained["W_control"].values if "W_control" in retrained else original.values
    norm, norm_c = feature_norms_array(W), feature_norms_array(Wc)
    dim, dim_c = feature_dimensionality_array(W), feature_dimensionality_array(Wc)
    k = (norm > threshold).sum(-1) - (norm_c > threshold).sum(-1)[..., None]
    per = GRID_DIMS + ("perturbed_feature", "feature")
    coords = {d: retrained[d].values for d in (*GRID_DIMS, "perturbed_feature", "feature")}
    against = "the control" if "W_control" in retrained else "the trained weights"
    factor = retrained.attrs["factor"]
    out = xr.Dataset({
        "retrain_delta_norm": (per, norm - norm_c[..., None, :], {
            "long_name": f"Delta ||W_i|| of retraining with the perturbed feature's probability x {factor:g} "
                         f"from the same initialisation (against {against})", "units": "1"}),
        "retrain_delta_dimensionality": (per, dim - dim_c[..., None, :], {
            "long_name": "Delta D_i of the same retraining", "units": "1"}),
        "retrain_delta_k": (per[:-1], k, {
            "long_name": f"change in k (columns with ||W_i|| > {threshold}) of the same retraining", "units": "1"}),
    }, coords=coords)
    if "W_control" in retrained:
        drift = np.abs(norm_c - feature_norms_array(original.values)).max(-1)
        out["control_drift"] = (GRID_DIMS, drift, {"long_name": "max_i | ||W_i|| control - original |", "units": "1"})
    return out


def control_check(train: xr.Dataset, seeds: Sequence[int] = (0,)) -> bool:
    """Whether retraining the given seeds of a trained grid unperturbed (factor 1, the flagship's
    row count for one perturbation) reproduces its W bit for bit."""
    import dataclasses

    from toy_models.train import config_from_dataset

    config = dataclasses.replace(config_from_dataset(train), seeds=tuple(int(s) for s in seeds))
    again = retrain_perturbed(config, (0,), 1.0)["W"].isel(perturbed_feature=0)
    return bool(np.array_equal(again.values, train["W"].sel(seed=list(config.seeds)).values))


def main(argv=None) -> None:
    """python -m analysis.retrain_response DIR/train_*.nc: the control check of a run's training grids."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="The retraining control: seed 0 retrained without a perturbation "
                                                 "equals the trained W bit for bit.")
    parser.add_argument("train", nargs="+", type=Path, help="a flagship run's train_<model>.nc files")
    paths = parser.parse_args(argv).train
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"no dataset at {', '.join(missing)}")
    for path in paths:
        print(f"{path}: seed 0 retrained unperturbed equals the trained W bit for bit: "
              f"{control_check(xr.load_dataset(path))}")


if __name__ == "__main__":
    main()
