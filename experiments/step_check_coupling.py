"""The step-size check with and without coupling, on the refined 6-gon (Chen et al. class).

For each step size, the stored check (`slt_superposition.checks`) compares the chain at eps with
the chain at eps / 3 for 3x the steps. Coupled (`slt_superposition.coupled`: one Brownian path,
shared minibatches) against independent (the two chains from different keys, the check as it was
before coupling): the relative difference, its standard error, and the quadratic prediction of
the same difference from the Hessian of L_n (`curvature.quadratic_llc` at eps and eps / 3).

    python -m experiments.step_check_coupling            # 4 chains, 500-step checks, n = 10^4

Prints one row per step size; the table in docs/calibration.md comes from this command.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np

from experiments.kgon_llc import kgon_loss, refined_kgon
from slt_superposition.checks import relative_difference
from slt_superposition.coupled import DIFF_BLOCKS, sample_coupled
from slt_superposition.curvature import hessian_eigenvalues, quadratic_llc
from slt_superposition.diagnostics import batch_means_se
from slt_superposition.llc import SGLDConfig, chain_settings, chain_shape, default_nbeta, sample_chains

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
        se = batch_means_se(blocks, np.ones(blocks.shape[::2], bool), ok, DIFF_BLOCKS) / np.abs(fine)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args(argv)
    print("| step size | coupled check | its SE | independent check | its SE | quadratic prediction |")
    print("|---|---|---|---|---|---|")
    for r in study(args.n, args.chains, args.steps):
        print(f"| {r['step_size']:.3g} | {r['coupled']:+.4f} | {r['coupled_se']:.4f} | {r['independent']:+.4f} | "
              f"{r['independent_se']:.4f} | {r['quadratic']:+.4f} |")


if __name__ == "__main__":
    main()
