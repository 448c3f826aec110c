"""Where the chains of a wide deep linear network go at long sampler times, and what it does to the LLC.

In the DLN panel the wide cases (3-10-10-3 rank 2, 2-20-2 rank 1) read near lambda at short sampler
times and then rise with the chain length at a fixed step size, and a smaller step size at equal
sampler time reads lower (docs/experiments/dln_validation.md). Two explanations predict different
things along the chain:

- drift along the layers' rescaling symmetry (W_l -> W_l A, W_{l-1} -> A^-1 W_{l-1} leaves the
  function unchanged, so the chain diffuses along these flat directions, held only by the weak
  localization): the layer norms spread, the Hessian's top eigenvalue grows, and with it the
  step size's discretisation bias (the quadratic prediction at the chain's position, not at w*);
- drift to less singular points of the set of true parameters (a layer gaining rank beyond r while
  the product keeps rank r), whose local coefficient is larger: the (r+1)-th singular values grow,
  and the rise does not shrink with the step size.

This study runs the panel's setting (compressed full-batch data, nbeta = n / log n of n = 1e5,
localization 1, 4 chains from w*) with the package's SGLD kernel, at each step size up to a common
sampler time, and prints at doubling sampler times: the estimate over the second half of the chain
so far (burn-in half, as `calibrate`'s length stage), and at the chains' current positions the
Hessian's top eigenvalue, the quadratic bias predicted at the step size (`curvature.predicted_step_bias`
on the position's spectrum, as the estimator's check at the chains' ends; here the mean over chains), the layer norms, the largest (r+1)-th / 1st singular value ratio over
the layers, and the distance from w*.

    python -m experiments.dln_wide_drift                                   # 3-10-10-3 rank 2
    python -m experiments.dln_wide_drift --widths 2-20-2 --rank 1 --sampler-time 0.5
    python -m experiments.dln_wide_drift --metropolis --sampler-time 0.512  # the same chains, Metropolis-adjusted
    python -m experiments.dln_wide_drift --metropolis --widths 6-6-6-6 --rank 3 --n 1000000 --step-sizes 1e-7

`--metropolis` adds a Metropolis-Hastings accept/reject to every step (MALA: the SGLD step is the
proposal; full batch, so the potential is exact), which leaves the localized tempered posterior
exactly invariant at any step size: whatever step-size bias the plain chains show, these chains do
not have, at the price of rejected steps (the acceptance rate is printed). Where plain SGLD and MALA
at the same step size and sampler time differ, the difference is SGLD's discretisation bias.
"""

from __future__ import annotations

import argparse
from functools import partial
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments.dln_validation import LOCALIZATION, N_SAMPLES, NBETA, NUM_CHAINS, SEED, parse_widths
from slt_superposition.curvature import curvature_at_positions, hessian_eigenvalues
from slt_superposition.llc import default_nbeta
from slt_superposition.mala import mala
from slt_superposition.sgld import sgld
from slt_superposition.theory import dln_learning_coefficient
from toy_models.dln import dln_compressed_data, dln_data, dln_loss, dln_true_params

BLOCK = 4096  # steps per compiled block; a block's float32 sum of excess losses is added in float64
FIRST_TIME = 0.004  # the first checkpoint's sampler time; then doubling


def chain_blocks(params, data, step_size: float, localization: float, metropolis: bool = False,
                 nbeta: float = NBETA):
    """`run(positions, keys, start, n_blocks) -> (positions, sums (n_blocks, chains), accepted
    (n_blocks, chains))`: BLOCK-step blocks of every chain (vmapped), each block's summed excess loss
    L(w_t) - L(w*) per chain and its number of accepted steps (every step for plain SGLD). Block b of
    a chain draws its noise (and, with `metropolis`, its uniforms) from `fold_in(key, start + b)`."""
    w_star, unravel = ravel_pytree(params)
    flat_loss = lambda w, batch: dln_loss(unravel(w), batch)
    settings = dict(step_size=step_size, localization=localization, nbeta=nbeta)
    kernel = sgld(flat_loss, w_star, **settings)
    exact = mala(flat_loss, w_star, **settings)  # the package's Metropolis-adjusted kernel
    init_loss = flat_loss(w_star, data)

    def sgld_step(w, z):
        state, info = kernel.step_with_noise(kernel.init(w), data, z)
        return state.position, (info.loss - init_loss, jnp.float32(1))

    def mala_step(state, xs):
        state, info, accepted = exact.step_with_noise(state, data, *xs)
        return state, (info.loss - init_loss, accepted.astype(jnp.float32))

    def one_chain(key, start):
        def block(w, b):
            block_key = jax.random.fold_in(key, start + b)
            noise = jax.random.normal(block_key, (BLOCK, w.size), w.dtype)
            if not metropolis:
                w, (excess, accepted) = jax.lax.scan(sgld_step, w, noise)
            else:
                uniforms = jax.random.uniform(jax.random.fold_in(block_key, 1), (BLOCK,), w.dtype)
                state, (excess, accepted) = jax.lax.scan(mala_step, exact.init(w, data), (noise, uniforms))
                w = state.position
            return w, (jnp.sum(excess), jnp.sum(accepted))

        return block

    @partial(jax.jit, static_argnames="n_blocks")
    def run(positions, keys, start, n_blocks: int):
        def chain(position, key):
            return jax.lax.scan(one_chain(key, start), position, jnp.arange(n_blocks))

        return jax.vmap(chain, out_axes=(0, 1))(positions, keys)

    return run, unravel


def describe_positions(flat, unravel, params, data, rank: int, step_size: float, localization: float, key,
                       nbeta: float) -> dict:
    """At each chain's position (`flat (chain, d)`): the Hessian's top eigenvalue and the bias predicted
    there (`curvature.curvature_at_positions`, the estimator's check at the chains' ends), layer norms,
    rank drift and distance from w*; arrays over chains."""
    end = curvature_at_positions(dln_loss, [W[None] for W in params], data, np.asarray(flat)[None],
                                 data_batched=False, step_size=step_size, localization=localization, nbeta=nbeta,
                                 key=key)
    out = {"top": end["top"][0], "bias": end["bias"][0], "norms": [], "rank_ratio": []}
    for w in map(unravel, flat):
        out["norms"].append([float(jnp.linalg.norm(W)) for W in w])
        ratios = [s[rank] / s[0] for s in (np.linalg.svd(np.asarray(W, np.float64), compute_uv=False) for W in w)
                  if len(s) > rank]
        out["rank_ratio"].append(max(ratios) if ratios else 0.0)
    out["distance"] = np.linalg.norm(np.asarray(flat, np.float64) - np.asarray(ravel_pytree(params)[0]), axis=1)
    return out


def run_step_size(params, data, rank: int, step_size: float, sampler_time: float, localization: float, key,
                  metropolis: bool = False, n: int = N_SAMPLES) -> None:
    nbeta = default_nbeta(n)
    run, unravel = chain_blocks(params, data, step_size, localization, metropolis, nbeta)
    keys = jax.random.split(key, NUM_CHAINS)
    flat = jnp.broadcast_to(ravel_pytree(params)[0], (NUM_CHAINS, sum(W.size for W in params)))
    sums = np.zeros((0, NUM_CHAINS))  # per block, float64
    accepted = np.zeros((0, NUM_CHAINS))
    done = 0
    checkpoints, t = [], FIRST_TIME
    while t <= sampler_time * (1 + 1e-9):
        checkpoints.append(t)
        t *= 2
    start = time.perf_counter()
    for t in checkpoints:
        n_blocks = max(1, round(t / step_size / BLOCK)) - done
        if n_blocks <= 0:  # a checkpoint shorter than the blocks already run (large step sizes): nothing new
            continue
        flat, (block_sums, block_accepted) = run(flat, keys, done, n_blocks)
        sums = np.concatenate([sums, np.asarray(block_sums, np.float64)])
        accepted = np.concatenate([accepted, np.asarray(block_accepted, np.float64)])
        done += n_blocks
        half = done // 2
        per_chain = nbeta * sums[half:].sum(axis=0) / ((done - half) * BLOCK)
        at = describe_positions(flat, unravel, params, data, rank, step_size, localization, key, nbeta)
        norms = np.mean(at["norms"], axis=0)
        acceptance = f"  accepted {accepted[half:].sum() / ((done - half) * BLOCK * NUM_CHAINS):.3f}" if metropolis else ""
        print(f"{'MALA ' if metropolis else ''}gamma {localization:g} eps {step_size:.3g}  t {done * BLOCK * step_size:7.3f} ({done * BLOCK:>9} steps): "
              f"LLC {per_chain.mean():5.2f} (chains {' '.join(f'{v:.2f}' for v in per_chain)})  "
              f"top h {np.mean(at['top']):8.2f}  predicted bias {np.mean(at['bias']):+7.1%}  "
              f"|W_l| {'/'.join(f'{v:.2f}' for v in norms)}  s_r+1/s_1 {np.max(at['rank_ratio']):.3f}  "
              f"|w-w*| {np.mean(at['distance']):.2f}{acceptance}  [{time.perf_counter() - start:.0f} s]", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=parse_widths, default="3-10-10-3",
                        help="layer widths, dash-separated (default %(default)s)")
    parser.add_argument("--rank", type=int, default=2, help="rank of every layer of w* (default %(default)s)")
    parser.add_argument("--step-sizes", nargs="+", type=float, default=[1e-7, 3.16e-8],
                        help="step sizes, each run to the same sampler time (default %(default)s)")
    parser.add_argument("--sampler-time", type=float, default=2.048,
                        help="last checkpoint's step size x steps (default %(default)s, the panel's cap at 1e-7)")
    parser.add_argument("--localization", type=float, default=LOCALIZATION,
                        help="localization gamma (default %(default)s, the panel's)")
    parser.add_argument("--metropolis", action="store_true",
                        help="accept or reject every step (MALA, exact at any step size) instead of plain SGLD")
    parser.add_argument("--n", type=int, default=N_SAMPLES,
                        help="samples n of the data (nbeta = n / log n; default %(default)s, the panel's)")
    args = parser.parse_args(argv)
    widths = args.widths
    if not all(eps > 0 for eps in args.step_sizes) or not args.sampler_time >= FIRST_TIME or not args.localization > 0:
        parser.error(f"step sizes and --localization must be positive and --sampler-time at least {FIRST_TIME}")
    if args.n < sum(args.widths[:1] + args.widths[-1:]):
        parser.error("--n must be at least H_0 + H_L (the compressed rows)")
    k_true, k_data, _, k_est = jax.random.split(jax.random.key(SEED), 4)
    params = dln_true_params(k_true, widths, args.rank, "singular")
    data = dln_compressed_data(*dln_data(k_data, params, args.n))
    h = np.asarray(hessian_eigenvalues(dln_loss, params, data), np.float64)
    print(f"{'-'.join(map(str, widths))} rank {args.rank}, n = {args.n}: lambda = "
          f"{dln_learning_coefficient(widths, args.rank):g}; at w*: top h "
          f"{h.max():.2f}, |W_l| {'/'.join(f'{float(jnp.linalg.norm(W)):.2f}' for W in params)}", flush=True)
    for eps in args.step_sizes:
        run_step_size(params, data, args.rank, eps, args.sampler_time, args.localization, k_est, args.metropolis, args.n)


if __name__ == "__main__":
    main()
