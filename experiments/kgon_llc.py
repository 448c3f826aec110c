"""LLC of the Chen et al. (2023) TMS critical-point classes (c = 6, r = 2), through `calibrate`.

Data x = mu e_i (i uniform over 6 features, mu ~ U[0, 1]), n = 1e5, loss E||x - f(x)||^2
(summed over features), f(x) = ReLU(W^T W x + b). Three classes (`CASES`): the 6-gon, the
5-gon whose dead feature has a negative bias (5^-: its three dead parameters are exactly flat)
and the 5-gon whose dead feature has the positive bias 1/12 (5-gon+1: the dead column and bias
are curved). For each: start from the class's exact population critical point
(`slt_superposition.theory.class_critical_point`), refine it on the empirical loss by
full-batch gradient descent, read its class (`critical_point_class`) and theoretical lambda
(half the curved directions of the exact population Hessian), count the positive eigenvalues
of the Hessian of L_n there, let `calibrate` choose the step size and chain length
(`CALIBRATION`; localization 1, nbeta = n / log n, full batch), then estimate the LLC with the
calibrated config and a fresh key. Full batch is exact L_n and, through the closed form of the
loss on one-hot data (`toy_models.one_hot`), cheaper per step than a minibatch of 500 rows.
Why this protocol: docs/experiments/kgon_llc.md.

`bias_study` instead measures, at the refined 6-gon, how step size, batch size and localization
move the estimate (`BIAS_STUDY`: the table "Why the old estimate overshot" of the docs).

    slt-superposition reproduce kgon-llc --out results/kgon_llc [--quick]
    slt-superposition reproduce kgon-bias-study --out results/kgon_llc
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from analysis.weight_basis import hessian_spectrum, quadratic_llc_prediction
from experiments.registry import header, row_variables, run_cases
from slt_superposition import figure_style as fs
from slt_superposition.calibration import calibrate
from slt_superposition.io import save_dataset
from slt_superposition.llc import SGLDConfig, default_nbeta, estimate_llc
from slt_superposition.minibatch_noise import noise_spectrum, quadratic_llc_minibatch
from slt_superposition.provenance import provenance_attrs
from slt_superposition.theory import KGON_N_FEATURES, class_critical_point, critical_point_class
from toy_models.data import high_sparsity_limit
from toy_models.one_hot import one_hot_moments, one_hot_tms_loss
from toy_models.tms import tms_loss

N_SAMPLES = 100_000
SEED = 0
# (k, positive dead biases): the classes 6-gon, 5-gon (5^-, dead bias negative), 5-gon+1
CASES = [(6, 0), (5, 0), (5, 1)]
TOLERANCE = 0.05  # the target: each estimate within 5% of its class's lambda
# `calibrate` options: the paper's localization 1, full batch (exact L_n: `case_loss`); step sizes
# from 1e-6 (its sweep picks the largest healthy, unbiased one). A `batch_size` calibrates on the
# sample rows from that minibatch instead (its minibatch check may raise it: experiments/kgon_batch_check.py).
CALIBRATION = dict(localization=1.0, batch_size=None, num_chains=8, step_sizes=(1e-6, 3.16e-6, 1e-5, 3.16e-5, 1e-4),
                   sweep_steps=2000, min_steps=20_000, max_steps=160_000)
QUICK = dict(CALIBRATION, num_chains=4, sweep_steps=1000, min_steps=10_000, max_steps=40_000)
EIGEN_FLOOR = 1e-3  # Hessian eigenvalues above this (loss / parameter^2) count as curved; nbeta h > 86
# The bias study at the refined 6-gon: (step size, batch size or None for the full batch, steps, localization),
# each with BIAS_STUDY_CHAINS chains and half burn-in. Rows vary one setting at a time against (1e-5, 500, gamma 1).
BIAS_STUDY = [(3.16e-5, 500, 8000, 1.0), (3.16e-5, 5000, 8000, 1.0), (1e-5, 500, 20000, 1.0),
              (1e-5, 5000, 20000, 1.0), (1e-5, None, 10000, 1.0), (3.16e-6, 500, 60000, 1.0),
              (1e-5, 500, 20000, 100.0)]
BIAS_STUDY_CHAINS = 4


def kgon_loss(params, x):
    """Mean over the batch of ||x - ReLU(W^T W x + b)||^2 (`tms_loss` with unit importance)."""
    return tms_loss(params, x)


def case_loss(x, batch_size: int | None):
    """(loss_fn, data) for SGLD on the rows `x`: at full batch (None) the closed form on their sorted
    moments (`one_hot_tms_loss`, the same L_n at a cost independent of n), else `kgon_loss` on the rows."""
    return (one_hot_tms_loss, one_hot_moments(x)) if batch_size is None else (kgon_loss, x)


def refine(params, x, *, steps: int = 3000, learning_rate: float = 0.1):
    """Full-batch gradient descent on the empirical loss from `params`; returns (params, grad norm)."""
    grad = jax.grad(kgon_loss)

    def body(p, _):
        return jax.tree_util.tree_map(lambda a, g: a - learning_rate * g, p, grad(p, x)), None

    params, _ = jax.jit(lambda p: jax.lax.scan(body, p, None, length=steps))(params)
    g = grad(params, x)
    return params, float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree_util.tree_leaves(g))))


def refined_kgon(k: int, positive_dead: int = 0, *, seed: int = SEED, n_samples: int = N_SAMPLES):
    """Data (n = `n_samples`, default 1e5) and the class point (k-gon, `positive_dead` positive dead
    biases) refined on it.

    Returns (x, refined params, grad norm there, key for calibration and estimate).
    """
    k_data, k_est = jax.random.split(jax.random.key(seed))
    x = high_sparsity_limit(k_data, n_samples, KGON_N_FEATURES)
    W, b = class_critical_point(k, positive_dead)
    start = {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
    params, grad_norm = refine(start, x)
    return x, params, grad_norm, k_est


def quadratic_llc(hessian_eigenvalues, *, step_size: float, localization: float) -> float:
    """E[nbeta (L_n - L_n(w*))] of full-batch SGLD (nbeta = n / log n) on the quadratic approximation of L_n.

    The Euler chain on a direction of curvature a = nbeta h + gamma has stationary variance
    1 / (a (1 - eps a / 4)), so each direction contributes nbeta h / (2 a (1 - eps a / 4)): 1/2 as
    eps, gamma -> 0; more with eps (discretisation), less with gamma (localization). Eigenvalues
    below `EIGEN_FLOOR` (the flat rotation) contribute nothing.
    """
    return quadratic_llc_prediction(hessian_eigenvalues, nbeta=default_nbeta(N_SAMPLES), step_size=step_size,
                                    localization=localization, floor=EIGEN_FLOOR)


def llc_and_se(est: xr.Dataset) -> tuple[float, float]:
    """LLC mean of an `estimate_llc` result and its standard error (`llc_se`, over the non-divergent chains)."""
    return float(est["llc_mean"]), float(est["llc_se"])


def frozen_dead(params, k: int, loss_fn=kgon_loss):
    """(loss_fn, live params) with the dead features' parameters held at their values in `params`.

    Where every dead feature has a negative bias its three parameters are exactly flat near w*,
    so the LLC of the live block alone is the class's lambda too; an estimate of the full point
    above this one measures what chains that leave the dead features' flat region add."""
    dead_W, dead_b = params["W"][:, k:], params["b"][k:]

    def loss(live, x):
        return loss_fn({"W": jnp.concatenate([live["W"], dead_W], axis=1),
                          "b": jnp.concatenate([live["b"], dead_b])}, x)

    return loss, {"W": params["W"][:, :k], "b": params["b"][:k]}


def run_case(k: int, positive_dead: int = 0, *, seed: int = SEED, progress: bool = False, **calibration) -> dict:
    """Refine the class point on n = 1e5 samples, calibrate, and estimate its LLC with the calibrated config.

    `calibration`: options for `calibrate` (default `CALIBRATION`). Returns a dict of scalars (see `VARIABLES`).
    """
    calibration = calibration or CALIBRATION
    x, params, grad_norm, key = refined_kgon(k, positive_dead, seed=seed)
    k_cal, k_est = jax.random.split(key)
    loss_fn, data = case_loss(x, calibration.get("batch_size", 500))
    cls = critical_point_class(np.asarray(params["W"]), np.asarray(params["b"]))
    eig = hessian_spectrum(kgon_loss, params, x, method="exact").values
    t0 = time.perf_counter()
    config, sweep = calibrate(loss_fn, params, data, key=k_cal, progress=progress, **calibration)
    t_cal = time.perf_counter() - t0
    est = estimate_llc(loss_fn, params, data, config=config, key=k_est, checks=False)
    mean, se = llc_and_se(est)
    frozen, frozen_se = np.nan, np.nan
    if cls.nonpositive_dead and not cls.zero_dead:  # negative-bias dead features: estimate without them too
        loss_live, live = frozen_dead(params, k, loss_fn)
        frozen, frozen_se = llc_and_se(estimate_llc(loss_live, live, data, config=config, key=k_est, checks=False))
    theory = np.nan if cls.llc is None else float(cls.llc)
    norms = np.linalg.norm(np.asarray(params["W"]), axis=0)
    dead_b = np.asarray(params["b"])[k:]
    return dict(
        case=cls.label, k=k, positive_dead=positive_dead, class_k=cls.k, class_positive_dead=cls.positive_dead,
        population_loss=float(cls.critical_loss), empirical_loss=float(kgon_loss(params, x)), grad_norm=grad_norm,
        length_refined=float(norms[:k].mean()), bias_refined=float(np.asarray(params["b"])[:k].mean()),
        dead_bias_refined=float(dead_b.mean()) if dead_b.size else np.nan,
        curved_directions=-1 if cls.curved_directions is None else cls.curved_directions,
        n_positive_eigen=int((eig > EIGEN_FLOOR).sum()), n_negative_eigen=int((eig < -EIGEN_FLOOR).sum()),
        llc_theory=theory, llc_mean=mean, llc_se=se, rel_error=(mean - theory) / theory,
        llc_dead_frozen=frozen, llc_dead_frozen_se=frozen_se,
        within_tolerance=bool(abs(mean - theory) <= TOLERANCE * theory),
        llc_quadratic=quadratic_llc(eig, step_size=float(config.step_size), localization=float(config.localization)),
        step_size=float(config.step_size), num_steps=int(config.num_steps), batch_size=int(config.batch_size or N_SAMPLES),
        localization=float(config.localization), converged=bool(sweep.attrs.get("converged", False)),
        bias_consistent=bool(sweep.attrs.get("bias_consistent", False)), verdict=str(sweep.attrs.get("verdict", "")),
        llc_min_chain=float(est["llc_per_chain"].min()), llc_max_chain=float(est["llc_per_chain"].max()),
        mala_acceptance=float(est["mala_acceptance"].mean()), frac_below_init=float(est["frac_below_init"].mean()),
        n_diverged=int(est["n_diverged"]), calibration_seconds=t_cal, seconds=time.perf_counter() - t0,
    )


VARIABLES = {
    "k": ("live features of the class", "1"),
    "positive_dead": ("dead features with positive bias (1/12) at the start", "1"),
    "class_k": ("live features of the refined point's class", "1"),
    "class_positive_dead": ("positive dead biases of the refined point's class", "1"),
    "population_loss": ("exact population loss at the class's critical point", "loss"),
    "empirical_loss": ("empirical loss L_n at the refined point", "loss"),
    "grad_norm": ("||grad L_n|| at the refined point", "1"),
    "length_refined": ("mean column length of the k live features after refinement", "1"),
    "bias_refined": ("mean bias of the k live features after refinement", "1"),
    "dead_bias_refined": ("mean bias of the dead features after refinement (NaN: none)", "1"),
    "curved_directions": ("curved directions of the exact population Hessian at the class point", "1"),
    "n_positive_eigen": (f"Hessian eigenvalues of L_n above {EIGEN_FLOOR:g} at the refined point", "1"),
    "n_negative_eigen": (f"Hessian eigenvalues of L_n below -{EIGEN_FLOOR:g} at the refined point", "1"),
    "llc_theory": ("theoretical lambda of the class: curved directions / 2", "1"),
    "llc_mean": ("LLC estimate with the calibrated config (mean over chains)", "1"),
    "llc_se": ("standard error of llc_mean over chains", "1"),
    "rel_error": ("(llc_mean - llc_theory) / llc_theory", "1"),
    "llc_dead_frozen": ("the same config and key with the negative-bias dead features held fixed (NaN: none)", "1"),
    "llc_dead_frozen_se": ("standard error of llc_dead_frozen", "1"),
    "within_tolerance": (f"|rel_error| <= {TOLERANCE:g}", "1"),
    "llc_quadratic": ("full-batch SGLD expectation on the quadratic approximation of L_n at the calibrated eps", "1"),
    "step_size": ("calibrated step size", "1"),
    "num_steps": ("calibrated chain length (burn-in as calibrated)", "steps"),
    "batch_size": ("calibrated minibatch size", "samples"),
    "localization": ("calibrated localization gamma", "1"),
    "converged": ("calibration's chain-length rule settled", "1"),
    "bias_consistent": ("calibration's short-chain discretisation-bias check passed", "1"),
    "llc_min_chain": ("smallest per-chain LLC", "1"),
    "llc_max_chain": ("largest per-chain LLC", "1"),
    "mala_acceptance": ("mean MALA acceptance proxy", "1"),
    "frac_below_init": ("fraction of post-burn-in steps with loss below L_n(w*)", "1"),
    "n_diverged": ("divergent chains", "chains"),
    "calibration_seconds": ("wall time of calibrate", "s"),
    "seconds": ("wall time of calibrate and the estimate", "s"),
}


def to_dataset(rows: list[dict], settings: dict) -> xr.Dataset:
    """Rows of `run_case` -> Dataset with dim (case,) and the calibration verdicts."""
    data = row_variables(rows, VARIABLES, "case")
    data["verdict"] = xr.Variable("case", np.array([str(r.get("verdict", "")) for r in rows]),
                                  {"long_name": "calibration verdict"})
    ds = xr.Dataset(data, coords={"case": [r["case"] for r in rows]})
    ds.attrs.update(provenance_attrs("kgon_llc", settings))
    return ds


def markdown_table(ds: xr.Dataset) -> str:
    lines = ["| class | pop. loss | L_n refined | curved (population) | Hessian of L_n +/- | lambda | calibrated eps, "
             "steps, batch | LLC +- SE | rel. error | dead features held fixed | quadratic prediction | "
             "chains min..max |", "|---" * 12 + "|"]
    for i, case in enumerate(ds["case"].values):
        v = {name: ds[name].values[i] for name in VARIABLES}
        lines.append(f"| {case} | {v['population_loss']:.5f} | {v['empirical_loss']:.5f} | {int(v['curved_directions'])} | "
                     f"{int(v['n_positive_eigen'])}/{int(v['n_negative_eigen'])} | {v['llc_theory']:g} | "
                     f"{v['step_size']:.3g}, {int(v['num_steps'])}, {int(v['batch_size'])} | "
                     f"{v['llc_mean']:.2f} +- {v['llc_se']:.2f} | {100 * v['rel_error']:+.1f}% | "
                     + (f"{v['llc_dead_frozen']:.2f} +- {v['llc_dead_frozen_se']:.2f} | "
                        if np.isfinite(v["llc_dead_frozen"]) else "- | ") +
                     f"{v['llc_quadratic']:.2f} | {v['llc_min_chain']:.2f}..{v['llc_max_chain']:.2f} |")
    return "\n".join(lines) + "\n"


def case_label(k: int, positive_dead: int) -> str:
    """A class's name as a case of `reproduce kgon-llc --only`: '6-gon', '5-gon', '5-gon+1'."""
    return f"{k}-gon" + (f"+{positive_dead}" if positive_dead else "")


def run(out_dir: Path, *, size: str = "default", progress: bool = True, only: Sequence[str] | None = None) -> xr.Dataset:
    """Calibrate and estimate the LLC of each class in `CASES` (quick: `QUICK` calibration; `only`:
    the classes of these names, `case_label`), each a chunk of a resumable sweep; write kgon_llc.nc,
    kgon_llc.md, kgon_llc.png (`figure`) and report.md under `out_dir`."""
    quick = size == "quick"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    calibration = QUICK if quick else CALIBRATION
    settings = dict(quick=quick, cases=[list(c) for c in CASES], n=N_SAMPLES, seed=SEED, tolerance=TOLERANCE,
                    refine="3000 full-batch GD steps, lr 0.1", nbeta="n / log n",
                    **{k: list(v) if isinstance(v, tuple) else v for k, v in calibration.items()})

    def compute(case) -> xr.Dataset:
        row = run_case(*case, **calibration)
        if progress:
            print(f"{row['case']}: LLC {row['llc_mean']:.2f} +- {row['llc_se']:.2f} vs {row['llc_theory']:g} "
                  f"({100 * row['rel_error']:+.1f}%) at eps {row['step_size']:.3g}, {row['num_steps']} steps, batch "
                  f"{row['batch_size']}; quadratic {row['llc_quadratic']:.2f}", flush=True)
        return to_dataset([row], settings)

    ds = run_cases("kgon-llc", out_dir, settings, CASES, [case_label(*c) for c in CASES], compute, only=only,
                   progress=progress)
    save_dataset(ds, out_dir / "kgon_llc.nc")
    table = markdown_table(ds)
    within = int(ds["within_tolerance"].sum())
    summary = (f"{within} of {ds.sizes['case']} classes within {TOLERANCE:.0%} of their lambda.\n\n"
               + "".join(f"- {c}: {v}\n" for c, v in zip(ds["case"].values, ds["verdict"].values)))
    (out_dir / "kgon_llc.md").write_text(table)
    fs.save(figure(ds), out_dir / "kgon_llc.png")
    (out_dir / "report.md").write_text(
        header("LLC of the Chen et al. critical-point classes (c = 6, r = 2)", "kgon-llc", out_dir, size, finding(ds),
               only)
        + f"{table}\n{summary}\nFigure: kgon_llc.png.\n")
    return ds


def figure(ds: xr.Dataset):
    """One column per class: the calibrated estimate (+- 2 SE), the class's lambda (a dash), the
    quadratic prediction at the calibrated step size (a cross) and, where the class has dead
    features of negative bias, the estimate with them held fixed (an open circle, a little right)."""
    with fs.style():
        fig, axes = fs.subplots(1, 1, width=fs.COLUMN, panel_aspect=0.7)
        ax = axes[0, 0]
        x = np.arange(ds.sizes["case"])
        ax.errorbar(x, ds["llc_mean"], yerr=2 * ds["llc_se"], fmt="o", color=fs.PALETTE[0], label="estimate $\\pm$ 2 SE")
        ax.scatter(x, ds["llc_theory"], marker="_", s=300, color=fs.REFERENCE, zorder=3, label="$\\lambda$ of the class")
        ax.scatter(x, ds["llc_quadratic"], marker="x", color=fs.PALETTE[1], zorder=3,
                   label="quadratic prediction at the calibrated $\\epsilon$")
        frozen = np.isfinite(ds["llc_dead_frozen"].values)
        if frozen.any():
            ax.errorbar(x[frozen] + 0.15, ds["llc_dead_frozen"].values[frozen],
                        yerr=2 * ds["llc_dead_frozen_se"].values[frozen], fmt="o", mfc="none", color=fs.PALETTE[0],
                        label="dead features held fixed")
        ax.set_xticks(x, [str(c) for c in ds["case"].values])
        ax.set_xlim(-0.5, x[-1] + 0.5)
        ax.set_xlabel("critical-point class")
        ax.set_ylabel("LLC")
        fig.legend(fontsize=6, loc="outside lower center", ncol=2)
    return fig


def finding(ds: xr.Dataset) -> str:
    """One paragraph: how many classes the calibrated estimate puts within `TOLERANCE` of their
    lambda, the range of relative errors, the calibration checks and divergent chains."""
    rel = ds["rel_error"].values
    cases = ds["case"].values
    lo, hi = int(np.nanargmin(rel)), int(np.nanargmax(rel))
    n_cases = ds.sizes["case"]
    return (f"Calibrated SGLD (localization 1, nbeta = n / log n, n = {N_SAMPLES:,}) on {n_cases} critical-point "
            f"classes: {int(ds['within_tolerance'].sum())} of {n_cases} estimates lie within {TOLERANCE:.0%} of "
            f"the class's theoretical lambda; relative errors run from {rel[lo]:+.1%} ({cases[lo]}) to "
            f"{rel[hi]:+.1%} ({cases[hi]}). The calibration's chain-length rule settled for "
            f"{int(ds['converged'].sum())} of {n_cases} and its discretisation-bias check passed for "
            f"{int(ds['bias_consistent'].sum())} of {n_cases}; {int(ds['n_diverged'].sum())} chains diverged.")


BIAS_VARIABLES = {
    "step_size": ("SGLD step size eps", "1"),
    "batch_size": (f"minibatch size ({N_SAMPLES} = full batch: exact L_n, no minibatch noise)", "samples"),
    "num_steps": ("chain length (half burn-in)", "steps"),
    "localization": ("SGLD localization gamma", "1"),
    "llc_mean": ("LLC estimate (mean over chains)", "1"),
    "llc_se": ("standard error of llc_mean over chains", "1"),
    "llc_quadratic": ("full-batch SGLD expectation on the quadratic approximation of L_n (quadratic_llc)", "1"),
    "llc_quadratic_minibatch": ("the same expectation with the row's i.i.d. minibatches: the rows' gradient spread "
                                "at w* as additive noise (slt_superposition.minibatch_noise)", "1"),
    "n_diverged": ("divergent chains", "chains"),
    "seconds": ("wall time of the SGLD estimate", "s"),
}


def bias_dataset(rows: list[dict], settings: dict) -> xr.Dataset:
    """Rows of `bias_study` (dicts with the keys of `BIAS_VARIABLES`) -> Dataset with dim (row,)."""
    data = row_variables(rows, BIAS_VARIABLES, "row")
    ds = xr.Dataset(data, coords={"row": np.arange(len(rows))})
    ds.attrs.update(provenance_attrs("kgon_llc_bias_study", settings))
    return ds


def bias_table(ds: xr.Dataset) -> str:
    """The bias study as a markdown table: eps | batch | steps | gamma | LLC +- SE | quadratic prediction
    (full batch) | quadratic prediction with the row's minibatch noise."""
    lines = ["| eps | batch | steps | gamma | LLC +- SE | quadratic prediction (full batch) | with the minibatch noise |",
             "|---" * 7 + "|"]
    for i in range(ds.sizes["row"]):
        v = {name: ds[name].values[i] for name in BIAS_VARIABLES}
        batch = f"full ({N_SAMPLES})" if v["batch_size"] == N_SAMPLES else f"{v['batch_size']}"
        lines.append(f"| {v['step_size']:.3g} | {batch} | {v['num_steps']} | {v['localization']:g} | "
                     f"{v['llc_mean']:.2f} +- {v['llc_se']:.2f} | {v['llc_quadratic']:.2f} | "
                     f"{v['llc_quadratic_minibatch']:.2f} |")
    return "\n".join(lines) + "\n"


def bias_study(out_dir: Path, *, size: str = "default", progress: bool = True) -> xr.Dataset:
    """Estimate the LLC of the refined 6-gon at each `BIAS_STUDY` setting; write bias_study.nc,
    bias_study.md, bias_study.png (`bias_figure`) and report.md (`reproduce kgon-bias-study`; one size).

    Every row uses the same key (as each step size of `run_case`), so rows with equal eps and steps
    share their chains' SGLD noise. Next to each estimate: `quadratic_llc` at the row's eps and gamma, and
    the same with the row's minibatch noise (`minibatch_noise.quadratic_llc_minibatch`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x, params, _, k_est = refined_kgon(6, 0)
    eig = hessian_spectrum(kgon_loss, params, x, method="exact").values
    noise = noise_spectrum(kgon_loss, params, x)
    noise = noise._replace(eigenvalues=np.where(noise.eigenvalues > EIGEN_FLOOR, noise.eigenvalues, 0.0))
    rows = []
    for eps, batch, steps, gamma in BIAS_STUDY:
        config = SGLDConfig(step_size=eps, localization=gamma, num_chains=BIAS_STUDY_CHAINS, num_steps=steps,
                            num_burnin=steps // 2, batch_size=batch, trace_every=max(1, steps // 200))
        t0 = time.perf_counter()
        loss_fn, data = case_loss(x, batch)
        est = estimate_llc(loss_fn, params, data, config=config, key=k_est, checks=False)
        mean, se = llc_and_se(est)
        rows.append(dict(step_size=eps, batch_size=batch or N_SAMPLES, num_steps=steps, localization=gamma,
                         llc_mean=mean, llc_se=se, llc_quadratic=quadratic_llc(eig, step_size=eps, localization=gamma),
                         llc_quadratic_minibatch=float(quadratic_llc_minibatch(noise, eps, gamma,
                                                                               default_nbeta(N_SAMPLES), batch)),
                         n_diverged=int(est["n_diverged"]), seconds=time.perf_counter() - t0))
        if progress:
            print(f"eps {eps:g} batch {batch or 'full'} steps {steps} gamma {gamma:g}: LLC {mean:.2f} +- {se:.2f} "
                  f"[{rows[-1]['seconds']:.0f}s]", flush=True)
    ds = bias_dataset(rows, dict(k=6, n=N_SAMPLES, seed=SEED, refine="3000 full-batch GD steps, lr 0.1",
                                 nbeta="n / log n", num_chains=BIAS_STUDY_CHAINS, burnin="half",
                                 rows=[list(r) for r in BIAS_STUDY]))
    save_dataset(ds, out_dir / "bias_study.nc")
    table = bias_table(ds)
    (out_dir / "bias_study.md").write_text(table)
    fs.save(bias_figure(ds), out_dir / "bias_study.png")
    (out_dir / "report.md").write_text(
        header("Bias study at the refined 6-gon (n = 1e5, 4 chains, burn-in half)", "kgon-bias-study", out_dir, size,
               bias_finding(ds)) + table + "\nFigure: bias_study.png.\n")
    return ds


def bias_setting_label(ds: xr.Dataset, row: int) -> str:
    """One setting of the bias study as a figure's tick label: eps 3.16e-05, batch 500, 8000 steps,
    gamma 1 (eps and gamma as TeX symbols)."""
    v = {name: ds[name].values[row] for name in ("step_size", "batch_size", "num_steps", "localization")}
    batch = "full batch" if v["batch_size"] == N_SAMPLES else f"batch {int(v['batch_size'])}"
    return f"$\\epsilon$ {v['step_size']:.3g}, {batch}, {int(v['num_steps'])} steps, $\\gamma$ {v['localization']:g}"


def bias_figure(ds: xr.Dataset):
    """One line per setting, first at the top: the estimate (+- 2 SE), the full-batch quadratic
    prediction (a cross) and the prediction with the setting's minibatch noise (a plus); the
    6-gon's lambda dashed."""
    with fs.style():
        fig, axes = fs.subplots(1, 1, width=4.8, height=1.2 + 0.22 * ds.sizes["row"])
        ax = axes[0, 0]
        y = -np.arange(ds.sizes["row"])
        ax.errorbar(ds["llc_mean"], y, xerr=2 * ds["llc_se"], fmt="o", color=fs.PALETTE[0], label="estimate $\\pm$ 2 SE")
        ax.scatter(ds["llc_quadratic"], y, marker="x", color=fs.PALETTE[1], zorder=3,
                   label="quadratic prediction, full batch")
        ax.scatter(ds["llc_quadratic_minibatch"], y, marker="+", s=40, color=fs.PALETTE[2], zorder=3,
                   label="with the minibatch noise")
        theory = critical_point_class(*class_critical_point(6, 0)).llc
        ax.axvline(theory, ls="--", lw=0.7, color=fs.REFERENCE, label=f"$\\lambda$ = {theory:g}")
        ax.set_yticks(y, [bias_setting_label(ds, i) for i in range(ds.sizes["row"])], fontsize=6)
        ax.set_xlabel("LLC of the refined 6-gon")
        fig.legend(fontsize=6, loc="outside lower center", ncol=2)
    return fig


def bias_finding(ds: xr.Dataset) -> str:
    """One paragraph: the range of the estimates over the settings against the quadratic predictions,
    full batch and with each row's minibatch noise."""
    mean, quad, se = ds["llc_mean"].values, ds["llc_quadratic"].values, ds["llc_se"].values
    lo, hi = int(np.nanargmin(mean)), int(np.nanargmax(mean))
    near = int((np.abs(mean - quad) <= 2 * se).sum())
    near_minibatch = int((np.abs(mean - ds["llc_quadratic_minibatch"].values) <= 2 * se).sum())
    return (f"At the refined 6-gon, {ds.sizes['row']} settings of step size, batch, chain length and localization "
            f"give estimates from {mean[lo]:.2f} (eps {ds['step_size'].values[lo]:.3g}, batch "
            f"{int(ds['batch_size'].values[lo])}) to {mean[hi]:.2f} (eps {ds['step_size'].values[hi]:.3g}, batch "
            f"{int(ds['batch_size'].values[hi])}); {near} of {ds.sizes['row']} lie within 2 SE of the full-batch "
            f"quadratic prediction at their step size and localization, {near_minibatch} of {ds.sizes['row']} within 2 SE "
            f"of the same prediction with their minibatch's gradient noise.")

