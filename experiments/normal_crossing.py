"""Exact finite-n anchors: normal-crossing models, calibrated SGLD against quadrature.

The LLC estimator targets E[nbeta (L_n(w) - L_n(w*))] under the localized tempered posterior

    p(w) ∝ exp(-nbeta L_n(w) - (gamma / 2) ||w - w*||^2)

at the run's n, nbeta and localization gamma; the asymptotic lambda is its n -> infinity limit.
For these low-dimensional models the expectation is computed by quadrature (`quadrature_llc`),
so an estimate can be compared with the number it estimates, apart from finite-n effects.

Models (devinterp's tests/slt/sampler_accuracy_test.py, data drawn with jax keys): x ~ N(0, 2^2),
y = 0.25 N(0, 1), n = 1000; y_hat = w_1^a w_2^b x (and w_1^a w_2^b w_3^c x), w* = 0; loss the
mean squared error (not halved, as torch's F.mse_loss). The asymptotic lambda of a monomial
w_1^{p_1} ... w_d^{p_d} is 1 / (2 max p_i). L_n depends on the data only through
S_xx = mean x^2, S_xy = mean x y, S_yy = mean y^2:

    L_n(w) - L_n(w*) = S_xx f(w)^2 - 2 S_xy f(w),    f(w) = prod_i w_i^{p_i}.

Each case: `calibrate` (its defaults, `localization=1.0`; `CALIBRATION`) and `estimate_llc` with
the calibrated config (its chain count raised to `ESTIMATE_CHAINS`, see below) and a fresh key,
compared with the quadrature value at nbeta = n / log n and gamma = 1.

    slt-superposition reproduce normal-crossing --out results/normal_crossing [--quick] [--only w12 ...]
    slt-superposition reproduce normal-crossing-study --out results/normal_crossing   # the bias study

Writes normal_crossing.nc, normal_crossing.md (table), normal_crossing.png and report.md (each
case a chunk of a resumable sweep under cases/); the study writes bias_study.nc, bias_study.md
and report.md.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from experiments.registry import header, row_variables, run_cases, select_cases
from slt_superposition.calibration import calibrate
from slt_superposition.errors import require
from slt_superposition.io import save_dataset, write_text
from slt_superposition.llc import SGLDConfig, default_nbeta, estimate_llc
from slt_superposition.provenance import provenance_attrs

N_SAMPLES = 1000
X_STD = 2.0
NOISE_STD = 0.25
SEED = 0
LOCALIZATION = 1.0
TOLERANCE = 0.05  # target: every estimate within 5% of its quadrature value
# devinterp's cases (a, b), then three-parameter monomials w1^a w2^b w3^c of our choice
CASES_2D = [(0, 1), (1, 1), (0, 2), (1, 2), (2, 2), (0, 3), (1, 3), (2, 3), (3, 3)]
CASES_3D = [(1, 1, 1), (1, 2, 2), (1, 2, 3)]
QUICK_CASES = [(0, 1), (0, 2), (1, 1)]  # the regular reference and the two cheapest singular cases
CALIBRATION = dict(localization=LOCALIZATION)  # everything else: calibrate's defaults
ESTIMATE_CHAINS = 64  # calibrate decides with its default 4 chains; the estimate needs ~64 for an SE near 1%
QUADRATURE_SPACING = 0.01  # grid spacing in t = log|f|; the grid error is read off at twice the spacing


# ----------------------------------------------------------------------------- model and data


def normal_crossing_data(key, n: int = N_SAMPLES) -> tuple[jax.Array, jax.Array]:
    """x ~ N(0, X_STD^2), y = NOISE_STD N(0, 1), both `(n,)` float32 (x and y independent)."""
    kx, ky = jax.random.split(key)
    return X_STD * jax.random.normal(kx, (n,)), NOISE_STD * jax.random.normal(ky, (n,))


def sufficient_statistics(x, y) -> tuple[float, float, float]:
    """(S_xx, S_xy, S_yy) = (mean x^2, mean x y, mean y^2) in float64, for `x, y: (n,)`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(x @ x / x.size), float(x @ y / x.size), float(y @ y / y.size)


def check_powers(powers: Sequence[int]) -> tuple[int, ...]:
    """The exponents as a tuple of non-negative ints, at least one positive (else InputError)."""
    powers = tuple(int(p) for p in powers)
    require(len(powers) >= 1 and all(p >= 0 for p in powers) and any(p > 0 for p in powers),
            f"powers must be non-negative integers, at least one positive, got {powers}")
    return powers


def monomial(powers: Sequence[int], w: jax.Array) -> jax.Array:
    """f(w) = prod_i w_i^{p_i} for `w: (d,)`; factors with p_i = 0 are left out, not w_i ** 0
    (whose gradient at w_i = 0 is NaN in JAX), so w_i is then a flat direction."""
    factors = [w[i] ** p for i, p in enumerate(powers) if p]
    f = factors[0]
    for factor in factors[1:]:
        f = f * factor
    return f


def make_loss(powers: Sequence[int]):
    """`loss(params, (x, y)) -> mean (f(w) x - y)^2`, params {"w": (d,)}, x, y: (batch,)."""
    powers = check_powers(powers)

    def loss(params, batch):
        x, y = batch
        return jnp.mean((monomial(powers, params["w"]) * x - y) ** 2)

    return loss


def asymptotic_lambda(powers: Sequence[int]) -> float:
    """The learning coefficient of a normal crossing with these exponents: 1 / (2 max p_i)."""
    return 1.0 / (2 * max(check_powers(powers)))


def case_name(powers: Sequence[int]) -> str:
    return "w" + "".join(map(str, powers))


# ----------------------------------------------------------------------------- quadrature


def _log_power_density(p: int, t: np.ndarray, localization: float) -> np.ndarray:
    """Density of p log|w| at `t: (m,)` for w ~ N(0, 1/localization)."""
    w = np.exp(t / p)
    return 2 * w * np.sqrt(localization / (2 * np.pi)) * np.exp(-localization * w * w / 2) / p


def quadrature_llc(powers: Sequence[int], s_xx: float, s_xy: float, *, nbeta: float, localization: float = 1.0,
                   spacing: float = QUADRATURE_SPACING, log_min: float = -40.0) -> float:
    """E[nbeta (L_n(w) - L_n(0))] under p(w) ∝ exp(-nbeta L_n(w) - (localization / 2) ||w||^2)
    for L_n(w) - L_n(0) = s_xx f^2 - 2 s_xy f, f = prod_i w_i^{p_i}, `powers: (d,)`.

    The integrand depends on w only through f, and the localization is a product of Gaussians
    N(0, 1/gamma), so the d-dimensional integral is exactly a one-dimensional one over
    t = log|f| = sum_i p_i log|w_i| and the sign of f:

        E = sum_s P(s) ∫ e(s e^t) exp(-e(s e^t)) rho(t) dt / sum_s P(s) ∫ exp(-e(s e^t)) rho(t) dt,
        e(f) = nbeta (s_xx f^2 - 2 s_xy f),

    rho the density of t: the convolution of the densities of p_i log|w_i| (coordinates with
    p_i = 0 integrate to 1 and drop out); P(s) = 1/2 each when some p_i is odd (the signs of the
    w_i are independent of their moduli), else f > 0. The singular set f = 0 is t -> -infinity,
    so a uniform grid in t (`spacing`) is a grid refined geometrically towards it in w. rho and
    the integrand are smooth and decay exponentially at both ends, so the trapezoid sums converge
    faster than any power of the spacing; the densities are sampled on log|w_i| in
    [`log_min`, log(12 / sqrt(gamma))] (mass outside below 1e-16). Returns a float.
    """
    from scipy.signal import fftconvolve

    powers = [p for p in check_powers(powers) if p > 0]
    log_max = math.log(12.0 / math.sqrt(localization))
    rho, start = None, 0.0
    for p in powers:
        t = p * log_min + spacing * np.arange(int(math.ceil(p * (log_max - log_min) / spacing)) + 1)
        density = _log_power_density(p, t, localization)
        rho, start = (density, t[0]) if rho is None else (np.maximum(fftconvolve(rho, density), 0.0) * spacing,
                                                          start + t[0])
    f = np.exp(start + spacing * np.arange(rho.size))
    numerator = denominator = 0.0
    for sign in ((1.0, -1.0) if any(p % 2 for p in powers) else (1.0,)):
        energy = nbeta * (s_xx * f * f - 2 * s_xy * sign * f)
        weight = np.exp(-energy) * rho
        numerator += float(np.sum(energy * weight))
        denominator += float(np.sum(weight))
    return numerator / denominator


def grid_llc(powers: Sequence[int], s_xx: float, s_xy: float, *, nbeta: float, localization: float = 1.0,
             spacing: float = 0.04, scale: float = 1e-4, extent: float = 9.0) -> float:
    """The same expectation as `quadrature_llc` on a d-dimensional tensor grid in w (an
    independent check): each axis w = scale sinh(u), u uniform with `spacing`, |w| <= `extent`
    / sqrt(gamma), so points are `scale x spacing` apart at the singular set w_i = 0 and a
    relative `spacing` apart far from it. Evaluated one slab of the first axis at a time
    (memory: axis length^(d-1) floats). Returns a float."""
    powers = check_powers(powers)
    top = math.asinh(extent / math.sqrt(localization) / scale)
    u = np.arange(-top, top + spacing / 2, spacing)
    w = scale * np.sinh(u)
    weight_1d = np.exp(-localization * w * w / 2) * scale * np.cosh(u) * spacing  # prior x Jacobian, (m,)
    rest = powers[1:]
    f_rest, w_rest = np.ones(()), np.ones(())
    for p in rest:  # outer products over axes 2..d: (m,) * (d - 1)
        f_rest = np.multiply.outer(f_rest, w ** p)
        w_rest = np.multiply.outer(w_rest, weight_1d)
    numerator = denominator = 0.0
    for w1, q1 in zip(w, weight_1d):
        f = w1 ** powers[0] * f_rest
        energy = nbeta * (s_xx * f * f - 2 * s_xy * f)
        weight = np.exp(-energy) * w_rest * q1
        numerator += float(np.sum(energy * weight))
        denominator += float(np.sum(weight))
    return numerator / denominator


def gaussian_llc(s_xx: float, s_xy: float, *, nbeta: float, localization: float = 1.0) -> float:
    """Closed form of the expectation for the regular case f = w (one power 1): the posterior of
    w is Gaussian with precision P = 2 nbeta s_xx + gamma and mean m = 2 nbeta s_xy / P, so
    E = nbeta (s_xx (1/P + m^2) - 2 s_xy m)."""
    precision = 2 * nbeta * s_xx + localization
    mean = 2 * nbeta * s_xy / precision
    return nbeta * (s_xx * (1 / precision + mean * mean) - 2 * s_xy * mean)


# ----------------------------------------------------------------------------- one case


def case_inputs(powers: Sequence[int], seed: int = SEED):
    """(loss, params, data, calibration key, estimate key) of a case: the data of `seed`
    (the same for every case), w* = 0."""
    k_data, k_cal, k_est = jax.random.split(jax.random.key(seed), 3)
    x, y = normal_crossing_data(k_data)
    powers = check_powers(powers)
    return make_loss(powers), {"w": jnp.zeros(len(powers))}, (x, y), k_cal, k_est


def llc_and_se(est: xr.Dataset) -> tuple[float, float]:
    """Mean of an `estimate_llc` result and its standard error (`llc_se`, over the non-divergent chains)."""
    return float(est["llc_mean"]), float(est["llc_se"])


def run_case(powers: Sequence[int], *, seed: int = SEED, calibration: dict | None = None,
             estimate_chains: int = ESTIMATE_CHAINS, progress: bool = False) -> dict:
    """Quadrature, `calibrate` and `estimate_llc` for one case; a row of the results table."""
    powers = check_powers(powers)
    loss, params, data, k_cal, k_est = case_inputs(powers, seed)
    s_xx, s_xy, _ = sufficient_statistics(*data)
    nbeta = default_nbeta(N_SAMPLES)
    quad = quadrature_llc(powers, s_xx, s_xy, nbeta=nbeta, localization=LOCALIZATION)
    coarse = quadrature_llc(powers, s_xx, s_xy, nbeta=nbeta, localization=LOCALIZATION,
                            spacing=2 * QUADRATURE_SPACING)
    t0 = time.perf_counter()
    config, cal = calibrate(loss, params, data, key=k_cal, progress=progress, **(calibration or CALIBRATION))
    t_cal = time.perf_counter() - t0
    config = dataclasses.replace(config, num_chains=estimate_chains)
    est = estimate_llc(loss, params, data, config=config, key=k_est)
    mean, se = llc_and_se(est)
    lam = asymptotic_lambda(powers)
    value = lambda name: float(est[name]) if name in est else np.nan
    return dict(
        case=case_name(powers), powers=",".join(map(str, powers)), n_parameters=len(powers),
        lambda_asymptotic=lam, llc_quadrature=quad, quadrature_grid_error=abs(quad - coarse), llc_mean=mean,
        llc_se=se, rel_error=(mean - quad) / quad, rel_error_se=se / quad, quadrature_vs_asymptotic=(quad - lam) / lam,
        within_tolerance=bool(abs(mean - quad) <= TOLERANCE * quad),
        step_size=float(config.step_size), num_steps=int(config.num_steps),
        batch_size=int(config.batch_size or N_SAMPLES), localization=float(config.localization),
        num_chains=int(config.num_chains), converged=bool(cal.attrs.get("converged", False)),
        trusted=bool(value("trusted")), step_check_rel_diff=value("step_check_rel_diff"),
        step_check_se=value("step_check_se"), batch_check_rel_diff=value("batch_check_rel_diff"),
        batch_check_se=value("batch_check_se"), llc_quadratic=value("llc_quadratic"),
        step_size_bound=value("step_size_bound"), mala_acceptance=float(est["mala_acceptance"].mean()),
        rhat=value("rhat"), n_diverged=int(est["n_diverged"]), verdict=str(cal.attrs.get("verdict", "")),
        calibration_seconds=t_cal, seconds=time.perf_counter() - t0,
    )


VARIABLES = {
    "n_parameters": ("number of parameters d", "1"),
    "lambda_asymptotic": ("asymptotic learning coefficient 1 / (2 max p_i)", "1"),
    "llc_quadrature": ("E[nbeta (L_n - L_n(w*))] under the localized tempered posterior, by quadrature", "1"),
    "quadrature_grid_error": ("|quadrature at spacing h - at 2h|", "1"),
    "llc_mean": ("LLC estimate with the calibrated config (mean over chains)", "1"),
    "llc_se": ("standard error of llc_mean over chains", "1"),
    "rel_error": ("(llc_mean - llc_quadrature) / llc_quadrature", "1"),
    "rel_error_se": ("llc_se / llc_quadrature", "1"),
    "quadrature_vs_asymptotic": ("(llc_quadrature - lambda_asymptotic) / lambda_asymptotic: the finite-n effect",
                                 "1"),
    "within_tolerance": (f"|rel_error| <= {TOLERANCE:g}", "1"),
    "step_size": ("calibrated step size", "1"),
    "num_steps": ("calibrated chain length (burn-in included)", "steps"),
    "batch_size": (f"calibrated minibatch size ({N_SAMPLES} = full batch)", "samples"),
    "localization": ("calibrated localization gamma", "1"),
    "num_chains": ("chains of the estimate", "chains"),
    "converged": ("calibration's chain-length rule settled", "1"),
    "trusted": ("estimate_llc's stored checks all passed", "1"),
    "step_check_rel_diff": ("estimate_llc's step-size check: relative difference against eps / 3", "1"),
    "step_check_se": ("its standard error", "1"),
    "batch_check_rel_diff": ("estimate_llc's batch check: relative difference against full batch", "1"),
    "batch_check_se": ("its standard error", "1"),
    "llc_quadratic": ("quadratic-approximation LLC at w* (curved directions only)", "1"),
    "step_size_bound": ("curvature step-size bound at w*", "1"),
    "mala_acceptance": ("mean MALA acceptance proxy", "1"),
    "rhat": ("R-hat of the post-burn-in loss traces", "1"),
    "n_diverged": ("divergent chains", "chains"),
    "calibration_seconds": ("wall time of calibrate", "s"),
    "seconds": ("wall time of calibrate and the estimate", "s"),
}


def to_dataset(rows: list[dict], settings: dict) -> xr.Dataset:
    """Rows of `run_case` -> Dataset with dim (case,)."""
    data = row_variables(rows, VARIABLES, "case")
    data["powers"] = xr.Variable("case", np.array([r["powers"] for r in rows], dtype=object),
                                 {"long_name": "exponents p_i of f(w) = prod_i w_i^p_i"})
    data["verdict"] = xr.Variable("case", np.array([r["verdict"] for r in rows], dtype=object),
                                  {"long_name": "calibration verdict"})
    ds = xr.Dataset(data, coords={"case": [r["case"] for r in rows]})
    ds.attrs.update(provenance_attrs("normal_crossing", settings))
    return ds


# ----------------------------------------------------------------------------- outputs


def markdown_table(ds: xr.Dataset) -> str:
    from slt_superposition.markdown import table

    rows = []
    for i, case in enumerate(ds["case"].values):
        v = {name: ds[name].values[i] for name in list(VARIABLES) + ["powers"]}
        rows.append([
            f"w^({v['powers']})", f"{v['lambda_asymptotic']:.4f}",
            f"{v['llc_quadrature']:.4f} ({100 * v['quadrature_vs_asymptotic']:+.0f}%)",
            f"{v['llc_mean']:.4f} +- {v['llc_se']:.4f}", f"{100 * v['rel_error']:+.1f} +- {100 * v['rel_error_se']:.1f}%",
            f"{v['step_size']:.3g}, {int(v['num_steps'])}, {int(v['batch_size'])}",
            "yes" if v["trusted"] else "no",
            f"{100 * v['step_check_rel_diff']:+.0f} +- {100 * v['step_check_se']:.0f}%",
            f"{100 * v['batch_check_rel_diff']:+.0f} +- {100 * v['batch_check_se']:.0f}%"
            if np.isfinite(v["batch_check_rel_diff"]) else "full batch",
        ])
    return table(["f(w) exponents", "asymptotic lambda", "quadrature (vs lambda)", "estimate +- SE",
                  "rel. error vs quadrature", "eps, steps, batch", "trusted", "step check", "batch check"],
                 rows) + "\n"


def figure(ds: xr.Dataset):
    """Estimate (+- 2 SE) and quadrature value per case, the asymptotic lambda beside them; the
    lower panel the relative error against the quadrature with the +-5% band."""
    from slt_superposition import figure_style as fs

    with fs.style():
        fig, axes = fs.subplots(2, 1, width=fs.COLUMN, height=4.0, sharex=True)
        top, bottom = axes[0, 0], axes[1, 0]
        x = np.arange(ds.sizes["case"])
        top.plot(x, ds["lambda_asymptotic"], "_", ms=10, mew=1.2, color=fs.REFERENCE,
                 label="asymptotic $\\lambda = 1/(2\\max p_i)$")
        top.plot(x, ds["llc_quadrature"], "s", ms=4, mfc="none", color=fs.PALETTE[1],
                 label="quadrature (finite $n$)")
        top.errorbar(x, ds["llc_mean"], yerr=2 * ds["llc_se"], fmt="o", ms=2.5, color=fs.PALETTE[0],
                     label="calibrated SGLD $\\pm$ 2 SE")
        top.set_ylabel("LLC")
        highest = np.nanmax(np.r_[ds["lambda_asymptotic"].values, ds["llc_mean"].values + 2 * ds["llc_se"].values])
        top.set_ylim(0, 1.6 * highest)  # room for the legend above the data
        top.legend(loc="upper right")
        bottom.axhspan(-100 * TOLERANCE, 100 * TOLERANCE, color="0.88", lw=0, label="$\\pm$5%")
        bottom.axhline(0, color=fs.REFERENCE, lw=0.8)
        bottom.errorbar(x, 100 * ds["rel_error"], yerr=200 * ds["rel_error_se"], fmt="o", ms=2.5,
                        color=fs.PALETTE[0], label="(estimate - quadrature) / quadrature")
        bottom.set_ylabel("rel. error (%)")
        bottom.set_xticks(x, [f"({p})" for p in ds["powers"].values], rotation=45)
        bottom.set_xlabel("exponents $p_i$ of $f(w) = \\prod_i w_i^{p_i}$")
        bottom.legend(loc="lower left")
    return fig


def finding(ds: xr.Dataset) -> str:
    within = int(ds["within_tolerance"].sum())
    worst = int(np.argmax(np.abs(ds["rel_error"].values)))
    finite_n = 100 * ds["quadrature_vs_asymptotic"].values
    return (f"{within} of {ds.sizes['case']} estimates are within {TOLERANCE:.0%} of their quadrature value; the "
            f"largest difference is {100 * ds['rel_error'].values[worst]:+.1f}% ({ds['case'].values[worst]}). "
            f"At n = {N_SAMPLES} the quadrature values themselves differ from the asymptotic lambda by "
            f"{finite_n.min():+.0f}% to {finite_n.max():+.0f}%: a finite-n effect, not a sampler error. "
            f"{int(ds['trusted'].sum())} of {ds.sizes['case']} estimates are marked trusted by their stored checks.")


def write_outputs(ds: xr.Dataset, out_dir: Path, size: str, only=None, **options) -> None:
    from slt_superposition import figure_style as fs

    save_dataset(ds, out_dir / "normal_crossing.nc")
    table = markdown_table(ds)
    write_text(out_dir / "normal_crossing.md", table)
    fs.save(figure(ds), out_dir / "normal_crossing.png")
    verdicts = "".join(f"- {c}: {v}\n" for c, v in zip(ds["case"].values, ds["verdict"].values))
    write_text(out_dir / "report.md",
                header("Normal crossings: calibrated SGLD against the exact finite-n expectation", "normal-crossing",
                       out_dir, size, finding(ds), only, **options)
                + table + "\nFigure: normal_crossing.png.\n\nCalibration verdicts:\n\n" + verdicts)


def run(out_dir: Path, *, size: str = "default", progress: bool = True, only: Sequence[str] | None = None,
        estimate_chains: int = ESTIMATE_CHAINS) -> xr.Dataset:
    """Every case (quick: `QUICK_CASES`; `only`: the cases of these names, e.g. "w12"), each calibrated
    and estimated with `estimate_chains` chains as a chunk of a resumable sweep; writes outputs."""
    quick = size == "quick"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = [check_powers(c) for c in (QUICK_CASES if quick else CASES_2D + CASES_3D)]
    settings = dict(quick=quick, cases=[list(c) for c in cases], n=N_SAMPLES, x_std=X_STD, noise_std=NOISE_STD,
                    seed=SEED, nbeta="n / log n", tolerance=TOLERANCE, estimate_chains=estimate_chains,
                    quadrature_spacing=QUADRATURE_SPACING, calibration=CALIBRATION)

    def compute(powers) -> xr.Dataset:
        row = run_case(powers, estimate_chains=estimate_chains)
        if progress:
            print(f"{row['case']}: quadrature {row['llc_quadrature']:.4f} (lambda {row['lambda_asymptotic']:.4f}) "
                  f"estimate {row['llc_mean']:.4f} +- {row['llc_se']:.4f} ({100 * row['rel_error']:+.1f}%) eps "
                  f"{row['step_size']:.3g} steps {row['num_steps']} batch {row['batch_size']} trusted "
                  f"{row['trusted']}", flush=True)
        return to_dataset([row], settings)

    ds = run_cases("normal-crossing", out_dir, settings, cases, [case_name(c) for c in cases], compute, only=only,
                   progress=progress)
    options = {} if estimate_chains == ESTIMATE_CHAINS else {"estimate_chains": estimate_chains}
    write_outputs(ds, out_dir, size, only, **options)
    return ds


# The bias study: (exponents, step size, sampler time eps x steps, batch size or None for full batch), 64 chains,
# burn-in half, gamma 1, one key (rows share their chains' noise). Rows vary one setting at a time from the
# calibrated (1, 1) setting (eps 1e-4, sampler time 16, batch 500) and the calibrated (2, 2) one (eps 1e-5,
# sampler time 8, batch 500; here full batch).
STUDY = [((1, 1), 1e-4, 16.0, 500), ((1, 1), 1e-4, 16.0, None), ((1, 1), 3.16e-5, 16.0, None),
         ((1, 1), 1e-4, 64.0, None), ((3, 3), 3.16e-5, 32.0, None), ((3, 3), 1e-4, 32.0, None),
         ((2, 2), 1e-5, 8.0, None), ((2, 2), 3.16e-5, 8.0, None), ((2, 2), 3.16e-5, 32.0, None)]
STUDY_CHAINS = 64
STUDY_VARIABLES = {
    "step_size": ("SGLD step size eps", "1"),
    "sampler_time": ("eps x num_steps", "1"),
    "num_steps": ("chain length (half burn-in)", "steps"),
    "batch_size": (f"minibatch size ({N_SAMPLES} = full batch)", "samples"),
    "llc_mean": ("LLC estimate (mean over chains)", "1"),
    "llc_se": ("standard error over chains", "1"),
    "llc_quadrature": ("quadrature value", "1"),
    "rel_error": ("(llc_mean - llc_quadrature) / llc_quadrature", "1"),
    "seconds": ("wall time of the estimate", "s"),
}


def study(out_dir: Path, *, size: str = "default", progress: bool = True,
          only: Sequence[str] | None = None) -> xr.Dataset:
    """Estimate at each `STUDY` row (only those of the cases named in `only`, e.g. "w11"; no
    calibration, `STUDY_CHAINS` chains, each row independent of the others); writes bias_study.nc,
    bias_study.md and report.md (`reproduce normal-crossing-study`; one size)."""
    from slt_superposition.markdown import table

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    names = [case_name(r[0]) for r in STUDY]
    chosen = select_cases("normal-crossing-study", STUDY, names, only)
    for powers, eps, sampler_time, batch in chosen:
        loss, params, data, _, key = case_inputs(powers)
        s_xx, s_xy, _ = sufficient_statistics(*data)
        quad = quadrature_llc(powers, s_xx, s_xy, nbeta=default_nbeta(N_SAMPLES), localization=LOCALIZATION)
        steps = int(round(sampler_time / eps))
        config = SGLDConfig(step_size=eps, localization=LOCALIZATION, num_chains=STUDY_CHAINS, num_steps=steps,
                            num_burnin=steps // 2, batch_size=batch, trace_every=max(1, steps // 200))
        t0 = time.perf_counter()
        mean, se = llc_and_se(estimate_llc(loss, params, data, config=config, key=key, checks=False))
        rows.append(dict(case=case_name(powers), step_size=eps, sampler_time=sampler_time, num_steps=steps,
                         batch_size=batch or N_SAMPLES, llc_mean=mean, llc_se=se, llc_quadrature=quad,
                         rel_error=(mean - quad) / quad, seconds=time.perf_counter() - t0))
        if progress:
            print(f"{rows[-1]['case']} eps {eps:g} time {sampler_time:g} batch {batch or 'full'}: {mean:.4f} +- "
                  f"{se:.4f} vs {quad:.4f} ({100 * rows[-1]['rel_error']:+.1f}%)", flush=True)
    ds = xr.Dataset(row_variables(rows, STUDY_VARIABLES, "row"), coords={"row": np.arange(len(rows))})
    ds["case"] = xr.Variable("row", np.array([r["case"] for r in rows], dtype=object))
    ds.attrs.update(provenance_attrs("normal_crossing_study", dict(rows=[[list(p), e, t, b] for p, e, t, b in chosen],
                                                                   chains=STUDY_CHAINS, n=N_SAMPLES, seed=SEED)))
    save_dataset(ds, out_dir / "bias_study.nc")
    text = table(["case", "eps", "eps x steps", "steps", "batch", "estimate +- SE", "quadrature", "rel. error"],
                 [[r["case"], f"{r['step_size']:.3g}", f"{r['sampler_time']:g}", r["num_steps"],
                   "full" if r["batch_size"] == N_SAMPLES else r["batch_size"],
                   f"{r['llc_mean']:.4f} +- {r['llc_se']:.4f}", f"{r['llc_quadrature']:.4f}",
                   f"{100 * r['rel_error']:+.1f} +- {100 * r['llc_se'] / r['llc_quadrature']:.1f}%"] for r in rows])
    write_text(out_dir / "bias_study.md", f"{text}\n")
    write_text(out_dir / "report.md", header(f"Normal crossings: bias study ({STUDY_CHAINS} chains)",
                                             "normal-crossing-study", out_dir, size, study_finding(ds), only)
               + f"{text}\n")
    return ds


def study_finding(ds: xr.Dataset) -> str:
    """One paragraph: the study rows' relative errors against the quadrature, per case."""
    parts = []
    for case in dict.fromkeys(ds["case"].values.tolist()):
        rel = 100 * ds["rel_error"].values[ds["case"].values == case]
        parts.append(f"{case} {rel.min():+.1f}% to {rel.max():+.1f}%")
    return (f"{ds.sizes['row']} settings of step size, sampler time and batch ({STUDY_CHAINS} chains each, no "
            f"calibration) against the quadrature value, relative errors per case: " + "; ".join(parts) + ".")

