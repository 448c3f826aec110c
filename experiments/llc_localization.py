"""Localization decided by measurement: the LLC estimate against gamma on the Chen et al. classes.

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

from analysis.weight_basis import hessian_spectrum, quadratic_llc_prediction
from experiments import kgon_llc
from experiments.registry import header, run_cases
from slt_superposition.calibration import calibrate
from slt_superposition.io import save_dataset
from slt_superposition.llc import default_nbeta, estimate_llc
from slt_superposition.provenance import provenance_attrs
from slt_superposition.susceptibility import estimate_susceptibilities
from slt_superposition.theory import critical_point_class, dead_features_active

GAMMAS = (1.0, 10.0, 100.0, 1000.0)
CASES = [(6, 0), (5, 0)]  # (k, positive dead): the 6-gon (no dead feature), the 5-gon (one, negative bias)
SETTINGS = dict(n=100_000, calibration=kgon_llc.CALIBRATION)
QUICK = dict(n=2**14, calibration=dict(kgon_llc.QUICK, max_steps=20_000))


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
            share, share_se = float(per_chain.mean()), float(per_chain.std(ddof=1) / np.sqrt(per_chain.size))
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
                         llc_theory=np.nan if cls.llc is None else cls.llc, llc_mean=mean, llc_se=se,
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


VARIABLES = {
    "localization": ("SGLD localization gamma", "1"),
    "llc_theory": ("the class's theoretical lambda", "1"),
    "llc_mean": ("LLC estimate (calibrated eps and length, this gamma)", "1"),
    "llc_se": ("standard error over chains", "1"),
    "llc_dead_frozen": ("the same with the negative-bias dead features held fixed (NaN: none)", "1"),
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
    lines = ["| class | gamma | lambda | LLC +- SE | dead features held fixed | quadratic prediction | "
             "steps outside the flat region |", "|---" * 7 + "|"]
    for i in range(ds.sizes["case"]):
        v = {name: ds[name].values[i] for name in VARIABLES}
        frozen = (f"{v['llc_dead_frozen']:.2f} +- {v['llc_dead_frozen_se']:.2f}"
                  if np.isfinite(v["llc_dead_frozen"]) else "-")
        lines.append(f"| {ds['label'].values[i]} | {v['localization']:g} | {v['llc_theory']:g} | "
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
    """Every class of `CASES` (`only`: the classes of these names, `kgon_llc.case_label`) at every gamma
    of `GAMMAS`, each class a chunk of a resumable sweep; writes llc_localization.nc and report.md."""
    quick = size == "quick"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = QUICK if quick else SETTINGS
    settings = dict(quick=quick, gammas=list(GAMMAS), cases=[list(c) for c in CASES], n=chosen["n"],
                    **{k: list(v) if isinstance(v, tuple) else v for k, v in chosen["calibration"].items()})
    compute = lambda case: to_dataset(run_class(*case, n=chosen["n"], calibration=chosen["calibration"],
                                                progress=progress), settings)
    ds = run_cases("llc-localization", out_dir, settings, CASES, [kgon_llc.case_label(*c) for c in CASES], compute,
                   only=only, progress=progress)
    save_dataset(ds, out_dir / "llc_localization.nc")
    (out_dir / "report.md").write_text(
        header("The LLC against the localization gamma (Chen et al. classes)", "llc-localization", out_dir, size,
               finding(ds), only)
        + table(ds))
    return ds


def finding(ds: xr.Dataset) -> str:
    """One paragraph: per class, the estimate at the smallest and the largest gamma against the
    class's lambda, and how many estimates lie within 2 SE of the quadratic prediction."""
    parts = []
    for label in dict.fromkeys(ds["label"].values.tolist()):
        one = ds.isel(case=np.flatnonzero(ds["label"].values == label)).sortby("localization")
        first, last = one.isel(case=0), one.isel(case=-1)
        parts.append(f"{label} (lambda {float(first['llc_theory']):g}): {float(first['llc_mean']):.2f} +- "
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

