"""LLC of the regular k-gon critical points of the Chen et al. (2023) TMS (c = 6, r = 2).

Data x = mu e_i (i uniform over 6 features, mu ~ U[0, 1]), n = 1e5, loss E||x - f(x)||^2
(summed over features), f(x) = ReLU(W^T W x + b). For each k-gon: start from the exact
population critical point (l*, b*) of `slt_superposition.theory`, refine it on the empirical
loss by full-batch gradient descent, count the Hessian's positive eigenvalues there, then
estimate the LLC with one fixed protocol (`PROTOCOL`): nbeta = n / log n, localization 1,
batch 500, and a step-size series at equal sampler time eps x steps. The reported estimate is
the one at the smallest step size; the linear eps -> 0 extrapolation through the two smallest
step sizes is reported next to it as the check on the discretisation + minibatch bias (both
are first order in eps). Why this protocol: docs/experiments/kgon_llc.md.

The 5-gon has a spare column at W_5 = 0. With its bias b_5 = 0 the point is a saddle (growing
W_5 lowers the loss); with b_5 < 0 a minimum whose three spare parameters (W_5, b_5) are
exactly flat while |W_5|^2 < -b_5 (14 positive Hessian eigenvalues, LLC 7). Both are run.

`--bias-study` instead measures, at the refined 6-gon, how step size, batch size and localization
move the estimate (`BIAS_STUDY`: the table "Why the old estimate overshot" of the docs).

    python -m experiments.kgon_llc --out results/kgon_llc [--quick]
    python -m experiments.kgon_llc --out results/kgon_llc --bias-study
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from analysis.weight_basis import hessian_spectrum
from slt_superposition.experiments import command_line, module_command, row_variables
from slt_superposition.io import save_dataset
from slt_superposition.llc import SGLDConfig, default_nbeta, estimate_llc
from slt_superposition.provenance import provenance_attrs
from slt_superposition.theory import KGON_N_FEATURES, kgon_critical_point, kgon_params
from toy_models.data import high_sparsity_limit
from toy_models.tms import tms_loss

N_SAMPLES = 100_000
SEED = 0
# (k, spare bias, localization or None for the protocol's): the 6-gon has no spare column; the
# last row is a sensitivity check (devinterp's usual gamma 100 keeps the spare column in its flat
# region, at the price of pulling the curved directions in: see the docs)
CASES = [(6, 0.0, None), (5, 0.0, None), (5, -0.5, None), (5, -0.5, 100.0)]
# One protocol for every k-gon. Step sizes descending; each runs for `sampler_time` / eps
# steps (half burn-in), so every step size explores the same sampler time.
PROTOCOL = dict(localization=1.0, batch_size=500, step_sizes=(3.16e-5, 1e-5, 3.16e-6), sampler_time=0.25,
                num_chains=8)
QUICK = dict(PROTOCOL, step_sizes=(1e-5, 3.16e-6), sampler_time=0.2, num_chains=4)
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


def refine(params, x, *, steps: int = 3000, learning_rate: float = 0.1):
    """Full-batch gradient descent on the empirical loss from `params`; returns (params, grad norm)."""
    grad = jax.grad(kgon_loss)

    def body(p, _):
        return jax.tree_util.tree_map(lambda a, g: a - learning_rate * g, p, grad(p, x)), None

    params, _ = jax.jit(lambda p: jax.lax.scan(body, p, None, length=steps))(params)
    g = grad(params, x)
    return params, float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree_util.tree_leaves(g))))


def refined_kgon(k: int, spare_bias: float, *, seed: int = SEED):
    """Data (n = 1e5) and the k-gon refined on it, from `seed`.

    Returns (x, critical point, refined params, grad norm there, key for the SGLD estimates).
    """
    k_data, k_est = jax.random.split(jax.random.key(seed))
    x = high_sparsity_limit(k_data, N_SAMPLES, KGON_N_FEATURES)
    cp = kgon_critical_point(k)
    start = {name: jnp.asarray(v) for name, v in kgon_params(k, cp.length, cp.bias, spare_bias=spare_bias).items()}
    params, grad_norm = refine(start, x)
    return x, cp, params, grad_norm, k_est


def quadratic_llc(hessian_eigenvalues, *, step_size: float, localization: float) -> float:
    """E[nbeta (L_n - L_n(w*))] of full-batch SGLD (nbeta = n / log n) on the quadratic approximation of L_n.

    The Euler chain on a direction of curvature a = nbeta h + gamma has stationary variance
    1 / (a (1 - eps a / 4)), so each direction contributes nbeta h / (2 a (1 - eps a / 4)): 1/2 as
    eps, gamma -> 0; more with eps (discretisation), less with gamma (localization). Eigenvalues
    below `EIGEN_FLOOR` (the flat rotation) contribute nothing.
    """
    h = np.asarray(hessian_eigenvalues, np.float64)
    h, nbeta = h[h > EIGEN_FLOOR], default_nbeta(N_SAMPLES)
    a = nbeta * h + localization
    return float(np.sum(0.5 * nbeta * h / (a * (1 - step_size * a / 4))))


def llc_and_se(est: xr.Dataset) -> tuple[float, float]:
    """LLC mean of an `estimate_llc` result and its standard error over the non-divergent chains."""
    per_chain = est["llc_per_chain"].values[~est["diverged"].values]
    se = float(per_chain.std(ddof=1) / np.sqrt(per_chain.size)) if per_chain.size > 1 else np.nan
    return float(est["llc_mean"]), se


def run_case(k: int, spare_bias: float, *, seed: int = SEED, localization: float = 1.0, batch_size: int | None = 500,
             step_sizes=(1e-5, 3.16e-6), sampler_time: float = 0.2, num_chains: int = 4) -> dict:
    """Refine the k-gon on n = 1e5 samples and estimate its LLC at each step size (equal sampler time).

    Returns a dict of scalars (see `VARIABLES`) plus `llc_by_step`, `llc_se_by_step`: (step_size,).
    """
    x, cp, params, grad_norm, k_est = refined_kgon(k, spare_bias, seed=seed)
    eig = hessian_spectrum(kgon_loss, params, x, method="exact").values
    t0 = time.perf_counter()
    step_sizes = sorted(step_sizes, reverse=True)
    llc, se, runs = [], [], []
    for eps in step_sizes:
        steps = int(round(sampler_time / eps))
        config = SGLDConfig(step_size=eps, localization=localization, num_chains=num_chains, num_steps=steps,
                            num_burnin=steps // 2, batch_size=batch_size, trace_every=max(1, steps // 200))
        est = estimate_llc(kgon_loss, params, x, config=config, key=k_est)
        mean, err = llc_and_se(est)
        llc.append(mean)
        se.append(err)
        runs.append(est)
    # lambda(eps) = lambda0 + c eps through the two smallest step sizes
    (e_hi, e_lo), (l_hi, l_lo) = step_sizes[-2:], llc[-2:]
    llc0 = l_lo - (l_hi - l_lo) * e_lo / (e_hi - e_lo)
    final = runs[-1]
    norms = np.linalg.norm(np.asarray(params["W"]), axis=0)
    theory = float(cp.theoretical_llc)
    return dict(
        localization=localization,
        case=f"{k}-gon_spare-bias{spare_bias:g}" if k < KGON_N_FEATURES else f"{k}-gon",
        k=k, spare_bias=spare_bias, length_theory=cp.length, bias_theory=cp.bias,
        population_loss=cp.loss, empirical_loss=float(kgon_loss(params, x)), grad_norm=grad_norm,
        length_refined=float(norms[:k].mean()), bias_refined=float(np.asarray(params["b"])[:k].mean()),
        n_positive_eigen=int((eig > EIGEN_FLOOR).sum()), n_negative_eigen=int((eig < -EIGEN_FLOOR).sum()),
        llc_theory=theory, llc_mean=llc[-1], llc_se=se[-1], rel_error=(llc[-1] - theory) / theory,
        llc_extrapolated=llc0, rel_error_extrapolated=(llc0 - theory) / theory,
        final_step_size=step_sizes[-1], num_steps=int(round(sampler_time / step_sizes[-1])),
        llc_min_chain=float(final["llc_per_chain"].min()), llc_max_chain=float(final["llc_per_chain"].max()),
        mala_acceptance=float(final["mala_acceptance"].mean()), frac_below_init=float(final["frac_below_init"].mean()),
        n_diverged=int(final["n_diverged"]), seconds=time.perf_counter() - t0,
        llc_by_step=np.array(llc), llc_se_by_step=np.array(se), step_sizes=np.array(step_sizes),
    )


VARIABLES = {
    "k": ("number of polygon vertices", "1"),
    "localization": ("SGLD localization gamma", "1"),
    "spare_bias": ("bias of the spare (unused) features", "1"),
    "length_theory": ("l* of the population loss", "1"),
    "bias_theory": ("b* of the population loss", "1"),
    "population_loss": ("exact population loss at (l*, b*)", "loss"),
    "empirical_loss": ("empirical loss L_n at the refined point", "loss"),
    "grad_norm": ("||grad L_n|| at the refined point", "1"),
    "length_refined": ("mean column length of the k active features after refinement", "1"),
    "bias_refined": ("mean bias of the k active features after refinement", "1"),
    "n_positive_eigen": (f"Hessian eigenvalues of L_n above {EIGEN_FLOOR:g} at the refined point", "1"),
    "n_negative_eigen": (f"Hessian eigenvalues of L_n below -{EIGEN_FLOOR:g} at the refined point", "1"),
    "llc_theory": ("theoretical LLC (Chen et al. 2023)", "1"),
    "llc_mean": ("LLC estimate at the smallest step size (mean over chains)", "1"),
    "llc_se": ("standard error of llc_mean over chains", "1"),
    "rel_error": ("(llc_mean - llc_theory) / llc_theory", "1"),
    "llc_extrapolated": ("linear eps -> 0 extrapolation through the two smallest step sizes", "1"),
    "rel_error_extrapolated": ("(llc_extrapolated - llc_theory) / llc_theory", "1"),
    "final_step_size": ("smallest step size of the series (the one llc_mean uses)", "1"),
    "num_steps": ("chain length at that step size (half burn-in)", "steps"),
    "llc_min_chain": ("smallest per-chain LLC at that step size", "1"),
    "llc_max_chain": ("largest per-chain LLC at that step size", "1"),
    "mala_acceptance": ("mean MALA acceptance proxy at that step size", "1"),
    "frac_below_init": ("fraction of post-burn-in steps with loss below L_n(w*)", "1"),
    "n_diverged": ("divergent chains", "chains"),
    "seconds": ("wall time of the SGLD estimates", "s"),
}


def to_dataset(rows: list[dict], settings: dict) -> xr.Dataset:
    """Rows of `run_case` -> Dataset with dims (case,) and (case, step_size)."""
    data = row_variables(rows, VARIABLES, "case")
    data["llc_by_step"] = xr.Variable(("case", "step_size"), np.stack([r["llc_by_step"] for r in rows]),
                                      {"long_name": "LLC estimate at each step size (equal sampler time)", "units": "1"})
    data["llc_se_by_step"] = xr.Variable(("case", "step_size"), np.stack([r["llc_se_by_step"] for r in rows]),
                                         {"long_name": "standard error of llc_by_step over chains", "units": "1"})
    coords = {"case": [r["case"] for r in rows],
              "step_size": xr.Variable("step_size", rows[0]["step_sizes"], {"long_name": "SGLD step size eps"})}
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update(provenance_attrs("kgon_llc", settings))
    return ds


def markdown_table(ds: xr.Dataset) -> str:
    eps = ds["step_size"].values
    lines = ["| case | pop. loss | L_n refined | Hessian +/- | LLC theory | "
             + " | ".join(f"LLC eps={e:.3g}" for e in eps) + " | eps->0 extrap. | rel. error (smallest eps) | "
             "chains min..max | frac below init |",
             "|---" * (9 + len(eps)) + "|"]
    for i, case in enumerate(ds["case"].values):
        v = {name: float(ds[name].values[i]) for name in VARIABLES}
        by_step = " | ".join(f"{m:.2f} +- {s:.2f}" for m, s in zip(ds["llc_by_step"].values[i],
                                                                  ds["llc_se_by_step"].values[i]))
        lines.append(f"| {case} | {v['population_loss']:.5f} | {v['empirical_loss']:.5f} | "
                     f"{int(v['n_positive_eigen'])}/{int(v['n_negative_eigen'])} | {v['llc_theory']:g} | {by_step} | "
                     f"{v['llc_extrapolated']:.2f} | {100 * v['rel_error']:+.1f}% | "
                     f"{v['llc_min_chain']:.2f}..{v['llc_max_chain']:.2f} | {v['frac_below_init']:.2f} |")
    return "\n".join(lines) + "\n"


def run(out_dir: Path, *, quick: bool = False, progress: bool = True, command: str | None = None) -> xr.Dataset:
    """Estimate the LLC of each k-gon case (quick: the 6-gon only, fewer chains); write outputs.

    `command`: what report.md names as the command (default: the `reproduce` one)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = CASES[:1] if quick else CASES
    protocol = QUICK if quick else PROTOCOL
    rows = []
    for k, spare, gamma in cases:
        row = run_case(k, spare, **dict(protocol, localization=gamma or protocol["localization"]))
        if gamma:
            row["case"] += f"_gamma{gamma:g}"
        if progress:
            print(f"{row['case']}: LLC {row['llc_mean']:.2f} +- {row['llc_se']:.2f} vs {row['llc_theory']:g} "
                  f"({100 * row['rel_error']:+.1f}%), eps->0 {row['llc_extrapolated']:.2f} [{row['seconds']:.0f}s]",
                  flush=True)
        rows.append(row)
    ds = to_dataset(rows, dict(quick=quick, cases=cases, n=N_SAMPLES, seed=SEED, refine="3000 full-batch GD steps, "
                               "lr 0.1", nbeta="n / log n", **{k: list(v) if isinstance(v, tuple) else v
                                                               for k, v in protocol.items()}))
    save_dataset(ds, out_dir / "kgon_llc.nc")
    table = markdown_table(ds)
    (out_dir / "kgon_llc.md").write_text(table)
    (out_dir / "report.md").write_text("# LLC of the Chen et al. k-gons (c = 6, r = 2)\n\n"
                                       f"Made by: `{command or command_line('kgon-llc', out_dir, quick)}`\n\n{table}")
    return ds


BIAS_VARIABLES = {
    "step_size": ("SGLD step size eps", "1"),
    "batch_size": (f"minibatch size ({N_SAMPLES} = full batch: exact L_n, no minibatch noise)", "samples"),
    "num_steps": ("chain length (half burn-in)", "steps"),
    "localization": ("SGLD localization gamma", "1"),
    "llc_mean": ("LLC estimate (mean over chains)", "1"),
    "llc_se": ("standard error of llc_mean over chains", "1"),
    "llc_quadratic": ("full-batch SGLD expectation on the quadratic approximation of L_n (quadratic_llc)", "1"),
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
    """The bias study as a markdown table: eps | batch | steps | gamma | LLC +- SE | quadratic prediction."""
    lines = ["| eps | batch | steps | gamma | LLC +- SE | quadratic prediction (full batch) |", "|---" * 6 + "|"]
    for i in range(ds.sizes["row"]):
        v = {name: ds[name].values[i] for name in BIAS_VARIABLES}
        batch = f"full ({N_SAMPLES})" if v["batch_size"] == N_SAMPLES else f"{v['batch_size']}"
        lines.append(f"| {v['step_size']:.3g} | {batch} | {v['num_steps']} | {v['localization']:g} | "
                     f"{v['llc_mean']:.2f} +- {v['llc_se']:.2f} | {v['llc_quadratic']:.2f} |")
    return "\n".join(lines) + "\n"


def bias_study(out_dir: Path, *, command: str = "", progress: bool = True) -> xr.Dataset:
    """Estimate the LLC of the refined 6-gon at each `BIAS_STUDY` setting; write bias_study.nc / .md.

    Every row uses the same key (as each step size of `run_case`), so rows with equal eps and steps
    share their chains' SGLD noise. Next to each estimate: `quadratic_llc` at the row's eps and gamma.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x, _, params, _, k_est = refined_kgon(6, 0.0)
    eig = hessian_spectrum(kgon_loss, params, x, method="exact").values
    rows = []
    for eps, batch, steps, gamma in BIAS_STUDY:
        config = SGLDConfig(step_size=eps, localization=gamma, num_chains=BIAS_STUDY_CHAINS, num_steps=steps,
                            num_burnin=steps // 2, batch_size=batch, trace_every=max(1, steps // 200))
        t0 = time.perf_counter()
        est = estimate_llc(kgon_loss, params, x, config=config, key=k_est)
        mean, se = llc_and_se(est)
        rows.append(dict(step_size=eps, batch_size=batch or N_SAMPLES, num_steps=steps, localization=gamma,
                         llc_mean=mean, llc_se=se, llc_quadratic=quadratic_llc(eig, step_size=eps, localization=gamma),
                         n_diverged=int(est["n_diverged"]), seconds=time.perf_counter() - t0))
        if progress:
            print(f"eps {eps:g} batch {batch or 'full'} steps {steps} gamma {gamma:g}: LLC {mean:.2f} +- {se:.2f} "
                  f"[{rows[-1]['seconds']:.0f}s]", flush=True)
    ds = bias_dataset(rows, dict(k=6, n=N_SAMPLES, seed=SEED, refine="3000 full-batch GD steps, lr 0.1",
                                 nbeta="n / log n", num_chains=BIAS_STUDY_CHAINS, burnin="half",
                                 rows=[list(r) for r in BIAS_STUDY]))
    save_dataset(ds, out_dir / "bias_study.nc")
    table = bias_table(ds)
    (out_dir / "bias_study.md").write_text("# Bias study at the refined 6-gon (n = 1e5, 4 chains, burn-in half)\n\n"
                                           f"Made by: `{command}`\n\n{table}")
    return ds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="LLC of the regular k-gon critical points of the Chen et al. TMS.")
    parser.add_argument("--out", type=Path, default=Path("results/kgon_llc"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="the 6-gon only, two step sizes, 4 chains")
    parser.add_argument("--bias-study", action="store_true",
                        help="instead of the k-gon cases: the 6-gon LLC at each (step size, batch, steps, gamma) of "
                             "BIAS_STUDY (4 chains); writes bias_study.nc and bias_study.md")
    args = parser.parse_args(argv)
    command = module_command("experiments.kgon_llc", argv)
    if args.bias_study:
        if args.quick:
            parser.error("--quick does not apply to --bias-study")
        print(bias_table(bias_study(args.out, command=command)))
    else:
        print(markdown_table(run(args.out, quick=args.quick, command=command)))


if __name__ == "__main__":
    main()
