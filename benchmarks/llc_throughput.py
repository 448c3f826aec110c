"""LLC throughput: this package vs devinterp 1.3 on one TMS, side by side in one run.

    python benchmarks/llc_throughput.py            # full settings (about 1-2 minutes on 2 cores)
    python benchmarks/llc_throughput.py --quick    # fewer devinterp chains, for a smoke run

Model: the Chen et al. regular 6-gon TMS (6 features, 2 hidden, d = 18), data x = mu e_i,
n = 1000, batch 500, nbeta = n / log n, 8 chains x 1000 steps (200 burn-in), eps 5e-4,
gamma 100. Prints chain-steps per second for both and their ratio, both estimates, the
compile time (first call) separately from the repeated call, where the chain program's CPU
time goes (benchmarks/chain_profile.py: ablated copies side by side, and the XLA profiler's
time per part), the throughput of 64 instances x 8 chains in one call, the memory of full vs
thinned traces, and peak RSS.
devinterp runs with torch on 1 thread: on this tiny model more threads only contend
(measured about 4x slower with 2 threads on 2 cores), so 1 thread is devinterp's best case;
best of 2 runs. Our one-instance call runs as the console script does, one JAX device per core,
so its 8 chains run as groups on the cores (slt_superposition.chain_groups); the same call on
one device is timed alternately with it, and devinterp with `cores=2` (its chains in 2 worker
processes) once, each with its own ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from slt_superposition import SGLDConfig, estimate_llc, estimate_llc_batched
from slt_superposition import llc as llc_module
from slt_superposition.cpu_devices import split_cpu_into_cores
from slt_superposition.sharding import instance_mesh
import chain_profile  # benchmarks/chain_profile.py, next to this script
import machine
from toy_models.data import high_sparsity_limit
from toy_models.tms import tms_loss

N_FEATURES, N_HIDDEN, N, BATCH = 6, 2, 1000, 500
CHAINS, STEPS, BURNIN, EPS, GAMMA = 8, 1000, 200, 5e-4, 100.0
L_STAR, B_STAR = 1.32053, -0.61814


def six_gon():
    angles = 2 * np.pi * np.arange(N_FEATURES) / N_FEATURES
    W = L_STAR * np.stack([np.cos(angles), np.sin(angles)]).astype(np.float32)
    return {"W": jnp.asarray(W), "b": jnp.full((N_FEATURES,), B_STAR, jnp.float32)}


def perturbed_grid(params, n_inst: int):
    """(params with a leading instance axis, data (instance, N, features)): `n_inst` copies of the
    6-gon with small noise on W, each with its own data draw (also benchmarks/cpu_devices.py's LLC work)."""
    noise = 0.01 * jax.random.normal(jax.random.key(2), (n_inst, N_HIDDEN, N_FEATURES))
    grid = {"W": params["W"][None] + noise, "b": jnp.broadcast_to(params["b"], (n_inst, N_FEATURES))}
    data = jnp.stack([high_sparsity_limit(jax.random.key(10 + i), N, N_FEATURES) for i in range(n_inst)])
    return grid, data


def loss_fn(params, batch):
    return tms_loss(params, batch)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cpu_timed(fn):
    """(out, wall seconds, CPU seconds of this process): on a shared machine the CPU time is what
    this process itself used, the fairer figure when other jobs take the cores in turn."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


REPEATS = 7  # repeated calls of this package's estimate, alternating where two are compared; the best counts


def on_one_device(params, x, config, *, checks: bool):
    """`key -> estimate` of the instance on one device (`estimate_llc_batched` on a one-instance grid
    and a one-device mesh, so its chains are not grouped over the devices, slt_superposition.chain_groups)."""
    one = jax.tree_util.tree_map(lambda a: a[None], params)
    mesh = instance_mesh(jax.devices()[:1])
    return lambda key: estimate_llc_batched(loss_fn, one, x, config=config, key=jax.random.key(key), checks=checks,
                                            data_batched=False, mesh=mesh)


def run_ours(params, x, config, *, compare_one_device: bool = False):
    """(estimate, first call seconds, best wall, best CPU seconds[, best wall and CPU on one device]).

    The estimate alone (checks=False: the stored bias checks are extra short runs), repeated
    `REPEATS` times. `compare_one_device`: alternating with the same call on one device
    (`on_one_device`)."""
    call = lambda key: estimate_llc(loss_fn, params, x, config=config, key=jax.random.key(key), checks=False)
    alone = on_one_device(params, x, config, checks=False)
    _, first = timed(lambda: call(0))
    if compare_one_device:
        alone(0)
    repeats, alone_repeats = [], []
    for i in range(REPEATS):
        result, *seconds = cpu_timed(lambda: call(1 + i))
        repeats.append(seconds)
        if i == 0:  # the estimate printed: key 1's, as in earlier runs
            out = result
        if compare_one_device:
            alone_repeats.append(cpu_timed(lambda: alone(1 + i))[1:])
    best = lambda runs: (min(t for t, _ in runs), min(c for _, c in runs))
    return (out, first, *best(repeats)) + (best(alone_repeats) if compare_one_device else ())


def with_checks(params, x, config, rounds: int = 3) -> tuple[float, float]:
    """Best wall seconds of the same call with its stored bias checks (`checks=True`, the default),
    on every device (the chains and the step-size check's pairs grouped over them) and on one
    device, alternating for `rounds` rounds."""
    calls = [lambda key: estimate_llc(loss_fn, params, x, config=config, key=jax.random.key(key)),
             on_one_device(params, x, config, checks=True)]
    for call in calls:
        call(0)
    seconds = [[timed(lambda: call(1 + i))[1] for call in calls] for i in range(rounds)]
    return min(row[0] for row in seconds), min(row[1] for row in seconds)


def ablations(params, x, config) -> None:
    """Side by side, in this process: where the chain program's CPU time goes (chain_profile:
    ablated copies of the program, and the XLA profiler's time per part), then the two
    speed-ups that are settings, each against what jax would do by default."""
    chain_profile.print_ablations(loss_fn, params, x, config)
    chain_profile.print_thunk_profile(loss_fn, params, x, config)
    nbeta = llc_module.resolve_nbeta(config, N)
    settings = llc_module.chain_settings(config, nbeta, 1)
    run = jax.jit(llc_module.block_function(loss_fn, llc_module.chain_shape(config, N, 18), False))
    inputs = ((jax.tree_util.tree_map(lambda a: a[None], params), jax.random.key(1)[None], settings), x)
    lowered = run.lower(*inputs)
    # XLA's defaults hand the fused small products to YNNPACK, seconds per call: timed once
    programs = {"XLA:CPU defaults": (lowered.compile(), 1),
                "llc.CPU_COMPILER_OPTIONS (no YNNPACK fusions)": (lowered.compile(
                    compiler_options=llc_module.CPU_COMPILER_OPTIONS), 5)}
    for name, (program, repeats) in programs.items():
        jax.block_until_ready(program(*inputs))
        best = min(timed(lambda: jax.block_until_ready(program(*inputs)))[1] for _ in range(repeats))
        print(f"  whole program (estimate_llc's, sharded form) with {name}: {best * 1e3:.1f} ms")
    keys = jax.random.split(jax.random.key(0), CHAINS)
    for partitionable in (True, False):
        with jax.threefry_partitionable(partitionable):
            draw = jax.jit(jax.vmap(lambda k: jax.random.bits(k, (STEPS, BATCH))))
            jax.block_until_ready(draw(keys))
            best = min(timed(lambda: jax.block_until_ready(draw(keys)))[1] for _ in range(5))
        print(f"  all minibatch index bits ({CHAINS} x {STEPS} x {BATCH}), threefry_partitionable="
              f"{partitionable}: {best * 1e3:.1f} ms")


def run_devinterp(params, x, chains, cores: int = 1):
    """devinterp's estimate on `chains` chains, with torch on 1 thread in every process; `cores` > 1:
    devinterp runs the chains in that many worker processes."""
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by devinterp's workers
    import torch
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch_tms import TorchTMS, evaluate  # benchmarks/torch_tms.py

    torch.set_num_threads(1)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(np.asarray(x))),
                                         batch_size=BATCH, shuffle=True)
    kwargs = dict(evaluate=evaluate, optimizer_kwargs=dict(lr=EPS, localization=GAMMA, nbeta=N / math.log(N)),
                  num_chains=chains, num_draws=STEPS - BURNIN, num_burnin_steps=BURNIN, seed=0, verbose=False,
                  cores=cores)
    # warm-up (torch imports its compiler stack lazily on the first optimizer), not timed
    warm_up = {**kwargs, "num_chains": 1, "num_draws": 5, "num_burnin_steps": 0, "cores": 1}
    estimate_learning_coeff_with_summary(TorchTMS(params["W"], params["b"]), loader, **warm_up)
    model = TorchTMS(params["W"], params["b"])
    result, seconds, cpu = cpu_timed(lambda: estimate_learning_coeff_with_summary(model, loader, **kwargs))
    return result, seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 devinterp chains instead of 8")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    split_cpu_into_cores()  # as the console script does; one instance runs on one device, 64 on all

    params = six_gon()
    x = high_sparsity_limit(jax.random.key(0), N, N_FEATURES)
    nbeta = N / math.log(N)
    config = SGLDConfig(step_size=EPS, localization=GAMMA, nbeta=nbeta, num_chains=CHAINS, num_steps=STEPS,
                        num_burnin=BURNIN, batch_size=BATCH)
    chain_steps = CHAINS * STEPS
    print(f"machine: {machine.describe()}")
    print(f"TMS 6x2, n={N}, batch {BATCH}, "
          f"{CHAINS} chains x {STEPS} steps, eps {EPS}, gamma {GAMMA}, nbeta {nbeta:.2f}")

    several = jax.device_count() > 1
    ours, first, repeat, repeat_cpu, *alone = run_ours(params, x, config, compare_one_device=several)
    ours_rate = chain_steps / repeat
    print(f"slt_superposition: first call {first:.2f} s (compile ~{first - repeat:.2f} s), "
          f"repeated call {repeat * 1e3:.1f} ms (CPU {repeat_cpu * 1e3:.1f} ms) -> {ours_rate:,.0f} chain-steps/s; "
          f"LLC {float(ours.llc_mean):.3f} +- {float(ours.llc_std) / math.sqrt(CHAINS):.3f} (s.e.), "
          f"MALA {float(ours.mala_acceptance.mean()):.3f}")

    if several:  # the same call with the instance's chains together on one device, alternating with it
        one_device, one_cpu = alone
        print(f"  the same call on one device (its chains not grouped, slt_superposition.chain_groups): "
              f"{one_device * 1e3:.1f} ms (CPU {one_cpu * 1e3:.1f} ms) -> {chain_steps / one_device:,.0f} "
              f"chain-steps/s; grouped over {jax.device_count()} devices {one_device / repeat:.2f}x faster")
        grouped_checks, alone_checks = with_checks(params, x, config)
        print(f"  with the stored bias checks (checks=True, the default): {grouped_checks * 1e3:.1f} ms, on one device "
              f"{alone_checks * 1e3:.1f} ms ({alone_checks / grouped_checks:.2f}x)")

    print("where the time goes (side by side):")
    ablations(params, x, config)

    epoch_config = SGLDConfig(**{**config.to_dict(), "sampling": "epoch"})
    _, _, epoch_repeat, epoch_cpu = run_ours(params, x, epoch_config)
    print(f"slt_superposition, sampling='epoch' (without replacement, as devinterp's shuffled loader): "
          f"repeated call {epoch_repeat * 1e3:.1f} ms -> {chain_steps / epoch_repeat:,.0f} chain-steps/s")

    dv_chains = 2 if args.quick else CHAINS
    runs = [run_devinterp(params, x, dv_chains) for _ in range(1 if args.quick else 2)]
    theirs, dv_seconds, dv_cpu = min(runs, key=lambda run: run[1])
    dv_rate = dv_chains * STEPS / dv_seconds
    print(f"devinterp 1.3:     {dv_chains} chains in {dv_seconds:.1f} s (CPU {dv_cpu:.1f} s; best of "
          f"{', '.join(f'{run[1]:.1f}' for run in runs)} s) -> {dv_rate:,.0f} "
          f"chain-steps/s; "
          f"LLC {theirs['llc/mean']:.3f} +- {theirs['llc/std'] / math.sqrt(dv_chains):.3f} (s.e.)")
    print(f"speed ratio (slt_superposition / devinterp): {ours_rate / dv_rate:,.0f}x "
          f"(sampling='epoch': {chain_steps / epoch_repeat / dv_rate:,.0f}x)")
    dv_cpu_rate = dv_chains * STEPS / dv_cpu
    print(f"speed ratio by CPU time of this process: {chain_steps / repeat_cpu / dv_cpu_rate:,.0f}x "
          f"(sampling='epoch': {chain_steps / epoch_cpu / dv_cpu_rate:,.0f}x)")
    if os.cpu_count() > 1 and not args.quick:
        _, dv2_seconds, _ = run_devinterp(params, x, dv_chains, cores=2)
        print(f"devinterp 1.3 with cores=2 (chains in 2 worker processes, 1 torch thread each): {dv2_seconds:.1f} s "
              f"-> {dv_chains * STEPS / dv2_seconds:,.0f} chain-steps/s; speed ratio against it "
              f"{ours_rate / (dv_chains * STEPS / dv2_seconds):,.0f}x")
    se = math.sqrt((float(ours.llc_std) / math.sqrt(CHAINS)) ** 2 + (theirs["llc/std"] / math.sqrt(dv_chains)) ** 2)
    print(f"estimate difference: {abs(float(ours.llc_mean) - theirs['llc/mean']) / se:.2f} combined standard errors")

    n_inst = 64
    grid, data = perturbed_grid(params, n_inst)
    call = lambda key: estimate_llc_batched(loss_fn, grid, data, config=config, key=jax.random.key(key), checks=False)
    _, first64 = timed(lambda: call(0))
    batched, t64, cpu64 = cpu_timed(lambda: call(1))
    rate64 = n_inst * chain_steps / t64
    print(f"{n_inst} instances x {CHAINS} chains x {STEPS} steps in one call: first {first64:.2f} s, "
          f"repeated {t64:.2f} s (CPU {cpu64:.2f} s) -> {rate64:,.0f} chain-steps/s "
          f"({n_inst * chain_steps / cpu64:,.0f} per CPU second, against {chain_steps / repeat_cpu:,.0f} for one "
          f"instance); "
          f"LLC over instances {float(batched.llc_mean.mean()):.2f} (min {float(batched.llc_mean.min()):.2f}, "
          f"max {float(batched.llc_mean.max()):.2f})")

    long_steps = 20_000
    for every in (1, 100):
        long = SGLDConfig(**{**config.to_dict(), "num_steps": long_steps, "num_burnin": 2000, "trace_every": every})
        ds, seconds = timed(lambda: estimate_llc(loss_fn, params, x, config=long, key=jax.random.key(3), checks=False))
        print(f"{CHAINS} chains x {long_steps} steps, trace_every={every}: loss_trace {ds.loss_trace.nbytes / 1e3:.1f} kB "
              f"(per 64 instances: {64 * ds.loss_trace.nbytes / 1e6:.2f} MB), LLC {float(ds.llc_mean):.3f}, {seconds:.2f} s")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak resident memory of this process (both libraries loaded): {rss:.0f} MB")


if __name__ == "__main__":
    main()
