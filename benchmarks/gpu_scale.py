"""Training and LLC throughput at GPU scale (>= 10^4 instances x chains); `--cpu` runs it small.

    python benchmarks/gpu_scale.py            # GPU: 4096-instance TMS grid; 2048 instances x 8 chains LLC
    python benchmarks/gpu_scale.py --cpu      # same code, small sizes, for a laptop check

Prints device, sizes, compile time (first call minus a repeated call) and throughput.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np


def timed(fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - start


def bench_training(n_seeds: int, steps: int) -> None:
    from toy_models.train import TrainConfig, train_grid

    fps = tuple(np.round(np.logspace(0, -2, 16), 6))
    config = TrainConfig(n_features=20, n_hidden=5, feature_probabilities=fps, importance_decays=(0.7,), seeds=n_seeds,
                         steps=steps, batch_size=1024, chunk_steps=steps, loss_curve_points=10, eval_samples=1024)
    _, first = timed(lambda: train_grid(config, progress=False)["W"].values)
    _, again = timed(lambda: train_grid(config, progress=False)["W"].values)
    n = config.n_instances
    print(f"train  TMS n=20 m=5 batch 1024: {n} instances x {steps} steps: {again:.2f} s, "
          f"{n * steps / again:,.0f} instance-steps/s; compile ~{max(first - again, 0):.1f} s")


def bench_llc(n_instances: int, chains: int, steps: int) -> None:
    from slt_superposition.llc import SGLDConfig, estimate_llc_batched
    from toy_models.data import sparse_uniform
    from toy_models.tms import tms_init_params, tms_loss

    params = jax.vmap(lambda k: tms_init_params(k, 6, 2))(jax.random.split(jax.random.key(0), n_instances))
    x = sparse_uniform(jax.random.key(1), 1000, 6, 0.1)
    config = SGLDConfig(step_size=1e-4, localization=100.0, num_chains=chains, num_steps=steps, batch_size=500,
                        trace_every=max(steps // 10, 1))
    run = lambda: estimate_llc_batched(tms_loss, params, x, config=config, key=jax.random.key(2), data_batched=False,
                                       checks=False)["llc_mean"].values
    _, first = timed(run)
    _, again = timed(run)
    total = n_instances * chains
    print(f"llc    TMS 6x2 n=1000 batch 500: {n_instances} instances x {chains} chains = {total} chains x {steps} steps: "
          f"{again:.2f} s, {total * steps / again:,.0f} chain-steps/s; compile ~{max(first - again, 0):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="small sizes (CPU check)")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)); jax {jax.__version__}")
    if args.cpu:
        bench_training(n_seeds=2, steps=200)
        bench_llc(n_instances=16, chains=4, steps=200)
    else:
        bench_training(n_seeds=256, steps=2000)        # 4096 instances
        bench_llc(n_instances=2048, chains=8, steps=1000)  # 16384 chains


if __name__ == "__main__":
    main()
