"""Susceptibilities (Baker et al. 2025, arXiv 2504.18274): how the local posterior answers a
shift of the data distribution.

For a data perturbation q -> q' with loss difference Delta L(w) = L_{q'}(w) - L_q(w) (on paired
samples: the same randomness drawn under q and q'), and an observable phi(w), the tempered,
localized posterior

    p_h(w) ∝ exp(-nbeta (L_n(w) + h Delta L(w)) - (gamma / 2) ||w - w*||^2)

has the susceptibility

    chi = d E_h[phi] / dh at h = 0 = -nbeta Cov_0(phi, Delta L),

estimated from the same localized SGLD chains as the LLC (h = 0): the covariance of phi(w_t) and
Delta L(w_t) over the post-burn-in draws of every non-divergent chain, about the pooled means
(`pooled_susceptibility` says why not per chain); `susceptibility_se` is its standard error over
chains. chi > 0: moving the data towards q' raises phi.

Per-draw values: every observable and loss difference is evaluated on the instance's *full*
data at each step's pre-step position (`observers.moments_observer`), independently of the
minibatch that drives the gradient. Evaluating them on that minibatch would add the minibatch's
own covariance of the two (order nbeta / batch_size, which does not vanish as n grows) to chi.
That costs one full-data evaluation per step: keep n moderate, or pass a subsample as data.

Finite SGLD step sizes bias chi as they bias the LLC (the chain samples a slightly wider
distribution); the checks of `tests/test_susceptibility.py` compare it with a closed form
(linear-Gaussian model, exact at the step size) and with finite differences of E_h[phi] from
chains run at h = +delta and -delta (`finite_difference`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from slt_superposition.chain import instance_program
from slt_superposition.errors import InputError, describe_failure, require
from slt_superposition.instances import Instances, flatten_instances, over_instances
from slt_superposition.observers import default_observers, moments_observer
from slt_superposition.sharding import default_mesh, run_sharded

PyTree = Any
MOMENTS = ("observable_offset", "delta_offset", "cross_moment", "observable_at_init", "delta_at_init")


@functools.lru_cache(maxsize=16)
def _block_function(loss_fn: Callable, observables: tuple, deltas: tuple, shape, data_batched: bool) -> Callable:
    """The chain program with the moments observer, in `run_sharded`'s form (one function object
    per inputs, so jax.jit's cache compiles it once per shape)."""

    def one(params, data, key, settings):
        _, unravel = ravel_pytree(params)

        def evaluate(w):
            p = unravel(w)
            phi = jnp.stack([jnp.asarray(f(p, data), jnp.float32) for f in observables])
            delta = jnp.stack([jnp.asarray(g(p, data), jnp.float32) for g in deltas])
            return phi, delta

        observers = default_observers(shape.n_parameters, shape.n_blocks, shape.metropolis) + (moments_observer(evaluate),)
        return instance_program(loss_fn, shape, observers)(params, data, key, settings)

    return over_instances(one, data_batched)


def _functions(fns, what: str) -> tuple[list[str], tuple]:
    require(isinstance(fns, Mapping) and len(fns) > 0, f"{what} must be a non-empty mapping name -> function")
    for name, fn in fns.items():
        require(callable(fn), f"{what}['{name}'] is not callable: expected fn(params, data) -> scalar")
    return [str(k) for k in fns], tuple(fns.values())


def _check_scalar_functions(fns: tuple, names: list[str], what: str, params_one, data_one) -> None:
    for name, fn in zip(names, fns):
        try:
            out = jax.eval_shape(fn, params_one, data_one)
        except Exception as err:  # noqa: BLE001 - the user's function failing, on one line
            raise InputError(f"{what}['{name}'](params, data) failed: {describe_failure(err)}") from None
        require(getattr(out, "shape", None) == (), f"{what}['{name}'] must return a scalar, got {out}")


def estimate_susceptibilities(loss_fn: Callable, params: PyTree, data: PyTree, *,
                              delta_loss_fns: Mapping[str, Callable], observables: Mapping[str, Callable],
                              config, key, instance_dims=None, data_batched: bool = True, mesh=None) -> xr.Dataset:
    """Susceptibilities chi = -nbeta Cov(phi, Delta L) from localized SGLD chains at `params` (= w*).

    loss_fn, config: as `estimate_llc` (the chains are the LLC's chains: the result also holds
        every variable of the `llc` dataset, without the paired checks).
    delta_loss_fns: name -> `fn(params, data) -> scalar`, the loss difference L_{q'} - L_q of a
        perturbation on the full data (e.g. data holding paired samples x and x').
    observables: name -> `fn(params, data) -> scalar`, phi.
    instance_dims: None: one model (`params` any pytree, `data` leaves `(n, ...)`); otherwise
        batched as `estimate_llc_batched` (leading instance axes, `data_batched`, keys
        `jax.random.split(key, N)[i]` per instance; chain c of an instance with key k uses
        `jax.random.split(k, num_chains)[c]`, so one model with key k equals an instance with key k).

    Returns the `llc` variables plus `susceptibility (*inst, perturbation, observable)`,
    `susceptibility_se`, `susceptibility_per_chain (*inst, chain, perturbation, observable)`,
    `observable_mean (*inst, observable)` (posterior mean of phi), `observable_at_init`,
    `delta_loss_mean (*inst, perturbation)`, `delta_loss_at_init`, and the raw per-chain moments
    (`observable_mean_per_chain`, `delta_loss_mean_per_chain`, `moment_per_chain`).
    """
    from slt_superposition.llc import (_check_inputs, _check_key, chain_block, chain_settings, chain_shape,
                                       compiler_options, llc_dataset, resolve_nbeta)

    obs_names, obs_fns = _functions(observables, "observables")
    delta_names, delta_fns = _functions(delta_loss_fns, "delta_loss_fns")
    single = instance_dims is None
    if single:
        flat = Instances({}, jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], params), data)
        data_batched = False
    else:
        flat = flatten_instances(params, data, instance_dims, data_batched=data_batched)
    params, data, dims, sizes, n_inst = flat.params, flat.data, flat.dims, flat.sizes, flat.count
    n, d = _check_inputs(loss_fn, params, data, config, instance_axes=1, data_axes=1 if data_batched else 0)
    shapes = lambda tree, axes: jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x)[axes:], np.asarray(x).dtype), tree)
    p_one, d_one = shapes(params, 1), shapes(data, 1 if data_batched else 0)
    _check_scalar_functions(obs_fns, obs_names, "observables", p_one, d_one)
    _check_scalar_functions(delta_fns, delta_names, "delta_loss_fns", p_one, d_one)
    key = _check_key(key)
    nbeta = resolve_nbeta(config, n)
    settings = chain_settings(config, nbeta, n_inst, sizes)
    keys = key[None] if single else jax.random.split(key, n_inst)
    shape = chain_shape(config, n, d)
    block = _block_function(loss_fn, obs_fns, delta_fns, shape, data_batched)
    mesh = default_mesh() if mesh is None else mesh
    options = dict(mesh=mesh, compiler_options=compiler_options(), block=chain_block(n_inst, shape, data, data_batched))
    if data_batched:
        out = run_sharded(block, (params, data, keys, settings), **options)
    else:
        out = run_sharded(block, (params, keys, settings), data, **options)
    out = flat.unflatten(out)
    moments = {name: np.asarray(out.pop(name), np.float64) for name in MOMENTS}
    ds = llc_dataset(out, config, nbeta=nbeta, n=n, d=d, dims=dims, key=key)
    return _attach(ds, moments, obs_names, delta_names)


def _attach(ds: xr.Dataset, moments: dict, obs_names: list[str], delta_names: list[str]) -> xr.Dataset:
    """Host-side covariances, pooled over the non-divergent chains (see `pooled_susceptibility`)."""
    inst = ds["llc_mean"].dims
    nbeta = ds["nbeta"].values.astype(np.float64)
    a, c, cross = moments["observable_offset"], moments["delta_offset"], moments["cross_moment"]
    ok = ~ds["diverged"].values
    chi, mean, se = pooled_susceptibility(a, c, cross, ok, nbeta)
    count = ok.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        phi_star = moments["observable_at_init"][..., 0, :]
        delta_star = moments["delta_at_init"][..., 0, :]
        # a kept chain's NaN mean (an observable undefined where it went) makes the mean NaN, as it makes
        # chi NaN; no kept chain: NaN
        kept = np.where(count > 0, count, np.nan)[..., None]
        phi_mean = phi_star + np.sum(np.where(ok[..., None], a, 0.0), axis=-2) / kept
        delta_mean = delta_star + np.sum(np.where(ok[..., None], c, 0.0), axis=-2) / kept
    pert, obs = "perturbation", "observable"
    out = ds.copy()
    out = out.assign_coords({pert: np.asarray(delta_names, dtype=object).astype(str),
                             obs: np.asarray(obs_names, dtype=object).astype(str)})
    out["susceptibility"] = xr.Variable(inst + (pert, obs), mean, {
        "long_name": "chi = dE_h[phi]/dh at h = 0 = -nbeta Cov(phi, Delta L), covariance pooled over the "
                     "non-divergent chains' post-burn-in draws"})
    out["susceptibility_se"] = xr.Variable(inst + (pert, obs), se, {
        "long_name": "standard error of susceptibility (standard deviation of the chains' contributions / "
                     "sqrt(chains))"})
    out["susceptibility_per_chain"] = xr.Variable(inst + ("chain", pert, obs), chi, {
        "long_name": "chain c's contribution -nbeta (phi_c - phi_bar)(Delta L_c - Delta L_bar) moment about the "
                     "pooled means (their mean over chains is susceptibility)"})
    out["observable_mean"] = xr.Variable(inst + (obs,), phi_mean, {"long_name": "posterior mean of phi (h = 0)"})
    out["observable_mean_per_chain"] = xr.Variable(inst + ("chain", obs), phi_star[..., None, :] + a, {
        "long_name": "mean of phi over one chain's post-burn-in draws"})
    out["observable_at_init"] = xr.Variable(inst + (obs,), phi_star, {"long_name": "phi(w*)"})
    out["delta_loss_mean_per_chain"] = xr.Variable(inst + ("chain", pert), delta_star[..., None, :] + c, {
        "long_name": "mean of Delta L over one chain's post-burn-in draws"})
    out["moment_per_chain"] = xr.Variable(inst + ("chain", obs, pert), cross, {
        "long_name": "mean over one chain's post-burn-in draws of (phi - phi(w*)) (Delta L - Delta L(w*))"})
    out["delta_loss_mean"] = xr.Variable(inst + (pert,), delta_mean, {
        "long_name": "posterior mean of Delta L = L_q' - L_q (h = 0)"})
    out["delta_loss_at_init"] = xr.Variable(inst + (pert,), delta_star, {"long_name": "Delta L(w*)"})
    out.attrs["susceptibility"] = "chi = -nbeta Cov(phi, Delta L) from the localized SGLD chains (Baker et al. 2025)"
    return out


def pooled_susceptibility(a, c, cross, ok, nbeta):
    """chi from per-chain moments about w*: `a (*inst, chain, K)` and `c (*inst, chain, J)` the
    chains' mean offsets of phi and Delta L, `cross (*inst, chain, K, J)` the mean products, `ok
    (*inst, chain)` the chains kept, `nbeta (*inst)`.

    The covariance is taken about the pooled means (a_bar, c_bar) over every kept draw:
    Cov = mean_c[cross_c] - a_bar c_bar. About each chain's own mean instead, a chain that runs
    for T against an autocorrelation time tau misses the part of the variance its mean absorbs,
    a bias of order tau / T per chain (measured on a TMS: half the finite-difference response at
    a sampler time of 0.4 with localization 1, docs/experiments/per_feature_basis.md); pooled, the
    chains' means scatter around the pooled one and the bias is of order tau / (chains T).
    Chain c's contribution -nbeta (cross_c - a_c c_bar - a_bar c_c + a_bar c_bar) averages to chi
    over the chains; the standard error is their standard deviation / sqrt(chains).
    Returns (contributions `(*inst, chain, J, K)`, chi `(*inst, J, K)`, se `(*inst, J, K)`)."""
    ok = np.asarray(ok, bool)
    count = ok.sum(axis=-1)
    w = ok.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_bar = (w[..., None] * np.nan_to_num(a)).sum(axis=-2) / count[..., None]
        c_bar = (w[..., None] * np.nan_to_num(c)).sum(axis=-2) / count[..., None]
        moment = (cross - a[..., :, None] * c_bar[..., None, None, :] - a_bar[..., None, :, None] * c[..., None, :]
                  + (a_bar[..., :, None] * c_bar[..., None, :])[..., None, :, :])
        contrib = -np.asarray(nbeta, np.float64)[..., None, None, None] * np.swapaxes(moment, -1, -2)
        kept = np.where(ok[..., None, None], contrib, 0.0)
        chi = kept.sum(axis=-3) / count[..., None, None]
        centred = np.where(ok[..., None, None], contrib - chi[..., None, :, :], 0.0)
        se = np.sqrt((centred ** 2).sum(axis=-3) / np.maximum(count - 1, 1)[..., None, None] / count[..., None, None])
        chi = np.where(count[..., None, None] > 0, chi, np.nan)
        se = np.where(count[..., None, None] > 1, se, np.nan)
    return contrib, chi, se


def tilted_loss(loss_fn: Callable, delta_loss_fn: Callable, h: float) -> Callable:
    """`L + h Delta L` as a loss: chains on it sample p_h, for finite-difference checks of chi."""
    h = float(h)

    def loss(params, data):
        return loss_fn(params, data) + h * delta_loss_fn(params, data)

    return loss


def finite_difference(loss_fn: Callable, params: PyTree, data: PyTree, *, delta_loss_fn: Callable,
                      observables: Mapping[str, Callable], delta: float, config, key) -> xr.Dataset:
    """(E_{+delta}[phi] - E_{-delta}[phi]) / (2 delta) from chains on `tilted_loss` at h = +-delta
    with the same key (paired chains: their difference is the tilt's, not the noise's).

    One model (as `estimate_susceptibilities` with `instance_dims=None`). Returns
    `finite_difference (observable)` and its `finite_difference_se` (over paired chains),
    `finite_difference_per_chain (chain, observable)`. The loss at w* is L_n(w*) + h Delta L(w*)
    on each side; the chains' observable means do not depend on that constant.
    """
    require(delta > 0, f"delta must be positive, got {delta}")
    means = []
    for h in (+delta, -delta):
        ds = estimate_susceptibilities(tilted_loss(loss_fn, delta_loss_fn, h), params, data,
                                       delta_loss_fns={"tilt": delta_loss_fn}, observables=observables,
                                       config=config, key=key)
        means.append(ds)
    plus, minus = (m["observable_mean_per_chain"].values for m in means)
    ok = ~(means[0]["diverged"].values | means[1]["diverged"].values)
    per_chain = (plus - minus) / (2 * delta)
    kept = per_chain[ok]
    se = kept.std(axis=0, ddof=1) / np.sqrt(len(kept)) if len(kept) > 1 else np.full(per_chain.shape[1:], np.nan)
    obs = means[0]["observable"].values
    return xr.Dataset({
        "finite_difference": (("observable",), kept.mean(axis=0)),
        "finite_difference_se": (("observable",), se),
        "finite_difference_per_chain": (("chain", "observable"), per_chain),
    }, coords={"observable": obs, "chain": np.arange(per_chain.shape[0])}, attrs={"delta": float(delta)})
