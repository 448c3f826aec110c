"""Study: how far do SGLD chains at localization 1 travel from a trained TMS's w*, and to where?

`experiments.tms_llc_vs_n` found 2 llc / d above the symmetry bound at small n, shrinking as n grows,
and attributed it to the ReLU kinks. A direct look at where the chains go: on the n6_m2 instances of
that study (sparse uniform data, seed 0, 3000 AdamW steps; p = 1, 0.398, 0.05), for each n the weights
refined on n samples (`tms_llc_vs_n.refined_point`), then `--chains` SGLD chains at localization 1,
step size `--scale` / nbeta (nbeta = n / log n, so every n takes the same relative step), sampler time
`--time` (steps = time / eps), batch 500, half of each chain as burn-in. For each chain's final
position (W, b), the distance from w* relative to |w*|:

- with the rotation orbit removed (the best orthogonal R on W's hidden side: moving along the flat
  orbit is expected and costs no loss);
- with the rotation and a relabelling of the features removed (the best of the 6! permutations of
  (W's columns, b) with its best rotation): small where the chain sits at a *permuted copy* of w*,
  another critical point of the same class that the data's exchangeable features make (nearly)
  equal in loss;

and whether the set of live features changed (a column norm above half of w*'s largest column norm;
until 2026-12-07 half of its median, which is about 0 where most features are dead);
the first distance and the live set are `analysis.chain_excursions`', which the flagship stores.
Printed per (p, n): the estimate +- SE over chains, the medians of both distances, the share of chains
whose live set changed, and the mean estimate of the chains that changed it against those that did not.

    python -m experiments.tms_chain_excursions [--log2-n 12 14 16] [--chains 8] [--time 4] [--scale 0.02]
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import numpy as np

from analysis.chain_excursions import chain_ends, live_features, rotation_aligned_distance
from experiments.tms_llc_vs_n import _train, refined_point
from slt_superposition.llc import SGLDConfig, default_nbeta, estimate_llc

SPARSITIES = (1.0, 0.398, 0.05)  # tms_llc_vs_n's instances
TRAIN_STEPS = 3000  # ... and its training
BATCH_SIZE = 500
LOCALIZATION = 1.0


def relabelled_distance(W: np.ndarray, b: np.ndarray, W0: np.ndarray, b0: np.ndarray) -> float:
    """`rotation_aligned_distance` of (W, b) `((hidden, feature), (feature,))` to (W0, b0), minimised
    also over the permutations of the features."""
    orders = np.array(list(itertools.permutations(range(W.shape[-1]))))
    return float(rotation_aligned_distance(W[:, orders].transpose(1, 0, 2), b[orders], W0, b0).min())


def excursions(train, i: int, n: int, *, chains: int, sampler_time: float, scale: float, key) -> dict:
    """Instance i of `train` at n: the chains' estimate and where each chain ended (see the module doc)."""
    loss_fn, params, data, grad_norm, _ = refined_point(train, i, n)
    nbeta = default_nbeta(n)
    eps = scale / nbeta
    steps = int(round(sampler_time / eps))
    config = SGLDConfig(step_size=eps, localization=LOCALIZATION, num_chains=chains, num_steps=steps,
                        num_burnin=steps // 2, batch_size=BATCH_SIZE, trace_every=max(1, steps // 256))
    est = estimate_llc(loss_fn, params, data, config=config, key=key, checks=False)
    W0, b0 = np.asarray(params["W"], np.float64), np.asarray(params["b"], np.float64)
    W, b = chain_ends(est, *W0.shape)  # (chain, hidden, feature), (chain, feature)
    rotation = rotation_aligned_distance(W, b, W0, b0)
    changed = (live_features(W, W0) != live_features(W0, W0)).any(-1)
    rows = [dict(llc=float(est["llc_per_chain"].values[c]), rotation=float(rotation[c]),
                 permutation=relabelled_distance(W[c], b[c], W0, b0), changed=bool(changed[c]))
            for c in range(chains)]
    return dict(rows=rows, llc=float(est["llc_mean"]), se=float(est["llc_se"]), eps=eps, steps=steps,
                grad_norm=grad_norm, diverged=int(est["n_diverged"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2-n", type=int, nargs="+", default=[12, 14, 16])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--time", type=float, default=4.0, help="sampler time eps x steps (units of 1 / gamma)")
    parser.add_argument("--scale", type=float, default=0.02, help="step size x nbeta")
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    args = parser.parse_args()
    train = _train("n6_m2", tuple(args.sparsities), TRAIN_STEPS)
    fps = train["feature_probability"].values
    for i, p in enumerate(fps):
        for log2_n in args.log2_n:
            start = time.perf_counter()
            r = excursions(train, i, 2 ** log2_n, chains=args.chains, sampler_time=args.time, scale=args.scale,
                           key=jax.random.key(log2_n))
            rows = r["rows"]
            changed = [row["llc"] for row in rows if row["changed"]]
            kept = [row["llc"] for row in rows if not row["changed"]]
            mean = lambda values: f"{np.mean(values):.2f}" if values else "-"
            print(f"p {p:.3g} n 2^{log2_n}: llc {r['llc']:.2f} +- {r['se']:.2f} (eps {r['eps']:.2g}, {r['steps']} steps, "
                  f"|grad| {r['grad_norm']:.1e}); distance / |w*| rotation removed "
                  f"{np.median([x['rotation'] for x in rows]):.2f}, rotation and relabelling removed "
                  f"{np.median([x['permutation'] for x in rows]):.2f}; live set changed on "
                  f"{len(changed)} of {len(rows)} chains (their llc {mean(changed)}, the others' {mean(kept)}); "
                  f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
