"""Validate the LLC estimator on deep linear networks against Aoyagi's exact lambda.

Furman & Lau data (x ~ U[-10, 10], y = f(x; w*), n = 1e5, MSE over batch and outputs).
Each case: a true parameter w*, `calibrate` chooses step size and chain length (no
hand-tuned step size per case), then `estimate_llc` with a fresh key gives lambda_hat. The
chains run at full batch on the data's exact compression (`toy_models.dln.dln_compressed_data`:
H_0 + H_L rows with the same L_n at every w), with nbeta = n / log n of the n = 1e5 samples:
exact L_n at a cost independent of n, so the chains can reach the calibration's sampler-time
floor (at the curvature-bounded step sizes of the narrow cases, 1e7 steps and more).

- "singular" w* (every layer of rank r): the local coefficient equals Aoyagi's lambda;
  target median |relative error| <= 5%, none above 10% (issue 10; issue 3 asked for 10% and 20%).
- "less_singular" w* (one rank-r layer, the rest generic): reported separately; the local
  coefficient can exceed lambda.

    slt-superposition reproduce dln-validation --out results/dln_validation [--quick] [--only CASE ...]
    slt-superposition reproduce dln-validation --set metropolis=True --out results/dln_validation_mala

`metropolis=True` runs every chain Metropolis-adjusted (`SGLDConfig.metropolis`: exact at any step
size; the calibration's step size is then limited by the acceptance rate, not the curvature bound).

Writes dln_validation.nc, dln_validation.md (table), report.md, dln_validation.png
(lambda_hat vs lambda) and calibration/<case>.nc + .png (why each config was chosen). Each case is
a chunk of a resumable sweep (cases/): a rerun resumes, and `--only` runs a few cases into the
same folder (e.g. one per machine) that a later run without it completes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
import xarray as xr

from experiments.registry import header, row_variables, run_cases
from slt_superposition.calibration import calibrate
from slt_superposition.errors import require
from slt_superposition.io import save_dataset
from slt_superposition.llc import estimate_llc
from slt_superposition.provenance import provenance_attrs
from slt_superposition.theory import dln_learning_coefficient, dln_parameter_count
from toy_models.dln import dln_compressed_data, dln_data, dln_loss, dln_true_params

N_SAMPLES = 100_000
NBETA = N_SAMPLES / math.log(N_SAMPLES)  # of the n samples (the chains see their H_0 + H_L compressed rows)
NUM_CHAINS = 4
# the chain-length cap: 10,000 x 2^11, past the floor's 1.6e7 steps at the narrow cases' eps 3.2e-8
MAX_STEPS = 20_480_000
LOCALIZATION = 1.0  # as Furman & Lau; a ladder up to 100 read -25% on (4,6,6,6,4) (docs/experiments/dln_validation.md)
SEED = 0
# (widths, rank, kind): the public panel of docs/references.md, then our own choices
PUBLIC_PANEL = [((4, 3, 4), 1), ((5, 4, 3, 5), 2), ((6, 6, 6, 6), 3), ((8, 5, 7), 3), ((3, 10, 10, 3), 2)]
OWN_CASES = [((3, 5), 2), ((6, 4, 6), 0), ((5, 8, 5), 5), ((4, 6, 6, 6, 4), 2), ((2, 20, 2), 1),
             ((8, 2, 8), 2), ((7, 3, 3, 7), 1)]
# deeper networks with a narrow bottleneck (a width-2 or width-3 hidden layer), rank 1
NARROW_CASES = [((5, 5, 2, 5, 5), 1), ((6, 3, 6, 6), 1), ((4, 4, 2, 4), 1)]
LESS_SINGULAR = [((7, 3, 3, 7), 1), ((4, 3, 4), 1)]
QUICK_CASES = [((3, 5), 2, "singular"), ((4, 3, 4), 1, "singular")]


def parse_widths(text: str) -> tuple[int, ...]:
    """'4-3-4' -> (4, 3, 4); an argparse `type` for the studies' --widths."""
    try:
        return tuple(int(w) for w in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths are dash-separated integers, e.g. 4-3-4, got {text!r}") from None


def case_name(widths, rank, kind) -> str:
    return f"{'-'.join(map(str, widths))}_r{rank}_{kind}"


def all_cases(quick: bool) -> list[tuple]:
    if quick:
        return list(QUICK_CASES)
    return ([(w, r, "singular") for w, r in PUBLIC_PANEL + OWN_CASES + NARROW_CASES]
            + [(w, r, "less_singular") for w, r in LESS_SINGULAR])


def run_case(widths, rank, kind, *, seed: int = SEED, max_steps: int = MAX_STEPS, calibration_dir: Path | None = None,
             progress: bool = False, **calibrate_options) -> dict:
    """Calibrate and estimate one case; returns a row of the results table."""
    key = jax.random.key(seed)
    k_true, k_data, k_cal, k_est = jax.random.split(key, 4)
    params = dln_true_params(k_true, widths, rank, kind)
    data = dln_compressed_data(*dln_data(k_data, params, N_SAMPLES))
    t0 = time.perf_counter()
    config, cal = calibrate(dln_loss, params, data, key=k_cal, batch_size=None, nbeta=NBETA, num_chains=NUM_CHAINS,
                            max_steps=max_steps, localization=LOCALIZATION, progress=progress, **calibrate_options)
    est = estimate_llc(dln_loss, params, data, config=config, key=k_est, checks=False)
    seconds = time.perf_counter() - t0
    name = case_name(widths, rank, kind)
    if calibration_dir is not None:
        from slt_superposition.plots import plot_calibration

        save_dataset(cal, calibration_dir / f"{name}.nc")
        plot_calibration(cal, calibration_dir / name)
    lam = dln_learning_coefficient(widths, rank)
    llc = float(est["llc_mean"])
    return dict(
        case=name, widths="-".join(map(str, widths)), depth=len(widths) - 1, rank=rank, kind=kind,
        n_parameters=dln_parameter_count(widths), lambda_theory=lam, llc_mean=llc,
        llc_std=float(est["llc_std"]), rel_error=(llc - lam) / lam, step_size=config.step_size,
        localization=config.localization,
        num_steps=config.num_steps, converged=int(cal.attrs["converged"]),
        bias_consistent=int(cal.attrs["bias_consistent"]),
        mala_acceptance=float(est["mala_acceptance"].mean()), rhat=float(est["rhat"]),
        n_diverged=int(est["n_diverged"]), seconds=seconds,
    )


VARIABLES = {
    "lambda_theory": ("Aoyagi learning coefficient lambda", "1"),
    "llc_mean": ("LLC estimate lambda_hat (mean over chains)", "1"),
    "llc_std": ("standard deviation of lambda_hat over chains", "1"),
    "rel_error": ("(lambda_hat - lambda) / lambda", "1"),
    "step_size": ("step size chosen by calibrate", "1"),
    "localization": ("localization gamma chosen by calibrate", "1"),
    "num_steps": ("chain length chosen by calibrate (half burn-in)", "steps"),
    "converged": ("calibrate found the estimate stopped rising under doubling the chain (1) or not (0)", "1"),
    "bias_consistent": ("calibrate found the chosen step size consistent with the next smaller one (1) or not (0)",
                        "1"),
    "mala_acceptance": ("mean MALA acceptance proxy (Metropolis-adjusted chains: the realised acceptance rate)", "1"),
    "rhat": ("R-hat of the post-burn-in loss traces", "1"),
    "n_diverged": ("divergent chains", "chains"),
    "n_parameters": ("number of parameters d", "1"),
    "rank": ("rank r of the true end-to-end matrix", "1"),
    "depth": ("number of layers L", "1"),
    "seconds": ("wall time of calibrate + estimate", "s"),
}


def sampler_name(ds: xr.Dataset) -> str:
    """'SGLD', or 'MALA' where the panel ran Metropolis-adjusted chains (its config's `metropolis`)."""
    return "MALA" if json.loads(ds.attrs.get("config", "{}")).get("metropolis", False) else "SGLD"


def to_dataset(rows: list[dict], config: dict) -> xr.Dataset:
    data_vars = row_variables(rows, VARIABLES, "case")
    for name, long_name in (("widths", "layer widths H_0-...-H_L"), ("kind", "true parameter: singular | less_singular")):
        data_vars[name] = xr.Variable("case", np.array([r[name] for r in rows], dtype=object), {"long_name": long_name})
    ds = xr.Dataset(data_vars, coords={"case": [r["case"] for r in rows]})
    ds.attrs.update(provenance_attrs("dln_validation", config))
    return ds


def summary(ds: xr.Dataset) -> dict:
    """Over the singular cases: their count, the median and max |relative error| (and the case of the
    max), how many the calibration's length rule did not settle, and the max over the settled ones."""
    sing = ds.where(ds["kind"] == "singular", drop=True)
    err = np.abs(sing["rel_error"].values.astype(float))
    settled = sing["converged"].values.astype(float) == 1
    worst = str(sing["widths"].values[int(np.argmax(err))]) if err.size else ""
    return dict(n_singular=int(err.size), median_abs_rel_error=float(np.median(err)) if err.size else float("nan"),
                max_abs_rel_error=float(np.max(err)) if err.size else float("nan"), worst=worst,
                n_unsettled=int((~settled).sum()),
                max_abs_rel_error_settled=float(np.max(err[settled])) if settled.any() else float("nan"))


def _summary_line(s: dict) -> str:
    """The panel's numbers against issue 10's targets (median <= 5%, max <= 10%)."""
    settled = (f"max {100 * s['max_abs_rel_error_settled']:.1f}% over the settled ones"
               if np.isfinite(s["max_abs_rel_error_settled"]) else "none settled")
    return (f"median |relative error| {100 * s['median_abs_rel_error']:.1f}% (target <= 5%), max "
            f"{100 * s['max_abs_rel_error']:.1f}% ({s['worst']}; target <= 10%); {s['n_unsettled']} not settled by the "
            f"calibration's length rule (converged: no), {settled}")


def markdown_table(ds: xr.Dataset) -> str:
    mala = sampler_name(ds) == "MALA"  # no bias check is run; the acceptance column is the realised rate
    lines = []
    for kind, title in (("singular", "Every layer of rank r (validation: local = Aoyagi lambda)"),
                        ("less_singular", "Less singular true parameters (one rank-r layer; expected >= lambda)")):
        sub = [i for i in range(ds.sizes["case"]) if ds["kind"].values[i] == kind]
        if not sub:
            continue
        lines += [f"### {title}", "",
                  "| widths | r | d | lambda | lambda_hat +- std | rel. error | eps | gamma | steps | eps x steps | "
                  f"bias check | converged | {'accepted' if mala else 'MALA'} | R-hat |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for i in sub:
            v = {k: ds[k].values[i] for k in ds.data_vars}
            lines.append(
                f"| {v['widths']} | {int(v['rank'])} | {int(v['n_parameters'])} | {float(v['lambda_theory']):.2f} | "
                f"{float(v['llc_mean']):.2f} +- {float(v['llc_std']):.2f} | {100 * float(v['rel_error']):+.1f}% | "
                f"{float(v['step_size']):.2g} | {float(v.get('localization', 1.0)):g} | {int(v['num_steps'])} | {float(v['step_size']) * int(v['num_steps']):.3g} | "
                f"{'not run (MALA)' if mala else 'ok' if int(v.get('bias_consistent', 0)) else 'not confirmed'} | "
                f"{'yes' if int(v['converged']) else 'no'} | "
                f"{float(v['mala_acceptance']):.3f} | {float(v['rhat']):.3f} |")
        lines.append("")
    s = summary(ds)
    lines.append(f"Singular cases: {s['n_singular']}; {_summary_line(s)}.")
    return "\n".join(lines) + "\n"


def scatter_figure(ds: xr.Dataset):
    """Estimated against exact learning coefficient, +- 1 sd over chains, the identity and the +-10% band
    of issue 10's target; cases the calibration's length rule did not settle drawn open."""
    from slt_superposition import figure_style as fs

    with fs.style():
        fig, axes = fs.subplots(1, 1, width=fs.COLUMN, panel_aspect=0.9)
        ax = axes[0, 0]
        lam = ds["lambda_theory"].values.astype(float)
        settled = ds["converged"].values.astype(float) == 1
        for kind, style in (("singular", dict(fmt="o", color=fs.PALETTE[0])),
                            ("less_singular", dict(fmt="s", color=fs.PALETTE[1]))):
            for ok, face, suffix in ((True, style["color"], ""), (False, "white", ", not settled")):
                m = (ds["kind"].values == kind) & (settled == ok)
                if m.any():
                    ax.errorbar(lam[m], ds["llc_mean"].values[m], yerr=ds["llc_std"].values[m], ms=3.5, mfc=face,
                                label=kind.replace("_", " ") + " true parameter" + suffix, **style)
        top = max(lam.max(), np.nanmax(ds["llc_mean"].values)) * 1.1
        xs = np.array([0, top])
        ax.plot(xs, xs, "-", color=fs.REFERENCE, lw=0.8, label="$\\hat\\lambda = \\lambda$")
        ax.fill_between(xs, 0.9 * xs, 1.1 * xs, color="0.88", lw=0, label="$\\pm$10% of $\\lambda$")
        ax.set_xlabel("Aoyagi's exact learning coefficient $\\lambda$")
        ax.set_ylabel(f"$\\hat\\lambda$ (calibrated {sampler_name(ds)}, $\\pm$ 1 sd over chains)")
        ax.set_title("Deep linear networks: estimated against exact")
        ax.legend(loc="upper left")
    return fig


def scatter(ds: xr.Dataset, path: Path) -> Path:
    """Write the `scatter_figure` to `path`."""
    from slt_superposition import figure_style as fs

    return fs.save(scatter_figure(ds), path)


def write_outputs(ds: xr.Dataset, out_dir: Path, size: str, only=None, options: dict | None = None) -> None:
    """The dataset, table, figure and report.md; `options`: the `--set` fields the run was given
    (its report's command line carries them)."""
    save_dataset(ds, out_dir / "dln_validation.nc")
    table = markdown_table(ds)
    (out_dir / "dln_validation.md").write_text(table)
    scatter(ds, out_dir / "dln_validation.png")
    (out_dir / "report.md").write_text(
        header(f"DLN validation: calibrated {sampler_name(ds)} LLC vs Aoyagi's lambda", "dln-validation", out_dir, size,
               finding(ds), only, **(options or {}))
        + f"{table}\n![estimated against exact](dln_validation.png)\n\nPer-case calibration sweeps in calibration/.\n")


def finding(ds: xr.Dataset) -> str:
    """One paragraph: how far the calibrated estimates are from Aoyagi's lambda."""
    s = summary(ds)
    text = (f"On {s['n_singular']} deep linear networks whose true parameter is as singular as its rank allows, the "
            f"calibrated {sampler_name(ds)} estimate against Aoyagi's exact learning coefficient: {_summary_line(s)}.")
    less = ds.where(ds["kind"] == "less_singular", drop=True)
    if less.sizes.get("case", 0):
        above = int((less["llc_mean"].values >= less["lambda_theory"].values).sum())
        text += (f" At {less.sizes['case']} less singular true parameters, where the local coefficient may exceed the "
                 f"global one, {above} of {less.sizes['case']} estimates are at or above lambda.")
    return text


MAX_ACCEPTANCE_DROP = 0.12  # calibrate's setting for this panel (a --set field)


def run(out_dir: Path, *, size: str = "default", progress: bool = True, only: Sequence[str] | None = None,
        max_acceptance_drop: float = MAX_ACCEPTANCE_DROP, metropolis: bool = False) -> xr.Dataset:
    """Run the DLN panel (quick: a small subset; `only`: the cases of these names) and write outputs.

    Every case is a chunk of a resumable sweep under out_dir/cases (`registry.run_cases`).
    `max_acceptance_drop` is passed to `calibrate` (the one calibration setting studied here);
    `metropolis`: Metropolis-adjusted chains (calibrated and estimated so).
    """
    require(isinstance(metropolis, bool), f"metropolis must be True or False, got {metropolis!r}")
    quick = size == "quick"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = all_cases(quick)
    max_steps = 40_000 if quick else MAX_STEPS
    config = dict(quick=quick, cases=[case_name(*c) for c in cases], n=N_SAMPLES, batch_size=None,
                  data="dln_compressed_data",
                  num_chains=NUM_CHAINS, seed=SEED, max_steps=max_steps, localization=LOCALIZATION, nbeta="n/log n",
                  max_acceptance_drop=max_acceptance_drop,
                  # recorded only when set, so that folders of the plain-SGLD panel still resume
                  **({"metropolis": True} if metropolis else {}))

    def compute(case) -> xr.Dataset:
        row = run_case(*case, max_steps=max_steps, calibration_dir=out_dir / "calibration", progress=progress,
                       max_acceptance_drop=max_acceptance_drop, metropolis=metropolis)
        if progress:
            print(f"{row['case']}: lambda {row['lambda_theory']:.2f} lambda_hat {row['llc_mean']:.2f} "
                  f"({100 * row['rel_error']:+.1f}%) eps {row['step_size']:.2g} steps {row['num_steps']} "
                  f"converged {row['converged']}", flush=True)
        return to_dataset([row], config)

    ds = run_cases("dln-validation", out_dir, config, cases, [case_name(*c) for c in cases], compute, only=only,
                   progress=progress)
    options = {**({"max_acceptance_drop": max_acceptance_drop} if max_acceptance_drop != MAX_ACCEPTANCE_DROP else {}),
               **({"metropolis": True} if metropolis else {})}
    write_outputs(ds, out_dir, size, only, options)
    return ds
