"""Coupled chains for the step-size check: one Brownian path drives the chain at eps and the
chain at eps / k, so their difference is the discretisation's, not the noise's.

Step t of the coarse chain (step size eps) and steps 3t, 3t+1, ... of the fine chain (eps / k,
k substeps per coarse step) use the same minibatch and the same Brownian increment over their
common time interval: the fine chain draws k standard normals z_1..z_k and moves by
sqrt(eps / k) z_j per substep, the coarse chain moves by sqrt(eps) (z_1 + ... + z_k) / sqrt(k)
(the sum of the same increments). Each chain on its own is an ordinary SGLD chain; together
(a synchronous coupling) they stay close wherever the potential contracts, so the variance of
the difference of their LLC estimates is far smaller than that of either estimate, and a short
run resolves a few-percent bias. Holding the minibatch over the k substeps keeps the minibatch
gradient noise per unit of sampler time equal in both chains: the check isolates the Langevin
discretisation; `checks`' batch check measures the minibatch part.

`sample_coupled` runs every instance's pairs and returns, per instance and chain (leading axes
`instance`, `chain`; numpy, the last arithmetic in float64 on the host):

    llc_coarse, llc_fine:   nbeta * mean over post-burn-in coarse steps of the excess loss
                            (`chain.minibatch_excess`: L_B(w_t) - L_B(w*) with a minibatch), the fine
                            chain read at the coarse times (its positions w_{kt})
    diff_blocks:            (blocks,) the mean of nbeta (L_B(coarse) - L_B(fine)) per block of
                            post-burn-in steps (batch means for the standard error; NaN: empty)
    diverged:               either chain produced a non-finite loss, gradient or position
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_superposition import chain as chain_module
from slt_superposition import compensated
from slt_superposition.chain import ChainShape
from slt_superposition.chain_groups import in_groups, join_instances
from slt_superposition.instances import over_instances
from slt_superposition.observers import ChainSettings
from slt_superposition.random import standard_normal, uniform_indices
from slt_superposition.sgld import sgld
from slt_superposition.sharding import default_mesh, run_sharded

PyTree = Any
CHUNK = 64  # coarse steps whose indices and noise are drawn in one call
DIFF_BLOCKS = 10  # batch-means blocks of the paired difference per chain


def coupled_program(loss_fn: Callable, shape: ChainShape, substeps: int = 3, keys_per_chain: bool = False
                    ) -> Callable:
    """`run(params, data, key, settings)` for one instance (`keys_per_chain`: `key` is the chains'
    keys, `(shape.num_chains,)`, as `chain.chains_program`); `settings.step_size` is the coarse eps,
    `settings.num_steps` / `num_burnin` count coarse steps (the fine chain runs `substeps` x as many).
    Per chain: `excess_sum` (sum of the coarse chain's excess loss over post-burn-in steps), `diff_sums` and
    `diff_counts` (`DIFF_BLOCKS`,) (sums and counts of L_B(coarse) - L_B(fine) per block), `diverged`;
    `sample_coupled` turns them into estimates."""
    k = int(substeps)

    def run_chain(key, w_star, unravel, data, init_loss, row_losses, settings: ChainSettings):
        # the loss and gradient exactly as the main chain computes them (chain.loss_and_gradient)
        flat_loss, value_and_grad = chain_module.loss_and_gradient(lambda w, batch: loss_fn(unravel(w), batch))
        kernel = lambda h: sgld(flat_loss, w_star, step_size=h, localization=settings.localization,
                                nbeta=settings.nbeta, value_and_grad=value_and_grad)
        coarse_kernel, fine_kernel = kernel(settings.step_size), kernel(settings.step_size / k)
        noise_key, data_key = jax.random.split(key)

        def move(kern, w, batch, z):
            state, info = kern.step_with_noise(kern.init(w), batch, z)
            return state.position, info.loss, jnp.isfinite(info.loss) & jnp.isfinite(info.drift).all()

        def step(carry, xs):
            coarse, fine, total, blocks, counts, ok = carry
            t, idx, z = xs  # z: (k, d)
            batch = data if idx is None else jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0, mode="clip"),
                                                                     data)
            new_coarse, loss_c, ok_c = move(coarse_kernel, coarse, batch, z.sum(axis=0) / jnp.sqrt(float(k)))
            new_fine, loss_f, ok_f = move(fine_kernel, fine, batch, z[0])
            for j in range(1, k):
                new_fine, _, ok_j = move(fine_kernel, new_fine, batch, z[j])
                ok_f &= ok_j
            active = t < settings.num_steps
            post = active & (t >= settings.num_burnin)
            finite = ok_c & ok_f & jnp.isfinite(new_coarse).all() & jnp.isfinite(new_fine).all()
            excess, _ = chain_module.minibatch_excess(loss_c, init_loss, row_losses, idx)
            total = compensated.add(total, jnp.where(post, excess, 0.0))
            b = jnp.clip((t - settings.num_burnin) * DIFF_BLOCKS // jnp.maximum(settings.num_steps
                                                                                - settings.num_burnin, 1),
                         0, DIFF_BLOCKS - 1)
            blocks = compensated.add_at(blocks, b, jnp.where(post, loss_c - loss_f, 0.0))
            counts = counts.at[b].add(post.astype(jnp.int32))
            ok = ok & jnp.where(active, finite, True)
            return (jnp.where(active, new_coarse, coarse), jnp.where(active, new_fine, fine), total, blocks, counts, ok), None

        def run_chunk(c, carry):
            ts = c * CHUNK + jnp.arange(CHUNK)
            z = standard_normal(jax.random.fold_in(noise_key, c), (CHUNK, k) + w_star.shape, w_star.dtype)
            idx = (None if shape.batch_size is None else
                   uniform_indices(jax.random.fold_in(data_key, c), (CHUNK, shape.batch_size), shape.n))
            carry, _ = jax.lax.scan(step, carry, (ts, idx, z))
            return carry

        n_chunks = (settings.num_steps + CHUNK - 1) // CHUNK
        init = (w_star, w_star, compensated.zeros(), compensated.zeros((DIFF_BLOCKS,)),
                jnp.zeros(DIFF_BLOCKS, jnp.int32), jnp.array(True))
        _, _, total, blocks, counts, ok = jax.lax.fori_loop(0, n_chunks, run_chunk, init)
        # compensated sums over the post-burn-in steps (slt_superposition.compensated); integer counts
        return {"excess_sum": compensated.value(total), "diff_sums": compensated.value(blocks),
                "diff_counts": counts, "diverged": ~ok}

    def run(params, data, key, settings: ChainSettings):
        init_loss = loss_fn(params, data)
        row_losses = (chain_module.anchor_row_losses(loss_fn, params, data) if shape.batch_size is not None
                      else None)
        w_star, unravel = ravel_pytree(params)
        chain_keys = key if keys_per_chain else jax.random.split(key, shape.num_chains)
        return jax.vmap(lambda ck: run_chain(ck, w_star, unravel, data, init_loss, row_losses, settings))(chain_keys)

    return run


@functools.lru_cache(maxsize=16)
def _block_function(loss_fn: Callable, shape: ChainShape, substeps: int, data_batched: bool,
                    keys_per_chain: bool = False) -> Callable:
    return over_instances(coupled_program(loss_fn, shape, substeps, keys_per_chain), data_batched)


def sample_coupled(loss_fn: Callable, params: PyTree, data: PyTree, keys: jax.Array, settings: ChainSettings,
                   shape: ChainShape, *, substeps: int = 3, data_batched: bool, mesh=None,
                   compiler_options: dict | None = None, block_size: int | None = None) -> dict:
    """Every instance's coupled pairs (inputs as `llc.sample_chains`); numpy outputs with a
    leading instance axis. Runs through `sharding.run_sharded` in blocks of `block_size` instances
    (None: `sharding.balanced_block`), so the bits do not depend on the device count; with blocks
    of one instance and fewer instances than devices, each instance's chains run as groups on the
    spare devices, as `llc.sample_chains` does (`chain_groups`)."""
    mesh = default_mesh() if mesh is None else mesh
    groups, (grouped_params, grouped_data, grouped_keys, grouped_settings), shape = in_groups(
        params, data, keys, settings, shape, n_devices=mesh.devices.size, block_size=block_size,
        data_batched=data_batched)
    block = _block_function(loss_fn, shape._replace(progress=False), int(substeps), data_batched, groups > 1)
    options = dict(mesh=mesh, compiler_options=compiler_options, block=block_size)
    if data_batched:
        raw = run_sharded(block, (grouped_params, grouped_data, grouped_keys, grouped_settings), **options)
    else:
        raw = run_sharded(block, (grouped_params, grouped_keys, grouped_settings), data, **options)
    raw = join_instances(raw, groups)
    # the last arithmetic in float64 on the host: compiled reductions of the block sums rounded
    # differently on different meshes
    nbeta = np.asarray(settings.nbeta, np.float64)[:, None]
    draws = np.asarray(settings.num_steps - settings.num_burnin, np.float64)[:, None]
    total, sums = np.asarray(raw["excess_sum"], np.float64), np.asarray(raw["diff_sums"], np.float64)
    counts = np.asarray(raw["diff_counts"], np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        blocks = np.where(counts > 0, nbeta[..., None] * sums / counts, np.nan)
    return {"llc_coarse": nbeta * total / draws, "llc_fine": nbeta * (total - sums.sum(axis=-1)) / draws,
            "diff_blocks": blocks, "diverged": np.asarray(raw["diverged"], bool)}
