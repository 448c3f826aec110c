"""The n question: how a trained TMS's LLC estimate moves with the sample count n.

For each model (n features, m hidden) and sparsity (dense, middle, sparse), train once, then
for each n: draw n samples of the instance's own data, refine the trained weights on them
(full-batch gradient descent on L_n, so w* is a critical point of the loss that is sampled),
let `calibrate` choose step size, batch and chain length (its step-size and batch checks are
recorded with each point), and estimate the LLC with a fresh key. Next to each estimate:

- the symmetry bound (d - orbit - dead_flat) / 2 (`analysis.compare`): the largest lambda a
  loss that is C^2 at w* can have, given the rotation orbit and the dead features' flat regions;
- the quadratic prediction: full-batch SGLD's expectation at the calibrated eps and gamma on
  the quadratic approximation of L_n (Hessian at the refined point, `quadratic_llc_prediction`);
- in the Chen et al. setting ("chen": 6 features, 2 hidden, x = mu e_i), also the quadratic
  prediction from the exact *population* Hessian at the refined point.

    slt-superposition reproduce tms-llc-vs-n [--quick | --full] --out results/tms_llc_vs_n
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

from analysis.compare import dead_flat_parameters, orbit_dimension  # noqa: E402
from analysis.refine import REFINE_STEPS, refine  # noqa: E402
from analysis.weight_basis import hessian_spectrum, quadratic_llc_prediction  # noqa: E402
from experiments.registry import header, run_cases  # noqa: E402
from slt_superposition import figure_style as fs  # noqa: E402
from slt_superposition.calibration import calibrate  # noqa: E402
from slt_superposition.diagnostics import mean_and_se  # noqa: E402
from slt_superposition.io import open_result, same_file, save_dataset  # noqa: E402
from slt_superposition.llc import default_nbeta, estimate_llc  # noqa: E402
from slt_superposition.provenance import provenance_attrs  # noqa: E402
from slt_superposition.theory import critical_point_class, population_hessian, population_loss_is_smooth  # noqa: E402
from toy_models.train import TrainConfig, llc_inputs, train_grid  # noqa: E402

# model name -> (n_features, n_hidden, data generator)
MODELS = {"chen": (6, 2, "high_sparsity_limit"), "n6_m2": (6, 2, "sparse_uniform"), "n20_m5": (20, 5, "sparse_uniform")}
SPARSITIES = (1.0, 0.398, 0.05)  # dense, middle (the p), sparse
SETTINGS = dict(models=("chen", "n6_m2", "n20_m5"), sparsities=SPARSITIES, log2_n=tuple(range(12, 18)), train_steps=3000,
                calibration=dict(localization=1.0, batch_size=500, num_chains=4, step_sizes=(1e-6, 3.16e-6, 1e-5, 3.16e-5,
                                 1e-4, 3.16e-4, 1e-3), sweep_steps=1000, min_steps=10_000, max_steps=80_000))
QUICK = dict(SETTINGS, models=("chen", "n6_m2"), sparsities=(1.0, 0.05), log2_n=(12, 16), train_steps=2000,
             calibration=dict(SETTINGS["calibration"], sweep_steps=500, min_steps=4000, max_steps=16_000))
FULL = dict(SETTINGS, log2_n=tuple(range(12, 21)))
EIGEN_FLOOR = 1e-6  # Hessian eigenvalues below this (the flat orbit) contribute nothing to the prediction
REFINE_TOL = 0.0  # every point refined for all REFINE_STEPS iterations (no early stop), as the study's first chunks were
SEED = 0


def _train(model: str, sparsities, steps: int) -> xr.Dataset:
    n_features, n_hidden, data = MODELS[model]
    fps = (1.0,) if data == "high_sparsity_limit" else tuple(sparsities)
    return train_grid(TrainConfig(n_features=n_features, n_hidden=n_hidden, feature_probabilities=fps, seeds=1,
                                  steps=steps, data=data), progress=False)


def _trained(model: str, sparsities, steps: int, train_from: str | None, out_dir: Path) -> xr.Dataset:
    """The model's trained grid: loaded from `train_from`/train_{model}.nc when given (an
    `InputError` names a missing file), else trained; saved as out_dir/train_{model}.nc either way."""
    name = f"train_{model}.nc"
    if train_from is not None:
        train = open_result(Path(train_from) / name, kind="train")
    else:
        train = _train(model, sparsities, steps)
    source = Path(train_from) / name if train_from is not None else None
    if source is None or not same_file(out_dir / name, source):  # always the grid measured, never a stale one
        save_dataset(train, out_dir / name)
    return train


def refined_point(train: xr.Dataset, i: int, n: int):
    """(loss_fn, params, data, ||grad L_n||, key) of instance i of `train` at n: its n samples (drawn
    with the point's key) and its weights refined on them."""
    key = jax.random.fold_in(jax.random.key(SEED), n)
    loss_fn, params, data = llc_inputs(train, n_samples=n, key=key)
    params = jax.tree_util.tree_map(lambda x: x[i], params)  # instances are the leading axis
    data = jax.tree_util.tree_map(lambda x: x[i], data)
    params, _, grad_norm = refine(loss_fn, params, data, tol=REFINE_TOL)
    return loss_fn, params, data, float(grad_norm), key


def measure_point(model: str, train: xr.Dataset, i: int, n: int, calibration: dict) -> dict:
    """One (instance i of `train`, n) point: refine, calibrate, estimate, bounds and predictions."""
    loss_fn, params, data, grad_norm, key = refined_point(train, i, n)
    k_cal, k_est = jax.random.split(jax.random.fold_in(key, 1))
    t0 = time.perf_counter()
    config, sweep = calibrate(loss_fn, params, data, key=k_cal, **calibration)
    est = estimate_llc(loss_fn, params, data, config=config, key=k_est, checks=False)
    healthy = ~est["diverged"].values
    per_chain = est["llc_per_chain"].values[healthy]
    se = float(mean_and_se(per_chain)[1])
    W = xr.DataArray(np.asarray(params["W"]), dims=("hidden", "feature"))
    b = xr.DataArray(np.asarray(params["b"]), dims=("feature",))
    d = W.size + b.size
    orbit, dead = int(orbit_dimension(W)), int(dead_flat_parameters(W, b, MODELS[model][2]))
    nbeta = default_nbeta(n)
    eig = hessian_spectrum(loss_fn, params, data, method="exact").values
    quad = quadratic_llc_prediction(eig, nbeta=nbeta, step_size=float(config.step_size),
                                    localization=float(config.localization), floor=EIGEN_FLOOR)
    pop_quad, class_llc = math.nan, math.nan
    if model == "chen":
        cls = critical_point_class(W.values, b.values)
        class_llc = math.nan if cls.llc is None else cls.llc
    if model == "chen" and population_loss_is_smooth(W.values, b.values, tol=1e-6):
        pop_eig = np.linalg.eigvalsh(population_hessian(W.values, b.values))
        pop_quad = quadratic_llc_prediction(pop_eig, nbeta=nbeta, step_size=float(config.step_size),
                                            localization=float(config.localization), floor=EIGEN_FLOOR)
    return dict(llc=float(est["llc_mean"]), llc_se=se, n_parameters=d, orbit_dimension=orbit, dead_flat_parameters=dead,
                symmetry_bound=(d - orbit - dead) / 2, quadratic_prediction=quad, population_quadratic_prediction=pop_quad,
                class_llc=class_llc,
                step_size=float(config.step_size), num_steps=int(config.num_steps),
                batch_size=int(config.batch_size or n), converged=bool(sweep.attrs.get("converged", False)),
                bias_consistent=bool(sweep.attrs.get("bias_consistent", False)), grad_norm=grad_norm,
                empirical_loss=float(loss_fn(params, data)), n_diverged=int(est["n_diverged"]),
                seconds=time.perf_counter() - t0)


VARIABLES = {
    "llc": ("LLC estimate with the calibrated config", "1"),
    "llc_se": ("standard error of llc over chains", "1"),
    "n_parameters": ("parameter count d", "1"),
    "orbit_dimension": ("rotation orbit dimension at the refined point", "1"),
    "dead_flat_parameters": ("parameters of dead features in a flat region", "1"),
    "symmetry_bound": ("(d - orbit - dead_flat) / 2: the largest lambda of a loss C^2 at w*", "1"),
    "quadratic_prediction": ("full-batch SGLD expectation on the quadratic approximation of L_n", "1"),
    "population_quadratic_prediction": ("the same from the exact population Hessian (Chen setting; NaN elsewhere)",
                                        "1"),
    "class_llc": ("theoretical lambda of the refined point's critical-point class (Chen setting; NaN elsewhere)", "1"),
    "step_size": ("calibrated step size", "1"),
    "num_steps": ("calibrated chain length", "steps"),
    "batch_size": ("calibrated minibatch size (the batch check)", "samples"),
    "converged": ("calibration's chain-length rule settled", "1"),
    "bias_consistent": ("calibration's step-size (discretisation bias) check passed", "1"),
    "grad_norm": ("||grad L_n|| at the refined point", "1"),
    "empirical_loss": ("L_n at the refined point", "loss"),
    "n_diverged": ("divergent chains", "chains"),
    "seconds": ("wall time of calibrate and the estimate", "s"),
}


def run(out_dir: Path, *, size: str = "default", progress: bool = True, only: list[str] | None = None,
        sparsities: tuple[float, ...] | None = None, log2_n: tuple[int, ...] | None = None,
        train_from: str | None = None) -> xr.Dataset:
    """Measure every (model, sparsity, n) point, each model a chunk of a resumable sweep; write
    tms_llc_vs_n.nc, llc_vs_n.png and report.md, and each model's trained grid as
    train_{model}.nc.

    only: these models (`--only n20_m5`); sparsities, log2_n: a subset or extension of the size's
    (`--set 'log2_n=(17, 18, 19, 20)'`); train_from: a folder holding an earlier run's
    train_{model}.nc, whose weights are measured instead of training again (so a GPU run can
    extend a CPU run's instances to larger n)."""
    quick, full = size == "quick", size == "full"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(QUICK if quick else FULL if full else SETTINGS)
    if sparsities is not None:
        settings["sparsities"] = tuple(float(p) for p in sparsities)
    if log2_n is not None:
        settings["log2_n"] = tuple(int(e) for e in log2_n)
    if train_from is not None:
        settings["train_from"] = str(train_from)
    ns = [2**e for e in settings["log2_n"]]
    models, fps = list(settings["models"]), list(settings["sparsities"])
    dims = ("model", "feature_probability", "n")
    config = dict(settings, models=list(models), sparsities=list(fps), log2_n=list(settings["log2_n"]),
                  refine_steps=REFINE_STEPS, refine="L-BFGS (analysis.refine)", seed=SEED, quick=quick, full=full)

    def compute(model: str) -> xr.Dataset:
        """Every (sparsity, n) point of one model: a chunk of the resumable sweep."""
        values = {name: np.full((1, len(fps), len(ns)), np.nan) for name in VARIABLES}
        train = _trained(model, fps, settings["train_steps"], settings.get("train_from"), out_dir)
        for i, p in enumerate(train["feature_probability"].values):
            match = np.flatnonzero(np.isclose(fps, float(p)))
            if MODELS[model][2] == "high_sparsity_limit":
                j = 0
            elif match.size:
                j = int(match[0])
            else:
                continue  # an instance of a loaded grid at a sparsity this run does not measure
            for c, n in enumerate(ns):
                row = measure_point(model, train, i, n, settings["calibration"])
                for name in VARIABLES:
                    values[name][0, j, c] = row[name]
                if progress:
                    print(f"{model} p={p:g} n=2^{int(math.log2(n))}: llc {row['llc']:.2f} +- {row['llc_se']:.2f}, "
                          f"2 llc / d {2 * row['llc'] / row['n_parameters']:.3f}, bound {row['symmetry_bound']:.1f}, "
                          f"quadratic {row['quadratic_prediction']:.2f} (eps {row['step_size']:.3g}, batch "
                          f"{row['batch_size']}, {row['num_steps']} steps; bias "
                          f"{'ok' if row['bias_consistent'] else 'NOT ok'}, "
                          f"{'converged' if row['converged'] else 'NOT converged'}; ||grad|| {row['grad_norm']:.1e}; "
                          f"{row['seconds']:.0f} s)", flush=True)
        ds = xr.Dataset({name: (dims, values[name], {"long_name": ln, "units": u})
                         for name, (ln, u) in VARIABLES.items()},
                        coords={"model": [model], "feature_probability": fps, "n": ns})
        ds.attrs.update(provenance_attrs("tms_llc_vs_n", config))
        return ds

    ds = run_cases("tms-llc-vs-n", out_dir, config, models, models, compute, dim="model", progress=progress,
                   only=only)
    ds["two_llc_over_d"] = (2 * ds["llc"] / ds["n_parameters"]).assign_attrs(long_name="2 llc / d", units="1")
    save_dataset(ds, out_dir / "tms_llc_vs_n.nc")
    plot(ds, out_dir)
    given = {key: value for key, value in dict(sparsities=sparsities, log2_n=log2_n, train_from=train_from).items()
             if value is not None}
    (out_dir / "report.md").write_text(header("The LLC of trained TMS against n", "tms-llc-vs-n", out_dir, size,
                                              finding(ds), only=only, **given)
                                       + table(ds) + "\n" + "".join(f"- {s}\n" for s in findings(ds)))
    return ds


def finding(ds: xr.Dataset) -> str:
    """One paragraph over every measured point: how many, the range of 2 llc / d, how many
    exceed the symmetry bound by more than 2 SE, and how many passed the calibration checks."""
    ok = np.isfinite(ds["llc"].values)
    if not ok.any():
        return "No point has an estimate."
    frac = ds["two_llc_over_d"].values[ok]
    above = ((ds["llc"] - ds["symmetry_bound"]) > 2 * ds["llc_se"]).values[ok]
    converged = ds["converged"].values[ok].astype(bool)
    bias_ok = ds["bias_consistent"].values[ok].astype(bool)
    ns = ds["n"].values
    return (f"{int(ok.sum())} points ({ds.sizes['model']} model(s) x {ds.sizes['feature_probability']} "
            f"sparsities x n from 2^{int(math.log2(ns.min()))} to 2^{int(math.log2(ns.max()))}), each refined, "
            f"calibrated and estimated at its own n: 2 llc / d runs from {frac.min():.3f} to {frac.max():.3f}; "
            f"{int(above.sum())} of {int(ok.sum())} estimates exceed the symmetry bound (d - orbit - dead) / 2 by "
            f"more than 2 SE, which a loss that is C^2 at w* would not allow. The calibration's chain-length rule "
            f"settled at {int(converged.sum())} and its bias check passed at {int(bias_ok.sum())} of them; per model "
            "and sparsity below the table.")


def table(ds: xr.Dataset) -> str:
    lines = ["| model | p | n | llc +- SE | 2 llc / d | symmetry bound | quadratic (L_n) | quadratic (population) | "
             "class lambda | eps, batch | checks |", "|---" * 11 + "|"]
    for model in ds["model"].values:
        for p in ds["feature_probability"].values:
            for n in ds["n"].values:
                v = ds.sel(model=model, feature_probability=p, n=n)
                if not np.isfinite(float(v["llc"])):
                    continue
                checks = ("bias ok" if bool(v["bias_consistent"]) else "bias NOT ok") + (
                    ", converged" if bool(v["converged"]) else ", NOT converged")
                pop, lam = float(v["population_quadratic_prediction"]), float(v["class_llc"])
                lines.append(f"| {model} | {p:g} | 2^{int(math.log2(n))} | {float(v['llc']):.2f} +- "
                             f"{float(v['llc_se']):.2f} | {float(v['two_llc_over_d']):.3f} | "
                             f"{float(v['symmetry_bound']):g} | {float(v['quadratic_prediction']):.2f} | "
                             + (f"{pop:.2f}" if np.isfinite(pop) else "-") + " | "
                             + (f"{lam:g}" if np.isfinite(lam) else "-") + f" | {float(v['step_size']):.3g}, "
                             f"{int(v['batch_size'])} | {checks} |")
    return "\n".join(lines) + "\n"


def findings(ds: xr.Dataset) -> list[str]:
    """Per model and sparsity: how 2 llc / d moved from the smallest to the largest n, and the
    points where 2 llc exceeds the symmetry bound by more than 2 SE."""
    out = []
    for model in ds["model"].values:
        for p in ds["feature_probability"].values:
            v = ds.sel(model=model, feature_probability=p)
            ok = np.isfinite(v["llc"].values)
            if ok.sum() < 2:
                continue
            frac, n = v["two_llc_over_d"].values[ok], v["n"].values[ok]
            excess = (v["llc"] - v["symmetry_bound"]).values[ok]
            above = excess > 2 * v["llc_se"].values[ok]
            out.append(f"{model}, p = {p:g}: 2 llc / d from {frac[0]:.3f} at n = 2^{int(math.log2(n[0]))} to "
                       f"{frac[-1]:.3f} at 2^{int(math.log2(n[-1]))} (last step {frac[-1] - frac[-2]:+.3f}); "
                       f"above the symmetry bound by more than 2 SE at {int(above.sum())} of {int(ok.sum())} n.")
    return out


def plot(ds: xr.Dataset, out_dir: Path) -> Path:
    """2 llc / d against n, one panel per model, one colour per sparsity; the symmetry bound
    (2 x bound / d) dashed, the L_n quadratic prediction dotted."""
    models = list(ds["model"].values)
    with fs.style():
        fig, axes = fs.subplots(1, len(models), width=fs.PAGE if len(models) > 1 else fs.COLUMN, panel_aspect=0.8,
                                sharey=True)
        axes = np.atleast_1d(axes).ravel()
        for ax, model in zip(axes, models):
            for colour, p in zip(fs.PALETTE, ds["feature_probability"].values):
                v = ds.sel(model=model, feature_probability=p)
                if not np.isfinite(v["llc"].values).any():
                    continue
                d = v["n_parameters"]
                ax.errorbar(v["n"], v["two_llc_over_d"], yerr=2 * v["llc_se"] / d, fmt="o-", ms=3, color=colour,
                            label=f"p = {p:g}")
                ax.plot(v["n"], 2 * v["symmetry_bound"] / d, "--", color=colour, lw=0.8)
                ax.plot(v["n"], 2 * v["quadratic_prediction"] / d, ":", color=colour, lw=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("n (samples)")
            ax.set_title(model)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("2 llc / d (dashed: symmetry bound; dotted: quadratic)")
    return fs.save(fig, Path(out_dir) / "llc_vs_n.png")
