"""LLC of the regular k-gon critical points of the Chen et al. (2023) TMS (c = 6, r = 2).

Data x = mu e_i (i uniform over 6 features, mu ~ U[0, 1]), n = 1e5, loss E||x - f(x)||^2
(summed over features), f(x) = ReLU(W^T W x + b). For each k-gon: start from the exact
population critical point (l*, b*) of `slt_superposition.theory`, refine it on the empirical
loss by full-batch gradient descent, then `calibrate` + `estimate_llc` (nbeta = n / log n,
localization 1, batch 500), and compare with the paper's theoretical LLC (5-gon 7, 6-gon 8.5).

The 5-gon has a spare column at W_5 = 0. With its bias b_5 = 0 the point is a saddle (growing
W_5 lowers the loss), with b_5 < 0 a degenerate minimum whose flat directions lead, once
|W_5|^2 > -b_5, downhill; both variants are run and reported as found.

    python -m experiments.kgon_llc --out results/kgon_llc [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from slt_superposition.calibration import calibrate
from slt_superposition.io import save_dataset
from slt_superposition.llc import estimate_llc
from slt_superposition.provenance import provenance_attrs
from slt_superposition.theory import KGON_N_FEATURES, kgon_critical_point, kgon_params
from toy_models.data import high_sparsity_limit
from toy_models.tms import tms_loss

N_SAMPLES = 100_000
BATCH_SIZE = 500
NUM_CHAINS = 4
SEED = 0
# (k, spare bias): the 6-gon has no spare column
CASES = [(6, 0.0), (5, 0.0), (5, -0.5)]


def kgon_loss(params, x):
    """Mean over the batch of ||x - ReLU(W^T W x + b)||^2 (`tms_loss` with unit importance)."""
    return tms_loss(params, x)


def refine(params, x, *, steps: int = 500, learning_rate: float = 0.1):
    """Full-batch gradient descent on the empirical loss from `params`; returns (params, grad norm)."""
    grad = jax.grad(kgon_loss)

    def body(p, _):
        return jax.tree_util.tree_map(lambda a, g: a - learning_rate * g, p, grad(p, x)), None

    params, _ = jax.jit(lambda p: jax.lax.scan(body, p, None, length=steps))(params)
    g = grad(params, x)
    return params, float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree_util.tree_leaves(g))))


def run_case(k: int, spare_bias: float, *, seed: int = SEED, max_steps: int = 80_000, out_dir: Path | None = None,
             progress: bool = False, **calibrate_options) -> dict:
    key = jax.random.key(seed)
    k_data, k_cal, k_est = jax.random.split(key, 3)
    x = high_sparsity_limit(k_data, N_SAMPLES, KGON_N_FEATURES)
    cp = kgon_critical_point(k)
    start = {name: jnp.asarray(v) for name, v in kgon_params(k, cp.length, cp.bias, spare_bias=spare_bias).items()}
    params, grad_norm = refine(start, x)
    t0 = time.perf_counter()
    config, cal = calibrate(kgon_loss, params, x, key=k_cal, batch_size=BATCH_SIZE, num_chains=NUM_CHAINS,
                            max_steps=max_steps, progress=progress, **calibrate_options)
    est = estimate_llc(kgon_loss, params, x, config=config, key=k_est)
    name = f"{k}-gon_spare-bias{spare_bias:g}" if k < KGON_N_FEATURES else f"{k}-gon"
    if out_dir is not None:
        from slt_superposition.plots import plot_calibration

        save_dataset(cal, out_dir / "calibration" / f"{name}.nc")
        plot_calibration(cal, out_dir / "calibration" / name)
    norms = np.linalg.norm(np.asarray(params["W"]), axis=0)
    return dict(
        case=name, k=k, spare_bias=spare_bias, length_theory=cp.length, bias_theory=cp.bias,
        population_loss=cp.loss, empirical_loss=float(kgon_loss(params, x)), grad_norm=grad_norm,
        length_refined=float(norms[:k].mean()), bias_refined=float(np.asarray(params["b"])[:k].mean()),
        llc_theory=float(cp.theoretical_llc), llc_mean=float(est["llc_mean"]), llc_std=float(est["llc_std"]),
        rel_error=(float(est["llc_mean"]) - cp.theoretical_llc) / cp.theoretical_llc,
        step_size=config.step_size, num_steps=config.num_steps, converged=int(cal.attrs["converged"]),
        mala_acceptance=float(est["mala_acceptance"].mean()), frac_below_init=float(est["frac_below_init"].mean()),
        n_diverged=int(est["n_diverged"]), seconds=time.perf_counter() - t0,
    )


VARIABLES = {
    "k": ("number of polygon vertices", "1"),
    "spare_bias": ("bias of the spare (unused) features", "1"),
    "length_theory": ("l* of the population loss", "1"),
    "bias_theory": ("b* of the population loss", "1"),
    "population_loss": ("exact population loss at (l*, b*)", "loss"),
    "empirical_loss": ("empirical loss L_n at the refined point", "loss"),
    "grad_norm": ("||grad L_n|| at the refined point", "1"),
    "length_refined": ("mean column length of the k active features after refinement", "1"),
    "bias_refined": ("mean bias of the k active features after refinement", "1"),
    "llc_theory": ("theoretical LLC (Chen et al. 2023)", "1"),
    "llc_mean": ("LLC estimate (mean over chains)", "1"),
    "llc_std": ("standard deviation of the LLC over chains", "1"),
    "rel_error": ("(llc_mean - llc_theory) / llc_theory", "1"),
    "step_size": ("step size chosen by calibrate", "1"),
    "num_steps": ("chain length chosen by calibrate (half burn-in)", "steps"),
    "converged": ("calibrate found the estimate stable under doubling the chain (1) or not (0)", "1"),
    "mala_acceptance": ("mean MALA acceptance proxy", "1"),
    "frac_below_init": ("fraction of post-burn-in steps with loss below L_n(w*)", "1"),
    "n_diverged": ("divergent chains", "chains"),
    "seconds": ("wall time of calibrate + estimate", "s"),
}


def markdown_table(ds: xr.Dataset) -> str:
    lines = ["| case | l* | b* | pop. loss | L_n refined | LLC theory | LLC estimate +- std | rel. error | eps | "
             "steps | converged | frac below init |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, case in enumerate(ds["case"].values):
        v = {name: float(ds[name].values[i]) for name in VARIABLES}
        lines.append(f"| {case} | {v['length_theory']:.5f} | {v['bias_theory']:.5f} | {v['population_loss']:.5f} | "
                     f"{v['empirical_loss']:.5f} | {v['llc_theory']:g} | {v['llc_mean']:.2f} +- {v['llc_std']:.2f} | "
                     f"{100 * v['rel_error']:+.1f}% | {v['step_size']:.2g} | {int(v['num_steps'])} | "
                     f"{'yes' if v['converged'] else 'no'} | {v['frac_below_init']:.2f} |")
    return "\n".join(lines) + "\n"


def run(out_dir: Path, *, quick: bool = False, progress: bool = True, max_acceptance_drop: float = 0.03) -> xr.Dataset:
    """Estimate the LLC of each k-gon case (quick: the 6-gon only, shorter chains); write outputs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = CASES[:1] if quick else CASES
    max_steps = 40_000 if quick else 80_000
    rows = []
    for k, spare in cases:
        row = run_case(k, spare, max_steps=max_steps, out_dir=out_dir, progress=progress,
                       max_acceptance_drop=max_acceptance_drop)
        print(f"{row['case']}: LLC {row['llc_mean']:.2f} +- {row['llc_std']:.2f} vs {row['llc_theory']:g} "
              f"({100 * row['rel_error']:+.1f}%) [{row['seconds']:.0f}s]", flush=True)
        rows.append(row)
    ds = xr.Dataset({name: xr.Variable("case", np.array([r[name] for r in rows]), {"long_name": ln, "units": u})
                     for name, (ln, u) in VARIABLES.items()}, coords={"case": [r["case"] for r in rows]})
    ds.attrs.update(provenance_attrs("kgon_llc", dict(quick=quick, cases=cases, n=N_SAMPLES, batch_size=BATCH_SIZE,
                                                      num_chains=NUM_CHAINS, seed=SEED, max_steps=max_steps,
                                                      refine="500 full-batch GD steps, lr 0.1",
                                                      max_acceptance_drop=max_acceptance_drop)))
    save_dataset(ds, out_dir / "kgon_llc.nc")
    table = markdown_table(ds)
    (out_dir / "kgon_llc.md").write_text(table)
    (out_dir / "report.md").write_text("# LLC of the Chen et al. k-gons (c = 6, r = 2)\n\n"
                                       f"Made by: `python -m experiments.kgon_llc {' '.join(sys.argv[1:])}`\n\n{table}")
    return ds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="LLC of the regular k-gon critical points of the Chen et al. TMS.")
    parser.add_argument("--out", type=Path, default=Path("results/kgon_llc"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="the 6-gon only, shorter chains")
    parser.add_argument("--max-acceptance-drop", type=float, default=0.03,
                        help="calibrate's allowed MALA acceptance drop below the small-step plateau (default 0.03)")
    args = parser.parse_args(argv)
    print(markdown_table(run(args.out, quick=args.quick, max_acceptance_drop=args.max_acceptance_drop)))


if __name__ == "__main__":
    main()
