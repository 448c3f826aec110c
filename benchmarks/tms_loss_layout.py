"""The TMS loss with the rows innermost against the rows' features innermost, side by side.

    python benchmarks/tms_loss_layout.py                 # TMS 6x2 to 40x10
    python benchmarks/tms_loss_layout.py --rounds 3 --shapes 6x2 20x5

`toy_models.tms.tms_loss(..., layout=...)`: "rows" computes on the batch as given, `(batch,
features)`; "features" on its transpose, `(features, batch)`, so that every elementwise pass and the
sum over features vectorise across the rows; "auto" (`loss_layout`) takes "features" on a CPU for
models whose products the chains write elementwise (`small_dots.SMALL`). For each TMS shape this
times `estimate_llc_batched` (one instance x 8 chains and 8 instances x 2 chains, 1000 steps at batch
512 of n = 4096 sparse rows, no stored checks) with each layout, alternately, best wall time of
`--rounds`, as the console script runs (one JAX device per core). Prints the times, their ratio
and the largest difference between the two layouts' per-chain LLCs (the same keys: the layouts
agree to float32 rounding). Training keeps "rows" (`toy_models.train`) and is not timed here.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from slt_superposition.cpu_devices import split_cpu_into_cores

split_cpu_into_cores()  # as the console script: one device per core

import machine
from timing import best_of
from slt_superposition import SGLDConfig, estimate_llc_batched
from toy_models.tms import loss_layout, tms_loss

LAYOUTS = ("rows", "features")


def loss_with(layout: str):
    """The flagship's per-instance loss (`train.loss_fn_for`'s form) in one layout."""
    return lambda params, batch: tms_loss(params, batch["x"], batch["importance"], layout=layout)


def chain_inputs(n_features: int, n_hidden: int, n_inst: int):
    keys = jax.random.split(jax.random.key(1), 4)
    params = {"W": 0.3 * jax.random.normal(keys[0], (n_inst, n_hidden, n_features)),
              "b": 0.05 * jax.random.normal(keys[1], (n_inst, n_features))}
    x = jax.random.uniform(keys[2], (n_inst, 4096, n_features))
    x = jnp.where(jax.random.uniform(keys[3], x.shape) < 0.2, x, 0.0)
    importance = jnp.broadcast_to(0.9 ** jnp.arange(n_features, dtype=jnp.float32), x.shape)
    return params, {"x": x, "importance": importance}


def time_chains(n_features: int, n_hidden: int, n_inst: int, chains: int, rounds: int) -> str:
    params, data = chain_inputs(n_features, n_hidden, n_inst)
    config = SGLDConfig(step_size=1e-4, localization=1.0, num_chains=chains, num_steps=1000, batch_size=512)
    calls = {layout: (lambda fn: lambda: estimate_llc_batched(fn, params, data, config=config,
                                                              key=jax.random.key(0), checks=False))(loss_with(layout))
             for layout in LAYOUTS}
    first = {layout: call() for layout, call in calls.items()}
    gap = float(np.max(np.abs(first["rows"]["llc_per_chain"].values - first["features"]["llc_per_chain"].values)))
    best = best_of(calls, rounds)
    return (f"rows {1e3 * best['rows']:7.1f} ms, features {1e3 * best['features']:7.1f} ms, "
            f"rows / features {best['rows'] / best['features']:.2f}x; largest per-chain LLC difference {gap:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["6x2", "5x2", "8x2", "10x3", "20x5", "40x10"],
                        help="TMS shapes n_features x n_hidden (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=9, help="alternating timing rounds (default %(default)s)")
    args = parser.parse_args()
    print(f"machine: {machine.describe()}")
    shapes = [tuple(int(v) for v in shape.split("x")) for shape in args.shapes]
    print("LLC chains, 1000 steps at batch 512 of n = 4096 (estimate_llc_batched, no checks), best of "
          f"{args.rounds} alternating rounds:")
    for n_features, n_hidden in shapes:
        auto = loss_layout(jnp.zeros((n_hidden, n_features)), jnp.zeros((512, n_features)))
        for n_inst, chains in ((1, 8), (8, 2)):
            print(f"  TMS {n_features}x{n_hidden} ('auto' takes {auto}), {n_inst} instance(s) x {chains} chains: "
                  f"{time_chains(n_features, n_hidden, n_inst, chains, args.rounds)}", flush=True)


if __name__ == "__main__":
    main()
