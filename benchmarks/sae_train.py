"""SAE training throughput: `analysis.sae.train_sae` (JAX, every dictionary in one jitted scan)
against a plain PyTorch TopK SAE trainer (one SAE at a time, as Gao et al.'s reference code
trains one), same shapes, same steps, side by side in one process.

    python benchmarks/sae_train.py [--steps 500] [--instances 4] [--rounds 2] [--torch-threads 1]

Shapes: activations of `--instances` TMS-like instances (hidden 5, 8192 samples each), TopK
SAEs of dictionary sizes 5, 10, 15, 20 on each (so instances x 4 dictionaries), k = 1, batch
256, Adam lr 3e-3, AuxK, decoder columns kept at unit norm with the parallel gradient
projected out, one restart. Prints SAE-steps per second for both and the ratio. JAX compile
time is measured separately (the first call compiles; a second identical call is timed);
the sides alternate for `--rounds` rounds and each reports its best round.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

HIDDEN, SAMPLES, SIZES, K, BATCH, LR = 5, 8192, (5, 10, 15, 20), 1, 256, 3e-3


def activations(instances: int) -> np.ndarray:
    """h = W x for random unit-column W (5 x 20) and sparse uniform x (p = 0.05): (instance, sample, hidden)."""
    rng = np.random.default_rng(0)
    W = rng.normal(size=(instances, HIDDEN, 20))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    x = rng.uniform(size=(instances, SAMPLES, 20)) * (rng.uniform(size=(instances, SAMPLES, 20)) < 0.05)
    return np.einsum("ihf,isf->ish", W, x).astype(np.float32)


def jax_run(h: np.ndarray, steps: int) -> float:
    import jax

    from analysis.sae import train_sae

    t0 = time.perf_counter()
    ds = train_sae(h, dict_sizes=list(SIZES), k=K, steps=steps, key=jax.random.key(0), batch_size=BATCH,
                   learning_rate=LR, restarts=1, log_every=10)
    ds["fvu"].values  # results are numpy already; this just touches them
    return time.perf_counter() - t0


def torch_run(h: np.ndarray, steps: int) -> float:
    """Train every (instance, size) SAE one after another, as a plain PyTorch trainer would."""
    import torch

    t0 = time.perf_counter()
    for inst in range(h.shape[0]):
        data = torch.from_numpy(h[inst])
        variance = ((data - data.mean(0)) ** 2).sum(-1).mean()
        for size in SIZES:
            torch_train_one(data, variance, size, steps, seed=inst * 100 + size)
    return time.perf_counter() - t0


def torch_train_one(data, variance, n_latents: int, steps: int, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(HIDDEN, n_latents, generator=gen)
    W_dec /= W_dec.norm(dim=0, keepdim=True)
    params = {"W_enc": W_dec.T.clone().requires_grad_(), "b_enc": torch.zeros(n_latents, requires_grad=True),
              "W_dec": W_dec.clone().requires_grad_(), "b_pre": data.mean(0).clone().requires_grad_()}
    opt = torch.optim.Adam(params.values(), lr=LR, eps=6.25e-10)
    since_fired = torch.zeros(n_latents, dtype=torch.long)
    dead_after = max(1, 100_000 // BATCH)
    k_aux = max(1, HIDDEN // 2)
    for _ in range(steps):
        batch = data[torch.randint(0, data.shape[0], (BATCH,), generator=gen)]
        pre = (batch - params["b_pre"]) @ params["W_enc"].T + params["b_enc"]
        values, index = pre.topk(K, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, index, torch.relu(values))
        x_hat = z @ params["W_dec"].T + params["b_pre"]
        loss = ((batch - x_hat) ** 2).sum(-1).mean() / variance
        dead = since_fired >= dead_after
        if dead.any():
            e = (batch - x_hat).detach()
            aux_pre = pre.masked_fill(~dead, float("-inf"))
            v, i = aux_pre.topk(min(k_aux, int(dead.sum())), dim=-1)
            e_hat = torch.zeros_like(pre).scatter(-1, i, torch.relu(v)) @ params["W_dec"].T
            loss = loss + ((e - e_hat) ** 2).sum(-1).mean() / ((e - e.mean(0)) ** 2).sum(-1).mean().clamp_min(1e-12) / 32
        opt.zero_grad()
        loss.backward()
        with torch.no_grad():
            W = params["W_dec"]
            W.grad -= W * (W.grad * W).sum(0, keepdim=True)
        opt.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=0, keepdim=True)
            fired = (z > 0).any(0)
            since_fired = torch.where(fired, 0, since_fired + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads (1: these shapes are far too small to split, and extra threads "
                        "spin against other processes on a shared CPU)")
    args = parser.parse_args()
    import jax
    import torch

    torch.set_num_threads(args.torch_threads)

    h = activations(args.instances)
    n_sae = args.instances * len(SIZES)
    compile_and_run = jax_run(h, args.steps)
    jax_times, torch_times = [], []
    for _ in range(args.rounds):
        jax_times.append(jax_run(h, args.steps))
        torch_times.append(torch_run(h, args.steps))
    t_jax, t_torch = min(jax_times), min(torch_times)
    print(f"machine: {platform.processor() or platform.machine()}, jax {jax.__version__} on {jax.default_backend()}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"{n_sae} SAEs (instances {args.instances} x sizes {SIZES}), hidden {HIDDEN}, k {K}, batch {BATCH}, "
          f"{args.steps} steps; best of {args.rounds} rounds")
    print(f"jax train_sae (one program): {n_sae * args.steps / t_jax:,.0f} SAE-steps/s ({t_jax:.2f} s; first call "
          f"with compilation {compile_and_run:.2f} s)")
    print(f"torch, one SAE at a time:   {n_sae * args.steps / t_torch:,.0f} SAE-steps/s ({t_torch:.2f} s)")
    print(f"ratio (jax / torch): {t_torch / t_jax:.1f}x")


if __name__ == "__main__":
    main()
