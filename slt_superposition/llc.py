"""Local learning coefficient (LLC) estimation by SGLD: the estimator and its settings.

The formula (Lau et al. 2023), the only place it lives in this package:

    lambda_hat = nbeta * (E_w[L_n(w)] - L_n(w*)),     nbeta = n / log n by default,

with E_w over the SGLD chain localized at w* after burn-in. Which losses enter:

- `L_n(w*)` (`init_loss`) is the loss on the *whole* data at w*, computed once, exactly.
  devinterp 1.3 instead averages the minibatch losses of `num_chains` loader batches at w*;
  when n is a multiple of the batch size and the loader has at most `num_chains` batches
  the two coincide, otherwise devinterp's is a noisier estimate of the same number.
- `E_w[L_n(w)]` is the running mean, over the post-burn-in steps of each chain, of the
  *minibatch* loss L_B(w_t) at the pre-step position w_t: the loss SGLD already computes
  for its gradient, as devinterp 1.3 does. L_B(w_t) is an unbiased estimate of L_n(w_t),
  so the mean is unbiased for E_w[L_n]; with `batch_size=None` it is L_n(w_t) exactly.

Minibatches: `sampling="replacement"` (default) draws each step's minibatch as
`batch_size` indices uniform on 0..n-1, independently across steps and chains: O(batch)
work per step whatever n. `sampling="epoch"` draws without replacement, each chain
reshuffling the data every epoch of n // batch_size steps (the remainder n % batch_size
is dropped for that epoch), like devinterp's shuffled DataLoader; it needs one sort of n
keys per epoch, which on CPU costs as much as the SGLD steps themselves for small models
(see benchmarks/llc_throughput.py). Both give unbiased minibatch losses and gradients;
with replacement the gradient noise variance is larger by a factor (n - 1) / (n - B),
a second-order effect in the step size (it adds eps^2 nbeta^2 Var / 4 to the eps of the
injected noise).

nbeta: `None` means n / log n (the papers); `"batch"` means batch_size / log(batch_size),
devinterp 1.3's default (`devinterp.utils.default_nbeta(loader)`); or a number. See
`default_nbeta`.

Steps: `num_steps` counts every SGLD step including the `num_burnin` burn-in steps, so
devinterp's `num_draws` is `num_steps - num_burnin`. `llc_std` is the standard deviation
over (non-divergent) chains with ddof=1, as `torch.std` in devinterp.

Compilation: everything (all chains; for `estimate_llc_batched` all instances) is one
jitted program: chains are vmapped, steps run in `lax.scan`. The compiled program is
cached per (loss_fn, static settings, shapes): a repeated call with the same `loss_fn`
object, shapes and `num_chains/num_steps/num_burnin/batch_size/trace_every/sampling`
does not retrace or recompile. `step_size`, `localization` and `nbeta` are runtime
arguments, so sweeping them (calibration) reuses one compiled program as well.

Randomness: chain c of a call with key k uses `jax.random.split(k, num_chains)[c]`; within a
chain, SGLD noise and minibatch indices are drawn per chunk of 64 steps (whole epochs for
"epoch" sampling) from `fold_in` of that key, in one call each, which is cheaper than one
draw per step. (When a chunk's noise would exceed NOISE_BUDGET floats, it is drawn per step.)
These bulk draws use the classic threefry layout, and minibatch indices take one 32-bit
word each (`uniform_indices`), not `randint`'s two: same distributions, several times
cheaper on a CPU, where they were most of the cost of a small model's LLC.

Compiler options: on a CPU the programs are compiled with `CPU_COMPILER_OPTIONS` (no
YNNPACK fusions), faster at these sizes; per program, nothing global changes.

Long runs: the loss trace is summarised online into blocks of `trace_every` steps (the
stored value is the block mean), so memory is chains x num_steps / trace_every; the LLC,
acceptance and below-init fraction are exact running sums over every step regardless.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import sys
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from slt_superposition.diagnostics import (
    DIVERGENCE_FACTOR,
    mala_acceptance_probability,
    mala_log_acceptance,
    rhat_and_ess,
)
from slt_superposition.errors import InputError, require
from slt_superposition.provenance import provenance_attrs
from slt_superposition.sgld import sgld
from slt_superposition.sharding import run_sharded, single_device_mesh

PyTree = Any
SAMPLING = ("replacement", "epoch")
NBETA_CONVENTIONS = ("n", "batch")
CHUNK_STEPS = 64  # steps whose minibatch indices are drawn together (whole epochs for "epoch")
NOISE_BUDGET = 2**18  # floats per chain: a chunk's SGLD noise is drawn at once below this size


@dataclasses.dataclass(frozen=True)
class SGLDConfig:
    """Settings of an SGLD LLC estimate.

    step_size:    eps in w <- w - (eps/2)(nbeta grad L_B + gamma (w - w*)) + N(0, eps).
    localization: gamma, the pull towards w*.
    nbeta:        None -> n / log n; "batch" -> batch_size / log(batch_size) (devinterp 1.3's
                  default); or a positive number.
    num_chains:   independent chains (vmapped).
    num_steps:    SGLD steps per chain, burn-in included.
    num_burnin:   leading steps left out of the LLC and diagnostics (0 <= num_burnin < num_steps).
    batch_size:   minibatch size; None -> full batch.
    trace_every:  the stored loss trace holds means of blocks of this many steps (1 = every step).
    sampling:     "replacement" (i.i.d. minibatch indices) or "epoch" (without replacement,
                  reshuffled every epoch, like a shuffled DataLoader).
    """

    step_size: float
    localization: float
    nbeta: float | str | None = None
    num_chains: int = 8
    num_steps: int = 1000
    num_burnin: int = 0
    batch_size: int | None = None
    trace_every: int = 1
    sampling: str = "replacement"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_nbeta(n: int, batch_size: int | None = None, convention: str = "n") -> float:
    """The default inverse temperature nbeta.

    convention "n": n / log n (Lau et al., Furman & Lau; this package's default).
    convention "batch": m / log m with m = batch_size (or n if None), devinterp 1.3's
    `default_nbeta(loader)`. Both fall back to 1 when the count is <= 1 (as devinterp).
    """
    require(convention in NBETA_CONVENTIONS, f"unknown nbeta convention '{convention}' (known: n, batch)")
    m = n if (convention == "n" or batch_size is None) else batch_size
    return float(m / math.log(m)) if m > 1 else 1.0


def resolve_nbeta(config: SGLDConfig, n: int) -> float:
    """The numeric nbeta that `config` asks for with n samples."""
    if config.nbeta is None:
        return default_nbeta(n, config.batch_size, "n")
    if isinstance(config.nbeta, str):
        return default_nbeta(n, config.batch_size, config.nbeta)
    return float(config.nbeta)


# ----------------------------------------------------------------------------- validation


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate_config(config: SGLDConfig, n: int) -> None:
    """Raise `InputError` for settings that cannot give an estimate with n samples."""
    require(isinstance(config, SGLDConfig), f"config must be an SGLDConfig, got {type(config).__name__}")
    eps, gamma = config.step_size, config.localization
    require(isinstance(eps, (int, float, np.floating)) and math.isfinite(eps) and eps > 0,
            f"step_size must be a positive finite number, got {eps!r}")
    require(isinstance(gamma, (int, float, np.floating)) and math.isfinite(gamma) and gamma >= 0,
            f"localization must be a finite number >= 0, got {gamma!r}")
    if isinstance(config.nbeta, str):
        require(config.nbeta in NBETA_CONVENTIONS,
                f"nbeta must be None, 'n', 'batch' or a positive number, got '{config.nbeta}'")
    elif config.nbeta is not None:
        require(isinstance(config.nbeta, (int, float, np.floating)) and math.isfinite(config.nbeta)
                and config.nbeta > 0, f"nbeta must be a positive finite number, got {config.nbeta!r}")
    require(_is_int(config.num_chains) and config.num_chains >= 1,
            f"num_chains must be an integer >= 1, got {config.num_chains!r}")
    require(_is_int(config.num_steps) and config.num_steps >= 1,
            f"num_steps must be an integer >= 1, got {config.num_steps!r}")
    require(_is_int(config.num_burnin) and 0 <= config.num_burnin < config.num_steps,
            f"num_burnin must be an integer in [0, num_steps={config.num_steps}), got {config.num_burnin!r}")
    require(_is_int(config.trace_every) and config.trace_every >= 1,
            f"trace_every must be an integer >= 1, got {config.trace_every!r}")
    require(config.sampling in SAMPLING, f"sampling must be one of {SAMPLING}, got {config.sampling!r}")
    if config.batch_size is not None:
        require(_is_int(config.batch_size) and config.batch_size >= 1,
                f"batch_size must be None or an integer >= 1, got {config.batch_size!r}")
        require(config.batch_size <= n, f"batch_size {config.batch_size} is larger than the number of samples n={n}")


def _leaves(tree: PyTree, what: str) -> list[np.ndarray]:
    leaves = jax.tree_util.tree_leaves(tree)
    require(len(leaves) > 0, f"{what} has no arrays")
    out = []
    for leaf in leaves:
        try:
            out.append(np.asarray(leaf))
        except Exception:  # noqa: BLE001 - anything not array-like
            raise InputError(f"{what} contains a {type(leaf).__name__}, expected arrays") from None
    return out


def _check_finite(tree: PyTree, leaves: list[np.ndarray], what: str, *, instance_axes: int = 0,
                  describe_instance: Callable[[int], str] | None = None) -> None:
    """Raise `InputError` naming the variable (pytree path) and, for batched inputs, the first
    instance whose values are not finite. `leaves` are `tree`'s leaves as numpy arrays."""
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    for path, leaf in zip(paths, leaves):
        name = f"{what}{path}"
        require(np.issubdtype(leaf.dtype, np.number) or leaf.dtype == bool,
                f"{name} contains a non-numeric array of dtype {leaf.dtype}")
        if not np.issubdtype(leaf.dtype, np.inexact) or np.isfinite(leaf).all():
            continue
        where = ""
        if instance_axes and leaf.ndim:
            bad = ~np.isfinite(leaf).reshape(leaf.shape[0], -1).all(axis=1)
            i = int(np.flatnonzero(bad)[0])
            label = describe_instance(i) if describe_instance else f"instance {i}"
            where = f" at {label} ({int(bad.sum())} of {leaf.shape[0]} instances affected)"
        raise InputError(f"{name} contains non-finite values (NaN or inf){where}")


def _check_inputs(loss_fn, params, data, config, *, instance_axes: int, data_axes: int,
                  describe_instance: Callable[[int], str] | None = None) -> tuple[int, int]:
    """Validate everything before compiling. Returns (n_samples, n_parameters per instance).

    `instance_axes` leading axes of every params leaf are instance axes (flattened to one);
    `data_axes` of data. `describe_instance(i)` names flattened instance i in messages.
    """
    require(callable(loss_fn), "loss_fn must be callable: loss_fn(params, batch) -> scalar")
    p_leaves = _leaves(params, "params")
    d_leaves = _leaves(data, "data")
    for leaf in p_leaves:
        require(np.issubdtype(leaf.dtype, np.floating), f"params must be floating point, found dtype {leaf.dtype}")
        require(leaf.ndim >= instance_axes, "params leaves lack the leading instance axes")
    for leaf in d_leaves:
        require(leaf.ndim >= data_axes + 1, "every data array needs a leading sample axis")
    _check_finite(params, p_leaves, "params", instance_axes=instance_axes, describe_instance=describe_instance)
    _check_finite(data, d_leaves, "data", instance_axes=data_axes, describe_instance=describe_instance)
    sizes = {leaf.shape[data_axes] for leaf in d_leaves}
    require(len(sizes) == 1, f"data arrays disagree on the number of samples (leading sizes {sorted(sizes)})")
    n = sizes.pop()
    require(n >= 1, "data has no samples")
    validate_config(config, n)

    one_params = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x)[instance_axes:], np.asarray(x).dtype), params)
    m = config.batch_size or n
    one_batch = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct((m,) + np.shape(x)[data_axes + 1:], np.asarray(x).dtype), data)
    try:
        out = jax.eval_shape(loss_fn, one_params, one_batch)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - report the user's function failing, on one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(f"loss_fn(params, batch) failed: {type(err).__name__}: {first}") from None
    require(isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()
            and jnp.issubdtype(out.dtype, jnp.floating),
            f"loss_fn must return a floating scalar (mean loss over the batch), got {_describe(out)}")
    d = sum(int(np.prod(leaf.shape[instance_axes:])) for leaf in p_leaves)
    return n, d


def _describe(out) -> str:
    if isinstance(out, jax.ShapeDtypeStruct):
        return f"an array of shape {out.shape} and dtype {out.dtype}"
    return f"a {type(out).__name__}"


# ----------------------------------------------------------------------------- the program


class _Static(NamedTuple):
    """Settings that fix the compiled program (shapes and loop lengths)."""

    num_chains: int
    num_steps: int
    num_burnin: int
    batch_size: int | None
    trace_every: int
    sampling: str
    n: int
    n_parameters: int


class _Carry(NamedTuple):
    position: PyTree
    prev_position: PyTree
    prev_drift: PyTree
    prev_potential: jax.Array
    sum_excess: jax.Array  # sum over post-burn-in steps of L_B(w_t) - L_n(w*)
    n_below: jax.Array  # post-burn-in steps with L_B(w_t) < L_n(w*)
    sum_accept: jax.Array  # MALA acceptance summed over post-burn-in transitions
    max_excess: jax.Array  # max over all steps of L_B(w_t) - L_n(w*)
    nonfinite: jax.Array  # any non-finite loss so far
    trace: jax.Array  # (n_blocks,) block means of L_B(w_t)


def _classic_threefry(draw: Callable) -> Callable:
    """Run the random draw `draw` with the classic (non-partitionable) threefry layout.

    On a CPU it generates bits several times faster than the partitionable layout (jax's
    default): the bits of 8 chains x 1000 steps x 500 indices took 51 ms against 12 ms
    (`python benchmarks/llc_throughput.py` prints both), most of an LLC call at this
    model size. Only the bulk draws use it; key splits keep the global setting, so chain c
    of a call with key k still uses `jax.random.split(k, num_chains)[c]`. Each chain draws
    from its own key, so sharding over instances or chains never splits one draw.
    """

    def wrapped(*args, **kwargs):
        with jax.threefry_partitionable(False):
            return draw(*args, **kwargs)

    wrapped.__doc__, wrapped.__name__ = draw.__doc__, draw.__name__
    return wrapped


@_classic_threefry
def standard_normal(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """`jax.random.normal(key, shape, dtype)` drawn with the classic threefry layout."""
    return jax.random.normal(key, shape, dtype)


@_classic_threefry
def uniform_indices(key: jax.Array, shape: tuple[int, ...], n: int) -> jax.Array:
    """Indices uniform on 0..n-1, `shape` int32, from one uint32 per index.

    For n < 2^16 the index is floor(u n / 2^32) of a uniform 32-bit u (Lemire's multiply-
    high, computed exactly in 16-bit halves), within n / 2^32 of uniform per index, as
    `jax.random.randint` is; it draws half the random bits of `randint` (which draws two
    words per index), and with the classic threefry layout the draw is about 10x cheaper
    on a CPU (see `_classic_threefry`). Larger n falls back to `jax.random.randint`.
    """
    if n >= 2**16:
        return jax.random.randint(key, shape, 0, n)
    u = jax.random.bits(key, shape, jnp.uint32)
    m = jnp.uint32(n)
    high = (u >> 16) * m + (((u & jnp.uint32(0xFFFF)) * m) >> 16)  # < 2^32: no overflow for n < 2^16
    return (high >> 16).astype(jnp.int32)


@_classic_threefry
def random_permutations(key: jax.Array, count: int, n: int) -> jax.Array:
    """`count` independent uniformly random permutations of 0..n-1: `(count, n)` int32.

    Sorting random keys (one sort per permutation, not `jax.random.permutation`'s several
    rounds). For n <= 4096 the index rides in the low 12 bits of a single uint32 sort key,
    which is about 5x faster on CPU than a key-value sort; the remaining 20 random bits tie
    for a given pair with probability 2^-20 (ties keep index order), about 0.5 tied pairs
    per permutation at n = 1000, a negligible departure from uniform.
    """
    bits = jax.random.bits(key, (count, n))
    if n <= 4096:
        low = jnp.uint32(4095)
        packed = (bits & ~low) | jnp.arange(n, dtype=jnp.uint32)
        return (jnp.sort(packed, axis=-1) & low).astype(jnp.int32)
    index = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (count, n))
    return jax.lax.sort_key_val(bits, index, dimension=-1, is_stable=False)[1]


def _take(data: PyTree, idx: jax.Array) -> PyTree:
    # indices are in range by construction; "clip" skips the out-of-bounds fill handling
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), data)


def _build_instance_program(loss_fn: Callable, static: _Static) -> Callable:
    """run(params, data, key, step_size, localization, nbeta) -> dict, for one instance."""
    T, burnin, k = static.num_steps, static.num_burnin, static.trace_every
    n_blocks = -(-T // k)
    last_block = T - (n_blocks - 1) * k
    n_draws = T - burnin

    B, n = static.batch_size, static.n
    if B is not None and static.sampling == "epoch":
        per_epoch = n // B
        chunk = per_epoch * max(1, CHUNK_STEPS // per_epoch)  # whole epochs per chunk
    else:
        per_epoch, chunk = None, min(CHUNK_STEPS, T)
    n_chunks, rest = divmod(T, chunk)
    # draw a chunk's SGLD noise in one call when it is small (cheaper than one draw per step)
    pregenerate = chunk * static.n_parameters <= NOISE_BUDGET

    def chunk_batches(data_key, c, length: int):
        """Minibatch indices `(length, B)` of the `length` steps of chunk c (None: full batch)."""
        key = jax.random.fold_in(data_key, c)
        if B is None:
            return None
        if per_epoch is None:
            return uniform_indices(key, (length, B), n)
        n_epochs = -(-length // per_epoch)
        perms = random_permutations(key, n_epochs, n)
        return perms[:, : per_epoch * B].reshape(n_epochs * per_epoch, B)[:length]

    def run_chain(key, w_star, unravel, data, init_loss, step_size, localization, nbeta):
        flat_loss = lambda w, batch: loss_fn(unravel(w), batch)
        kernel = sgld(flat_loss, w_star, step_size=step_size, localization=localization, nbeta=nbeta)
        noise_key, data_key = jax.random.split(key)
        f32 = jnp.result_type(init_loss)

        def body(carry: _Carry, xs):
            t, idx, noise = xs
            minibatch = data if idx is None else _take(data, idx)
            state = kernel.init(carry.position)
            if noise is None:
                state, info = kernel.step(jax.random.fold_in(noise_key, t), state, minibatch)
            else:
                state, info = kernel.step_with_noise(state, minibatch, noise)
            excess = info.loss - init_loss
            post = t >= burnin
            accept = mala_acceptance_probability(mala_log_acceptance(
                carry.prev_position, carry.prev_drift, carry.prev_potential,
                info.position, info.drift, info.potential, step_size))
            block = t // k
            block_len = jnp.where(block == n_blocks - 1, last_block, k).astype(f32)
            finite = jnp.isfinite(info.loss)
            carry = _Carry(
                position=state.position,
                prev_position=info.position,
                prev_drift=info.drift,
                prev_potential=info.potential,
                sum_excess=carry.sum_excess + jnp.where(post, excess, 0.0),
                n_below=carry.n_below + (post & (excess < 0)).astype(jnp.int32),
                sum_accept=carry.sum_accept + jnp.where(t > burnin, accept, 0.0),
                max_excess=jnp.maximum(carry.max_excess, jnp.where(finite, excess, -jnp.inf)),
                nonfinite=carry.nonfinite | ~finite,
                trace=carry.trace.at[block].add(info.loss / block_len),
            )
            return carry, None

        def run_chunk(carry, c, length: int):
            ts = c * chunk + jnp.arange(length)
            noise = None
            if pregenerate:
                noise = standard_normal(jax.random.fold_in(noise_key, c), (length,) + w_star.shape, w_star.dtype)
            carry, _ = jax.lax.scan(body, carry, (ts, chunk_batches(data_key, c, length), noise))
            return carry

        zero = jnp.zeros((), f32)
        carry = _Carry(
            position=w_star,
            prev_position=w_star,
            prev_drift=jnp.zeros_like(w_star),
            prev_potential=zero,
            sum_excess=zero,
            n_below=jnp.zeros((), jnp.int32),
            sum_accept=zero,
            max_excess=jnp.full((), -jnp.inf, f32),
            nonfinite=jnp.zeros((), bool),
            trace=jnp.zeros((n_blocks,), f32),
        )
        if n_chunks:
            carry, _ = jax.lax.scan(lambda c, i: (run_chunk(c, i, chunk), None), carry, jnp.arange(n_chunks))
        if rest:
            carry = run_chunk(carry, n_chunks, rest)

        llc = nbeta * carry.sum_excess / n_draws
        n_transitions = n_draws - 1
        mala = carry.sum_accept / n_transitions if n_transitions > 0 else jnp.full((), jnp.nan, f32)
        exploded = nbeta * carry.max_excess > DIVERGENCE_FACTOR * static.n_parameters
        return {
            "llc_per_chain": llc,
            "mala_acceptance": mala,
            "frac_below_init": carry.n_below.astype(f32) / n_draws,
            "diverged": carry.nonfinite | exploded | ~jnp.isfinite(llc),
            "loss_trace": carry.trace,
        }

    def run(params, data, key, step_size, localization, nbeta):
        init_loss = loss_fn(params, data)
        # chains move a flat parameter vector: one noise draw and a few vector ops per step
        w_star, unravel = ravel_pytree(params)
        chain_keys = jax.random.split(key, static.num_chains)
        per_chain = jax.vmap(lambda ck: run_chain(ck, w_star, unravel, data, init_loss, step_size, localization, nbeta))(
            chain_keys)
        return {"init_loss": init_loss, **per_chain}

    return run


def llc_program(loss_fn: Callable, config: SGLDConfig, n_samples: int, n_parameters: int, *,
                data_batched: bool = True) -> Callable:
    """The un-jitted batched LLC program, for callers that jit it themselves (e.g. with shardings).

    Returns `run(params, data, keys, step_size, localization, nbeta) -> dict of arrays`, every
    input and output with a leading instance axis (data only if `data_batched`; `keys: (instance,)`).
    Turn its output into the `llc` dataset with `llc_dataset`. `estimate_llc_batched` is this,
    jitted, cached, plus input checks.
    """
    return _batched_program(loss_fn, _static(config, n_samples, n_parameters), data_batched)


def _batched_program(loss_fn: Callable, static: _Static, data_batched: bool) -> Callable:
    """The single-model program vmapped over a leading instance axis of params, keys (and data)."""
    return jax.vmap(_build_instance_program(loss_fn, static), in_axes=(0, 0 if data_batched else None, 0, None, None, None))


# XLA:CPU hands small dots and reductions to YNNPACK "fusions" by default; at the sizes of
# these models (8 chains x 500 rows x 6 features) each such call costs more than the work,
# and XLA's own kernels ran the SGLD loop about 1.4x faster (`python benchmarks/llc_throughput.py`
# prints both). A per-program option: nothing global changes.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options() -> dict[str, str]:
    """XLA options for the LLC programs on the default backend (`CPU_COMPILER_OPTIONS` on a CPU)."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


@functools.lru_cache(maxsize=32)
def _block_function(loss_fn: Callable, static: _Static, data_batched: bool) -> Callable:
    """The batched program in `run_sharded`'s form, one object per (loss_fn, settings), so
    `run_sharded` compiles it once per shape: (params, data, keys), scalars -> dict when
    `data_batched`, else (params, keys), data, scalars -> dict."""
    run = _batched_program(loss_fn, static, data_batched)
    if data_batched:
        return lambda inst, scalars: run(inst[0], inst[1], inst[2], *scalars)
    return lambda inst, data, scalars: run(inst[0], data, inst[1], *scalars)


_CACHE: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_CACHE_SIZE = 32


def _signature(tree: PyTree) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return (treedef, tuple((np.shape(x), str(jnp.result_type(x))) for x in leaves))


def _compiled(loss_fn, static: _Static, params, data, key, scalars):
    """The compiled single-model program for these inputs, from the cache or freshly compiled."""
    cache_key = (loss_fn, static, _signature(params), _signature(data), _signature(key))
    hit = _CACHE.get(cache_key)
    if hit is not None:
        _CACHE.move_to_end(cache_key)
        return hit
    run = _build_instance_program(loss_fn, static)
    compiled = jax.jit(run).lower(params, data, key, *scalars).compile(compiler_options=compiler_options())
    _CACHE[cache_key] = compiled
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return compiled


def clear_cache() -> None:
    """Forget every compiled LLC program."""
    _CACHE.clear()
    _block_function.cache_clear()


def _check_key(key) -> jax.Array:
    try:
        key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    except Exception:  # noqa: BLE001
        raise InputError("key must be a jax.random key") from None
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    require(typed and key.shape == () or (key.dtype == jnp.uint32 and key.shape == (2,)),
            "key must be a single jax.random key (jax.random.key(seed) or jax.random.PRNGKey(seed))")
    return key


def _key_record(key) -> list[int]:
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return [int(v) for v in np.asarray(data).ravel()]


def _scalars(config: SGLDConfig, nbeta: float) -> tuple:
    return (jnp.float32(config.step_size), jnp.float32(config.localization), jnp.float32(nbeta))


def _static(config: SGLDConfig, n: int, d: int) -> _Static:
    return _Static(config.num_chains, config.num_steps, config.num_burnin, config.batch_size,
                   config.trace_every, config.sampling, n, d)


# ----------------------------------------------------------------------------- public API


def estimate_llc(loss_fn: Callable, params: PyTree, data: PyTree, *, config: SGLDConfig, key) -> xr.Dataset:
    """Estimate the local learning coefficient of `loss_fn` at `params` (= w*) by SGLD.

    loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss over the batch.
    params:  any pytree of float arrays (w*).
    data:    a pytree of arrays whose leading axis is the sample axis (size n).
    config:  `SGLDConfig`; key: a jax.random key (chain c uses `jax.random.split(key, C)[c]`).

    Returns an `llc` dataset: llc_mean, llc_std, llc_per_chain(chain), loss_trace(chain, step),
    init_loss, mala_acceptance(chain), rhat, ess, frac_below_init(chain), diverged(chain),
    n_diverged; the settings (and resolved nbeta) in attrs. Divergent chains are excluded from
    llc_mean and llc_std, counted in n_diverged, and named in a warning.
    Raises `InputError` for bad inputs, before compiling anything.
    """
    n, d = _check_inputs(loss_fn, params, data, config, instance_axes=0, data_axes=0)
    key = _check_key(key)
    nbeta = resolve_nbeta(config, n)
    static = _static(config, n, d)
    scalars = _scalars(config, nbeta)
    program = _compiled(loss_fn, static, params, data, key, scalars)
    out = jax.device_get(program(params, data, key, *scalars))
    return llc_dataset(out, config, nbeta=nbeta, n=n, d=d, dims={}, key=key)


def estimate_llc_batched(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    config: SGLDConfig,
    key,
    instance_dims: Sequence[str] | Mapping[str, Sequence] | None = None,
    data_batched: bool = True,
    mesh=None,
    verbose: bool = False,
) -> xr.Dataset:
    """Every instance's LLC in one compiled program (instances and chains vmapped).

    params: a pytree whose leaves carry leading instance axes, e.g. `W: (instance, hidden, feature)`.
    data:   with `data_batched`, leaves `(instance..., n, ...)`, one data set per instance;
            otherwise `(n, ...)`, shared by every instance.
    instance_dims: names of the leading instance axes (sizes read from params, coords 0..size-1),
            or a mapping name -> coordinate values (params may then carry either those axes or
            one flattened axis of their product size); None means one axis named 'instance'.

    mesh:   a `jax.sharding.Mesh` with axis "instance" (`slt_superposition.sharding.instance_mesh()`
            spans every device) to split the instances over; None means one device.
    verbose: after the inputs pass validation, say on stderr what is about to be sampled.

    Instance i (in flattened C order) uses key `jax.random.split(key, N)[i]`, so its numbers
    equal `estimate_llc(..., key=jax.random.split(key, N)[i])` up to float reassociation.
    Sharding: the program runs through `sharding.run_sharded`, in blocks of at most 16
    instances whose size depends only on N, on every mesh including the 1-device one that
    `mesh=None` means; so the result is the same bit for bit on 1 device or many (a plain
    vmap over all N instances would not be: XLA vectorises a vmap of another size with
    different rounding in the last bit).
    Returns the `llc` dataset of `estimate_llc` with the instance dims in front of every variable.
    """
    dims = _instance_dims(params, instance_dims)
    sizes = tuple(len(v) for v in dims.values())
    n_inst = int(np.prod(sizes))
    params = _flatten_instances(params, sizes, "params")
    if data_batched:
        data = _flatten_instances(data, sizes, "data")
    def describe(i: int) -> str:
        index = np.unravel_index(i, sizes)
        return "instance " + ", ".join(f"{name}={_coord(dims, name, j)}" for name, j in zip(dims, index))

    n, d = _check_inputs(loss_fn, params, data, config, instance_axes=1, data_axes=1 if data_batched else 0,
                         describe_instance=describe)
    key = _check_key(key)
    nbeta = resolve_nbeta(config, n)
    static = _static(config, n, d)
    scalars = _scalars(config, nbeta)
    keys = jax.random.split(key, n_inst)
    block = _block_function(loss_fn, static, data_batched)
    mesh = single_device_mesh() if mesh is None else mesh
    if verbose:
        print(f"sampling {n_inst} instance(s) x {config.num_chains} chains x {config.num_steps} steps on "
              f"{mesh.devices.size} device(s) ...", file=sys.stderr)
    if data_batched:
        out = run_sharded(block, (params, data, keys), scalars, mesh=mesh, compiler_options=compiler_options())
    else:
        out = run_sharded(block, (params, keys), data, scalars, mesh=mesh, compiler_options=compiler_options())
    out = {name: np.reshape(value, sizes + np.shape(value)[1:]) for name, value in out.items()}
    return llc_dataset(out, config, nbeta=nbeta, n=n, d=d, dims=dims, key=key)


def _instance_dims(params: PyTree, instance_dims) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves(params)
    require(len(leaves) > 0, "params has no arrays")
    shape = np.shape(leaves[0])
    if instance_dims is None:
        require(len(shape) >= 1, "batched params need a leading instance axis")
        return {"instance": np.arange(shape[0])}
    if isinstance(instance_dims, Mapping):
        require(len(instance_dims) > 0, "instance_dims is empty")
        return {str(name): np.asarray(coords) for name, coords in instance_dims.items()}
    names = [instance_dims] if isinstance(instance_dims, str) else list(instance_dims)
    require(len(names) > 0 and len(shape) >= len(names),
            f"params leaves have fewer leading axes than instance_dims {names}")
    return {str(name): np.arange(size) for name, size in zip(names, shape[: len(names)])}


def _flatten_instances(tree: PyTree, sizes: tuple[int, ...], what: str) -> PyTree:
    n_inst = int(np.prod(sizes))

    def flat(x):
        shape = np.shape(x)
        if shape[: len(sizes)] == sizes:
            return jnp.reshape(jnp.asarray(x), (n_inst,) + shape[len(sizes):])
        if len(shape) >= 1 and shape[0] == n_inst:
            return jnp.asarray(x)
        raise InputError(f"{what} leaves must lead with the instance axes {sizes} (or {n_inst}), found shape {shape}")

    return jax.tree_util.tree_map(flat, tree)


def llc_dataset(out: dict, config: SGLDConfig, *, nbeta: float, n: int, d: int,
                dims: dict[str, np.ndarray], key) -> xr.Dataset:
    """Assemble the `llc` dataset from the program's output (numpy arrays).

    `out` holds `init_loss (*inst)`, `llc_per_chain`, `mala_acceptance`, `frac_below_init`,
    `diverged (*inst, chain)` and `loss_trace (*inst, chain, block)`, with the instance axes
    already shaped as `dims` (name -> coordinates; empty for a single model).
    """
    inst = tuple(dims)
    inst_shape = tuple(len(v) for v in dims.values())
    per_chain = np.asarray(out["llc_per_chain"], np.float64)
    diverged = np.asarray(out["diverged"], bool)
    healthy = ~diverged
    trace = np.asarray(out["loss_trace"], np.float32)
    k = config.trace_every
    steps = np.arange(trace.shape[-1]) * k
    post = steps >= config.num_burnin

    llc_mean = np.full(inst_shape, np.nan)
    llc_std = np.full(inst_shape, np.nan)
    for idx in np.ndindex(*inst_shape):
        ok = healthy[idx]
        if ok.any():
            llc_mean[idx] = per_chain[idx][ok].mean()
        if ok.sum() > 1:
            llc_std[idx] = per_chain[idx][ok].std(ddof=1)
    rhat, ess = rhat_and_ess(trace[..., post], healthy)

    n_diverged = diverged.sum(axis=-1)
    if n_diverged.any():
        _warn_diverged(diverged, dims)

    ci, cc, cs = inst, inst + ("chain",), inst + ("chain", "step")
    dv = {
        "llc_mean": (inst, llc_mean, "LLC estimate (mean over non-divergent chains)", "1"),
        "llc_std": (inst, llc_std, "standard deviation of the LLC over non-divergent chains (ddof=1)", "1"),
        "llc_per_chain": (cc, per_chain, "LLC estimate of each chain", "1"),
        "loss_trace": (cs, trace, f"minibatch loss along the chain (mean of blocks of {k} steps)", "loss"),
        "init_loss": (ci, np.asarray(out["init_loss"], np.float64), "full-data loss at w* (L_n(w*))", "loss"),
        "mala_acceptance": (cc, np.asarray(out["mala_acceptance"], np.float64),
                            "mean MALA acceptance proxy over post-burn-in transitions", "1"),
        "rhat": (ci, rhat, "R-hat of the post-burn-in loss trace across non-divergent chains", "1"),
        "ess": (ci, ess, "effective sample size of the post-burn-in loss trace (all non-divergent chains)",
                "samples"),
        "frac_below_init": (cc, np.asarray(out["frac_below_init"], np.float64),
                            "fraction of post-burn-in steps with minibatch loss below L_n(w*)", "1"),
        "diverged": (cc, diverged, "chain diverged (non-finite or exploding loss); excluded from llc_mean", ""),
        "n_diverged": (ci, n_diverged.astype(np.int64), "number of divergent chains", "chains"),
    }
    data_vars = {}
    for name, (vdims, values, long_name, units) in dv.items():
        attrs = {"long_name": long_name}
        if units:
            attrs["units"] = units
        data_vars[name] = xr.Variable(vdims, values, attrs)
    coords = {name: coords for name, coords in dims.items()}
    coords["chain"] = np.arange(config.num_chains)
    coords["step"] = xr.Variable("step", steps, {"long_name": "SGLD step at the start of the trace block"})
    record = {
        **config.to_dict(),
        "nbeta_resolved": nbeta,
        "n_samples": n,
        "n_parameters": d,
        "key": _key_record(key),
        "instance_dims": list(inst),
        "divergence_factor": DIVERGENCE_FACTOR,
    }
    attrs = provenance_attrs("llc", record)
    attrs.update(nbeta=nbeta, n_samples=n, n_parameters=d, num_burnin=config.num_burnin,
                 step_size=float(config.step_size), localization=float(config.localization))
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _warn_diverged(diverged: np.ndarray, dims: dict[str, np.ndarray]) -> None:
    where = np.argwhere(diverged)
    names = list(dims) + ["chain"]
    shown = []
    for row in where[:10]:
        shown.append(", ".join(f"{name}={_coord(dims, name, i)}" for name, i in zip(names, row)))
    more = f" and {len(where) - 10} more" if len(where) > 10 else ""
    warnings.warn(
        f"{len(where)} SGLD chain(s) diverged and were excluded from llc_mean/llc_std: "
        f"[{'; '.join(shown)}]{more}. Lower step_size or raise localization.",
        RuntimeWarning, stacklevel=3,
    )


def _coord(dims, name, i):
    if name == "chain":
        return int(i)
    value = dims[name][i]
    return value.item() if hasattr(value, "item") else value
