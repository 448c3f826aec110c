"""TopK mask of the SAE: the counting mask `analysis.sae._topk_codes` uses against `lax.top_k`.

    python benchmarks/sae_topk.py            # the flagship's n = 20, m = 5 SAE shapes

Times both masks side by side on the same pre-activations (one program each, best of
`--repeats` calls after a warm-up) and prints the ratio; XLA:CPU runs `top_k` as a sort per row.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp


def best_time(fn, x, repeats: int) -> float:
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from analysis.sae import _topk_codes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dictionaries", type=int, default=136, help="vmapped (instance x dictionary) count")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--latents", type=int, default=21, help="padded dictionary width (n + 1 for n = 20)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    pre = jax.random.normal(jax.random.key(0), (args.dictionaries, args.batch, args.latents))
    k = args.k
    counting = jax.jit(lambda p: _topk_codes(p, k))
    sorting = jax.jit(lambda p: jnp.where(p >= jax.lax.top_k(p, k)[0][..., -1:], jax.nn.relu(p), 0.0))
    assert bool(jnp.all(counting(pre) == sorting(pre))), "the two masks disagree"
    t_count, t_sort = best_time(counting, pre, args.repeats), best_time(sorting, pre, args.repeats)
    print(f"device: {jax.devices()[0].device_kind}; pre-activations {tuple(pre.shape)}, k = {k}")
    print(f"counting mask: {t_count * 1e3:.2f} ms   lax.top_k mask: {t_sort * 1e3:.2f} ms   "
          f"ratio {t_sort / t_count:.1f}x")


if __name__ == "__main__":
    main()
