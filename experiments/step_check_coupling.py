"""The step-size check with and without coupling, on the refined 6-gon (Chen et al. class).

For each step size, the stored check (`slt_superposition.checks`) compares the chain at eps with
the chain at eps / 3 for 3x the steps. Coupled (`slt_superposition.coupled`: one Brownian path,
shared minibatches) against independent (the two chains from different keys): the relative difference, its standard error, and the quadratic prediction of
the same difference from the Hessian of L_n (`curvature.quadratic_llc` at eps and eps / 3).

    slt-superposition reproduce step-check-coupling --out results/step_check_coupling
    # 4 chains, 500-step checks, n = 10^4

Writes step_check_coupling.nc, step_check_coupling.png and report.md, one row per step size; the table in
docs/calibration.md comes from this command.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from experiments.kgon_llc import kgon_loss, refined_kgon
from experiments.registry import header, row_variables
from slt_superposition import figure_style as fs
from slt_superposition.checks import relative_difference
from slt_superposition.coupled import DIFF_BLOCKS, sample_coupled
from slt_superposition.curvature import hessian_eigenvalues, quadratic_llc
from slt_superposition.diagnostics import difference_se
from slt_superposition.io import save_dataset, write_text
from slt_superposition.markdown import table
from slt_superposition.llc import SGLDConfig, chain_settings, chain_shape, default_nbeta, sample_chains
from slt_superposition.provenance import provenance_attrs

STEP_SIZES = (1e-3, 3.16e-4, 1e-4, 3.16e-5)


def study(n: int = 10_000, chains: int = 4, steps: int = 500, batch: int = 500, seed: int = 0) -> list[dict]:
    x, params, _, _ = refined_kgon(6, 0, n_samples=n, seed=seed)
    one = jax.tree_util.tree_map(lambda a: a[None], params)
    nbeta = default_nbeta(n)
    eigs = np.asarray(hessian_eigenvalues(kgon_loss, params, x))
    d = eigs.size
    rows = []
    for eps in STEP_SIZES:
        config = SGLDConfig(step_size=eps, localization=1.0, nbeta=nbeta, num_chains=chains, num_steps=steps,
                            num_burnin=steps // 2, batch_size=batch, trace_every=max(1, steps // 50))
        settings = chain_settings(config, nbeta, 1)
        key = jax.random.split(jax.random.key(seed + 1), 1)
        pair = sample_coupled(kgon_loss, one, x, key, settings, chain_shape(config, n, d), data_batched=False)
        ok = ~np.asarray(pair["diverged"], bool)
        rel, _, fine = relative_difference(np.asarray(pair["llc_coarse"], np.float64), np.asarray(pair["llc_fine"], np.float64),
                                 ok)
        blocks = np.asarray(pair["diff_blocks"], np.float64)
        se = difference_se(blocks, np.ones(blocks.shape[::2], bool), ok, DIFF_BLOCKS) / np.abs(fine)  # as the stored check
        # the check before coupling: the eps / 3 chain from another key, one difference per chain
        finer = dataclasses.replace(config, step_size=eps / 3, num_steps=3 * steps, num_burnin=3 * (steps // 2),
                                    trace_every=3 * config.trace_every)
        base = sample_chains(kgon_loss, one, x, key, settings, chain_shape(config, n, d), data_batched=False)
        other = sample_chains(kgon_loss, one, x, jax.random.split(jax.random.key(seed + 2), 1),
                              chain_settings(finer, nbeta, 1), chain_shape(finer, n, d), data_batched=False)
        a, b = np.asarray(base["llc_per_chain"][0], np.float64), np.asarray(other["llc_per_chain"][0], np.float64)
        indep_rel = (a.mean() - b.mean()) / abs(b.mean())
        indep_se = np.hypot(a.std(ddof=1), b.std(ddof=1)) / np.sqrt(chains) / abs(b.mean())
        q_hi, q_lo = quadratic_llc(eigs, eps, 1.0, nbeta), quadratic_llc(eigs, eps / 3, 1.0, nbeta)
        rows.append(dict(step_size=eps, coupled=float(rel[0]), coupled_se=float(se[0]), independent=float(indep_rel),
                         independent_se=float(indep_se), quadratic=float((q_hi - q_lo) / q_lo)))
    return rows


VARIABLES = {
    "coupled": ("coupled check: relative difference of the LLC at eps and eps / 3", "1"),
    "coupled_se": ("its standard error (batch means of the paired difference, at least the pairs' spread)", "1"),
    "independent": ("the same difference from independent chains (different keys)", "1"),
    "independent_se": ("its standard error", "1"),
    "quadratic": ("quadratic prediction of the difference (Hessian of L_n)", "1"),
}


def run(out_dir: Path, *, size: str = "default", progress: bool = True) -> xr.Dataset:
    """Both checks at every step size of `STEP_SIZES` (4 chains, 500-step checks, n = 10^4; one
    size); writes step_check_coupling.nc, step_check_coupling.png (`figure`) and report.md under `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = dict(n=10_000, chains=4, steps=500, batch=500, seed=0)
    rows = study(**settings)
    ds = xr.Dataset(row_variables(rows, VARIABLES, "step_size"),
                    coords={"step_size": [r["step_size"] for r in rows]})
    ds.attrs.update(provenance_attrs("step_check_coupling", dict(settings, step_sizes=list(STEP_SIZES))))
    save_dataset(ds, out_dir / "step_check_coupling.nc")
    text = table(["step size", "coupled check", "its SE", "independent check", "its SE", "quadratic prediction"],
                 [[f"{r['step_size']:.3g}", f"{r['coupled']:+.4f}", f"{r['coupled_se']:.4f}",
                   f"{r['independent']:+.4f}", f"{r['independent_se']:.4f}", f"{r['quadratic']:+.4f}"] for r in rows])
    fs.save(figure(ds), out_dir / "step_check_coupling.png")
    write_text(out_dir / "report.md", header("The step-size check with and without coupling (refined 6-gon)",
                                             "step-check-coupling", out_dir, size, finding(ds))
               + text + "\n\nFigure: step_check_coupling.png.\n")
    if progress:
        print(text)
    return ds


def figure(ds: xr.Dataset):
    """The check's relative difference (+- 2 SE) against the step size, coupled and independent
    (drawn a little apart), with the quadratic prediction of the same difference."""
    with fs.style():
        fig, axes = fs.subplots(1, 1, width=fs.COLUMN, panel_aspect=0.7)
        ax = axes[0, 0]
        eps = ds["step_size"].values
        ax.errorbar(eps / 1.06, ds["coupled"], yerr=2 * ds["coupled_se"], fmt="o", color=fs.PALETTE[0],
                    label="coupled (one Brownian path)")
        ax.errorbar(eps * 1.06, ds["independent"], yerr=2 * ds["independent_se"], fmt="s", mfc="none",
                    color=fs.PALETTE[1], label="independent chains")
        ax.plot(eps, ds["quadratic"], "x:", color=fs.REFERENCE, label="quadratic prediction")
        ax.axhline(0, lw=0.5, color="0.6")
        ax.set_xscale("log")
        ax.set_xlabel("step size $\\epsilon$")
        ax.set_ylabel("relative difference, $\\epsilon$ against $\\epsilon$ / 3")
        ax.legend(fontsize=6, loc="upper right")
    return fig


def finding(ds: xr.Dataset) -> str:
    """One paragraph: how much smaller the coupled check's standard error is than the independent one's."""
    ratio = ds["independent_se"].values / ds["coupled_se"].values
    return (f"At {ds.sizes['step_size']} step sizes of the refined 6-gon, the coupled step-size check (one Brownian "
            f"path, shared minibatches) has a standard error {np.nanmin(ratio):.0f} to {np.nanmax(ratio):.0f} times "
            f"smaller than the same check from independent chains; the quadratic prediction of the difference "
            f"stands beside both.")
