"""Training throughput: this package (JAX, one jitted scan over all instances) against an
Anthropic-notebook-style batched PyTorch trainer, same grid, same steps, one process.

    python benchmarks/train_throughput.py [--steps 1000] [--rounds 3] [--torch-threads N ...]

Grid: TMS n=20, m=5, 20 instances (feature probabilities spread over [0.01, 1]),
importance 0.7**i, batch 1024, AdamW lr 1e-3 (weight decay 0.01 on both sides, the
torch default), constant schedule. Prints instance-steps per second for both and the
ratio. JAX splits the CPU into one device per core, as the console script does
(`slt_superposition.cpu_devices`; ``JAX_NUM_CPU_DEVICES=1`` keeps one), so the grid's two
blocks of 10 instances run side by side. JAX compile time is measured separately and left
out of the steady-state figure (a first call compiles, later identical calls are timed). The sides alternate for
`--rounds` rounds and each reports its best round, which damps the noise of a shared CPU.
Also prints the cost of the random numbers (the bulk of the work) under both threefry
layouts, which is why `toy_models.data` draws with the classic one.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

N_FEATURES, N_HIDDEN, N_INSTANCES, BATCH, LR, WD, DECAY = 20, 5, 20, 1024, 1e-3, 0.01, 0.7
FEATURE_PROBABILITIES = tuple(float(p) for p in np.geomspace(0.01, 1.0, N_INSTANCES))


def grid_config(steps: int):
    """The benchmark's grid as a `TrainConfig` (also benchmarks/cpu_devices.py's training work)."""
    from toy_models.train import TrainConfig

    return TrainConfig(
        n_features=N_FEATURES, n_hidden=N_HIDDEN, feature_probabilities=FEATURE_PROBABILITIES,
        importance_decays=(DECAY,), seeds=1, steps=steps, batch_size=BATCH, learning_rate=LR,
        weight_decay=WD, chunk_steps=min(steps, 1000), eval_samples=1024,
    )


def jax_trainer(steps: int):
    """Returns (compile_seconds, run) where run() -> (seconds, last-window loss)."""
    from toy_models.train import train_grid

    config = grid_config(steps)

    def run():
        t0, c0 = time.perf_counter(), time.process_time()
        ds = train_grid(config, progress=False)
        return time.perf_counter() - t0, float(ds["loss_curve"].isel(step=-1).mean()), time.process_time() - c0

    first = run()[0]  # compiles + runs
    steady = run()[0]
    return max(first - steady, 0.0), run


def rng_cost() -> dict:
    """Milliseconds to draw one step's uniforms (instance, batch, feature), both threefry layouts."""
    import jax

    keys = jax.random.split(jax.random.key(0), N_INSTANCES)
    out = {}
    for partitionable in (True, False):
        with jax.threefry_partitionable(partitionable):
            draw = jax.jit(jax.vmap(lambda k: jax.random.uniform(k, (BATCH, N_FEATURES))))
            draw(keys).block_until_ready()
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(20):
                    x = draw(keys)
                x.block_until_ready()
                best = min(best, (time.perf_counter() - t0) / 20 * 1e3)
        out[partitionable] = best
    return out


def run_torch(steps: int, threads: int) -> tuple[float, float]:
    """The Anthropic TMS notebook's trainer: W (instance, feature, hidden), einsum, AdamW."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.nn.init.xavier_normal_(torch.empty(N_INSTANCES, N_FEATURES, N_HIDDEN)))
    b = torch.nn.Parameter(torch.zeros(N_INSTANCES, N_FEATURES))
    importance = (DECAY ** torch.arange(N_FEATURES, dtype=torch.float32))[None, None, :]
    p = torch.tensor(FEATURE_PROBABILITIES, dtype=torch.float32)[:, None, None]
    opt = torch.optim.AdamW([W, b], lr=LR, weight_decay=WD)

    def step():
        shape = (N_INSTANCES, BATCH, N_FEATURES)
        x = torch.where(torch.rand(shape) <= p, torch.rand(shape), torch.zeros(()))
        h = torch.einsum("ibf,ifh->ibh", x, W)
        out = torch.relu(torch.einsum("ibh,ifh->ibf", h, W) + b[:, None, :])
        # per-instance loss (mean over batch of the importance-weighted sum), summed over instances
        loss_per_instance = (importance * (x - out) ** 2).sum(-1).mean(-1)
        opt.zero_grad(set_to_none=True)
        loss_per_instance.sum().backward()
        opt.step()
        return loss_per_instance

    for _ in range(10):  # warm-up (allocator, thread pool)
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    return time.perf_counter() - t0, float(loss.detach().mean()), time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, nargs="+", default=None,
                        help="torch thread counts to try (default: 1 and the torch default); the fastest is compared")
    args = parser.parse_args()
    from slt_superposition.cpu_devices import split_cpu_into_cores

    split_cpu_into_cores()  # as the console script does: one JAX device per core (JAX_NUM_CPU_DEVICES=1: one)
    import torch

    import machine  # benchmarks/machine.py, next to this script

    thread_options = args.torch_threads or sorted({1, torch.get_num_threads()})
    print(f"machine: {machine.describe()}, torch {torch.__version__}")
    print(f"grid: n={N_FEATURES}, m={N_HIDDEN}, {N_INSTANCES} instances, batch {BATCH}, AdamW, "
          f"{args.steps} steps; best of {args.rounds} alternating rounds")
    total = N_INSTANCES * args.steps
    compile_seconds, run_jax = jax_trainer(args.steps)
    jax_best, torch_best = (float("inf"), None, None), {t: (float("inf"), None, None) for t in thread_options}
    jax_cpu, torch_cpu = float("inf"), {t: float("inf") for t in thread_options}  # best CPU time of the process
    for _ in range(args.rounds):
        result = run_jax()
        jax_best, jax_cpu = min(jax_best, result), min(jax_cpu, result[2])
        for threads in thread_options:
            result = run_torch(args.steps, threads)
            torch_best[threads], torch_cpu[threads] = min(torch_best[threads], result), min(torch_cpu[threads], result[2])
    jax_rate = total / jax_best[0]
    print(f"jax   (this package):   {jax_rate:10.0f} instance-steps/s  ({jax_best[0]:.2f} s, CPU {jax_cpu:.2f} s; "
          f"compile {compile_seconds:.2f} s, not included; last-window loss {jax_best[1]:.4f})")
    torch_rates = {}
    for threads, (seconds, loss, _) in torch_best.items():
        torch_rates[threads] = total / seconds
        print(f"torch ({threads} thread{'s' if threads > 1 else ''}):      {torch_rates[threads]:10.0f} instance-steps/s  "
              f"({seconds:.2f} s, CPU {torch_cpu[threads]:.2f} s; last-step loss {loss:.4f})")
    best_threads = max(torch_rates, key=torch_rates.get)
    print(f"ratio jax / torch (fastest torch, {best_threads} thread{'s' if best_threads > 1 else ''}): "
          f"{jax_rate / torch_rates[best_threads]:.2f}x")
    if 1 in torch_cpu:  # on a shared machine: the work each side did, as CPU time of the process
        print(f"ratio by CPU time, jax / torch (1 thread): {torch_cpu[1] / jax_cpu:.2f}x")
    cost = rng_cost()
    print(f"one step's uniforms ({N_INSTANCES}x{BATCH}x{N_FEATURES}): threefry partitionable (jax default) "
          f"{cost[True]:.2f} ms, classic (used here) {cost[False]:.2f} ms")


if __name__ == "__main__":
    main()
