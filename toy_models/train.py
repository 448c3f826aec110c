"""Train a whole grid of toy models of superposition in one compiled program.

A grid is every combination of `feature_probability` x `importance_decay` x `seed`,
flattened in C order into one leading `instance` axis. Each instance has its own
parameters, AdamW state and data stream; one jitted `lax.scan` over a chunk of steps
advances every instance (`vmap` over the instance axis), and Python only loops over
chunks (for the progress bar, snapshots and the loss curve).

Randomness: instance randomness depends only on its `seed`:
``init_key, data_key, eval_key = split(key(seed), 3)``; the batch at step t is drawn from
``fold_in(data_key, t)``. So an instance's keys and data do not depend on which other instances
share the grid (its numbers agree to float32 rounding; bit for bit only when the grid has
the same number of instances, since XLA may vectorise a vmap of different size differently), and instances with the same seed but different sparsity or importance start
from the same weights and see the same uniform draws (common random numbers).

Weight decay defaults to 0.0, not the 0.01 of the Anthropic notebook (torch AdamW's
default): with decoupled decay the trained weights are not a critical point of the loss
the LLC is measured against. Pass `weight_decay=0.01` to match the notebook.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import xarray as xr

from slt_superposition.errors import InputError, check_batch_size, check_seed, require
from slt_superposition.grid import GRID_DIMS, complete, flatten, grid_shape, unflatten
from slt_superposition.provenance import provenance_attrs, read_config
from toy_models.data import GENERATORS, get_generator
from toy_models.tms import MODELS, TMS, tms_init_params, tms_loss, tms_loss_jit

MAX_STEPS = 2**31  # steps are counted in uint32 (batch keys fold in the step)
MAX_INSTANCES = 2**24  # a grid's instance count; (16.7M) far beyond any memory's worth of models
SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training grid's numbers.

    `seeds` is a tuple of seeds or an int K meaning seeds 0..K-1. `snapshot_steps` are
    step counts (0 = the initial weights, `steps` = the final ones) at which W and b are
    kept. `loss_curve_points` windows of steps are averaged into `loss_curve`. The final
    `loss` is measured on `eval_samples` fresh samples per instance (not a training batch).
    """

    n_features: int
    n_hidden: int
    feature_probabilities: tuple[float, ...]
    importance_decays: tuple[float, ...] = (1.0,)
    seeds: tuple[int, ...] | int = 1
    steps: int = 10_000
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    optimizer: str = "adamw"
    init_scale: float | None = None  # std of the normal initial W; None: Xavier (as the Anthropic notebook)
    model: str = "tms"
    data: str = "sparse_uniform"
    loss_curve_points: int = 100
    snapshot_steps: tuple[int, ...] = ()
    eval_samples: int = 16_384
    chunk_steps: int = 500

    def __post_init__(self):
        # normalise sequences to tuples (so the config is hashable and JSON-stable)
        as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple, np.ndarray)) else (v,)
        fps = tuple(float(p) for p in as_tuple(self.feature_probabilities))
        decays = tuple(float(r) for r in as_tuple(self.importance_decays))
        if isinstance(self.seeds, (int, np.integer)) and not isinstance(self.seeds, bool):
            require(0 < self.seeds <= MAX_INSTANCES,
                    f"seeds must be a positive count (at most {MAX_INSTANCES}) or a list of seeds, got {self.seeds}")
            seeds = tuple(range(int(self.seeds)))
        else:
            seeds = tuple(check_seed(s, "seeds") for s in as_tuple(self.seeds))
        snaps = tuple(sorted(set(int(s) for s in as_tuple(self.snapshot_steps))))
        object.__setattr__(self, "feature_probabilities", fps)
        object.__setattr__(self, "importance_decays", decays)
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "snapshot_steps", snaps)

        for name in ("n_features", "n_hidden", "steps", "batch_size", "loss_curve_points", "eval_samples", "chunk_steps"):
            value = getattr(self, name)
            require(isinstance(value, (int, np.integer)) and value > 0, f"{name} must be a positive integer, got {value}")
        require(len(fps) > 0, "give at least one feature probability")
        require(len(decays) > 0, "give at least one importance decay")
        require(len(seeds) > 0, "give at least one seed")
        require(len(fps) * len(decays) * len(seeds) <= MAX_INSTANCES,
                f"a grid has at most {MAX_INSTANCES} instances, got {len(fps) * len(decays) * len(seeds)}")
        for p in fps:
            require(0.0 < p <= 1.0, f"feature probability must be in (0, 1], got {p}")
        for r in decays:
            require(math.isfinite(r) and r > 0.0, f"importance decay must be positive and finite, got {r}")
        for name, values in (("feature probabilities", fps), ("importance decays", decays), ("seeds", seeds)):
            require(len(set(values)) == len(values), f"{name} must not repeat: {list(values)}")
        require(self.steps < MAX_STEPS, f"steps must be below {MAX_STEPS} (the step counter is 32-bit), got {self.steps}")
        check_batch_size(self.batch_size)
        require(math.isfinite(self.learning_rate) and self.learning_rate > 0, f"learning rate must be positive, got {self.learning_rate}")
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}")
        require(self.schedule in SCHEDULES, f"unknown schedule '{self.schedule}' (known: {', '.join(SCHEDULES)})")
        require(self.optimizer in OPTIMIZERS, f"unknown optimizer '{self.optimizer}' (known: {', '.join(OPTIMIZERS)})")
        require(self.init_scale is None or (math.isfinite(self.init_scale) and self.init_scale > 0),
                f"init_scale must be positive (or None for Xavier), got {self.init_scale}")
        require(self.model in MODELS, f"unknown model '{self.model}' (known: {', '.join(MODELS)})")
        require(self.data in GENERATORS, f"unknown data generator '{self.data}' (known: {', '.join(GENERATORS)})")
        if self.data in ("correlated_pairs", "anticorrelated_pairs"):
            require(self.n_features % 2 == 0, f"data '{self.data}' needs an even number of features, got {self.n_features}")
        require(self.loss_curve_points <= self.steps, f"loss_curve_points ({self.loss_curve_points}) must not exceed steps ({self.steps})")
        for s in snaps:
            require(0 <= s <= self.steps, f"snapshot step {s} is outside [0, {self.steps}]")

    @property
    def grid_coords(self) -> dict[str, np.ndarray]:
        """Grid dim -> coordinate values (`slt_superposition.grid.GRID_DIMS` order)."""
        return {"feature_probability": np.asarray(self.feature_probabilities),
                "importance_decay": np.asarray(self.importance_decays), "seed": np.asarray(self.seeds, np.int64)}

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return (len(self.feature_probabilities), len(self.importance_decays), len(self.seeds))

    @property
    def n_instances(self) -> int:
        return math.prod(self.grid_shape)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def memory_bytes(self) -> float:
        """About the peak memory `train_grid` needs for this grid (`slt_superposition.memory`)."""
        from slt_superposition.memory import train_bytes

        return train_bytes(self.n_instances, self.n_features, self.n_hidden, batch_size=self.batch_size,
                           eval_samples=self.eval_samples, n_snapshots=len(self.snapshot_steps),
                           loss_curve_points=self.loss_curve_points)

    def check_memory(self) -> None:
        """`InputError` before any compute if this grid cannot fit in the available memory."""
        from slt_superposition.memory import require_memory

        require_memory(self.memory_bytes(), f"training {self.n_instances} instances of a {self.n_features}x"
                       f"{self.n_hidden} model with batch {self.batch_size}",
                       "fewer instances (seeds, grid points), a smaller --batch-size or a smaller model")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


# ---------------------------------------------------------------------------------------
# per-instance inputs (leading instance axis, C order over feature_probability x decay x seed)


def importance_vector(decay: float, n_features: int) -> np.ndarray:
    """Feature importance I_i = decay**i, `(n_features,)` float32."""
    return (np.float64(decay) ** np.arange(n_features)).astype(np.float32)


def instance_inputs(config: TrainConfig) -> dict[str, jax.Array]:
    """Arrays with a leading `instance` axis describing every instance of the grid.

    Returns {"feature_probability": (instance,), "importance": (instance, feature),
    "seed": (instance,) int, "init_key", "data_key", "eval_key": (instance,) typed keys}.
    """
    fp, decay, seed = (a.ravel() for a in np.meshgrid(
        np.asarray(config.feature_probabilities, np.float32),
        np.asarray(config.importance_decays, np.float64),
        np.asarray(config.seeds, np.uint32),
        indexing="ij",
    ))
    importance = np.stack([importance_vector(r, config.n_features) for r in decay])
    keys = jax.vmap(lambda s: jax.random.split(jax.random.key(s), 3))(jnp.asarray(seed))
    return {
        "feature_probability": jnp.asarray(fp),
        "importance": jnp.asarray(importance),
        "seed": jnp.asarray(seed),
        "init_key": keys[:, 0],
        "data_key": keys[:, 1],
        "eval_key": keys[:, 2],
    }


def _sampler(config: TrainConfig) -> Callable:
    """`sample(key, n_samples, feature_probability) -> (n_samples, n_features)`."""
    generator = get_generator(config.data)
    return lambda key, n, p: generator(key, n, config.n_features, p)


def _loss(config: TrainConfig) -> Callable:
    """The training step's loss: `tms_loss` in the "rows" layout, so every grid trains to the weights
    earlier versions trained, bit for bit (the feature layout's gain is in the SGLD chains, whose
    small products are written elementwise; training's are library GEMMs either way)."""
    relu_hidden = config.model == "tms_relu_hidden"
    return lambda params, x, importance: tms_loss(params, x, importance, relu_hidden=relu_hidden, layout="rows")


def _optimizer(config: TrainConfig) -> optax.GradientTransformation:
    lr = config.learning_rate
    schedule = {
        "constant": lambda: optax.constant_schedule(lr),
        "linear": lambda: optax.linear_schedule(lr, 0.0, config.steps),
        "cosine": lambda: optax.cosine_decay_schedule(lr, config.steps),
    }[config.schedule]()
    if config.optimizer == "sgd":  # plain SGD, as Chen et al.'s k-gon dynamics; weight decay added to the loss
        return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.sgd(schedule))
    return optax.adamw(schedule, weight_decay=config.weight_decay)


def _static_key(config: TrainConfig) -> TrainConfig:
    """The config with everything that does not change the compiled program zeroed out,
    so grids that differ only in their values share one compilation."""
    return dataclasses.replace(
        config, feature_probabilities=(1.0,), importance_decays=(1.0,), seeds=(0,),
        loss_curve_points=1, snapshot_steps=(), chunk_steps=1,
    )


def trainer_functions(config: TrainConfig):
    """The jitted `(init, chunk)` pair `train_grid` drives (cached per compiled shape).

    init(init_key: (instance,)) -> (params, opt_state), leading instance axis;
    chunk(params, opt_state, data_key, feature_probability, importance, start_step, n_active, *, length)
    -> (params, opt_state, losses: (length, instance)); params and opt_state are donated.
    Every array argument carries the instance axis in front, so it can be sharded over devices.
    """
    return _compiled(_static_key(config))


@functools.lru_cache(maxsize=32)
def _compiled(static: TrainConfig):
    """Jitted (init, chunk) functions for a static config (cached)."""
    sample, loss, optimizer = _sampler(static), _loss(static), _optimizer(static)

    def init(init_key):
        """(instance,) keys -> (params, opt_state), each with a leading instance axis."""
        params = jax.vmap(lambda k: tms_init_params(k, static.n_features, static.n_hidden, std=static.init_scale))(
            init_key)
        return params, jax.vmap(optimizer.init)(params)

    def one_step(params, opt_state, key, feature_probability, importance):
        x = sample(key, static.batch_size, feature_probability)
        value, grads = jax.value_and_grad(loss)(params, x, importance)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def chunk(params, opt_state, data_key, feature_probability, importance, start_step, n_active, length):
        """Advance every instance `n_active` (<= `length`) steps from `start_step`.

        params {"W": (instance, m, n), "b": (instance, n)}, opt_state (instance, ...),
        data_key (instance,), feature_probability (instance,), importance (instance, n).
        The scan always runs `length` steps (one compiled program per length); steps from
        `n_active` on leave params and opt_state as they are. Returns (params, opt_state,
        losses: (length, instance)), of which the first `n_active` rows are meaningful.
        """
        step_all = jax.vmap(one_step)

        def body(carry, t):
            params, opt_state = carry
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(data_key, t)
            new_params, new_opt_state, values = step_all(params, opt_state, keys, feature_probability, importance)
            keep = lambda new, old: jnp.where(t < start_step + n_active, new, old)
            return (jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state)), values

        steps = start_step + jnp.arange(length, dtype=jnp.uint32)
        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), steps)
        return params, opt_state, losses

    return jax.jit(init), jax.jit(chunk, static_argnames=("length",), donate_argnums=(0, 1))


@functools.lru_cache(maxsize=32)
def _eval_sampler(static: TrainConfig):
    """Jitted `(key, feature_probability) -> x: (eval_samples, n_features)` (cached)."""
    sample = _sampler(static)
    return jax.jit(lambda key, p: sample(key, static.eval_samples, p))


def _evaluate(config: TrainConfig, params, inputs) -> np.ndarray:
    """Final loss of each instance on `eval_samples` fresh samples: (instance,) float32.

    One instance at a time through the same compiled programs as `evaluation_batch` and
    `TMS.loss`, so the number is reproducible from a saved dataset bit for bit (a vmapped
    reduction may round differently) and memory stays bounded for large grids.
    """
    sample = _eval_sampler(_static_key(config))
    relu_hidden = config.model == "tms_relu_hidden"
    W, b = np.asarray(params["W"]), np.asarray(params["b"])
    out = np.empty(W.shape[0], np.float32)
    for i in range(W.shape[0]):
        x = sample(inputs["eval_key"][i], inputs["feature_probability"][i])
        out[i] = tms_loss_jit({"W": W[i], "b": b[i]}, x, inputs["importance"][i], relu_hidden=relu_hidden)
    return out


SHORT_CHUNK = 64  # segments up to this many steps run in a short compiled chunk, longer ones in a full one


def _segments(config: TrainConfig) -> list[tuple[int, int]]:
    """(start, stop) step ranges: every `chunk_steps`, also split at snapshot steps."""
    cuts = set(range(0, config.steps, config.chunk_steps)) | set(config.snapshot_steps) | {config.steps}
    cuts = sorted(c for c in cuts if 0 <= c <= config.steps)
    return list(zip(cuts[:-1], cuts[1:]))


def _chunk_length(config: TrainConfig, steps: int) -> int:
    """The compiled chunk length that runs a `steps`-long segment (the surplus steps are masked).

    Two lengths at most, so snapshots at arbitrary steps do not compile one program per gap.
    """
    return min(SHORT_CHUNK, config.chunk_steps) if steps <= SHORT_CHUNK else config.chunk_steps


@functools.lru_cache(maxsize=64)
def _chunk_block(static: TrainConfig, length: int) -> Callable:
    """`chunk` in `run_sharded`'s form (one object per static config and length):
    ((params, opt_state, data_key, feature_probability, importance), start_step, n_active)
    -> (params, opt_state, losses: (instance, length))."""
    _, chunk = _compiled(static)

    def block(inst, start_step, n_active):
        params, opt_state, losses = chunk(*inst, start_step, n_active, length=length)
        return params, opt_state, losses.T

    return block


def training_block(config: TrainConfig) -> int:
    """Instances per block of `train_grid`'s programs (`sharding.block_for`): the working set per
    instance and step is the batch's inputs, hidden and outputs in float32, about 8 times over
    (activations and gradients)."""
    from slt_superposition.sharding import block_for

    return block_for(config.n_instances, config.batch_size * (2 * config.n_features + config.n_hidden) * 4 * 8)


def train_grid(config: TrainConfig, *, progress: bool = True, mesh=None) -> xr.Dataset:
    """Train every instance of the grid and return the 'train' dataset.

    Variables (see docs/architecture.md): W (fp, decay, seed, hidden, feature),
    b (fp, decay, seed, feature), loss (fp, decay, seed), loss_curve (fp, decay, seed, step),
    importance (importance_decay, feature), optional W_snapshot / b_snapshot with a
    `snapshot` dimension (= step count).

    mesh: a `jax.sharding.Mesh` with axis "instance" (`slt_superposition.sharding.instance_mesh()`
    spans every device) to split the instances over; None means one device. Either way the
    init and chunk programs run through `sharding.run_sharded`, in blocks (`sharding.block_for`:
    at most 16 instances on a CPU, more on an accelerator) whose size depends only on the grid's
    sizes and the backend, so the weights are the same bit for bit on one device or many (a plain vmap over the whole grid would round differently in
    the last bit: XLA vectorises a vmap of another size differently).
    """
    from slt_superposition.progress import progress_bar
    from slt_superposition.sharding import default_mesh, run_sharded

    mesh = default_mesh() if mesh is None else mesh
    static = _static_key(config)
    init, _ = trainer_functions(config)
    inputs = instance_inputs(config)
    block = training_block(config)
    params, opt_state = run_sharded(init, inputs["init_key"], mesh=mesh, block=block)
    per_instance = (inputs["data_key"], inputs["feature_probability"], inputs["importance"])

    n_instances, points = config.n_instances, config.loss_curve_points
    # step t belongs to window (t * points) // steps; window j starts at step ceil(j * steps / points)
    window_start = -((-np.arange(points + 1, dtype=np.int64) * config.steps) // points)
    curve_sum = np.zeros((points, n_instances), np.float64)
    curve_count = np.diff(window_start)[:, None]
    snapshots = {}
    if 0 in config.snapshot_steps:
        snapshots[0] = jax.tree.map(np.array, params)  # a copy: the buffers are donated next chunk

    with progress_bar(config.steps, f"training {n_instances} instances", progress, unit="step") as bar:
        for start, stop in _segments(config):
            params, opt_state, losses = run_sharded(
                _chunk_block(static, _chunk_length(config, stop - start)), (params, opt_state) + per_instance,
                jnp.uint32(start), jnp.uint32(stop - start), mesh=mesh, block=block)
            step_bin = (np.arange(start, stop, dtype=np.int64) * points) // config.steps  # window of each step
            np.add.at(curve_sum, step_bin, np.asarray(losses, np.float64)[:, : stop - start].T)
            if stop in config.snapshot_steps:
                snapshots[stop] = jax.tree.map(np.array, params)  # a copy: the buffers are donated next chunk
            bar.update(stop - start)

    final_loss = _evaluate(config, params, inputs)
    curve = (curve_sum / curve_count).astype(np.float32).T  # (instance, point)
    curve_steps = window_start[1:]  # last step of each window, 1-based
    ds = _to_dataset(config, jax.tree.map(np.asarray, params), np.asarray(final_loss), curve, curve_steps, snapshots)
    bad = nonfinite_instances(ds, loss=True)
    if bad:
        warnings.warn(diverged_message(bad, config.n_instances), RuntimeWarning, stacklevel=2)
    return ds


def finite_instances(ds: xr.Dataset, *, loss: bool = False) -> xr.DataArray:
    """(feature_probability, importance_decay, seed) bool: the instances of a 'train' dataset whose
    final W and b are finite; with `loss`, whose final loss is finite too."""
    ds = _grid_dataset(ds)
    finite = np.isfinite(ds["W"]).all(("hidden", "feature")) & np.isfinite(ds["b"]).all("feature")
    if loss and "loss" in ds:
        finite = finite & np.isfinite(ds["loss"])
    return finite.transpose(*GRID_DIMS)


def nonfinite_instances(ds: xr.Dataset, *, loss: bool = False) -> list[str]:
    """Labels ("feature_probability=0.1, importance_decay=1, seed=3") of the instances of a
    'train' dataset whose final W or b hold a NaN or an infinity (training diverged); with
    `loss`, also those whose final loss is not finite (weights so large that the loss overflows)."""
    finite = finite_instances(ds, loss=loss)  # carries the grid's coordinates
    return [", ".join(f"{dim}={finite[dim].values[i]:g}" for dim, i in zip(GRID_DIMS, index))
            for index in zip(*np.nonzero(~finite.values))]


def require_trained(ds: xr.Dataset, path) -> None:
    """`InputError` naming the instances of the 'train' dataset at `path` whose training diverged
    (non-finite weights or final loss): nothing measured on them would mean anything."""
    bad = nonfinite_instances(ds, loss=True)
    if bad:
        raise InputError(f"{path}: " + diverged_message(bad, int(np.prod(grid_shape(ds)))) + " and train again")


def diverged_message(labels: list[str], n_instances: int) -> str:
    """One line naming the diverged instances (the first three) and what to change."""
    shown = "; ".join(labels[:3]) + (f"; and {len(labels) - 3} more" if len(labels) > 3 else "")
    return (f"training diverged: {len(labels)} of {n_instances} instances have non-finite weights or final loss "
            f"({shown}); "
            "lower the learning rate")


def _to_dataset(config, params, final_loss, curve, curve_steps, snapshots) -> xr.Dataset:
    gdims = GRID_DIMS
    m, n = config.n_hidden, config.n_features
    grid = lambda values, *dims: unflatten(values, config.grid_coords, dims).values
    data_vars = {
        "W": (gdims + ("hidden", "feature"), grid(params["W"], "hidden", "feature"),
              {"long_name": "embedding weights W (column i = feature i's direction)", "units": "1"}),
        "b": (gdims + ("feature",), grid(params["b"], "feature"),
              {"long_name": "output bias b", "units": "1"}),
        "loss": (gdims, grid(final_loss),
                 {"long_name": f"final loss on {config.eval_samples} fresh samples "
                               "(mean over samples of sum_i I_i (x_i - x'_i)^2)", "units": "1"}),
        "loss_curve": (gdims + ("step",), grid(curve, "step"),
                       {"long_name": "training-batch loss averaged over the steps since the previous point",
                        "units": "1"}),
        "importance": (("importance_decay", "feature"),
                       np.stack([importance_vector(r, n) for r in config.importance_decays]),
                       {"long_name": "feature importance I_i = importance_decay**i", "units": "1"}),
    }
    coords = {
        "feature_probability": ("feature_probability", config.grid_coords["feature_probability"],
                                {"long_name": "feature probability 1 - S"}),
        "importance_decay": ("importance_decay", config.grid_coords["importance_decay"],
                             {"long_name": "importance decay r (I_i = r**i)"}),
        "seed": ("seed", config.grid_coords["seed"], {"long_name": "random seed of the instance"}),
        "hidden": ("hidden", np.arange(m)),
        "feature": ("feature", np.arange(n)),
        "step": ("step", np.asarray(curve_steps, np.int64), {"long_name": "training steps completed", "units": "steps"}),
    }
    if snapshots:
        steps = sorted(snapshots)
        coords["snapshot"] = ("snapshot", np.asarray(steps, np.int64), {"long_name": "training step of the snapshot", "units": "steps"})
        W_s = np.stack([snapshots[s]["W"] for s in steps], axis=1)  # (instance, snapshot, m, n)
        b_s = np.stack([snapshots[s]["b"] for s in steps], axis=1)
        data_vars["W_snapshot"] = (gdims + ("snapshot", "hidden", "feature"), grid(W_s, "snapshot", "hidden", "feature"),
                                   {"long_name": "W during training", "units": "1"})
        data_vars["b_snapshot"] = (gdims + ("snapshot", "feature"), grid(b_s, "snapshot", "feature"),
                                   {"long_name": "b during training", "units": "1"})
    attrs = provenance_attrs("train", config.to_dict())
    attrs.update(n_features=n, n_hidden=m, model=config.model, data=config.data)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


# ---------------------------------------------------------------------------------------
# from a dataset back to models, parameters and LLC inputs


def config_from_dataset(ds: xr.Dataset) -> TrainConfig:
    """The `TrainConfig` stored in a 'train' dataset's attrs."""
    require(ds.attrs.get("slt_superposition_kind") == "train", "not a 'train' dataset")
    return TrainConfig.from_dict(read_config(ds.attrs))


def _grid_dataset(ds: xr.Dataset) -> xr.Dataset:
    """`ds` with all three grid dims present (a `.sel` may have dropped some), in order."""
    return complete(ds)


def params_from_dataset(ds: xr.Dataset) -> dict[str, jax.Array]:
    """{"W": (instance, m, n), "b": (instance, n)} float32, instances in C order over
    (feature_probability, importance_decay, seed) (`slt_superposition.grid.flatten`). Works on any
    sub-selection of a grid."""
    W = flatten(ds["W"].transpose(..., "hidden", "feature"))
    b = flatten(ds["b"].transpose(..., "feature"))
    return {"W": jnp.asarray(W, jnp.float32), "b": jnp.asarray(b, jnp.float32)}


def unflatten_instances(values, ds: xr.Dataset, name: str | None = None, dims: tuple[str, ...] = ()) -> xr.DataArray:
    """Put the grid dims back on an array with a leading `instance` axis (`slt_superposition.grid.unflatten`).

    `values: (instance, *rest)` in the order of `params_from_dataset(ds)`; `dims` names the
    trailing axes (default `dim_1`, ...). Returns a DataArray with dims (grid..., *dims).
    """
    return unflatten(values, ds, dims, name=name)


def instance_inputs_for(ds: xr.Dataset) -> dict[str, jax.Array]:
    """`instance_inputs` for the instances present in (a sub-selection of) a 'train' dataset."""
    ds = _grid_dataset(ds)
    config = dataclasses.replace(
        config_from_dataset(ds),
        feature_probabilities=tuple(ds["feature_probability"].values.tolist()),
        importance_decays=tuple(ds["importance_decay"].values.tolist()),
        seeds=tuple(int(s) for s in ds["seed"].values),
    )
    return instance_inputs(config)


def evaluate_loss(ds: xr.Dataset) -> np.ndarray:
    """Recompute each instance's final `loss` from the stored weights: (instance,).

    Same data and compiled programs as `train_grid`, so it reproduces `ds.loss` bit for bit.
    """
    config = config_from_dataset(ds)
    return _evaluate(config, params_from_dataset(ds), instance_inputs_for(ds))


def evaluation_batch(ds: xr.Dataset, **sel) -> tuple[jax.Array, jax.Array]:
    """The held-out batch behind one instance's final `loss`: (x: (eval_samples, n), importance: (n,)).

    `model_from_dataset(ds, **sel).loss(*evaluation_batch(ds, **sel))` equals the stored loss.
    """
    one = _select_one(ds, sel)
    inputs = instance_inputs_for(one)
    x = _eval_sampler(_static_key(config_from_dataset(ds)))(inputs["eval_key"][0], inputs["feature_probability"][0])
    return x, inputs["importance"][0]


def _select_one(ds: xr.Dataset, sel: dict) -> xr.Dataset:
    try:
        one = _grid_dataset(_grid_dataset(ds).sel(**sel))
    except (KeyError, ValueError) as err:
        raise InputError(f"no instance matches {sel}: {err}") from None
    n_left = math.prod(one.sizes[d] for d in GRID_DIMS)
    require(n_left == 1, f"selection {sel} leaves {n_left} instances; name every grid dim of size > 1")
    return one


def model_from_dataset(ds: xr.Dataset, **sel) -> TMS:
    """The nnx `TMS` of one instance, e.g. `model_from_dataset(ds, feature_probability=0.05, seed=3)`.

    Grid dims of size 1 need not be named; the selection must leave exactly one instance.
    """
    one = _select_one(ds, sel)
    params = params_from_dataset(one)
    return TMS.from_params({"W": params["W"][0], "b": params["b"][0]},
                           relu_hidden=ds.attrs.get("model") == "tms_relu_hidden")


def loss_fn_for(ds_or_config) -> Callable:
    """The pure per-instance training loss `loss_fn(params, batch) -> scalar`.

    `params` {"W": (m, n), "b": (n,)}; `batch` {"x": (batch, n), "importance": (batch, n)}:
    the mean over the batch of sum_i I_i (x_i - x'_i)^2. Importance rides along with the
    data (one row per sample) so that one loss function serves every instance of a grid.
    """
    config = ds_or_config if isinstance(ds_or_config, TrainConfig) else config_from_dataset(ds_or_config)
    return _instance_loss(config.model == "tms_relu_hidden")


@functools.lru_cache(maxsize=None)
def _instance_loss(relu_hidden: bool) -> Callable:
    """One function object per model kind: the compiled LLC, calibration and refinement programs
    are cached by the loss function's identity, so every grid of a kind shares them."""

    def loss_fn(params, batch):
        return tms_loss(params, batch["x"], batch["importance"], relu_hidden=relu_hidden)

    return loss_fn


def llc_inputs(ds: xr.Dataset, *, n_samples: int, key) -> tuple[Callable, dict, dict]:
    """(loss_fn, params, data) for `estimate_llc_batched`, one entry per instance of `ds`.

    loss_fn(params_single, batch) -> scalar (see `loss_fn_for`);
    params {"W": (instance, m, n), "b": (instance, n)} (as `params_from_dataset`);
    data {"x": (instance, n_samples, n_features), "importance": (instance, n_samples, n_features)},
    drawn from each instance's own data distribution with key `fold_in(key, seed)`.
    """
    require(isinstance(n_samples, (int, np.integer)) and n_samples > 0, f"n_samples must be a positive integer, got {n_samples}")
    config = config_from_dataset(ds)
    inputs = instance_inputs_for(ds)
    sample = _sampler(config)

    @jax.jit
    def draw(seeds, fps, importance):
        def one(seed, fp, imp):
            x = sample(jax.random.fold_in(key, seed), n_samples, fp)
            return {"x": x, "importance": jnp.broadcast_to(imp, x.shape)}
        return jax.vmap(one)(seeds, fps, importance)

    data = draw(inputs["seed"], inputs["feature_probability"], inputs["importance"])
    return loss_fn_for(config), params_from_dataset(ds), data


def select_best_seed(ds: xr.Dataset) -> xr.Dataset:
    """For each (feature_probability, importance_decay), keep the seed with the lowest `loss`.

    The `seed` dim is dropped; a `best_seed` variable records which seed won.
    """
    best = ds["loss"].argmin("seed")
    out = ds.isel(seed=best)
    out["best_seed"] = out["seed"].reset_coords(drop=True).assign_attrs(long_name="seed with the lowest final loss")
    return out.drop_vars("seed")
