"""XLA:CPU compile options against the shipped LLC chain program, side by side.

    python benchmarks/xla_options.py

Compiles the one-instance chain program of benchmarks/llc_throughput.py (TMS 6-gon, 8 chains x
1000 steps, batch 500) with `llc.CPU_COMPILER_OPTIONS` and with each option below added, then
times them in interleaved rounds (best wall and CPU time of 7). An option jax no longer accepts
is reported and skipped.
"""

from __future__ import annotations

import math
import time

import jax

import chain_profile  # benchmarks/chain_profile.py
from llc_throughput import BATCH, BURNIN, CHAINS, EPS, GAMMA, N, N_FEATURES, STEPS, loss_fn, six_gon
from slt_superposition import SGLDConfig
from slt_superposition.llc import CPU_COMPILER_OPTIONS
from toy_models.data import high_sparsity_limit

OPTIONS = {
    "xla_cpu_prefer_vector_width=512": {"xla_cpu_prefer_vector_width": 512},
    "xla_cpu_ftz": {"xla_cpu_ftz": True},
    "xla_cpu_enable_fast_math": {"xla_cpu_enable_fast_math": True},
    "xla_cpu_enable_concurrency_optimized_scheduler": {"xla_cpu_enable_concurrency_optimized_scheduler": True},
    "xla_cpu_use_fusion_emitters=False": {"xla_cpu_use_fusion_emitters": False},
    "xla_cpu_multi_thread_eigen=False": {"xla_cpu_multi_thread_eigen": False},
}


def main(rounds: int = 7) -> None:
    params, x = six_gon(), high_sparsity_limit(jax.random.key(0), N, N_FEATURES)
    config = SGLDConfig(step_size=EPS, localization=GAMMA, nbeta=N / math.log(N), num_chains=CHAINS,
                        num_steps=STEPS, num_burnin=BURNIN, batch_size=BATCH)
    programs = {}
    for name, extra in {"as shipped": {}, **OPTIONS}.items():
        try:
            programs[name] = chain_profile.one_instance_program(
                loss_fn, params, x, config, compiler_options={**CPU_COMPILER_OPTIONS, **extra})
        except Exception as error:  # noqa: BLE001 - an option this jax does not know
            print(f"{name}: not accepted ({str(error).splitlines()[0][:120]})")
    best = {name: (math.inf, math.inf) for name in programs}
    for _ in range(rounds):
        for name, (compiled, args) in programs.items():
            jax.block_until_ready(compiled(*args))
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled(*args))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    for name, (wall, cpu) in best.items():
        print(f"  {name:50s} wall {1e3 * wall:6.1f} ms  cpu {1e3 * cpu:6.1f} ms")


if __name__ == "__main__":
    main()
