"""Localization decided by measurement: the LLC estimate against gamma on the Chen et al. classes
and on trained TMS.

At each class point (refined on n samples of x = mu e_i, as `experiments.kgon_llc`), `calibrate`
chooses step size and chain length at gamma = 1; the same config is then run at each gamma of
`GAMMAS` with the same key, and next to each estimate stand

- the quadratic prediction at that gamma (`quadratic_llc_prediction`, Hessian of L_n): the
  downward bias gamma puts on the curved directions, each counting nbeta h / (nbeta h + gamma)
  of its 1/2;
- for classes with negative-bias dead features (the 5-gon), the estimate with those features'
  parameters held fixed (`kgon_llc.frozen_dead`): they are exactly flat near w*, so the
  difference from the full estimate is what chains add by leaving the dead feature's flat
  region, which a weak localization allows;
- for those classes, the share of post-burn-in steps at which the chains are outside that
  region (`theory.dead_features_active`: some output changes when the dead feature's
  parameters are reset), measured on the very chains of the estimate (`estimate_susceptibilities`
  with that indicator as its observable; the same key gives the same chains as `estimate_llc`).

Trained instances (`TRAINED`: TMS on their usual sparse data, dense and sparse, trained then
refined on n samples as in `experiments.tms_llc_vs_n`) get the same rows: calibrated at gamma 1,
run at each gamma with one key, next to the quadratic prediction and the symmetry bound
(d - orbit - dead_flat) / 2. Where they have dead features (zero columns with non-positive
bias, `analysis.compare.dead_flat_parameters`), the estimate with those features' parameters
held fixed stands beside the full one. The flat-region share is not measured there:
`theory.dead_features_active` is exact for one active feature at a time (x = mu e_i), and
with several features active a dead feature's column is curved (weakly, through co-active
features), not flat.

    slt-superposition reproduce llc-localization --out results/llc_localization [--quick]
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from analysis.compare import dead_flat_parameters, orbit_dimension
from analysis.refine import refine
from analysis.weight_basis import hessian_spectrum, quadratic_llc_prediction
from experiments import kgon_llc, tms_llc_vs_n
from experiments.registry import header, run_cases
from slt_superposition import figure_style as fs
from slt_superposition.calibration import calibrate
from slt_superposition.diagnostics import mean_and_se
from slt_superposition.io import save_dataset
from slt_superposition.llc import default_nbeta, estimate_llc
from slt_superposition.provenance import provenance_attrs
from slt_superposition.susceptibility import estimate_susceptibilities
from slt_superposition.theory import critical_point_class, dead_features_active
from toy_models.train import llc_inputs

GAMMAS = (1.0, 10.0, 100.0, 1000.0)
CASES = [(6, 0), (5, 0)]  # (k, positive dead): the 6-gon (no dead feature), the 5-gon (one, negative bias)
SETTINGS = dict(n=100_000, calibration=kgon_llc.CALIBRATION)
# the length rule compares three chain lengths (min_steps, 2x, 4x): 5000 to 20,000
QUICK = dict(n=2**14, calibration=dict(kgon_llc.QUICK, min_steps=5000, max_steps=20_000))
# trained TMS (model of tms_llc_vs_n.MODELS, feature probability): dense, and sparse with dead features
TRAINED = [("n6_m2", 1.0), ("n6_m2", 0.05), ("n20_m5", 0.05)]
TRAINED_SETTINGS = dict(n=2**14, train_steps=3000, calibration=tms_llc_vs_n.SETTINGS["calibration"])
TRAINED_QUICK = dict(n=2**12, train_steps=2000, calibration=tms_llc_vs_n.QUICK["calibration"])
QUICK_TRAINED = TRAINED[:2]  # the quick run leaves n20_m5 out


def run_class(k: int, positive: int, *, n: int, calibration: dict, progress: bool = True) -> list[dict]:
    """Rows (one per gamma) for one class point refined on n samples."""
    x, params, grad_norm, key = kgon_llc.refined_kgon(k, positive, n_samples=n)
    cls = critical_point_class(np.asarray(params["W"]), np.asarray(params["b"]))
    k_cal, k_est = jax.random.split(key)
    config, _ = calibrate(kgon_llc.kgon_loss, params, x, key=k_cal, **calibration)
    eig = hessian_spectrum(kgon_llc.kgon_loss, params, x, method="exact").values
    dead = np.arange(np.shape(params["W"])[1]) >= k  # the class point's dead features, as `frozen_dead`
    outside = lambda p, _: jnp.any(dead_features_active(p["W"], p["b"], dead, xp=jnp)).astype(jnp.float32)
    rows = []
    for gamma in GAMMAS:
        cfg = dataclasses.replace(config, localization=gamma)
        t0 = time.perf_counter()
        share = share_se = np.nan
        if dead.any():  # the same chains (same key) with the flat-region observable alongside
            est = estimate_susceptibilities(kgon_llc.kgon_loss, params, x, config=cfg, key=k_est,
                                            observables={"outside": outside}, delta_loss_fns={"none": _no_change})
            per_chain = est["observable_mean_per_chain"].sel(observable="outside").values[~est["diverged"].values]
            share, share_se = map(float, mean_and_se(per_chain))
        else:
            est = estimate_llc(kgon_llc.kgon_loss, params, x, config=cfg, key=k_est, checks=False)
        mean, se = kgon_llc.llc_and_se(est)
        frozen, frozen_se = np.nan, np.nan
        if cls.nonpositive_dead and not cls.zero_dead:
            loss_live, live = kgon_llc.frozen_dead(params, k)
            frozen_est = estimate_llc(loss_live, live, x, config=cfg, key=k_est, checks=False)
            frozen, frozen_se = kgon_llc.llc_and_se(frozen_est)
        quad = quadratic_llc_prediction(eig, nbeta=default_nbeta(n), step_size=float(cfg.step_size),
                                        localization=gamma, floor=kgon_llc.EIGEN_FLOOR)
        rows.append(dict(case=f"{cls.label} gamma={gamma:g}", label=cls.label, localization=gamma,
                         llc_theory=np.nan if cls.llc is None else cls.llc,
                         symmetry_bound=_symmetry_bound(params, "high_sparsity_limit"),  # x = mu e_i
                         llc_mean=mean, llc_se=se,
                         llc_dead_frozen=frozen, llc_dead_frozen_se=frozen_se, llc_quadratic=quad,
                         share_outside_flat=share, share_outside_flat_se=share_se,
                         step_size=float(cfg.step_size), num_steps=int(cfg.num_steps), grad_norm=grad_norm,
                         seconds=time.perf_counter() - t0))
        if progress:
            print(f"{cls.label} gamma {gamma:g}: LLC {mean:.2f} +- {se:.2f}"
                  + (f", dead features fixed {frozen:.2f} +- {frozen_se:.2f}" if np.isfinite(frozen) else "")
                  + (f", outside the flat region {share:.1%} of steps" if np.isfinite(share) else "")
                  + f", quadratic {quad:.2f} (eps {cfg.step_size:.3g}, {cfg.num_steps} steps)", flush=True)
    return rows


def trained_label(model: str, p: float) -> str:
    """A trained case's name (and `--only` name): 'n6_m2 p=0.05'."""
    return f"{model} p={p:g}"


def _symmetry_bound(params, data: str) -> float:
    """(d - orbit - dead_flat) / 2 at `params` (one TMS instance, W `(hidden, feature)`) trained on
    `data` (`toy_models.data.GENERATORS`: whether features are active together decides which of a
    dead column's parameters are flat, `dead_flat_parameters`)."""
    W = xr.DataArray(np.asarray(params["W"]), dims=("hidden", "feature"))
    b = xr.DataArray(np.asarray(params["b"]), dims=("feature",))
    return float(W.size + b.size - orbit_dimension(W) - dead_flat_parameters(W, b, data)) / 2


def dead_columns(params) -> np.ndarray:
    """`(feature,)` mask of the dead features: |W_i|^2 <= -b_i, a column whose output stays off on
    its own input (a zero column with non-positive bias; the k-gon classes' dead columns)."""
    W, b = np.asarray(params["W"]), np.asarray(params["b"])
    return (W ** 2).sum(axis=0) <= -b


def frozen_features(loss_fn, params, mask: np.ndarray):
    """(loss_fn, free params): the features of `mask` held at their values in `params`, the rest
    free (TMS params {"W": (hidden, feature), "b": (feature,)})."""
    live, dead = np.flatnonzero(~mask), np.flatnonzero(mask)
    order = np.argsort(np.concatenate([live, dead]))  # back to the original feature order
    fixed_W, fixed_b = params["W"][:, dead], params["b"][dead]

    def loss(free, data):
        W = jnp.concatenate([free["W"], fixed_W], axis=1)[:, order]
        b = jnp.concatenate([free["b"], fixed_b])[order]
        return loss_fn({"W": W, "b": b}, data)

    return loss, {"W": params["W"][:, live], "b": params["b"][live]}


def run_trained(model: str, p: float, *, n: int, train_steps: int, calibration: dict, progress: bool = True
                ) -> list[dict]:
    """Rows (one per gamma) for one trained TMS (`tms_llc_vs_n.MODELS[model]` at feature
    probability p), refined on n samples of its own data."""
    train = tms_llc_vs_n._train(model, (p,), train_steps)
    key = jax.random.fold_in(jax.random.key(tms_llc_vs_n.SEED), n)
    loss_fn, params, data = llc_inputs(train, n_samples=n, key=key)
    one = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)
    params, data = one(params), one(data)
    params, _, grad_norm = refine(loss_fn, params, data, tol=tms_llc_vs_n.REFINE_TOL)
    k_cal, k_est = jax.random.split(jax.random.fold_in(key, 1))
    config, _ = calibrate(loss_fn, params, data, key=k_cal, **calibration)
    eig = hessian_spectrum(loss_fn, params, data, method="exact").values
    dead = dead_columns(params)
    label, bound = trained_label(model, p), _symmetry_bound(params, tms_llc_vs_n.MODELS[model][2])
    rows = []
    for gamma in GAMMAS:
        cfg = dataclasses.replace(config, localization=gamma)
        t0 = time.perf_counter()
        mean, se = kgon_llc.llc_and_se(estimate_llc(loss_fn, params, data, config=cfg, key=k_est, checks=False))
        frozen, frozen_se = np.nan, np.nan
        if dead.any():
            loss_free, free = frozen_features(loss_fn, params, dead)
            frozen, frozen_se = kgon_llc.llc_and_se(estimate_llc(loss_free, free, data, config=cfg, key=k_est,
                                                                 checks=False))
        quad = quadratic_llc_prediction(eig, nbeta=default_nbeta(n), step_size=float(cfg.step_size),
                                        localization=gamma, floor=tms_llc_vs_n.EIGEN_FLOOR)
        rows.append(dict(case=f"{label} gamma={gamma:g}", label=label, localization=gamma, llc_theory=np.nan,
                         symmetry_bound=bound, llc_mean=mean, llc_se=se, llc_dead_frozen=frozen,
                         llc_dead_frozen_se=frozen_se, llc_quadratic=quad, share_outside_flat=np.nan,
                         share_outside_flat_se=np.nan, step_size=float(cfg.step_size), num_steps=int(cfg.num_steps),
                         grad_norm=float(grad_norm), seconds=time.perf_counter() - t0))
        if progress:
            print(f"{label} gamma {gamma:g}: LLC {mean:.2f} +- {se:.2f}"
                  + (f", {int(dead.sum())} dead features fixed {frozen:.2f} +- {frozen_se:.2f}"
                     if np.isfinite(frozen) else "")
                  + f", quadratic {quad:.2f}, symmetry bound {bound:g} (eps {cfg.step_size:.3g}, "
                  f"{cfg.num_steps} steps)", flush=True)
    return rows


VARIABLES = {
    "localization": ("SGLD localization gamma", "1"),
    "llc_theory": ("the class's theoretical lambda (NaN: trained instance, no theory)", "1"),
    "symmetry_bound": ("(d - orbit - dead_flat) / 2: the largest lambda of a loss C^2 at w*", "1"),
    "llc_mean": ("LLC estimate (calibrated eps and length, this gamma)", "1"),
    "llc_se": ("standard error over chains", "1"),
    "llc_dead_frozen": ("the same with the dead features in a flat region held fixed (NaN: none)", "1"),
    "llc_dead_frozen_se": ("standard error of llc_dead_frozen", "1"),
    "llc_quadratic": ("full-batch SGLD expectation on the quadratic approximation of L_n at this gamma", "1"),
    "share_outside_flat": ("share of post-burn-in steps (mean over chains) at which a dead feature's parameters "
                           "change the loss (theory.dead_features_active; NaN: no dead feature)", "1"),
    "share_outside_flat_se": ("standard error of share_outside_flat over chains", "1"),
    "step_size": ("calibrated step size (at gamma 1)", "1"),
    "num_steps": ("calibrated chain length", "steps"),
    "grad_norm": ("||grad L_n|| at the refined point", "1"),
    "seconds": ("wall time of the estimates at this gamma", "s"),
}


def _no_change(params, data):
    """The susceptibility API's loss difference, here none: only the observable's mean is read."""
    return jnp.zeros(())


def table(ds: xr.Dataset) -> str:
    lines = ["| point | gamma | lambda | symmetry bound | LLC +- SE | dead features held fixed | quadratic prediction | "
             "steps outside the flat region |", "|---" * 8 + "|"]
    for i in range(ds.sizes["case"]):
        v = {name: ds[name].values[i] for name in VARIABLES}
        frozen = (f"{v['llc_dead_frozen']:.2f} +- {v['llc_dead_frozen_se']:.2f}"
                  if np.isfinite(v["llc_dead_frozen"]) else "-")
        theory = f"{v['llc_theory']:g}" if np.isfinite(v["llc_theory"]) else "-"
        lines.append(f"| {ds['label'].values[i]} | {v['localization']:g} | {theory} | {v['symmetry_bound']:g} | "
                     f"{v['llc_mean']:.2f} +- {v['llc_se']:.2f} | {frozen} | {v['llc_quadratic']:.2f} | "
                     + (f"{v['share_outside_flat']:.1%} +- {v['share_outside_flat_se']:.1%}"
                        if np.isfinite(v["share_outside_flat"]) else "-") + " |")
    return "\n".join(lines) + "\n"


def to_dataset(rows: list[dict], settings: dict) -> xr.Dataset:
    """Rows of `run_class` -> Dataset with dim (case,)."""
    data = {name: ("case", np.array([r[name] for r in rows]), {"long_name": ln, "units": u})
            for name, (ln, u) in VARIABLES.items()}
    data["label"] = ("case", np.array([r["label"] for r in rows]), {"long_name": "critical-point class"})
    ds = xr.Dataset(data, coords={"case": [r["case"] for r in rows]})
    ds.attrs.update(provenance_attrs("llc_localization", settings))
    return ds


def run(out_dir: Path, *, size: str = "default", progress: bool = True, only: Sequence[str] | None = None) -> xr.Dataset:
    """Every class of `CASES` and trained instance of `TRAINED` (`only`: the cases of these names,
    `kgon_llc.case_label` or `trained_label`) at every gamma of `GAMMAS`, each case a chunk of a
    resumable sweep; writes llc_localization.nc, llc_localization.png and report.md."""
    quick = size == "quick"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen, trained = (QUICK, TRAINED_QUICK) if quick else (SETTINGS, TRAINED_SETTINGS)
    trained_cases = QUICK_TRAINED if quick else TRAINED
    as_json = lambda d: {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
    settings = dict(quick=quick, gammas=list(GAMMAS), cases=[list(c) for c in CASES], n=chosen["n"],
                    **as_json(chosen["calibration"]),
                    trained=dict(cases=[list(c) for c in trained_cases], n=trained["n"],
                                 train_steps=trained["train_steps"], calibration=as_json(trained["calibration"])))
    cases = [("class", *c) for c in CASES] + [("trained", *c) for c in trained_cases]
    names = [kgon_llc.case_label(*c) for c in CASES] + [trained_label(*c) for c in trained_cases]

    def compute(case):
        kind, *what = case
        if kind == "class":
            rows = run_class(*what, n=chosen["n"], calibration=chosen["calibration"], progress=progress)
        else:
            rows = run_trained(*what, n=trained["n"], train_steps=trained["train_steps"],
                               calibration=trained["calibration"], progress=progress)
        return to_dataset(rows, settings)

    ds = run_cases("llc-localization", out_dir, settings, cases, names, compute, only=only, progress=progress)
    save_dataset(ds, out_dir / "llc_localization.nc")
    fs.save(figure(ds), out_dir / "llc_localization.png")
    (out_dir / "report.md").write_text(
        header("The LLC against the localization gamma (Chen et al. classes and trained TMS)", "llc-localization",
               out_dir, size, finding(ds), only)
        + table(ds) + "\nFigure: llc_localization.png.\n")
    return ds


def figure(ds: xr.Dataset):
    """The estimate (+- 2 SE) against gamma, one colour per point (class or trained instance), its
    quadratic prediction dotted; grey dashed lines at each class's lambda and each trained
    instance's symmetry bound; open markers (drawn a little to the right): the estimate with the
    dead features' parameters held fixed, where there is one."""
    references: dict[float, list[str]] = {}
    with fs.style():
        fig, axes = fs.subplots(1, 1, width=fs.COLUMN, panel_aspect=0.8)
        ax = axes[0, 0]
        for colour, label in zip(fs.PALETTE, dict.fromkeys(ds["label"].values.tolist())):
            one = ds.isel(case=np.flatnonzero(ds["label"].values == label)).sortby("localization")
            gamma = one["localization"].values
            ax.errorbar(gamma, one["llc_mean"], yerr=2 * one["llc_se"], fmt="o-", ms=3, lw=1, color=colour,
                        label=label)
            ax.plot(gamma, one["llc_quadratic"], ":", color=colour, lw=1)
            theory = float(one["llc_theory"][0])
            value, name = (theory, "lambda") if np.isfinite(theory) else (float(one["symmetry_bound"][0]), "bound")
            entry = f"{label} {name}" if name == "lambda" else f"{label.split()[0]} {name}"  # one per model
            if entry not in references.setdefault(value, []):
                references[value].append(entry)
            frozen = np.isfinite(one["llc_dead_frozen"].values)
            if frozen.any():
                ax.errorbar(gamma[frozen] * 1.15, one["llc_dead_frozen"].values[frozen],
                            yerr=2 * one["llc_dead_frozen_se"].values[frozen], fmt="o", ms=4, mfc="none",
                            color=colour, lw=0.8, label=f"{label}, dead features held fixed")
        for value, names in references.items():
            ax.axhline(value, ls="--", color=fs.REFERENCE, lw=0.7)
            ax.annotate("\n".join(names).replace("lambda", "$\\lambda$") + f"\n= {value:g}", (1, value),
                        xycoords=("axes fraction", "data"), xytext=(3, 0), textcoords="offset points", ha="left",
                        va="center", fontsize=6, color=fs.REFERENCE, annotation_clip=False)
        ax.set_xscale("log")
        highest = np.nanmax(np.r_[list(references), (ds["llc_mean"] + 2 * ds["llc_se"]).values])
        ax.set_ylim(0, 1.08 * highest)
        ax.set_xlabel("localization $\\gamma$")
        ax.set_ylabel("LLC $\\pm$ 2 SE")
        ax.set_title("dotted: quadratic prediction at each $\\gamma$; dashed: $\\lambda$ or symmetry bound", fontsize=7)
        ax.legend(fontsize=6, loc="lower left")
    return fig


def finding(ds: xr.Dataset) -> str:
    """One paragraph: per class, the estimate at the smallest and the largest gamma against the
    class's lambda, and how many estimates lie within 2 SE of the quadratic prediction."""
    parts = []
    for label in dict.fromkeys(ds["label"].values.tolist()):
        one = ds.isel(case=np.flatnonzero(ds["label"].values == label)).sortby("localization")
        first, last = one.isel(case=0), one.isel(case=-1)
        theory = (f"lambda {float(first['llc_theory']):g}" if np.isfinite(float(first["llc_theory"])) else
                  f"trained, symmetry bound {float(first['symmetry_bound']):g}")
        parts.append(f"{label} ({theory}): {float(first['llc_mean']):.2f} +- "
                     f"{float(first['llc_se']):.2f} at gamma {float(first['localization']):g}, "
                     f"{float(last['llc_mean']):.2f} +- {float(last['llc_se']):.2f} at gamma "
                     f"{float(last['localization']):g}")
    near = np.abs(ds["llc_mean"] - ds["llc_quadratic"]) <= 2 * ds["llc_se"]
    shares = []
    for label in dict.fromkeys(ds["label"].values.tolist()):
        one = ds.isel(case=np.flatnonzero(ds["label"].values == label)).sortby("localization")
        if "share_outside_flat" in one and np.isfinite(one["share_outside_flat"].values).any():
            shares.append(f"{label}: " + ", ".join(f"{s:.0%} at gamma {g:g}" for g, s in zip(
                one["localization"].values, one["share_outside_flat"].values)))
    outside = (" Share of post-burn-in steps at which a dead feature's parameters change the loss (outside "
               "its flat region): " + "; ".join(shares) + ".") if shares else ""
    return (f"One calibrated config per class (chosen at gamma 1), run at gamma = "
            f"{', '.join(f'{g:g}' for g in sorted(set(ds['localization'].values.tolist())))} with the same key: "
            + "; ".join(parts) + f". {int(near.sum())} of {ds.sizes['case']} estimates lie within 2 SE of the "
            "quadratic prediction at their gamma, which models the downward pull gamma puts on the curved "
            "directions." + outside)

