"""Time the flagship's refinement (`analysis.refine.refine_batched`) on a trained TMS grid.

    python benchmarks/refine_batched.py --features 4 --probabilities 2 --seeds 8 --n-samples 4096

Trains the grid (`--train-steps`, 500), draws each instance's n samples as the flagship does, and times
`refine_batched` at up to 300 L-BFGS iterations (stopping at `--tol`) both ways, side by side: instances in sequence inside
the program (`one_at_a_time=True`, the default) and side by side (`jax.vmap`), each twice
(the first call includes compiling); then prints the largest gradient norm after each.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from analysis.refine import REFINE_STEPS, REFINE_TOL, refine_batched
from experiments.weights_vs_activations import _grid_inputs
from slt_superposition import grid
from toy_models.train import TrainConfig, train_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2)
    parser.add_argument("--probabilities", type=int, default=2, help="feature probabilities, log-spaced over [0.01, 1]")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--n-samples", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=REFINE_STEPS, help="at most this many L-BFGS iterations")
    parser.add_argument("--tol", type=float, default=REFINE_TOL,
                        help="stop an instance once ||grad L_n|| <= tol (0: always all iterations)")
    parser.add_argument("--train-steps", type=int, default=500, help="training steps of the grid (--full: 10000)")
    parser.add_argument("--layouts", choices=("both", "sequence", "vmap"), default="both")
    parser.add_argument("--once", action="store_true", help="one call per layout (compiling included), not two")
    args = parser.parse_args()
    probabilities = tuple(float(p) for p in np.geomspace(1.0, 0.01, args.probabilities))
    train = train_grid(TrainConfig(n_features=args.features, n_hidden=args.hidden, feature_probabilities=probabilities,
                                   seeds=args.seeds, steps=args.train_steps), progress=False)
    loss_fn, params, data = _grid_inputs(train, args.n_samples, jax.random.key(0))
    shape = grid.grid_shape(train)
    flat = lambda tree: jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[len(shape):]), tree)
    params, data = flat(params), flat(data)
    n_inst = int(np.prod(shape))
    layouts = [(True, "in sequence"), (False, "side by side (vmap)")]
    layouts = [lay for lay in layouts if args.layouts == "both" or (args.layouts == "sequence") == lay[0]]
    for one_at_a_time, layout in layouts:
        for label in ("first call (compiles)",) + (() if args.once else ("repeated call",)):
            start = time.perf_counter()
            _, _, after = jax.block_until_ready(refine_batched(loss_fn, params, data, steps=args.steps, tol=args.tol,
                                                               one_at_a_time=one_at_a_time))
            print(f"{n_inst} instances x n = {args.n_samples}, {args.steps} L-BFGS iterations (tol {args.tol:g}), "
                  f"{layout}, {label}: "
                  f"{time.perf_counter() - start:.1f} s; largest ||grad L_n|| after {float(np.max(after)):.2e}",
                  flush=True)

if __name__ == "__main__":
    main()
