"""The cost of the Metropolis accept/reject step: `estimate_llc` with and without it, side by side.

    python benchmarks/metropolis_step.py [--steps 50000] [--rounds 3]

Both run the same chains at full batch (`SGLDConfig(metropolis=False / True)`, 4 chains, the same
step size, `checks=False`): a deep linear network on its compressed rows (3-10-10-3, rank 2, the
dln-validation panel's setting) and a TMS 6x2 on 4096 samples. A Metropolis step evaluates the loss
and gradient once (at the proposal), as an SGLD step does, and adds the acceptance arithmetic and
the carried loss, potential and drift. Each call is compiled first (untimed), then the two are
timed in interleaved rounds; the best wall time of each and their ratio are printed.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import jax
import numpy as np

from slt_superposition import SGLDConfig, estimate_llc
from toy_models.data import sparse_uniform
from toy_models.dln import dln_compressed_data, dln_data, dln_loss, dln_true_params
from toy_models.tms import tms_init_params, tms_loss


def cases():
    """(label, loss_fn, params, data, step size)."""
    params = dln_true_params(jax.random.key(0), (3, 10, 10, 3), 2, "singular")
    data = dln_compressed_data(*dln_data(jax.random.key(1), params, 100_000))
    yield "DLN 3-10-10-3 rank 2, 6 compressed rows", dln_loss, params, data, 1e-7
    params = tms_init_params(jax.random.key(2), 6, 2)
    yield "TMS 6x2, 4096 rows", tms_loss, params, sparse_uniform(jax.random.key(3), 4096, 6, 0.1), 1e-4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000, help="steps per chain (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (default %(default)s)")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, jax {jax.__version__}, backend {jax.default_backend()}; "
          f"4 chains x {args.steps} steps, full batch, best of {args.rounds}")
    for label, loss_fn, params, data, eps in cases():
        n = jax.tree_util.tree_leaves(data)[0].shape[0]
        calls = {}
        for metropolis in (False, True):
            config = SGLDConfig(step_size=eps, localization=1.0, nbeta=100_000 / math.log(100_000), num_chains=4,
                                num_steps=args.steps, num_burnin=args.steps // 2, trace_every=args.steps // 100,
                                metropolis=metropolis)
            calls[metropolis] = (lambda config=config: estimate_llc(loss_fn, params, data, config=config,
                                                                    key=jax.random.key(4), checks=False))
            calls[metropolis]()  # compile
        best = {False: math.inf, True: math.inf}
        accepted = None
        for _ in range(args.rounds):
            for metropolis, call in calls.items():
                start = time.perf_counter()
                ds = call()
                best[metropolis] = min(best[metropolis], time.perf_counter() - start)
                if metropolis:
                    accepted = float(np.mean(ds["mala_acceptance"].values))
        print(f"{label} (n = {n}, eps {eps:g}): SGLD {best[False]:.2f} s, with accept/reject {best[True]:.2f} s "
              f"(acceptance {accepted:.3f}): ratio {best[True] / best[False]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
