"""Where one repeated `estimate_llc` call spends its time: the compiled program against Python.

    python benchmarks/llc_call_profile.py

The benchmark's model and settings (benchmarks/llc_throughput.py: TMS 6-gon, n = 1000, batch
500, 8 chains x 1000 steps), one JAX device per core as the throughput benchmark (so the
chains run as groups on the cores, slt_superposition.chain_groups). Prints the wall time of 10
repeated calls; then, over 20 more, the wall time per call of each host step around the program
(`HOST_STEPS`: checks, settings, placing inputs, the dataset, R-hat; `unshard` holds the wait for
the program); then a cProfile of 5 calls: the time spent waiting for the program and the rest.
"""

from __future__ import annotations

import cProfile
import math
import pstats
import time

import jax

from slt_superposition.cpu_devices import split_cpu_into_cores

split_cpu_into_cores()  # as benchmarks/llc_throughput.py and the console script: one device per core

from llc_throughput import BATCH, BURNIN, CHAINS, EPS, GAMMA, N, N_FEATURES, STEPS, loss_fn, six_gon
from slt_superposition import SGLDConfig, estimate_llc
from slt_superposition import llc as llc_module
from slt_superposition import sharding
from toy_models.data import high_sparsity_limit

# (module, function) pairs timed per call; estimate_llc calls each through its module's namespace
HOST_STEPS = [(llc_module, name) for name in ("_check_inputs", "chain_settings", "in_groups", "join_instances",
                                              "llc_dataset", "rhat_and_ess")] + \
             [(sharding, name) for name in ("pad_instances", "_put_tree", "unshard")]


def host_steps(call, repeats: int = 20) -> None:
    """Wall time per call of every `HOST_STEPS` function over `repeats` calls (functions wrapped
    with a timer, then restored)."""
    spent = {name: 0.0 for _, name in HOST_STEPS}
    originals = [(module, name, getattr(module, name)) for module, name in HOST_STEPS]

    def timer(name, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return timed

    for module, name, fn in originals:
        setattr(module, name, timer(name, fn))
    try:
        start = time.perf_counter()
        for k in range(repeats):
            call(k)
        total = (time.perf_counter() - start) / repeats
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)
    print(f"host steps, ms per call over {repeats} calls of {1e3 * total:.1f} ms (unshard waits for the program):")
    for name, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {name:16s} {1e3 * seconds / repeats:7.2f}")


def main() -> None:
    params, x = six_gon(), high_sparsity_limit(jax.random.key(0), N, N_FEATURES)
    config = SGLDConfig(step_size=EPS, localization=GAMMA, nbeta=N / math.log(N), num_chains=CHAINS,
                        num_steps=STEPS, num_burnin=BURNIN, batch_size=BATCH)
    call = lambda k: estimate_llc(loss_fn, params, x, config=config, key=jax.random.key(k), checks=False)
    call(0)  # compile
    times = []
    for k in range(10):
        start = time.perf_counter()
        call(k)
        times.append(time.perf_counter() - start)
    print("repeated calls, ms:", " ".join(f"{1e3 * t:.1f}" for t in times))
    host_steps(call)
    profile = cProfile.Profile()
    profile.enable()
    for k in range(5):
        call(k)
    profile.disable()
    stats = pstats.Stats(profile)
    total = stats.total_tt / 5
    # waiting: inside numpy.asarray on a program's output (one device), or inside jax.Array._value,
    # which fetches the shards of an output over several devices
    waiting = sum(tt for (path, _, name), (_, _, tt, _, _) in stats.stats.items()
                  if name == "<built-in method numpy.asarray>" or (name == "_value" and path.endswith("array.py"))) / 5
    print(f"per call (cProfile): {1e3 * total:.1f} ms, of which {1e3 * waiting:.1f} ms waiting for the compiled "
          f"program and {1e3 * (total - waiting):.1f} ms of Python")
    stats.sort_stats("cumulative").print_stats(15)


if __name__ == "__main__":
    main()
