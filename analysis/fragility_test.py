"""Fragility, measured two ways on the flagship's instances, and the seed's conjecture tested.

Inputs: a flagship dataset (dims model, feature_probability, seed, perturbed_feature, feature)
holding the susceptibilities `susceptibility_norm`, `susceptibility_dimensionality` (chi of
||W_i|| and D_i under "feature j's probability x factor", `analysis.susceptibility_report`),
the retraining response `retrain_delta_norm`, `retrain_delta_dimensionality`, `retrain_delta_k`
(`analysis.retrain_response`, a subset of seeds and perturbed features) and the regions of
`analysis.compare` (`undercomplete_weights_overcomplete_activations`).

Prediction against training (per instance and pooled per model):
    sign agreement   fraction of entries (perturbed feature j, feature i) where chi and the
                     retrained change have the same sign, among entries where retraining moved
                     the measure by more than `MOVED` (below it training left the column alone)
    rank correlation Spearman correlation of chi with the retrained change over all entries
    k                the predicted change of k (columns whose ||W_i|| + chi crosses 0.5) against
                     the retrained one
chi is dE[phi]/dh for the tilt h Delta L with Delta L = L_q' - L_q, so chi itself (h = 1) is the
first-order prediction of the change; the retrained change is the minimiser's change under
training, which at a regular minimum with small localization is the same first-order quantity
(chi = -grad phi . H^-1 grad Delta L there) and elsewhere need not be.

The conjecture: instances where the weights are undercomplete (excess degeneracy) and the
activations overcomplete are more susceptible than the rest. Susceptibility of an instance:
the root mean square of its response matrix chi(j, i) of ||W_i|| (and of D_i). Both
groups are compared per model (medians and a one-sided Mann-Whitney test), and within each
feature probability where both occur (the regions sit at different sparsities, so a difference
across all of them could be sparsity's).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from analysis.compare import flagship_dataset_path
from analysis.measures import REPRESENTED_THRESHOLD

MOVED = 1e-3  # |Delta| below this: retraining did not move the column's measure
GROUP = "undercomplete_weights_overcomplete_activations"
KINDS = (("norm", "||W_i||"), ("dimensionality", "D_i"))


def _rms(a: np.ndarray, axes) -> np.ndarray:
    """Root mean square over `axes`, NaN where every entry is NaN (instances not perturbed)."""
    squares = np.where(np.isfinite(a), a ** 2, 0.0).sum(axis=axes)
    count = np.isfinite(a).sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.sqrt(squares / np.maximum(count, 1)), np.nan)


def response_measures(ds: xr.Dataset) -> xr.Dataset:
    """Per instance `(model, feature_probability, seed)`: `susceptibility_rms_norm`,
    `susceptibility_rms_dimensionality` (RMS of the response matrix), `retrain_rms_norm`,
    `retrain_sign_agreement`, `retrain_rank_correlation` (of ||W_i||; NaN where not retrained) and
    `predicted_delta_k (..., perturbed_feature)`."""
    dims = ("model", "feature_probability", "seed")
    chi = ds["susceptibility_norm"].transpose(*dims, "perturbed_feature", "feature")
    out = xr.Dataset(coords={d: ds[d] for d in dims})
    for kind, what in KINDS:
        value = ds[f"susceptibility_{kind}"].transpose(*dims, "perturbed_feature", "feature").values
        out[f"susceptibility_rms_{kind}"] = (dims, _rms(value, (-2, -1)), {
            "long_name": f"root mean square of the response matrix chi(p_j, {what}) over perturbations and features",
            "units": "1"})
    delta = ds["retrain_delta_norm"].reindex_like(chi).transpose(*chi.dims).values
    pred = chi.values
    out["retrain_rms_norm"] = (dims, _rms(delta, (-2, -1)), {
        "long_name": "root mean square of the retrained Delta ||W_i|| over perturbations and features", "units": "1"})
    agree = np.full(delta.shape[:3], np.nan)
    rank = np.full(delta.shape[:3], np.nan)
    for index in np.ndindex(*delta.shape[:3]):
        d, p = delta[index].ravel(), pred[index].ravel()
        ok = np.isfinite(d) & np.isfinite(p)
        moved = ok & (np.abs(d) > MOVED)
        if moved.any():
            agree[index] = float(np.mean(np.sign(d[moved]) == np.sign(p[moved])))
        if ok.sum() > 2:
            rank[index] = _spearman(p[ok], d[ok])
    out["retrain_sign_agreement"] = (dims, agree, {
        "long_name": f"fraction of entries (j, i) with |retrained Delta ||W_i||| > {MOVED} whose sign chi predicts",
        "units": "1"})
    out["retrain_rank_correlation"] = (dims, rank, {
        "long_name": "Spearman correlation of chi(p_j, ||W_i||) with the retrained Delta ||W_i|| over (j, i)",
        "units": "1"})
    # the linearisation at the point chi is read at: the refined point's norms (the trained ones in runs
    # made before they were stored)
    at = "feature_norm_refined" if "feature_norm_refined" in ds else "feature_norm_trained"
    norm = ds[at].transpose(*dims, "feature").values[..., None, :]
    with np.errstate(invalid="ignore"):
        predicted = ((norm + pred > REPRESENTED_THRESHOLD).sum(-1) - (norm > REPRESENTED_THRESHOLD).sum(-1)).astype(float)
    predicted[~np.isfinite(pred).any(-1)] = np.nan
    out["predicted_delta_k"] = (dims + ("perturbed_feature",), predicted, {
        "long_name": f"change in k the susceptibilities predict (columns whose ||W_i|| + chi crosses {REPRESENTED_THRESHOLD})",
        "units": "1"})
    return out


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _mann_whitney_greater(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(mannwhitneyu(a, b, alternative="greater").pvalue)


def agreement_rows(ds: xr.Dataset, measures: xr.Dataset) -> list[tuple]:
    """Per model: retrained instances, sign agreement and Spearman correlation of chi with the
    retrained change (pooled over instances and entries) for ||W_i|| and D_i, the median
    per-instance rank correlation, the fraction of (instance, perturbation) whose Delta k chi
    predicts, and the median ratio |retrained| / |chi| (RMS per instance)."""
    rows = []
    for model in ds["model"].values:
        part = ds.sel(model=model)
        row = [str(model)]
        retrained = np.isfinite(part["retrain_delta_norm"]).any(("perturbed_feature", "feature"))
        row.append(f"{int(retrained.sum())}")
        for kind, _ in KINDS:
            chi = part[f"susceptibility_{kind}"]
            delta = part[f"retrain_delta_{kind}"].reindex_like(chi).transpose(*chi.dims)
            p, d = chi.values.ravel(), delta.values.ravel()
            ok = np.isfinite(p) & np.isfinite(d)
            moved = ok & (np.abs(d) > MOVED)
            row.append(f"{np.mean(np.sign(p[moved]) == np.sign(d[moved])):.2f} ({int(moved.sum())})" if moved.any() else "-")
            row.append(f"{_spearman(p[ok], d[ok]):+.2f}" if ok.sum() > 2 else "-")
        m = measures.sel(model=model)
        row.append(f"{np.nanmedian(m['retrain_rank_correlation'].values):+.2f}"
                   if np.isfinite(m["retrain_rank_correlation"].values).any() else "-")
        k_true = part["retrain_delta_k"]
        k_pred = m["predicted_delta_k"].reindex_like(k_true).transpose(*k_true.dims).values
        k_true = k_true.values
        ok = np.isfinite(k_pred) & np.isfinite(k_true)
        row.append(f"{np.mean(k_pred[ok] == k_true[ok]):.2f} ({int(ok.sum())}; {int((k_true[ok] != 0).sum())} changed)"
                   if ok.any() else "-")
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (m["retrain_rms_norm"] / m["susceptibility_rms_norm"]).values
        row.append(f"{np.nanmedian(ratio):.2f}" if np.isfinite(ratio).any() else "-")
        rows.append(tuple(row))
    return rows


def _group_and_value(ds: xr.Dataset, measures: xr.Dataset, model, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(in the region, susceptibility RMS) of one model's instances, both `(feature_probability,
    ...)` in the same dim order whatever order each variable was stored in."""
    value = measures[f"susceptibility_rms_{kind}"].sel(model=model).transpose("feature_probability", ...)
    group = ds[GROUP].sel(model=model).transpose(*value.dims)
    return group.values.astype(bool), value.values


def conjecture_rows(ds: xr.Dataset, measures: xr.Dataset, kind: str = "norm") -> list[tuple]:
    """Per model: instances in the region (undercomplete weights and overcomplete activations)
    and outside it, the median susceptibility (RMS of chi) of each, their ratio, the one-sided
    Mann-Whitney p-value (region greater), and within feature probabilities where both occur,
    in how many the region's median is the larger."""
    rows = []
    for model in ds["model"].values:
        group, value = _group_and_value(ds, measures, model, kind)
        ok = np.isfinite(value)
        inside, outside = value[ok & group], value[ok & ~group]
        wins = both = 0
        for f in range(value.shape[0]):
            a, b = value[f][ok[f] & group[f]], value[f][ok[f] & ~group[f]]
            if len(a) and len(b):
                both += 1
                wins += int(np.median(a) > np.median(b))
        med = lambda a: f"{np.median(a):.3g}" if len(a) else "-"
        ratio = f"{np.median(inside) / np.median(outside):.2f}" if len(inside) and len(outside) else "-"
        p = _mann_whitney_greater(inside, outside)
        rows.append((str(model), f"{len(inside)}", f"{len(outside)}", med(inside), med(outside), ratio,
                     f"{p:.2g}" if np.isfinite(p) else "-", f"{wins} of {both}"))
    return rows


def pooled_conjecture(ds: xr.Dataset, measures: xr.Dataset, kind: str = "norm") -> dict:
    """All models together, each instance's susceptibility divided by its model's median:
    counts, medians inside and outside the region, and the one-sided Mann-Whitney p-value."""
    inside, outside = [], []
    for model in ds["model"].values:
        group, value = _group_and_value(ds, measures, model, kind)
        ok = np.isfinite(value)
        scale = np.median(value[ok]) if ok.any() else np.nan
        inside += list(value[ok & group] / scale)
        outside += list(value[ok & ~group] / scale)
    inside, outside = np.asarray(inside), np.asarray(outside)
    return {"inside": len(inside), "outside": len(outside),
            "median_inside": float(np.median(inside)) if len(inside) else float("nan"),
            "median_outside": float(np.median(outside)) if len(outside) else float("nan"),
            "p_greater": _mann_whitney_greater(inside, outside)}


def resolution_line(ds: xr.Dataset) -> str:
    """Per model, the fraction of response-matrix entries chi resolves from zero (|chi| > 2 SE,
    the SE over the chains, itself rough with few chains)."""
    parts = []
    for model in ds["model"].values:
        cells = []
        for kind, what in KINDS:
            chi = ds[f"susceptibility_{kind}"].sel(model=model).values
            se = ds[f"susceptibility_{kind}_se"].sel(model=model).values
            ok = np.isfinite(chi) & np.isfinite(se)
            cells.append(f"{what} {np.mean(np.abs(chi[ok]) > 2 * se[ok]):.0%} of {int(ok.sum())}")
        parts.append(f"{model}: " + ", ".join(cells))
    return "Entries with |chi| > 2 SE (resolved from zero): " + "; ".join(parts) + "."


def fragility_section(ds: xr.Dataset, figure: str | None = None) -> list[str]:
    """The flagship report's section: the prediction against retraining, and the conjecture,
    in numbers (whichever way they go)."""
    from slt_superposition import markdown

    measures = response_measures(ds)
    factor = ds.attrs.get("susceptibility_factor")
    if factor is None and "config" in ds.attrs:  # a saved flagship dataset: its config
        import json

        factor = json.loads(ds.attrs["config"]).get("susceptibility_factor")
    pooled = pooled_conjecture(ds, measures)
    pooled_dim = pooled_conjecture(ds, measures, "dimensionality")
    verdict = ("more susceptible" if pooled["p_greater"] < 0.05 else "not detectably more susceptible")
    lines = [
        "## Susceptibilities and retraining: is the special region fragile?",
        "",
        f"Perturbations: feature j's probability x {factor} (j in "
        f"{', '.join(str(int(j)) for j in ds['perturbed_feature'].values)}; the LLC's samples read under q', "
        "paired). chi = -nbeta Cov(phi, Delta L) of phi = ||W_i|| and D_i over the LLC's own chains, "
        "with the observables recorded (`susceptibility_norm`, `susceptibility_dimensionality`, `(model, p, seed, "
        "perturbed_feature, feature)`): the first-order prediction of each feature's change. Retraining "
        "from the same initialisation and batch keys at q' (`retrain_delta_norm`, `retrain_delta_dimensionality`, "
        "`retrain_delta_k`) gives the actual change.",
        "",
        resolution_line(ds),
        "",
        "**Prediction against retraining** (sign agreement among entries that retraining moved by more than "
        f"{MOVED}, count in brackets; Spearman over all entries):",
        "",
        markdown.table(("model", "retrained instances", "sign agreement ||W_i||", "Spearman ||W_i||",
                        "sign agreement D_i", "Spearman D_i", "median per-instance Spearman ||W_i||",
                        "Delta k as predicted", "median RMS retrained / RMS chi"), agreement_rows(ds, measures)),
        "",
        "**The conjecture** (susceptibility = RMS of an instance's response matrix of ||W_i||; region = "
        "undercomplete weights and overcomplete activations; p: one-sided Mann-Whitney, region larger; the last "
        "column counts feature probabilities holding both groups where the region's median is larger):",
        "",
        markdown.table(("model", "in region", "outside", "median chi RMS, region", "median, outside",
                        "ratio", "p", "region larger, same p"), conjecture_rows(ds, measures)),
        "",
        f"All models together (each instance's RMS over its model's median): region {pooled['inside']} instances, "
        f"median {pooled['median_inside']:.2f}; outside {pooled['outside']}, median {pooled['median_outside']:.2f}; "
        f"one-sided p = {pooled['p_greater']:.2g}: in this run the region is {verdict} than the rest by the "
        f"||W_i|| response (by the D_i response: medians {pooled_dim['median_inside']:.2f} against "
        f"{pooled_dim['median_outside']:.2f}, p = {pooled_dim['p_greater']:.2g}).",
        "",
    ]
    if figure:
        lines += [f"![susceptibility and retraining]({figure})", ""]
    return lines


def main(argv=None) -> None:
    """python -m analysis.fragility_test DIR (or DIR/weights_vs_activations.nc): the report's section."""
    import argparse

    parser = argparse.ArgumentParser(description="The flagship report's fragility section, from a finished run.")
    parser.add_argument("dataset", help="a flagship weights_vs_activations.nc, or the run's folder")
    path = flagship_dataset_path(parser.parse_args(argv).dataset)
    print("\n".join(fragility_section(xr.load_dataset(path))))


if __name__ == "__main__":
    main()
