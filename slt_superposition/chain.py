"""The SGLD chain program: chunks of steps in a loop, minibatches and noise drawn per chunk.

`instance_program(loss_fn, shape)` returns `run(params, data, key, settings) -> dict`, every
chain of one instance (vmapped). `shape` (`ChainShape`) fixes the compiled program; the
settings (`observers.ChainSettings`: step size, localization, nbeta, chain length, burn-in,
trace block length) are runtime values, so one compiled program serves every step size and
every chain length, and under `vmap` every instance has its own.

Steps run in chunks of `CHUNK_STEPS` (whole epochs for "epoch" sampling): each chunk draws its
minibatch indices, and its SGLD noise when small (`NOISE_BUDGET`), in one call, which is much
cheaper on a CPU than one draw per step. The chunk loop runs ceil(num_steps / chunk) times
(a `while_loop`, so the trip count is runtime); steps at t >= num_steps inside the last chunk
change nothing. Step t of a chain with key k always draws from `fold_in` of k's noise and data
keys at t's chunk, so a longer chain extends a shorter one with the same key.

Randomness: chain c of an instance with key k uses `jax.random.split(k, num_chains)[c]`.

On a CPU, `loss_fn`'s small matrix products run as fused elementwise code
(`slt_superposition.small_dots`, `ELEMENTWISE_DOTS`) and the gradient's sums over the minibatch
rows are rewritten for XLA:CPU (`slt_superposition.long_sums`, `LONG_SUMS`), both by
`loss_and_gradient`, the one place a chain's loss and gradient are built; compile the program with
`llc.CPU_COMPILER_OPTIONS` (every caller in this package does): XLA's default YNNPACK fusions
run those sums far slower. The program's parts carry `jax.named_scope` names (`SCOPES`), which
`benchmarks/chain_profile.py` uses to say where the time goes.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_superposition.observers import ChainSettings, StepContext, default_observers
from slt_superposition.random import random_permutations, standard_normal, uniform_indices
from slt_superposition.sampling_progress import chunk_tick
from slt_superposition.mala import mala
from slt_superposition.sgld import sgld, tree_normal
from slt_superposition.long_sums import long_sums_rewritten
from slt_superposition.small_dots import small_dots_as_elementwise

PyTree = Any
CHUNK_STEPS = 64  # steps whose minibatch indices (and noise) are drawn together
NOISE_BUDGET = 2**18  # floats per chain: a chunk's SGLD noise is drawn at once below this size
ELEMENTWISE_DOTS = True  # on a CPU, small matrix products in loss_fn as fused elementwise code (small_dots)
LONG_SUMS = True  # on a CPU, the gradient's sums over the minibatch rows rewritten for XLA:CPU (long_sums)
# a minibatch step's excess is L_B(w_t) - L_B(w*) (the same rows at w*, from per-row losses computed once),
# not L_B(w_t) - L_n(w*): the same expectation, without the minibatch's sampling noise at w* (llc.py's docstring)
PAIRED_EXCESS = True
ANCHOR_ROWS = 4096  # rows per call when computing the per-row losses at w*
# names of the program's parts in the compiled program's op metadata (jax.named_scope), so a profile
# can say where the time goes (benchmarks/chain_profile.py); they change no number
SCOPES = {"indices": "minibatch_indices", "noise": "sgld_noise", "gather": "minibatch_gather",
          "step": "sgld_step", "observers": "observers"}


class ChainShape(NamedTuple):
    """What fixes the compiled program: chain count, trace length, minibatching, data and
    parameter sizes."""

    num_chains: int
    n_blocks: int
    batch_size: int | None
    sampling: str
    n: int
    n_parameters: int
    progress: bool = False  # one host call per chunk for the progress bar (slt_superposition.sampling_progress)
    metropolis: bool = False  # accept or reject every step (slt_superposition.mala; full batch only)


def chunk_length(shape: ChainShape) -> int:
    """Steps per chunk: `CHUNK_STEPS`, or whole epochs for "epoch" sampling."""
    if shape.batch_size is not None and shape.sampling == "epoch":
        per_epoch = shape.n // shape.batch_size
        return per_epoch * max(1, CHUNK_STEPS // per_epoch)
    return CHUNK_STEPS


def _take(data: PyTree, idx: jax.Array) -> PyTree:
    # indices are in range by construction; "clip" skips the out-of-bounds fill handling
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), data)


def _chunk_batches(shape: ChainShape, chunk: int, data_key, c):
    """Minibatch indices `(chunk, B)` of chunk c (None: full batch)."""
    B, n = shape.batch_size, shape.n
    if B is None:
        return None
    key = jax.random.fold_in(data_key, c)
    if shape.sampling != "epoch":
        return uniform_indices(key, (chunk, B), n)
    per_epoch = n // B
    n_epochs = chunk // per_epoch
    perms = random_permutations(key, n_epochs, n)
    return perms[:, : per_epoch * B].reshape(n_epochs * per_epoch, B)


def loss_and_gradient(flat_loss: Callable) -> tuple[Callable, Callable]:
    """`(loss, value_and_grad)` of a chain's `flat_loss(w, batch) -> scalar` as the chains compute
    them: on a CPU with the rewrites `ELEMENTWISE_DOTS` and `LONG_SUMS` (same values to float32
    rounding; read when the program is traced), elsewhere `flat_loss` and its `jax.value_and_grad`.
    Pass both to `sgld.sgld(loss, ..., value_and_grad=value_and_grad)`."""
    on_cpu = jax.default_backend() == "cpu"
    if ELEMENTWISE_DOTS and on_cpu:
        flat_loss = small_dots_as_elementwise(flat_loss)
    value_and_grad = jax.value_and_grad(flat_loss)
    if LONG_SUMS and on_cpu:
        value_and_grad = long_sums_rewritten(value_and_grad)
    return flat_loss, value_and_grad


def anchor_row_losses(loss_fn: Callable, params: PyTree, data: PyTree) -> jax.Array | None:
    """`(n,)` the loss of each data row alone at w* (`loss_fn(params, row)`), or None where
    `PAIRED_EXCESS` is off. `loss_fn` is the mean loss over its batch (`estimate_llc`'s contract),
    so the mean of a minibatch's rows is L_B(w*) exactly (to float32 rounding)."""
    if not PAIRED_EXCESS:
        return None
    one_row = lambda row: loss_fn(params, jax.tree_util.tree_map(lambda a: a[None], row))
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    return jax.lax.map(one_row, data, batch_size=min(n, ANCHOR_ROWS))


ROW_MEAN_ROWS = 16  # rows of the first instance on which `row_mean_gap` checks the paired excess's contract
ROW_MEAN_RTOL = 1e-3  # float32 rounding of a mean over a few rows is ~1e-6 of it


def _whole_and_mean(loss_fn: Callable, params: PyTree, rows: PyTree) -> tuple[jax.Array, jax.Array]:
    """(loss_fn on `rows`, the mean of its one-row losses)."""
    each = jax.vmap(lambda row: loss_fn(params, jax.tree_util.tree_map(lambda a: a[None], row)))(rows)
    return loss_fn(params, rows), jnp.mean(each)


@functools.partial(jax.jit, static_argnums=0)  # traced once per loss_fn and shapes
def _whole_and_mean_here_and_moved(loss_fn: Callable, params: PyTree, rows: PyTree) -> jax.Array:
    """`_whole_and_mean` at `params` and at `moved_off(params)`, `(2, 2)`: one program, one fetch."""
    return jnp.stack([jnp.stack(_whole_and_mean(loss_fn, point, rows)) for point in (params, moved_off(params))])


def row_mean_gap(loss_fn: Callable, params: PyTree, rows: PyTree) -> tuple[float, float] | None:
    """(loss_fn on `rows`, the mean of its one-row losses) where they differ by more than
    `ROW_MEAN_RTOL`, else None. The paired excess (`PAIRED_EXCESS`) reads L_B(w*) as the mean of
    per-row losses, exact only when `loss_fn` is the mean of its rows' losses (plus any term of the
    params alone, such as a penalty); a sum, or a normalisation over the batch, breaks it.
    `params`: one instance; `rows`: a few data rows `(k, ...)`.

    Checked at `params` and at a point moved off it (`moved_off`): where every row's loss is 0 at
    `params` (a realizable model at its teacher), a sum and a mean agree there and nowhere else."""
    for whole, mean in np.asarray(_whole_and_mean_here_and_moved(loss_fn, params, rows), np.float64):
        if not (np.isfinite(whole) and np.isfinite(mean)):  # e.g. a loss defined only near w*
            continue
        scale = max(abs(whole), abs(mean), np.finfo(np.float32).tiny)
        if abs(whole - mean) > ROW_MEAN_RTOL * scale:
            return float(whole), float(mean)
    return None


def moved_off(params: PyTree) -> PyTree:
    """`params` with each entry moved by 10% of its size plus 0.1, in alternating directions (no
    randomness): a nearby point where the rows' losses are not those at `params`."""
    w, unravel = ravel_pytree(params)
    signs = jnp.where(jnp.arange(w.size) % 2 == 0, 1.0, -1.0).astype(w.dtype)
    return unravel(w + signs * (0.1 * jnp.abs(w) + 0.1))


def minibatch_excess(loss: jax.Array, init_loss: jax.Array, row_losses: jax.Array | None,
                     idx: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(excess, loss as recorded) of a step whose loss on its batch (rows `idx`; None: full batch)
    is `loss`. With per-row losses at w*: excess L_B(w_t) - L_B(w*), an unbiased estimate of
    L_n(w_t) - L_n(w*) whose variance lacks the batch's sampling noise at w*, recorded as
    L_n(w*) + excess; else L_B(w_t) - L_n(w*) and L_B(w_t)."""
    if idx is None or row_losses is None:
        return loss - init_loss, loss
    excess = loss - jnp.mean(jnp.take(row_losses, idx, mode="clip"))
    return excess, init_loss + excess


def instance_program(loss_fn: Callable, shape: ChainShape, observers=None) -> Callable:
    """`run(params, data, key, settings) -> dict` for one instance: `init_loss` and, per chain
    (leading axis `chain`), `final_position` (the flat parameter vector after the chain's last step,
    `ravel_pytree` order) and every observer's outputs (`observers.default_observers` unless given).
    Chain c runs on `jax.random.split(key, shape.num_chains)[c]` (`chains_program`)."""
    run_chains = chains_program(loss_fn, shape, observers)

    def run(params, data, key, settings: ChainSettings):
        return run_chains(params, data, jax.random.split(key, shape.num_chains), settings)

    return run


def chains_program(loss_fn: Callable, shape: ChainShape, observers=None) -> Callable:
    """`run(params, data, chain_keys, settings) -> dict`: `instance_program` with the chains' keys
    given, `chain_keys: (shape.num_chains,)`. A chain's numbers depend on its own key only, so an
    instance's chains can run as groups of this program (`llc.sample_chains` on spare devices)."""
    observers = observers or default_observers(shape.n_parameters, shape.n_blocks, shape.metropolis)
    chunk = chunk_length(shape)
    pregenerate = chunk * shape.n_parameters <= NOISE_BUDGET

    def run_chain(key, w_star, unravel, data, init_loss, row_losses, settings: ChainSettings):
        flat_loss, value_and_grad = loss_and_gradient(lambda w, batch: loss_fn(unravel(w), batch))
        kernel_settings = dict(step_size=settings.step_size, localization=settings.localization, nbeta=settings.nbeta,
                               value_and_grad=value_and_grad)
        kernel = (mala if shape.metropolis else sgld)(flat_loss, w_star, **kernel_settings)
        noise_key, data_key = jax.random.split(key)
        uniform_key = jax.random.fold_in(key, 1)  # Metropolis chains: the accept/reject draws

        def sgld_step(position, minibatch, t, noise):
            state = kernel.init(position)
            if noise is None:
                state, info = kernel.step(jax.random.fold_in(noise_key, t), state, minibatch)
            else:
                state, info = kernel.step_with_noise(state, minibatch, noise)
            return state.position, state.position, info, True

        def mala_step(state, minibatch, t, noise, uniform):
            if noise is None:  # the draw SGLD's kernel.step makes
                noise = tree_normal(jax.random.fold_in(noise_key, t), state.position)
            new, info, accepted = kernel.step_with_noise(state, minibatch, noise, uniform)
            return new, new.position, info, accepted

        def step(carry, xs):
            current, states = carry  # current: the position (SGLD) or the kernel's state (MALA)
            t, idx, noise, uniform = xs
            with jax.named_scope(SCOPES["gather"]):
                minibatch = data if idx is None else _take(data, idx)
            with jax.named_scope(SCOPES["step"]):
                if shape.metropolis:
                    new, position, info, accepted = mala_step(current, minibatch, t, noise, uniform)
                else:
                    new, position, info, accepted = sgld_step(current, minibatch, t, noise)
            with jax.named_scope(SCOPES["observers"]):
                active = t < settings.num_steps
                finite = (jnp.isfinite(info.loss) & jnp.isfinite(info.drift).all()
                          & jnp.isfinite(position).all())
                excess, loss = minibatch_excess(info.loss, init_loss, row_losses, idx)
                ctx = StepContext(t, active, active & (t >= settings.num_burnin), loss, excess, finite, accepted)
                states = tuple(obs.update(s, ctx, info, settings) for obs, s in zip(observers, states))
                current = jax.tree_util.tree_map(lambda a, b: jnp.where(active, a, b), new, current)
            return (current, states), None

        def run_chunk(c, carry):
            ts = c * chunk + jnp.arange(chunk)
            if shape.progress:  # adds the host call's int32 zero: reports the chunk, changes no number
                ts = ts + chunk_tick(c)
            noise = None
            if pregenerate:
                with jax.named_scope(SCOPES["noise"]):
                    noise = standard_normal(jax.random.fold_in(noise_key, c), (chunk,) + w_star.shape, w_star.dtype)
            with jax.named_scope(SCOPES["indices"]):
                batches = _chunk_batches(shape, chunk, data_key, c)
            uniforms = (jax.random.uniform(jax.random.fold_in(uniform_key, c), (chunk,), w_star.dtype)
                        if shape.metropolis else None)
            carry, _ = jax.lax.scan(step, carry, (ts, batches, noise, uniforms))
            return carry

        n_chunks = (settings.num_steps + chunk - 1) // chunk
        states = tuple(obs.init(w_star, settings) for obs in observers)
        start = kernel.init(w_star, data) if shape.metropolis else w_star
        current, states = jax.lax.fori_loop(0, n_chunks, run_chunk, (start, states))
        out = {"final_position": current.position if shape.metropolis else current}
        for obs, s in zip(observers, states):
            out.update(obs.finalize(s, settings))
        if "diverged" in out and "llc_per_chain" in out:
            out["diverged"] = out["diverged"] | ~jnp.isfinite(out["llc_per_chain"])
        return out

    def run(params, data, chain_keys, settings: ChainSettings):
        init_loss = loss_fn(params, data)
        row_losses = anchor_row_losses(loss_fn, params, data) if shape.batch_size is not None else None
        # chains move a flat parameter vector: one noise draw and a few vector ops per step
        w_star, unravel = ravel_pytree(params)
        per_chain = jax.vmap(lambda ck: run_chain(ck, w_star, unravel, data, init_loss, row_losses,
                                                  settings))(chain_keys)
        return {"init_loss": init_loss, **per_chain}

    return run
