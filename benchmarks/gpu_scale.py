"""Training and LLC throughput at GPU scale (>= 10^4 instances x chains); `--cpu` runs it small.

    python benchmarks/gpu_scale.py            # GPU: 4096-instance TMS grid; 2048 instances x 8 chains LLC
    python benchmarks/gpu_scale.py --cpu      # same code, small sizes, for a laptop check

Each workload runs twice side by side in this one process: with blocks of 16 instances (the CPU
rule, `SLT_BLOCK_BYTES=0`) and with the accelerator rule (`sharding.block_for`: as many instances
per block as about 1 GiB of working set holds). Prints the device, sizes, the block, compile
time (first call minus a repeated call), throughput, and for the LLC the arithmetic rate it
implies (forward and backward of the TMS loss, counted by hand below).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import jax
import numpy as np


def timed(fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - start


@contextlib.contextmanager
def block_rule(block_bytes: int | None):
    """SLT_BLOCK_BYTES set to `block_bytes` (None: the default rule) inside the block."""
    old = os.environ.pop("SLT_BLOCK_BYTES", None)
    if block_bytes is not None:
        os.environ["SLT_BLOCK_BYTES"] = str(block_bytes)
    try:
        yield
    finally:
        os.environ.pop("SLT_BLOCK_BYTES", None)
        if old is not None:
            os.environ["SLT_BLOCK_BYTES"] = old


def rule_name(block_bytes: int | None) -> str:
    if jax.default_backend() == "cpu":
        return "on a CPU"
    return "blocks of 16 (CPU rule)" if block_bytes == 0 else "accelerator blocks"


def bench_training(n_seeds: int, steps: int, block_bytes: int | None) -> None:
    from toy_models.train import TrainConfig, train_grid, training_block

    fps = tuple(np.round(np.logspace(0, -2, 16), 6))
    config = TrainConfig(n_features=20, n_hidden=5, feature_probabilities=fps, importance_decays=(0.7,), seeds=n_seeds,
                         steps=steps, batch_size=1024, chunk_steps=steps, loss_curve_points=10, eval_samples=1024)
    with block_rule(block_bytes):
        block = training_block(config)
        _, first = timed(lambda: train_grid(config, progress=False)["W"].values)
        _, again = timed(lambda: train_grid(config, progress=False)["W"].values)
    n = config.n_instances
    print(f"train  TMS n=20 m=5 batch 1024, {rule_name(block_bytes)} ({block} instances): {n} instances x {steps} "
          f"steps: {again:.2f} s, {n * steps / again:,.0f} instance-steps/s; compile ~{max(first - again, 0):.1f} s",
          flush=True)


def llc_flops_per_chain_step(batch: int, n_features: int = 6, n_hidden: int = 2) -> int:
    """Multiply-adds of one TMS loss gradient on a minibatch, times 2 for FLOPs: forward
    h = x W^T and out = h W (2 n m per row), backward about twice that; elementwise work ignored."""
    return 2 * 3 * 2 * n_features * n_hidden * batch


def bench_llc(n_instances: int, chains: int, steps: int, block_bytes: int | None) -> None:
    from slt_superposition.chain import ChainShape
    from slt_superposition.llc import SGLDConfig, chain_working_set, estimate_llc_batched
    from slt_superposition.sharding import block_for
    from toy_models.data import sparse_uniform
    from toy_models.tms import tms_init_params, tms_loss

    params = jax.vmap(lambda k: tms_init_params(k, 6, 2))(jax.random.split(jax.random.key(0), n_instances))
    x = sparse_uniform(jax.random.key(1), 1000, 6, 0.1)
    config = SGLDConfig(step_size=1e-4, localization=100.0, num_chains=chains, num_steps=steps, batch_size=500,
                        trace_every=max(steps // 10, 1))
    run = lambda: estimate_llc_batched(tms_loss, params, x, config=config, key=jax.random.key(2), data_batched=False,
                                       checks=False)["llc_mean"].values
    shape = ChainShape(chains, 0, config.batch_size, config.sampling, x.shape[0], 18)
    with block_rule(block_bytes):
        block = block_for(n_instances, chain_working_set(shape, x, data_batched=False))
        _, first = timed(run)
        _, again = timed(run)
    total = n_instances * chains
    rate = total * steps / again
    print(f"llc    TMS 6x2 n=1000 batch 500, {rule_name(block_bytes)} ({block} instances): {n_instances} instances x "
          f"{chains} chains = {total} chains x {steps} steps: {again:.2f} s, {rate:,.0f} chain-steps/s "
          f"(~{rate * llc_flops_per_chain_step(500) / 1e12:.2f} TFLOP/s of loss gradients); "
          f"compile ~{max(first - again, 0):.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="small sizes (CPU check)")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}, {jax.device_count()} device(s)); jax {jax.__version__}",
          flush=True)
    if args.cpu:
        bench_training(n_seeds=2, steps=200, block_bytes=None)
        bench_llc(n_instances=16, chains=4, steps=200, block_bytes=None)
        return
    for block_bytes in (0, None):
        bench_training(n_seeds=256, steps=2000, block_bytes=block_bytes)        # 4096 instances
    for block_bytes in (0, None):
        bench_llc(n_instances=2048, chains=8, steps=1000, block_bytes=block_bytes)  # 16384 chains
    bench_llc(n_instances=8192, chains=8, steps=1000, block_bytes=None)  # 65536 chains
    bench_llc(n_instances=8192, chains=8, steps=4000, block_bytes=None)


if __name__ == "__main__":
    main()
