"""Instance axes: a grid of models as one flat instance axis, and back.

Every batched estimator (`llc.estimate_llc_batched`, `refined.estimate_refined_llc_batched`,
`susceptibility.estimate_susceptibilities`, `calibration.calibrate_batched`) takes params whose
leaves lead with instance axes (e.g. `W: (feature_probability, seed, hidden, feature)`), runs one
program over a single flat axis of their product size (C order), and gives the results back with
the named axes. `flatten_instances` is that first step, `Instances.unflatten` the last, and
`over_instances` the vmap over the flat axis in the form `sharding.run_sharded` runs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from slt_superposition.errors import InputError, require

PyTree = Any


class Instances(NamedTuple):
    """A batch of models on one flat instance axis.

    dims:   instance dim name -> coordinate values, in the order of the leading axes.
    params: the params pytree with leaves `(instance, ...)`, instance = prod(sizes).
    data:   leaves `(instance, n, ...)` when the data are batched, else `(n, ...)` as given.
    """

    dims: dict[str, np.ndarray]
    params: PyTree
    data: PyTree

    @property
    def sizes(self) -> tuple[int, ...]:
        """The instance shape, one size per dim."""
        return tuple(len(v) for v in self.dims.values())

    @property
    def count(self) -> int:
        """The number of instances (the flat axis' length)."""
        return int(np.prod(self.sizes))

    def unflatten(self, out: Mapping[str, Any], leading: int = 1) -> dict[str, np.ndarray]:
        """`out`'s arrays with their `leading` flat axes (e.g. `(instance,)` or `(instance, mask)`)
        reshaped to the instance shape (followed by the rest of the leading axes' sizes)."""
        def shape(value):
            lead = np.shape(value)[:leading]
            return self.sizes + tuple(lead[1:]) + np.shape(value)[leading:]

        return {name: np.reshape(value, shape(value)) for name, value in out.items()}

    def describe(self, i: int) -> str:
        """Instance i of the flat axis by its coordinates, e.g. 'instance feature_probability=0.1, seed=2'."""
        index = np.unravel_index(i, self.sizes)
        return "instance " + ", ".join(f"{name}={coordinate(self.dims, name, j)}" for name, j in zip(self.dims, index))


def coordinate(dims: Mapping[str, np.ndarray], name: str, i: int):
    """The i-th coordinate of dim `name` as a plain Python value (`chain`: the index itself)."""
    if name == "chain":
        return int(i)
    value = dims[name][i]
    return value.item() if hasattr(value, "item") else value


# dims and per-instance variables of the llc, calibration, refined and susceptibility datasets:
# an instance dim of the same name would collide with them
RESERVED_DIMS = ("chain", "step", "parameter", "eigenvalue", "batch_check", "long_check", "localization", "num_steps",
                 "step_size", "nbeta", "mask", "perturbation", "observable")


def instance_dims(params: PyTree, dims: Sequence[str] | Mapping[str, Sequence] | str | None) -> dict[str, np.ndarray]:
    """The instance dims of `params`: names (sizes read from the leading axes of params, coordinates
    0..size-1), a mapping name -> coordinate values, or None for one axis named 'instance'. Names must
    be distinct and not among `RESERVED_DIMS`."""
    leaves = jax.tree_util.tree_leaves(params)
    require(len(leaves) > 0, "params has no arrays")
    shape = np.shape(leaves[0])
    if dims is None:
        require(len(shape) >= 1, "batched params need a leading instance axis")
        return {"instance": np.arange(shape[0])}
    names = [str(name) for name in (dims if isinstance(dims, Mapping) else [dims] if isinstance(dims, str) else dims)]
    require(len(names) > 0, "instance_dims is empty")
    require(len(set(names)) == len(names), f"instance_dims repeats a name: {names}")
    clash = [name for name in names if name in RESERVED_DIMS]
    require(not clash, f"instance_dims {clash} would collide with the result's own dims and variables "
                       f"({', '.join(RESERVED_DIMS)}); name the instance axes otherwise")
    if isinstance(dims, Mapping):
        return {str(name): np.asarray(coords) for name, coords in dims.items()}
    require(len(shape) >= len(names), f"params leaves have fewer leading axes than instance_dims {names}")
    return {name: np.arange(size) for name, size in zip(names, shape[: len(names)])}


def flatten(tree: PyTree, sizes: tuple[int, ...], what: str) -> PyTree:
    """`tree` with its leading instance axes `sizes` merged into one (leaves that already lead
    with one axis of the product size pass through). `what` names the tree in the error."""
    n_inst = int(np.prod(sizes))

    def flat(x):
        shape = np.shape(x)
        if shape[: len(sizes)] == sizes:
            return jnp.reshape(jnp.asarray(x), (n_inst,) + shape[len(sizes):])
        if len(shape) >= 1 and shape[0] == n_inst:
            return jnp.asarray(x)
        raise InputError(f"{what} leaves must lead with the instance axes {sizes} (or {n_inst}), found shape {shape}")

    return jax.tree_util.tree_map(flat, tree)


def flatten_instances(params: PyTree, data: PyTree, dims: Sequence[str] | Mapping[str, Sequence] | str | None, *,
                      data_batched: bool) -> Instances:
    """params (and data, when `data_batched`) on one flat instance axis, with their dims.

    dims: as `instance_dims`. Raises `InputError` when a leaf does not lead with the instance
    axes (or with one axis of their product size)."""
    named = instance_dims(params, dims)
    sizes = tuple(len(v) for v in named.values())
    params = flatten(params, sizes, "params")
    if data_batched:
        data = flatten(data, sizes, "data")
    else:
        _refuse_per_instance_data(data, sizes)
    return Instances(named, params, data)


def _refuse_per_instance_data(data: PyTree, sizes: tuple[int, ...]) -> None:
    """`InputError` when data given as shared (`data_batched=False`) lead, every array, with the
    instance axes followed by more rows than there are instances: per-instance data, which read as
    shared would make each instance's "samples" the instances."""
    shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(data)]
    k, n_inst = len(sizes), int(np.prod(sizes))
    per_instance = bool(shapes) and n_inst > 1 and all(len(s) > k and s[:k] == sizes and s[k] > n_inst
                                                       for s in shapes)
    if per_instance:
        raise InputError(f"data_batched=False, but every data array leads with the instance axes {sizes} and then "
                         f"{shapes[0][k]} rows: per-instance data need data_batched=True")


def over_instances(program: Callable, data_batched: bool) -> Callable:
    """One instance's `program(params, data, key, settings)` vmapped over the flat instance axis,
    in `sharding.run_sharded`'s form: `f((params, data, keys, settings))` when `data_batched`, else
    `f((params, keys, settings), data)` with the data shared by every instance."""
    run = jax.vmap(program, in_axes=(0, 0 if data_batched else None, 0, 0))
    if data_batched:
        return lambda inst: run(*inst)
    return lambda inst, data: run(inst[0], data, inst[1], inst[2])
