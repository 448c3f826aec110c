"""What compiling costs: a chain program's compile time, part by part, and a run's compiles summed.

    python benchmarks/compile_time.py                  # the LLC benchmark's chain program, ablated copies
    JAX_LOG_COMPILES=1 slt-superposition reproduce weights-vs-activations --quick --out OUT 2> LOG
    python benchmarks/compile_time.py --summarize LOG  # that run's compiles, summed by program name
    python benchmarks/compile_time.py --cache-overhead # what writing JAX's persistent cache costs

1. The one-instance chain program of `llc_throughput.py` (TMS 6x2, 8 chains, batch 500) compiled
   as shipped and with parts removed: the observers but the LLC sum, the SGLD noise draw (a
   constant), the minibatch index draw (a constant table), both draws, and XLA options that
   might compile faster (each checked for the same bits as the shipped program). Compile time
   only (tracing excluded), best of `--rounds`, the copies interleaved.
2. `--summarize LOG`: the "Finished XLA compilation of NAME in S sec" lines of a run made with
   `JAX_LOG_COMPILES=1`, count and seconds per NAME (wall time per compile: programs compiled by
   threads side by side each count their share of the cores).
3. `--cache-overhead`: the same compile-bound work (120 small eager programs, then one
   `estimate_llc` with its stored checks) in fresh processes, alternating: no persistent cache,
   JAX's cache in a new folder as the console script sets it (`slt_superposition.compile_cache`),
   and the same with JAX's own size cap (`jax_compilation_cache_max_size`, which locks and scans
   the folder on every write). Every program is compiled once and written in the last two.
"""

from __future__ import annotations

import argparse
import collections
import re
import time

import numpy as np


def summarize(path: str, top: int = 15) -> None:
    pattern = re.compile(r"Finished XLA compilation of (.+) in ([0-9.eE+-]+) sec")
    count, seconds = collections.Counter(), collections.Counter()
    with open(path, errors="replace") as f:
        for line in f:
            m = pattern.search(line)
            if m:
                count[m.group(1)] += 1
                seconds[m.group(1)] += float(m.group(2))
    print(f"{sum(count.values())} compilations, {sum(seconds.values()):.1f} s in all")
    for name, s in seconds.most_common(top):
        print(f"  {name:40s} {count[name]:4d} programs {s:8.1f} s")


def ablations(rounds: int) -> None:
    import jax
    import jax.numpy as jnp

    from chain_profile import one_instance_lowered, patched  # benchmarks/, next to this script
    import llc_throughput as lt
    import machine
    from slt_superposition import SGLDConfig, chain, llc as llc_module
    from slt_superposition.observers import llc_observer

    params = lt.six_gon()
    data = lt.perturbed_grid(params, 1)[1][0]
    config = SGLDConfig(step_size=lt.EPS, localization=lt.GAMMA, num_chains=lt.CHAINS, num_steps=lt.STEPS,
                        num_burnin=lt.BURNIN, batch_size=lt.BATCH)
    table = lambda shape, chunk, key, c: jnp.asarray((np.arange(chunk * lt.BATCH) * 7 % lt.N).reshape(chunk, lt.BATCH),
                                                     jnp.int32)
    constant = lambda key, shape, dtype: jnp.full(shape, 0.01, dtype)
    llc_only = (llc_observer(),)
    variants = {  # name -> (chain attributes patched while tracing, observers, extra XLA options)
        "as shipped": ({}, None, {}),
        "observers: the LLC sum only": ({}, llc_only, {}),
        "no SGLD noise draw": ({"standard_normal": constant}, None, {}),
        "no minibatch index draw": ({"_chunk_batches": table}, None, {}),
        "neither draw": ({"standard_normal": constant, "_chunk_batches": table}, None, {}),
        "neither draw, the LLC sum only": ({"standard_normal": constant, "_chunk_batches": table}, llc_only, {}),
        "xla_backend_optimization_level=1": ({}, None, {"xla_backend_optimization_level": 1}),
        "xla_llvm_disable_expensive_passes": ({}, None, {"xla_llvm_disable_expensive_passes": True}),
        "xla_cpu_parallel_codegen_split_count=1": ({}, None, {"xla_cpu_parallel_codegen_split_count": 1}),
    }
    def lower(name):  # lowered anew every round: a Lowered object keeps what it compiled
        attrs, observers, _ = variants[name]
        with patched(chain, **attrs):
            return one_instance_lowered(lt.loss_fn, params, data, config, observers=observers)

    print(machine.describe())
    print(f"chain program of benchmarks/llc_throughput.py (TMS {lt.N_FEATURES}x{lt.N_HIDDEN}, {lt.CHAINS} chains, "
          f"batch {lt.BATCH}): compile time alone, best of {rounds} interleaved rounds")
    best = {name: np.inf for name in variants}
    reference, same = None, {}
    for _ in range(rounds):
        for name, (_, _, options) in variants.items():
            low, args = lower(name)
            start = time.perf_counter()
            compiled = low.compile(compiler_options=dict(llc_module.CPU_COMPILER_OPTIONS, **options))
            best[name] = min(best[name], time.perf_counter() - start)
            if name == "as shipped" and reference is None:
                reference = [np.asarray(a) for a in jax.tree_util.tree_leaves(compiled(*args))]
            if options and name not in same:
                out = [np.asarray(a) for a in jax.tree_util.tree_leaves(compiled(*args))]
                same[name] = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(reference, out))
    for name in variants:
        note = "" if name not in same else ("  (same bits)" if same[name] else "  (OTHER bits than as shipped)")
        print(f"  {name:42s} {best[name]:6.2f} s{note}")


CACHE_WORK = """
import sys, tempfile, time
import jax, jax.numpy as jnp
mode = sys.argv[1]
if mode != "none":
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
if mode == "capped":
    jax.config.update("jax_compilation_cache_max_size", 2 * 1024**3)
from slt_superposition import SGLDConfig, estimate_llc
start = time.perf_counter()
for i in range(60):
    x = jnp.arange(10.0 + i).reshape(-1, 1) * 2 + i
    jax.block_until_ready(jnp.tanh(x) @ x.T)
small = time.perf_counter() - start
x = jax.random.normal(jax.random.key(4), (1000, 3))
loss = lambda p, b: 0.5 * jnp.mean(jnp.sum((b - p["w"]) ** 2, axis=-1))
start = time.perf_counter()
estimate_llc(loss, {"w": x.mean(axis=0)}, x, key=jax.random.key(5),
             config=SGLDConfig(step_size=5e-4, localization=2.0, num_chains=2, num_steps=300, batch_size=100))
print(f"{small:.2f} {time.perf_counter() - start:.2f}")
"""


def cache_overhead(rounds: int) -> None:
    import subprocess
    import sys

    modes = {"none": "no persistent cache", "plain": "cache, as the console script sets it",
             "capped": "cache with jax_compilation_cache_max_size"}
    times = {mode: [] for mode in modes}
    for _ in range(rounds):
        for mode in modes:
            out = subprocess.run([sys.executable, "-c", CACHE_WORK, mode], capture_output=True, text=True, check=True)
            times[mode].append([float(v) for v in out.stdout.split()[-2:]])
    print(f"120 small eager programs, then one estimate_llc with its checks (fresh process each, best of {rounds}):")
    for mode, label in modes.items():
        small, estimate = np.min(times[mode], axis=0)
        print(f"  {label:42s} {small:6.2f} s   {estimate:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--summarize", metavar="LOG", help="sum the compilations logged by JAX_LOG_COMPILES=1")
    parser.add_argument("--cache-overhead", action="store_true", help="what writing the persistent cache costs")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize)
    elif args.cache_overhead:
        cache_overhead(args.rounds)
    else:
        ablations(args.rounds)


if __name__ == "__main__":
    main()
