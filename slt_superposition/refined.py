"""Refined LLCs (Wang et al. 2024, arXiv 2410.02984): which weights carry the degeneracy.

Weight-refined LLC of a block V of parameters (a boolean mask shaped like the params): the LLC
of the loss as a function of the parameters in V alone, the others held at w*,

    lambda_V(w*) = nbeta (E_V[L_n(w_V, w*_{not V})] - L_n(w*)),

E_V over the local posterior of w_V. At a regular minimum it is half the rank of the Hessian
restricted to V (not additive over blocks: two blocks that trade off against each other each
count the shared direction).

How it is sampled: the ordinary chain program (`slt_superposition.chain`) runs on the masked loss

    L'(w) = L_n(where(mask, w, w*)),

so the parameters outside V never enter the loss. Their gradient is zero: they follow only the
localization pull and the injected noise (an Ornstein-Uhlenbeck walk around w* with variance
1 / localization per coordinate, or a random walk at localization 0), and change neither the
loss nor any sampled coordinate's drift. The coordinates in V therefore move exactly as SGLD on
V alone, and nbeta (L' - L_n(w*)) is the weight-refined LLC. One compile path: the mask and w*
are runtime values inside the program, so every mask of every instance runs in one program
(`estimate_refined_llc_batched`: masks are a vmapped axis inside each instance, sharing its data).
The MALA acceptance proxy of a masked estimate includes the free OU coordinates.

Checks: a masked estimate stores `llc_quadratic` of its block (the quadratic-approximation LLC
from the Hessian restricted to V, `curvature.quadratic_llc` at the run's settings) and
`block_hessian_rank`; it does not run the paired step-size and batch checks of `estimate_llc`
(run them on the unmasked estimate at the same settings).

Data-refined LLC: the LLC at the same w* of another loss or data set (e.g. only the samples where
feature i is active). That is `estimate_llc` / `estimate_llc_batched` with that loss or data and
the same params (`analysis.per_feature.conditional_feature_data` draws such data sets for TMS
features).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from slt_superposition.chain import instance_program
from slt_superposition.curvature import MAX_DENSE_PARAMETERS, hessian_matrix, quadratic_llc
from slt_superposition.errors import InputError, require
from slt_superposition.instances import flatten_instances
from slt_superposition.sharding import default_mesh, run_sharded

PyTree = Any
#: Eigenvalues of a block's restricted Hessian above this fraction of the full Hessian's largest
#: eigenvalue count towards `block_hessian_rank`.
RANK_RTOL = 1e-5


# ----------------------------------------------------------------------------- masks


def feature_masks(params: PyTree) -> dict[str, np.ndarray]:
    """One mask per feature for TMS params {"W": (hidden, feature), "b": (feature,)}: mask i
    selects column W[:, i] and bias b[i]. Returns {"W": (feature, hidden, feature), "b":
    (feature, feature)} bools (leading axis: the mask stack)."""
    require(isinstance(params, dict) and set(params) == {"W", "b"}, "feature_masks needs params {'W', 'b'}")
    m, n = np.shape(params["W"])[-2:]
    eye = np.eye(n, dtype=bool)
    return {"W": np.broadcast_to(eye[:, None, :], (n, m, n)).copy(), "b": eye.copy()}


def _mask_stack(params_one: PyTree, masks: PyTree, stacked: bool) -> tuple[PyTree, int]:
    """Validate `masks` against one instance's params; returns (bool masks with a leading stack
    axis, stack size)."""
    p_leaves, p_def = jax.tree_util.tree_flatten(params_one)
    try:
        m_leaves = p_def.flatten_up_to(masks)
    except (ValueError, TypeError):
        raise InputError("mask must be a pytree of booleans with the structure of params") from None
    out, size = [], None
    for p, m in zip(p_leaves, m_leaves):
        m = np.asarray(m)
        require(m.dtype == bool, f"mask leaves must be booleans, found dtype {m.dtype}")
        want = np.shape(p)
        if not stacked:
            require(m.shape == want, f"mask leaf shape {m.shape} differs from the params leaf shape {want}")
            m = m[None]
        else:
            require(m.ndim == len(want) + 1 and m.shape[1:] == want,
                    f"a stack of masks needs leaves (mask, *params leaf shape {want}), found {m.shape}")
        require(size is None or m.shape[0] == size, "mask leaves disagree on the number of masks")
        size = m.shape[0]
        out.append(m)
    stack = jax.tree_util.tree_unflatten(p_def, out)
    counts = sum(np.reshape(m, (size, -1)).sum(axis=1) for m in out)
    require(bool(np.all(counts > 0)), "every mask must select at least one parameter")
    return stack, size


# ----------------------------------------------------------------------------- the program


@functools.lru_cache(maxsize=32)
def masked_block_function(loss_fn: Callable, shape, data_batched: bool) -> Callable:
    """The masked chain program in `run_sharded`'s form. Inputs per instance: params, data (if
    `data_batched`), masks `(mask, ...)`, keys `(mask,)`, settings `(mask,)`; every mask of an
    instance shares its params and data. One function object per (loss_fn, shape, data_batched),
    so jax.jit's cache compiles it once per input shape."""

    def one(params, data, mask, key, settings):
        masked = lambda p, batch: loss_fn(jax.tree_util.tree_map(jnp.where, mask, p, params), batch)
        return instance_program(masked, shape)(params, data, key, settings)

    per_mask = jax.vmap(one, in_axes=(None, None, 0, 0, 0))
    run = jax.vmap(per_mask, in_axes=(0, 0 if data_batched else None, 0, 0, 0))
    if data_batched:
        return lambda inst: run(*inst)
    return lambda inst, data: run(inst[0], data, *inst[1:])


def sample_masked(loss_fn: Callable, params: PyTree, data: PyTree, masks: PyTree, keys, settings, shape, *,
                  data_batched: bool, mesh=None) -> dict[str, np.ndarray]:
    """Run every (instance, mask) chain set. params `(instance, ...)`; masks `(instance, mask, ...)`;
    keys `(instance, mask)`; settings `ChainSettings` of `(instance, mask)` arrays. Returns numpy
    arrays with leading `(instance, mask)` axes. No input checks (callers validate)."""
    from slt_superposition.llc import compiler_options

    mesh = default_mesh() if mesh is None else mesh
    block = masked_block_function(loss_fn, shape, data_batched)
    if data_batched:
        return run_sharded(block, (params, data, masks, keys, settings), mesh=mesh,
                           compiler_options=compiler_options())
    return run_sharded(block, (params, masks, keys, settings), data, mesh=mesh, compiler_options=compiler_options())


# ----------------------------------------------------------------------------- curvature


@functools.lru_cache(maxsize=32)
def _hessians(loss_fn: Callable, data_batched: bool) -> Callable:
    one = lambda p, x: hessian_matrix(loss_fn, p, x)
    if data_batched:
        return jax.jit(lambda p, x: jax.lax.map(lambda a: one(*a), (p, x)))
    return jax.jit(lambda p, x: jax.lax.map(lambda a: one(a, x), p))


def block_spectra(loss_fn: Callable, params: PyTree, data: PyTree, flat_masks: np.ndarray, *,
                  data_batched: bool) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the Hessian of L_n at w* restricted to each mask's block.

    params: leaves `(instance, ...)`; flat_masks: `(mask, d)` bools (raveled like params).
    Returns (`(instance, mask, d)` eigenvalues, ascending, zeros for the coordinates outside the
    block; `(instance,)` the full Hessian's largest eigenvalue). The Hessian is computed once per
    instance (dense; NaN when d > `curvature.MAX_DENSE_PARAMETERS`)."""
    d = flat_masks.shape[1]
    n_inst = np.shape(jax.tree_util.tree_leaves(params)[0])[0]
    if d > MAX_DENSE_PARAMETERS:
        return np.full((n_inst, len(flat_masks), d), np.nan), np.full((n_inst,), np.nan)
    H = np.asarray(_hessians(loss_fn, data_batched)(params, data), np.float64)  # (instance, d, d)
    top = np.linalg.eigvalsh(H)[:, -1]
    outer = (flat_masks[:, :, None] & flat_masks[:, None, :]).astype(np.float64)  # (mask, d, d)
    return np.linalg.eigvalsh(H[:, None] * outer[None]), top


# ----------------------------------------------------------------------------- public API


def _broadcast_config(config, sizes: tuple[int, ...], n_masks: int):
    """`config` with every per-instance array broadcast to `sizes + (n_masks,)` (arrays already of
    that shape give each (instance, mask) its own setting)."""
    from slt_superposition.llc import PER_INSTANCE

    changes = {}
    for name in PER_INSTANCE:
        value = getattr(config, name)
        if isinstance(value, np.ndarray) and value.shape == sizes + (n_masks,):
            changes[name] = value  # already one value per (instance, mask)
        elif isinstance(value, np.ndarray):
            value = value.reshape(sizes) if value.shape != sizes else value
            changes[name] = np.broadcast_to(value[..., None], sizes + (n_masks,)).copy()
    return dataclasses.replace(config, **changes) if changes else config


def estimate_refined_llc_batched(loss_fn: Callable, params: PyTree, data: PyTree, *, masks: PyTree, config, key,
                                 instance_dims=None, data_batched: bool = True,
                                 mask_coords: Sequence | None = None, mask_dim: str = "mask",
                                 curvature: bool = True, mesh=None) -> xr.Dataset:
    """Weight-refined LLCs of a stack of masks for every instance, in one compiled program.

    params, data, config, instance_dims, data_batched, mesh: as `estimate_llc_batched`; a
           per-instance setting may also have the shape (*instance shape, mask): one per block.
    masks: a pytree with the structure of one instance's params whose leaves are booleans
           `(mask, *leaf shape)`: mask j samples the parameters where its leaves are True and holds
           the rest at w* (`feature_masks` gives one per TMS feature). Shared by every instance.
    mask_coords: coordinate values of the mask dimension (default 0..M-1), named `mask_dim`.
    curvature: also store each block's `llc_quadratic` and `block_hessian_rank`.

    Keys: instance i (flattened C order) has key k_i = `jax.random.split(key, N)[i]`, its mask j
    `jax.random.split(k_i, M)[j]`. Returns the `llc` dataset of `estimate_llc_batched` with the
    dimension `mask_dim` after the instance dims, plus `n_sampled (mask)`, the number of
    parameters each mask samples.
    """
    from slt_superposition.llc import _check_inputs, _check_key, chain_settings, chain_shape, llc_dataset, resolve_nbeta

    flat = flatten_instances(params, data, instance_dims, data_batched=data_batched)
    params, data, dims, sizes, n_inst = flat.params, flat.data, flat.dims, flat.sizes, flat.count
    n, d = _check_inputs(loss_fn, params, data, config, instance_axes=1, data_axes=1 if data_batched else 0)
    key = _check_key(key)
    one = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], params)
    stack, n_masks = _mask_stack(one, masks, stacked=True)
    coords = np.arange(n_masks) if mask_coords is None else np.asarray(mask_coords)
    require(coords.shape == (n_masks,), f"mask_coords has {coords.size} values for {n_masks} masks")
    require(mask_dim not in dims, f"mask_dim '{mask_dim}' is also an instance dim")
    nbeta = resolve_nbeta(config, n)
    full = sizes + (n_masks,)
    cfg = _broadcast_config(config, sizes, n_masks)
    nbeta_full = np.broadcast_to(np.reshape(nbeta, sizes)[..., None], full).copy() if isinstance(nbeta, np.ndarray) \
        else nbeta
    settings = chain_settings(cfg, nbeta_full, n_inst * n_masks, full)
    settings = jax.tree_util.tree_map(lambda a: a.reshape(n_inst, n_masks), settings)
    keys = jax.vmap(lambda k: jax.random.split(k, n_masks))(jax.random.split(key, n_inst))
    inst_masks = jax.tree_util.tree_map(lambda m: jnp.broadcast_to(jnp.asarray(m), (n_inst,) + m.shape), stack)
    out = sample_masked(loss_fn, params, data, inst_masks, keys, settings, chain_shape(cfg, n, d),
                        data_batched=data_batched, mesh=mesh)
    ds = llc_dataset(flat.unflatten(out, leading=2), cfg, nbeta=nbeta_full, n=n, d=d, dims={**dims, mask_dim: coords}, key=key)
    flat_masks = np.stack([ravel_pytree(jax.tree_util.tree_map(lambda m: m[j], stack))[0] for j in range(n_masks)])
    flat_masks = np.asarray(flat_masks, bool)
    ds["n_sampled"] = xr.Variable((mask_dim,), flat_masks.sum(axis=1).astype(np.int64),
                                  {"long_name": "parameters the mask samples (the rest held at w*)"})
    if curvature:
        spectra, top = block_spectra(loss_fn, params, data, flat_masks, data_batched=data_batched)
        spectra = spectra.reshape(full + (d,))
        eps, gamma = (np.broadcast_to(np.asarray(v, np.float64), full) for v in (cfg.step_size, cfg.localization))
        nb = np.broadcast_to(np.asarray(nbeta_full, np.float64), full)
        ds["llc_quadratic"] = xr.Variable(tuple(dims) + (mask_dim,), quadratic_llc(spectra, eps, gamma, nb), {
            "long_name": "quadratic-approximation LLC of the block (Hessian restricted to the mask) at the run's "
                         "step size, localization and nbeta", "units": "1"})
        threshold = RANK_RTOL * np.abs(top).reshape(sizes)[..., None, None]
        ds["block_hessian_rank"] = xr.Variable(tuple(dims) + (mask_dim,), (spectra > threshold).sum(axis=-1), {
            "long_name": f"rank of the Hessian restricted to the block (eigenvalues above {RANK_RTOL:g} x the "
                         f"full Hessian's largest)"})
    ds.attrs.update(refined="weight", mask_dim=mask_dim)
    return ds


def estimate_refined_llc(loss_fn: Callable, params: PyTree, data: PyTree, *, mask: PyTree, config, key,
                         curvature: bool = True) -> xr.Dataset:
    """The weight-refined LLC of one block: `mask` is a pytree of booleans shaped like `params`
    (True: sampled; False: held at w*). Chain c uses `jax.random.split(key, num_chains)[c]`, as
    `estimate_llc`. Returns the `llc` dataset of `estimate_llc` (without the paired checks) plus
    `n_sampled`, `llc_quadratic` and `block_hessian_rank` of the block (see the module doc)."""
    from slt_superposition.llc import _check_key

    require(not config.per_instance, "estimate_llc takes scalar settings; per-instance arrays need "
                                     "estimate_llc_batched")
    key = _check_key(key)
    _mask_stack(params, mask, stacked=False)
    stacked = jax.tree_util.tree_map(lambda m: np.asarray(m)[None], mask)
    one = jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], params)
    return _single(loss_fn, one, data, stacked, config, key, curvature)


def _single(loss_fn, one, data, stacked, config, key, curvature) -> xr.Dataset:
    from slt_superposition.llc import (_check_inputs, chain_settings, chain_shape, llc_dataset, resolve_nbeta)

    n, d = _check_inputs(loss_fn, one, data, config, instance_axes=1, data_axes=0)
    nbeta = resolve_nbeta(config, n)
    settings = jax.tree_util.tree_map(lambda a: a.reshape(1, 1), chain_settings(config, nbeta, 1))
    masks = jax.tree_util.tree_map(lambda m: jnp.asarray(m)[None], stacked)
    out = sample_masked(loss_fn, one, data, masks, key[None, None], settings,
                        chain_shape(config, n, d), data_batched=False)
    out = {name: value[0, 0] for name, value in out.items()}
    ds = llc_dataset(out, config, nbeta=nbeta, n=n, d=d, dims={}, key=key)
    flat = np.asarray(ravel_pytree(jax.tree_util.tree_map(lambda m: m[0], stacked))[0], bool)
    ds["n_sampled"] = xr.Variable((), int(flat.sum()), {"long_name": "parameters the mask samples"})
    if curvature:
        spectra, top = block_spectra(loss_fn, one, data, flat[None], data_batched=False)
        ds["llc_quadratic"] = xr.Variable((), float(quadratic_llc(spectra[0, 0], config.step_size,
                                                                  config.localization, nbeta)),
                                          {"long_name": "quadratic-approximation LLC of the block", "units": "1"})
        ds["block_hessian_rank"] = xr.Variable((), int((spectra[0, 0] > RANK_RTOL * abs(top[0])).sum()),
                                               {"long_name": "rank of the Hessian restricted to the block"})
    ds.attrs.update(refined="weight")
    return ds
