"""Local learning coefficient (LLC) estimation by SGLD: the estimator and its settings.

The formula (Lau et al. 2023), the only place it lives in this package:

    lambda_hat = nbeta * (E_w[L_n(w)] - L_n(w*)),     nbeta = n / log n by default,

with E_w over the SGLD chain localized at w* after burn-in. Which losses enter:

- `L_n(w*)` (`init_loss`) is the loss on the *whole* data at w*, computed once, exactly.
  devinterp 1.3 instead averages the minibatch losses of `num_chains` loader batches at w*;
  when n is a multiple of the batch size and the loader has at most `num_chains` batches
  the two coincide, otherwise devinterp's is a noisier estimate of the same number.
- `E_w[L_n(w)] - L_n(w*)` is the running mean, over the post-burn-in steps of each chain, of
  the *minibatch* excess L_B(w_t) - L_B(w*) at the pre-step position w_t: L_B(w_t) is the loss
  SGLD already computes for its gradient (as devinterp 1.3 does) and L_B(w*) the same rows'
  losses at w*, read from per-row losses computed once (`chain.minibatch_excess`). Both are
  unbiased estimates (of L_n(w_t) - L_n(w*)); devinterp's L_B(w_t) - L_n(w*) carries besides
  the batch's sampling noise at w*, which dominates short runs (the paired batch check of 300
  steps at batch 512 on trained n4_m2: median standard error 7.3% of the LLC against 0.84%,
  docs/calibration.md). With
  `batch_size=None` the excess is L_n(w_t) - L_n(w*) exactly.

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

Per-instance settings: in `SGLDConfig`, `step_size`, `localization`, `nbeta`, `num_steps` and
`num_burnin` may each be an array with the instance shape (or one flat instance axis), so a
grid whose instances need different settings is still one program and one call.

Compilation: everything (all chains; for `estimate_llc_batched` all instances) is one jitted
program (`slt_superposition.chain`): chains are vmapped, steps run in chunks in a loop. The
step size, localization, nbeta, chain length and burn-in are runtime values, so sweeping them
(calibration) reuses one compiled program; what recompiles is a new `loss_fn`, new shapes,
`num_chains`, `batch_size`, `sampling`, or a new number of trace blocks
(ceil(max num_steps / trace_every)). `jax.jit`'s cache does the caching. `estimate_llc` is
the one-instance case of `estimate_llc_batched` (the same program).

Randomness: instance i of a batched call with key k uses `jax.random.split(k, N)[i]`, and
`estimate_llc` with key k uses k itself; chain c of an instance with key k uses
`jax.random.split(k, num_chains)[c]`; within a chain, SGLD noise and minibatch indices are
drawn per chunk of 64 steps (whole epochs for "epoch" sampling) from `fold_in` of that key,
in one call each, with the classic threefry layout (`slt_superposition.random`).

Compiler options: on a CPU the programs are compiled with `CPU_COMPILER_OPTIONS` (no
YNNPACK fusions), faster at these sizes; per program, nothing global changes.

Long runs: the loss trace is summarised online into blocks of `trace_every` steps (the
stored value is the block mean), so memory is chains x num_steps / trace_every; the LLC,
acceptance and below-init fraction are exact running sums over every step regardless.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from slt_superposition import chain as chain_module
from slt_superposition.chain import ChainShape, chains_program, chunk_length, instance_program
from slt_superposition.chain_groups import in_groups, join_instances
from slt_superposition.checks import attach as attach_checks
from slt_superposition.checks import CHECK_STEPS, run_checks
from slt_superposition.coupled import sample_coupled
from slt_superposition.diagnostics import DIVERGENCE_FACTOR, rhat_and_ess
from slt_superposition.errors import InputError, describe_failure, require
from slt_superposition.instances import coordinate as _coord
from slt_superposition.instances import flatten_instances, over_instances
from slt_superposition.memory import tree_bytes
from slt_superposition.observers import ChainSettings
from slt_superposition.provenance import jsonable, provenance_attrs
from slt_superposition.sampling_progress import sampling_bar
from slt_superposition.sharding import block_for, default_mesh, padded_blocks, run_sharded

PyTree = Any
SAMPLING = ("replacement", "epoch")
NBETA_CONVENTIONS = ("n", "batch")
PER_INSTANCE = ("step_size", "localization", "nbeta", "num_steps", "num_burnin")  # may be arrays


@dataclasses.dataclass(frozen=True)
class SGLDConfig:
    """Settings of an SGLD LLC estimate.

    step_size:    eps in w <- w - (eps/2)(nbeta grad L_B + gamma (w - w*)) + N(0, eps).
    localization: gamma, the pull towards w*.
    nbeta:        None -> n / log n; "batch" -> batch_size / log(batch_size) (devinterp 1.3's
                  default); or a positive number.
    num_chains:   independent chains (vmapped); at least 2 (R-hat and llc_std need two).
    num_steps:    SGLD steps per chain, burn-in included.
    num_burnin:   leading steps left out of the LLC and diagnostics (0 <= num_burnin < num_steps).
    batch_size:   minibatch size; None -> full batch.
    trace_every:  the stored loss trace holds means of blocks of this many steps (1 = every step).
    sampling:     "replacement" (i.i.d. minibatch indices) or "epoch" (without replacement,
                  reshuffled every epoch, like a shuffled DataLoader).
    metropolis:   accept or reject every step (MALA, `slt_superposition.mala`): the chain then
                  samples the localized posterior exactly at any step size, with no
                  discretisation bias; `mala_acceptance` is the realised acceptance rate.
                  Full batch only (batch_size None): the test needs the exact potential.

    `step_size`, `localization`, `nbeta` (a number), `num_steps` and `num_burnin` may be arrays
    with the instance shape of an `estimate_llc_batched` call (per-instance settings, one
    program); lists are turned into numpy arrays.
    """

    step_size: Any
    localization: Any
    nbeta: Any = None
    num_chains: int = 8
    num_steps: Any = 1000
    num_burnin: Any = 0
    batch_size: int | None = None
    trace_every: int = 1
    sampling: str = "replacement"
    metropolis: bool = False

    def __post_init__(self):
        for name in PER_INSTANCE:
            value = getattr(self, name)
            if isinstance(value, (list, tuple, np.ndarray, jax.Array)):
                object.__setattr__(self, name, np.asarray(value))

    @property
    def per_instance(self) -> bool:
        """Whether any setting is an array (one value per instance)."""
        return any(isinstance(getattr(self, name), np.ndarray) for name in PER_INSTANCE)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain Python values (arrays as nested lists): JSON-ready."""
        out = dataclasses.asdict(self)
        return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in out.items()}


def default_nbeta(n: int, batch_size: int | None = None, convention: str = "n") -> float:
    """The default inverse temperature nbeta.

    convention "n": n / log n (Lau et al., Furman & Lau; this package's default).
    convention "batch": m / log m with m = batch_size (or n if None), devinterp 1.3's
    `default_nbeta(loader)`. Both fall back to 1 when the count is <= 1 (as devinterp).
    """
    require(convention in NBETA_CONVENTIONS, f"unknown nbeta convention '{convention}' (known: n, batch)")
    m = n if (convention == "n" or batch_size is None) else batch_size
    return float(m / math.log(m)) if m > 1 else 1.0


def resolve_nbeta(config: SGLDConfig, n: int):
    """The numeric nbeta that `config` asks for with n samples (a float, or the config's array)."""
    if config.nbeta is None:
        return default_nbeta(n, config.batch_size, "n")
    if isinstance(config.nbeta, str):
        return default_nbeta(n, config.batch_size, config.nbeta)
    if isinstance(config.nbeta, np.ndarray):
        return config.nbeta.astype(np.float64)
    return float(config.nbeta)


# ----------------------------------------------------------------------------- validation


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _numbers(value, name: str, *, integer: bool = False) -> np.ndarray:
    """`value` (a number or an array of them) as a numpy array, or an `InputError`."""
    kind = "an integer" if integer else "a number"
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything not array-like
        raise InputError(f"{name} must be {kind} or an array of them, got {value!r}") from None
    ok = np.issubdtype(array.dtype, np.integer) if integer else np.issubdtype(array.dtype, np.number)
    require(ok and array.dtype != bool and array.size > 0, f"{name} must be {kind} or an array of them, got {value!r}")
    return array


def validate_config(config: SGLDConfig, n: int) -> None:
    """Raise `InputError` for settings that cannot give an estimate with n samples."""
    require(isinstance(config, SGLDConfig), f"config must be an SGLDConfig, got {type(config).__name__}")
    eps = _numbers(config.step_size, "step_size")
    require(bool(np.all(np.isfinite(eps) & (eps > 0))), f"step_size must be a positive finite number, got "
                                                        f"{_show(config.step_size)}")
    gamma = _numbers(config.localization, "localization")
    require(bool(np.all(np.isfinite(gamma) & (gamma >= 0))), f"localization must be a finite number >= 0, got "
                                                             f"{_show(config.localization)}")
    if isinstance(config.nbeta, str):
        require(config.nbeta in NBETA_CONVENTIONS,
                f"nbeta must be None, 'n', 'batch' or a positive number, got '{config.nbeta}'")
    elif config.nbeta is not None:
        nbeta = _numbers(config.nbeta, "nbeta")
        require(bool(np.all(np.isfinite(nbeta) & (nbeta > 0))),
                f"nbeta must be a positive finite number, got {_show(config.nbeta)}")
    require(_is_int(config.num_chains) and config.num_chains >= 2,
            f"num_chains must be an integer >= 2 (R-hat and llc_std compare chains), got {config.num_chains!r}")
    steps = _numbers(config.num_steps, "num_steps", integer=True)
    require(bool(np.all(steps >= 1)), f"num_steps must be an integer >= 1, got {_show(config.num_steps)}")
    require(bool(np.all(steps < 2**31 - 2**16)), f"num_steps must be below 2^31, got {_show(config.num_steps)}")
    burnin = _numbers(config.num_burnin, "num_burnin", integer=True)
    require(bool(np.all((burnin >= 0) & (burnin < steps))),
            f"num_burnin must be an integer in [0, num_steps={_show(config.num_steps)}), got "
            f"{_show(config.num_burnin)}")
    require(_is_int(config.trace_every) and config.trace_every >= 1,
            f"trace_every must be an integer >= 1, got {config.trace_every!r}")
    n_blocks = -(-int(np.max(steps)) // config.trace_every)
    require(n_blocks <= 1_000_000, f"the loss trace would hold {n_blocks} blocks per chain; raise trace_every "
                                   f"(at most 10^6 blocks)")
    require(config.sampling in SAMPLING, f"sampling must be one of {SAMPLING}, got {config.sampling!r}")
    require(isinstance(config.metropolis, (bool, np.bool_)), f"metropolis must be True or False, got "
                                                            f"{config.metropolis!r}")
    require(not (config.metropolis and config.batch_size is not None),
            f"metropolis=True needs full batch (batch_size None): the accept/reject step needs the exact potential, "
            f"and minibatches of {config.batch_size} of n={n} samples give a noisy one")
    if config.batch_size is not None:
        require(_is_int(config.batch_size) and config.batch_size >= 1,
                f"batch_size must be None or an integer >= 1, got {config.batch_size!r}")
        require(config.batch_size <= n, f"batch_size {config.batch_size} is larger than the number of samples n={n}")


def _show(value) -> str:
    if isinstance(value, np.ndarray) and value.size > 4:
        return f"an array with values in [{value.min()}, {value.max()}]"
    return repr(value.tolist() if isinstance(value, np.ndarray) else value)


def _step_range(num_steps) -> str:
    """"5000" for one chain length (a number, or per-instance lengths all equal), "5000 to 15811" for several."""
    steps = np.asarray(num_steps)
    low, high = int(steps.min()), int(steps.max())
    return f"{low}" if low == high else f"{low} to {high}"


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
    try:
        hash(loss_fn)
    except TypeError:
        raise InputError(f"loss_fn must be hashable (compiled chain programs are cached by it); a "
                         f"{type(loss_fn).__name__} defining __eq__ without __hash__ is not") from None
    p_leaves = _leaves(params, "params")
    d_leaves = _leaves(data, "data")
    for leaf in p_leaves:
        require(np.issubdtype(leaf.dtype, np.floating), f"params must be floating point, found dtype {leaf.dtype}")
        require(leaf.ndim >= instance_axes, "params leaves lack the leading instance axes")
    for leaf in d_leaves:
        require(leaf.ndim >= data_axes + 1, "every data array needs a leading sample axis")
    if jax.config.jax_enable_x64:  # without it JAX reads float64 as float32, as the chains compute
        wide = sorted({str(leaf.dtype) for leaf in p_leaves + d_leaves if leaf.dtype.itemsize > 4
                       and np.issubdtype(leaf.dtype, np.floating)})
        require(not wide, f"the chains compute in float32, but with jax_enable_x64 on the inputs hold {', '.join(wide)} "
                          f"arrays: pass float32 ones (x.astype(np.float32))")
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
        out = _traced(loss_fn).eval_shape(one_params, one_batch)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - report the user's function failing, on one line
        raise InputError(f"loss_fn(params, batch) failed: {describe_failure(err)}") from None
    require(isinstance(out, jax.ShapeDtypeStruct) and out.shape == ()
            and jnp.issubdtype(out.dtype, jnp.floating),
            f"loss_fn must return a floating scalar (mean loss over the batch), got {_describe(out)}")
    if config.batch_size is not None:
        _check_row_mean(loss_fn, params, data, instance_axes=instance_axes, data_axes=data_axes,
                        rows=min(n, config.batch_size, chain_module.ROW_MEAN_ROWS))
    d = sum(int(np.prod(leaf.shape[instance_axes:])) for leaf in p_leaves)
    return n, d


@functools.lru_cache(maxsize=32)
def _traced(loss_fn: Callable) -> Callable:
    """`jax.jit(loss_fn)`, one per loss function: its `eval_shape` (the input check's) traces once per
    input shape, where `jax.eval_shape` traced `loss_fn` again on every call."""
    return jax.jit(loss_fn)


def _check_row_mean(loss_fn, params, data, *, instance_axes: int, data_axes: int, rows: int) -> None:
    """Minibatch chains need `loss_fn` to be a mean over its rows (`chain.row_mean_gap`): checked
    on the first instance's first `rows` rows, before anything is compiled for the chains."""
    if not chain_module.PAIRED_EXCESS:
        return
    one_params = jax.tree_util.tree_map(lambda x: x[(0,) * instance_axes], params)
    one_rows = jax.tree_util.tree_map(lambda x: x[(0,) * data_axes][:rows], data)
    try:
        gap = chain_module.row_mean_gap(loss_fn, one_params, one_rows)
    except Exception as err:  # noqa: BLE001 - the user's function failing on one row, on one line
        raise InputError(f"loss_fn(params, batch) failed on a one-row batch (minibatch chains evaluate rows "
                         f"alone at w*): {describe_failure(err)}") from None
    if gap is not None:
        raise InputError(f"loss_fn must be the mean of its rows' losses for minibatch chains (each step's batch is "
                         f"paired with the same rows at w*): on the first {rows} rows it gives {gap[0]:.6g}, their "
                         f"one-row losses average {gap[1]:.6g}; pass a mean loss, or batch_size=None")


def _describe(out) -> str:
    if isinstance(out, jax.ShapeDtypeStruct):
        return f"an array of shape {out.shape} and dtype {out.dtype}"
    return f"a {type(out).__name__}"


# ----------------------------------------------------------------------------- the program


# XLA:CPU hands small dots and reductions to YNNPACK "fusions" by default; at the sizes of
# these models (8 chains x 500 rows x 6 features) each such call costs more than the work,
# and XLA's own kernels ran the SGLD loop faster (`python benchmarks/llc_throughput.py`
# prints both). A per-program option: nothing global changes.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options() -> dict[str, str]:
    """XLA options for the LLC programs on the default backend (`CPU_COMPILER_OPTIONS` on a CPU)."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


@functools.lru_cache(maxsize=32)
def block_function(loss_fn: Callable, shape: ChainShape, data_batched: bool, keys_per_chain: bool = False
                   ) -> Callable:
    """The batched program in `run_sharded`'s form (`instances.over_instances`). One function
    object per (loss_fn, shape), so `jax.jit`'s cache (inside `run_sharded`) compiles it once
    per input shape. `keys_per_chain`: the program takes every chain's key (`chain.chains_program`,
    for an instance's chains run as groups) instead of the instance's."""
    program = chains_program if keys_per_chain else instance_program
    return over_instances(program(loss_fn, shape), data_batched)


WORKING_SET_FACTOR = 8  # activations and gradients per data element of a step's batch, a rough upper estimate


def chain_working_set(shape: ChainShape, data: PyTree, data_batched: bool) -> int:
    """Estimated bytes one instance's chains touch per step: chains x batch rows (n at full batch)
    x bytes per data row x `WORKING_SET_FACTOR`. Sizes the blocks on an accelerator."""
    row = tree_bytes(data, skip_axes=2 if data_batched else 1)  # of (instance, n, ...) or (n, ...)
    rows = shape.batch_size or shape.n
    return shape.num_chains * rows * row * WORKING_SET_FACTOR


def chain_block(n_instances: int, shape: ChainShape, data: PyTree, data_batched: bool, factor: int = 1) -> int:
    """Instances per block of a chain program: 1 on a CPU (a vmapped block of many instances ran
    fewer chain-steps per second there than one instance: docs/benchmarks.md; the bits are the
    same), elsewhere `sharding.block_for` (as many as about 1 GiB of `chain_working_set` x `factor`
    holds). Depends on the backend and the shapes only, never on the device count."""
    if jax.default_backend() == "cpu":
        return 1
    return block_for(n_instances, factor * chain_working_set(shape, data, data_batched))


def sample_chains(loss_fn: Callable, params: PyTree, data: PyTree, keys: jax.Array, settings: ChainSettings,
                  shape: ChainShape, *, data_batched: bool, mesh=None, progress: str | None = None,
                  block_size: int | None = None) -> dict[str, np.ndarray]:
    """Run every instance's chains; the one place programs are launched.

    params: leaves `(instance, ...)`; data: `(instance, n, ...)` if `data_batched` else `(n, ...)`;
    keys: `(instance,)`; settings: `ChainSettings` of `(instance,)` arrays. Returns numpy arrays
    with a leading instance axis: `init_loss`, and per chain the observers' outputs.
    No input checks (callers validate). Instances run in blocks (`sharding.run_sharded`), so the
    bits do not depend on the device count; with blocks of one instance and fewer instances than
    devices, each instance's chains run as groups on the spare devices (`chain_groups`: the same
    chains, and on the models measured the same bits). `progress`: a label for a progress bar on stderr
    (`sampling_progress`; the program then reports each chunk; the numbers are the same).
    The program holds `trace_capacity(shape.n_blocks)` loss-trace blocks; `loss_trace` comes back
    with `shape.n_blocks`. `block_size`: instances per block; None means `chain_block`'s rule.
    """
    mesh = default_mesh() if mesh is None else mesh
    n_blocks = shape.n_blocks
    n_inst = int(np.shape(keys)[0])
    shape = shape._replace(n_blocks=trace_capacity(n_blocks))
    if block_size is None:
        block_size = chain_block(n_inst, shape, data, data_batched)
    groups, (params, data, keys, settings), shape = in_groups(
        params, data, keys, settings, shape, n_devices=mesh.devices.size, block_size=block_size,
        data_batched=data_batched)
    if progress:
        shape = shape._replace(progress=True)
    block = block_function(loss_fn, shape, data_batched, keys_per_chain=groups > 1)
    options = dict(mesh=mesh, block=block_size, compiler_options=compiler_options())
    def run():
        out = (run_sharded(block, (params, data, keys, settings), **options) if data_batched else
               run_sharded(block, (params, keys, settings), data, **options))
        out = join_instances(out, groups)
        return {**out, "loss_trace": out["loss_trace"][..., :n_blocks]}

    if not progress:
        return run()
    blocks = padded_blocks(n_inst * groups, block_size, mesh)  # every block reports each of its chunks
    chunk = chunk_length(shape)
    chunks = -(-int(np.max(np.asarray(settings.num_steps))) // chunk)
    with sampling_bar(blocks * chunks, steps_per_iteration=chunk, desc=progress):
        return run()


TRACE_CAPACITY = 256  # loss-trace blocks compiled at least; programs that differ only below it are one program


def trace_capacity(n_blocks: int) -> int:
    """Loss-trace blocks the compiled program holds for `n_blocks` requested: `TRACE_CAPACITY`, or the
    next power of two above it. Calibration (128 blocks), the estimate (about 200) and its checks
    (about 50) then share one program per batch size instead of compiling one each; the blocks
    past the requested ones are never written, and `sample_chains` drops them."""
    return max(TRACE_CAPACITY, 1 << max(0, int(n_blocks) - 1).bit_length())


def chain_settings(config: SGLDConfig, nbeta, n_inst: int, sizes: tuple[int, ...] = ()) -> ChainSettings:
    """`config`'s runtime settings as `(n_inst,)` host arrays (scalars broadcast; per-instance
    arrays of shape `sizes` or `(n_inst,)` flattened). Host (numpy) arrays: the programs place them
    with their other inputs, without a device computation per field. `trace_every` may be an array
    too inside the package (the stored batch check: each instance's blocks as its own call would have
    them); the public API takes one value."""

    def per_instance(value, name, dtype):
        array = np.asarray(value)
        if array.ndim == 0:
            return np.full((n_inst,), array, dtype)
        require(array.shape in (tuple(sizes), (n_inst,)),
                f"{name} has shape {array.shape}; per-instance settings need the instance shape {tuple(sizes)}")
        return np.asarray(array.reshape(n_inst), dtype)

    return ChainSettings(
        step_size=per_instance(config.step_size, "step_size", np.float32),
        localization=per_instance(config.localization, "localization", np.float32),
        nbeta=per_instance(nbeta, "nbeta", np.float32),
        num_steps=per_instance(config.num_steps, "num_steps", np.int32),
        num_burnin=per_instance(config.num_burnin, "num_burnin", np.int32),
        trace_every=per_instance(config.trace_every, "trace_every", np.int32),
    )


def chain_shape(config: SGLDConfig, n: int, d: int) -> ChainShape:
    """The compiled program's shape for `config` with n samples and d parameters."""
    n_blocks = int(np.max(-(-np.asarray(config.num_steps) // np.asarray(config.trace_every))))
    return ChainShape(config.num_chains, n_blocks, config.batch_size, config.sampling, n, d,
                      metropolis=bool(config.metropolis))


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


# ----------------------------------------------------------------------------- public API


def estimate_llc(loss_fn: Callable, params: PyTree, data: PyTree, *, config: SGLDConfig, key,
                 checks: bool = True, check_steps: int = CHECK_STEPS, mask: PyTree | None = None,
                 calibration: xr.Dataset | None = None) -> xr.Dataset:
    """Estimate the local learning coefficient of `loss_fn` at `params` (= w*) by SGLD.

    loss_fn: `loss_fn(params, batch) -> scalar`, the mean loss over the batch (with a minibatch this is checked
    on its first rows: a sum or a batch normalisation is refused).
    params:  any pytree of float arrays (w*).
    data:    a pytree of arrays whose leading axis is the sample axis (size n).
    config:  `SGLDConfig` (scalar settings); key: a jax.random key (chain c uses
             `jax.random.split(key, C)[c]`).

    Returns an `llc` dataset: llc_mean, llc_std, llc_se, llc_per_chain(chain),
    loss_trace(chain, step), init_loss, mala_acceptance(chain), rhat, ess,
    frac_below_init(chain), diverged(chain), n_diverged, and the settings (step_size,
    localization, nbeta, num_steps, num_burnin; also in attrs). Divergent chains are excluded
    from llc_mean and llc_std, counted in n_diverged, and named in a warning.
    With `checks` (default), also the stored bias checks and `trusted` (`slt_superposition.checks`:
    paired runs of at most `check_steps` steps at eps / 3 and with full batch, the Hessian's top
    eigenvalue, `llc_quadratic`, and the discretisation bias predicted where the chains ended).
    calibration: the dataset `calibrate` returned with `config`: then also `calibration_converged`,
             and `trusted` requires it (an estimate whose chain length never settled in the
             calibration is not trusted; `calibration.require_settled`). Needs `checks`.
    The one-instance case of `estimate_llc_batched` (the same program).
    mask: a pytree of booleans shaped like `params`: the weight-refined LLC of that block, the
             rest held at w* (`slt_superposition.refined.estimate_refined_llc`; no paired checks).
    Raises `InputError` for bad inputs, before compiling anything.
    """
    _check_calibration(calibration, checks, (), mask is not None)
    if mask is not None:
        from slt_superposition.refined import estimate_refined_llc
        return estimate_refined_llc(loss_fn, params, data, mask=mask, config=config, key=key)
    require(isinstance(config, SGLDConfig) and not config.per_instance,
            "estimate_llc takes scalar settings; per-instance arrays need estimate_llc_batched")
    n, d = _check_inputs(loss_fn, params, data, config, instance_axes=0, data_axes=0)
    key = _check_key(key)
    nbeta = resolve_nbeta(config, n)
    one = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], params)
    sample = _sampler(loss_fn, one, data, nbeta, n=n, d=d, sizes=(1,), data_batched=False, mesh=None)
    out = {name: value[0] for name, value in sample(config, key[None]).items()}
    ds = llc_dataset(out, config, nbeta=nbeta, n=n, d=d, dims={}, key=key)
    if checks:
        found = run_checks(lambda cfg, k: sample(cfg, k[None]), lambda cfg, k: sample.pair(cfg, k[None]), config,
                           nbeta, n=n, check_steps=check_steps, final_positions=_healthy_positions(ds, 1),
                           curvature_inputs=(loss_fn, one, data), data_batched=False, key=jax.random.fold_in(key, 1))
        ds = attach_checks(ds, {name: value[0] for name, value in found.items()})
    return _with_calibration(ds, calibration)


def _healthy_positions(ds: xr.Dataset, n_inst: int) -> np.ndarray:
    """`ds`'s final chain positions as `(instance, chain, d)` (instances flattened), NaN for divergent chains."""
    positions = ds["final_position"].values.astype(np.float64)
    positions = np.where(ds["diverged"].values[..., None], np.nan, positions)
    return positions.reshape(n_inst, *positions.shape[-2:])


def _check_calibration(calibration, checks: bool, dims: Sequence[str], masked: bool) -> None:
    """One-line errors for a `calibration` argument that `_with_calibration` could not use."""
    if calibration is None:
        return
    require(isinstance(calibration, xr.Dataset) and ("converged" in calibration.data_vars
                                                     or "converged" in calibration.attrs),
            "calibration must be the dataset calibrate / calibrate_batched returned (it has 'converged')")
    require(checks and not masked, "calibration needs checks=True (it joins the stored checks' trusted flag) "
            "and no mask")
    found = calibration["converged"].dims if "converged" in calibration.data_vars else ()
    require(set(found) == set(dims), f"calibration has instance dims {tuple(found)}; this estimate has {tuple(dims)}")


def _with_calibration(ds: xr.Dataset, calibration: xr.Dataset | None) -> xr.Dataset:
    """`ds`, with `trusted` also requiring that `calibration`'s chain-length rule settled."""
    if calibration is None:
        return ds
    from slt_superposition.calibration import require_settled  # calibration imports this module
    return require_settled(ds, calibration)


def _sampler(loss_fn, params, data, nbeta, *, n, d, sizes, data_batched, mesh) -> Callable:
    """`sample(config, keys) -> program outputs` for these instances (keys `(instance,)`)."""
    n_inst = int(np.prod(sizes))

    def sample(config: SGLDConfig, keys, progress: str | None = None) -> dict[str, np.ndarray]:
        return sample_chains(loss_fn, params, data, keys, chain_settings(config, nbeta, n_inst, sizes),
                             chain_shape(config, n, d), data_batched=data_batched, mesh=mesh, progress=progress)

    def sample_pair(config: SGLDConfig, keys) -> dict[str, np.ndarray]:
        """The coupled eps / (eps / 3) pairs of the step-size check (`slt_superposition.coupled`)."""
        shape = chain_shape(config, n, d)
        return sample_coupled(loss_fn, params, data, keys, chain_settings(config, nbeta, n_inst, sizes), shape,
                              data_batched=data_batched, mesh=mesh, compiler_options=compiler_options(),
                              block_size=chain_block(n_inst, shape, data, data_batched, factor=2))

    sample.pair = sample_pair
    return sample


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
    checks: bool = True,
    check_steps: int = CHECK_STEPS,
    masks: PyTree | None = None,
    calibration: xr.Dataset | None = None,
    sampled: xr.Dataset | None = None,
) -> xr.Dataset:
    """Every instance's LLC in one compiled program (instances and chains vmapped).

    params: a pytree whose leaves carry leading instance axes, e.g. `W: (instance, hidden, feature)`.
    data:   with `data_batched`, leaves `(instance..., n, ...)`, one data set per instance;
            otherwise `(n, ...)`, shared by every instance.
    config: `SGLDConfig`; `step_size`, `localization`, `nbeta`, `num_steps`, `num_burnin` may be
            arrays with the instance shape (each instance its own settings, still one program:
            shorter chains stop early inside it).
    instance_dims: names of the leading instance axes (sizes read from params, coords 0..size-1),
            or a mapping name -> coordinate values (params may then carry either those axes or
            one flattened axis of their product size); None means one axis named 'instance'.

    mesh:   a `jax.sharding.Mesh` with axis "instance" (`slt_superposition.sharding.instance_mesh()`
            spans every device) to split the instances over; None means `sharding.default_mesh()`
            (every CPU device, else the default accelerator).
    verbose: after the inputs pass validation, say on stderr what is about to be sampled.
    checks: also run and store the bias checks and `trusted` per instance (see `estimate_llc`), on
            paired runs of at most `check_steps` steps.

    Instance i (in flattened C order) uses key `jax.random.split(key, N)[i]`, so its numbers
    equal `estimate_llc(..., key=jax.random.split(key, N)[i])` with that instance's settings, up
    to float reassociation. Sharding: the program runs through `sharding.run_sharded`, in blocks
    of instances whose size never depends on the device count (`chain_block`), on every mesh;
    so the result is the same bit for bit on 1 device or many. With
    fewer instances than devices each instance's chains run as groups on the spare devices
    (`chain_groups`): the same chains, the same bits on the models measured, not on every model.
    masks: a stack of masks (leaves `(mask, *one instance's leaf shape)` booleans): every mask's
            weight-refined LLC for every instance, in one program, with a `mask` dim after the
            instance dims (`slt_superposition.refined.estimate_refined_llc_batched`; no paired checks).
    calibration: the dataset `calibrate_batched` returned with `config` (see `estimate_llc`).
    sampled: these very chains, already sampled (an `llc` dataset from the same inputs, config
            and key, e.g. `susceptibility.estimate_susceptibilities`, whose chains are the LLC's
            with observables recorded): its `LLC_VARIABLES` are used and only the checks run.
            A dataset from other settings or another key is an `InputError`.
    Returns the `llc` dataset of `estimate_llc` with the instance dims in front of every variable.
    """
    if masks is not None:
        require(calibration is None and sampled is None, "calibration and sampled apply to plain estimates, "
                "not to masks")
        from slt_superposition.refined import estimate_refined_llc_batched
        return estimate_refined_llc_batched(loss_fn, params, data, masks=masks, config=config, key=key,
                                            instance_dims=instance_dims, data_batched=data_batched, mesh=mesh)
    flat = flatten_instances(params, data, instance_dims, data_batched=data_batched)
    params, data, dims, sizes, n_inst = flat.params, flat.data, flat.dims, flat.sizes, flat.count
    _check_calibration(calibration, checks, tuple(dims), False)
    n, d = _check_inputs(loss_fn, params, data, config, instance_axes=1, data_axes=1 if data_batched else 0,
                         describe_instance=flat.describe)
    key = _check_key(key)
    nbeta = resolve_nbeta(config, n)
    sample = _sampler(loss_fn, params, data, nbeta, n=n, d=d, sizes=sizes, data_batched=data_batched, mesh=mesh)
    if verbose and sampled is None:
        devices = (default_mesh() if mesh is None else mesh).devices.size
        print(f"sampling {n_inst} instance(s) x {config.num_chains} chains x {_step_range(config.num_steps)} steps on "
              f"{devices} device(s) ...", file=sys.stderr)
    if sampled is None:
        out = sample(config, jax.random.split(key, n_inst), progress="sampling" if verbose else None)
        ds = llc_dataset(flat.unflatten(out), config, nbeta=nbeta, n=n, d=d, dims=dims, key=key)
    else:
        ds = _already_sampled(sampled, config, key, nbeta, n=n, d=d, dims=tuple(dims))
    if checks:
        if verbose:
            print("bias checks (short paired runs at step size / 3 and with full batch) ...", file=sys.stderr)
        check_key = jax.random.fold_in(key, 1)
        # instance i's check chains run on what estimate_llc(key=split(key, N)[i]) gives them: fold_in(.., 1)
        # (run_checks passes its one key to every run, the pairs' common random numbers; it is check_key)
        chain_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(jax.random.split(key, n_inst))
        found = run_checks(lambda cfg, k: sample(cfg, chain_keys, progress="bias checks" if verbose else None),
                           lambda cfg, k: sample.pair(cfg, chain_keys), config, nbeta, n=n,
                           curvature_inputs=(loss_fn, params, data), data_batched=data_batched, key=check_key,
                           check_steps=check_steps, final_positions=_healthy_positions(ds, n_inst))
        ds = attach_checks(ds, found)
    return _with_calibration(ds, calibration)


def _already_sampled(sampled, config: SGLDConfig, key, nbeta, *, n: int, d: int, dims: tuple[str, ...]) -> xr.Dataset:
    """`sampled`'s `LLC_VARIABLES`, after checking that its chains are the ones these inputs,
    `config` and `key` give (the settings, key, n and d `llc_dataset` recorded)."""
    require(isinstance(sampled, xr.Dataset) and all(name in sampled for name in LLC_VARIABLES),
            "sampled must be an llc dataset (estimate_llc_batched's or estimate_susceptibilities')")
    stored = json.loads(sampled.attrs.get("config", "{}"))
    expected = json.loads(json.dumps(jsonable({**config.to_dict(), "key": _key_record(key), "n_samples": n,
                                                "n_parameters": d,
                                                "nbeta_resolved": nbeta.tolist() if isinstance(nbeta, np.ndarray)
                                                else nbeta}), sort_keys=True))
    differ = sorted(name for name in expected if stored.get(name) != expected[name])
    require(not differ and tuple(sampled["llc_mean"].dims) == dims,
            f"sampled holds other chains than these inputs, config and key would (differs in "
            f"{', '.join(differ) or 'instance dims'})")
    return sampled[list(LLC_VARIABLES)]


def _diagnostics(trace: np.ndarray, healthy: np.ndarray, steps: np.ndarray, burnin: np.ndarray):
    """R-hat and ESS per instance from the trace blocks that start after that instance's burn-in
    and hold data; instances with the same blocks go through `rhat_and_ess` together.

    trace: `(*inst, chain, block)`; healthy: `(*inst, chain)`; steps: the first step of each
    block, `(block,)` or `(*inst, block)`; burnin: `(*inst,)`. Returns two `(*inst,)` arrays."""
    rhat = np.full(burnin.shape, np.nan)
    ess = np.full(burnin.shape, np.nan)
    valid = (np.isfinite(trace) | ~healthy[..., None]).all(axis=-2)  # (*inst, block): every healthy chain has it
    masks = (np.asarray(steps) >= np.asarray(burnin)[..., None]) & valid
    flat_masks = masks.reshape(-1, masks.shape[-1])
    flat_trace = trace.reshape((-1,) + trace.shape[-2:])
    flat_healthy = healthy.reshape((-1, healthy.shape[-1]))
    groups: dict[bytes, list[int]] = {}
    for i, mask in enumerate(flat_masks):
        groups.setdefault(mask.tobytes(), []).append(i)
    flat_rhat, flat_ess = rhat.reshape(-1), ess.reshape(-1)
    for members in groups.values():
        mask = flat_masks[members[0]]
        if not mask.any():
            continue
        r, e = rhat_and_ess(flat_trace[members][..., mask], flat_healthy[members])
        flat_rhat[members], flat_ess[members] = r, e
    return flat_rhat.reshape(burnin.shape), flat_ess.reshape(burnin.shape)


LLC_VARIABLES = ("llc_mean", "llc_std", "llc_se", "llc_per_chain", "loss_trace", "init_loss", "mala_acceptance",
                 "rhat", "ess", "frac_below_init", "diverged", "n_diverged", "step_size", "localization", "nbeta",
                 "num_steps", "num_burnin", "final_position")  # what llc_dataset writes


def llc_dataset(out: dict, config: SGLDConfig, *, nbeta, n: int, d: int,
                dims: dict[str, np.ndarray], key) -> xr.Dataset:
    """Assemble the `llc` dataset from the program's output (numpy arrays).

    `out` holds `init_loss (*inst)`, `llc_per_chain`, `mala_acceptance`, `n_below_init`,
    `diverged (*inst, chain)`, `loss_trace (*inst, chain, block)` and `final_position (*inst, chain, d)`,
    with the instance axes already shaped as `dims` (name -> coordinates; empty for a single model).
    """
    inst = tuple(dims)
    inst_shape = tuple(len(v) for v in dims.values())
    per_chain = np.asarray(out["llc_per_chain"], np.float64)
    diverged = np.asarray(out["diverged"], bool)
    healthy = ~diverged
    trace = np.asarray(out["loss_trace"], np.float32)
    k = config.trace_every
    steps = np.arange(trace.shape[-1]) * k
    setting = lambda value, dtype: np.broadcast_to(np.reshape(np.asarray(value, dtype), inst_shape if np.ndim(value)
                                                              else ()), inst_shape)
    burnin = setting(config.num_burnin, np.int64)

    n_ok = healthy.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        masked = np.where(healthy, per_chain, np.nan)
        llc_mean = np.where(n_ok > 0, np.nansum(np.nan_to_num(masked), axis=-1) / np.maximum(n_ok, 1), np.nan)
        centred = np.where(healthy, per_chain - llc_mean[..., None], 0.0)
        llc_std = np.where(n_ok > 1, np.sqrt((centred ** 2).sum(axis=-1) / np.maximum(n_ok - 1, 1)), np.nan)
        llc_se = llc_std / np.sqrt(n_ok)
    rhat, ess = _diagnostics(trace, healthy, steps, burnin)

    n_diverged = diverged.sum(axis=-1)
    if n_diverged.any():
        _warn_diverged(diverged, dims)

    ci, cc, cs = inst, inst + ("chain",), inst + ("chain", "step")
    dv = {
        "llc_mean": (inst, llc_mean, "LLC estimate (mean over non-divergent chains)", "1"),
        "llc_std": (inst, llc_std, "standard deviation of the LLC over non-divergent chains (ddof=1)", "1"),
        "llc_se": (inst, llc_se, "standard error of llc_mean: llc_std / sqrt(non-divergent chains)", "1"),
        "llc_per_chain": (cc, per_chain, "LLC estimate of each chain", "1"),
        "loss_trace": (cs, trace, f"loss along the chain, L_n(w*) + the excess L_B(w_t) - L_B(w*) (mean of blocks "
                                  f"of {k} steps; NaN past the chain's end)", "loss"),
        "init_loss": (ci, np.asarray(out["init_loss"], np.float64), "full-data loss at w* (L_n(w*))", "loss"),
        "mala_acceptance": (cc, np.asarray(out["mala_acceptance"], np.float64),
                            "share of post-burn-in Metropolis proposals accepted" if config.metropolis else
                            "mean MALA acceptance proxy over post-burn-in transitions", "1"),
        "rhat": (ci, rhat, "R-hat of the post-burn-in loss trace across non-divergent chains", "1"),
        "ess": (ci, ess, "effective sample size of the post-burn-in loss trace (all non-divergent chains)",
                "samples"),
        "frac_below_init": (cc, np.asarray(out["n_below_init"], np.float64) / (setting(config.num_steps, np.int64)
                                                                                - burnin)[..., None],
                            "fraction of post-burn-in steps with minibatch loss below its rows' loss at w*", "1"),
        "diverged": (cc, diverged, "chain diverged (non-finite loss, gradient or position, or exploding loss); "
                                   "excluded from llc_mean", ""),
        "n_diverged": (ci, n_diverged.astype(np.int64), "number of divergent chains", "chains"),
        "step_size": (ci, setting(config.step_size, np.float64), "SGLD step size eps", "1"),
        "localization": (ci, setting(config.localization, np.float64), "localization gamma", "1"),
        "nbeta": (ci, setting(nbeta, np.float64), "inverse temperature nbeta", "1"),
        "num_steps": (ci, setting(config.num_steps, np.int64), "SGLD steps per chain (burn-in included)", "steps"),
        "num_burnin": (ci, burnin, "burn-in steps left out of the estimate", "steps"),
        "final_position": (cc + ("parameter",), np.asarray(out["final_position"], np.float32),
                           "position after the chain's last step (one instance's parameters flattened in "
                           "jax.flatten_util.ravel_pytree order)", ""),
    }
    assert tuple(dv) == LLC_VARIABLES
    data_vars = {}
    for name, (vdims, values, long_name, units) in dv.items():
        attrs = {"long_name": long_name}
        if units:
            attrs["units"] = units
        data_vars[name] = xr.Variable(vdims, np.asarray(values), attrs)
    coords = {name: coords for name, coords in dims.items()}
    coords["chain"] = np.arange(config.num_chains)
    coords["step"] = xr.Variable("step", steps, {"long_name": "SGLD step at the start of the trace block"})
    record = {
        **config.to_dict(),
        "nbeta_resolved": nbeta.tolist() if isinstance(nbeta, np.ndarray) else nbeta,
        "n_samples": n,
        "n_parameters": d,
        "key": _key_record(key),
        "instance_dims": list(inst),
        "divergence_factor": DIVERGENCE_FACTOR,
    }
    attrs = provenance_attrs("llc", record)
    attrs.update(n_samples=n, n_parameters=d)
    # uniform settings also as attrs (per-instance ones only as the variables above)
    for name, value in (("nbeta", nbeta), ("num_burnin", config.num_burnin), ("step_size", config.step_size),
                        ("localization", config.localization), ("num_steps", config.num_steps)):
        if np.ndim(value) == 0:
            attrs[name] = float(value) if name in ("nbeta", "step_size", "localization") else int(value)
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

