"""Weight-basis measures: the Hessian spectrum and rank, the Gauss-Newton rank, the lambda bound.

Everything takes a pure `loss_fn(params, batch) -> scalar` (mean over the batch) or a pure
`forward_fn(params, inputs) -> outputs` over any parameter pytree, flattens the pytree with
`jax.flatten_util.ravel_pytree` into a vector of d parameters, and returns xarray objects.

    hessian_spectrum(loss_fn, params, data)          eigenvalues, dim `eigen`, descending
    numerical_rank(eigenvalues, rtol=None)           d1, with a scale-aware tolerance
    gauss_newton_rank(forward_fn, params, inputs)    rank of the output Jacobian J: (n * outputs, d)
    llc_bound_check(llc, d1, d)                      d1/2 <= lambda <= d1/2 + (d - d1)/4
    weight_basis_measures(loss_fn, forward_fn, params, data)   all of the above in one Dataset

Batched use: pass `instance_dims=("instance",)` (or the caller's grid dims, e.g.
`("feature_probability", "seed")`) and parameters whose leaves carry those leading axes; the
per-instance computation is vmapped (in chunks of `instance_chunk` instances) in one program.

Tolerance. A float32 Hessian or Jacobian carries rounding errors of order eps_32 * |largest
entry| per entry, which move each eigenvalue (singular value) by up to about
eps_32 * sqrt(d) * |lambda_max| ... d * eps_32 * |lambda_max| (the latter is numpy's
`matrix_rank` bound). The default relative tolerance is therefore

    rtol = DEFAULT_RTOL_FACTOR * d * eps_float32,   tol = rtol * max |lambda|,

with DEFAULT_RTOL_FACTOR = 10: a factor of ten above numpy's rule because our matrices are
themselves computed in float32 from sums over the data (their entries, not just their
factorisation, carry rounding error). Eigenvalues with |lambda| <= tol count as zero.
Pass `rtol` to choose another threshold (e.g. a physical one: curvature below 1e-4 of the
largest is 'flat'); the tolerance used is stored in the result's attrs.

Statistical floor. The default only separates rounding noise from zero. At a point that is not
an exact critical point of the loss on *this* data (a population critical point evaluated on n
samples, or weights trained on other samples), symmetry directions pick up curvature of order
|grad L| (for the Chen et al. 5-gon in 6 features on 6e4 samples, the rotation direction's
eigenvalue sits below 1e-2 lambda_max but far above rounding: tests/test_weight_basis.py,
`test_pentagon_critical_point_rank_and_bound`). `weight_basis_measures` records `grad_norm` so such eigenvalues can be recognised; pass an
`rtol` above |grad| / lambda_max to count them as flat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree

from slt_superposition.curvature import hessian_matrix, quadratic_llc
from slt_superposition.errors import require

EXACT_MAX_D = 2000
"""Largest parameter count for which the dense Hessian is formed and diagonalised."""

DEFAULT_RTOL_FACTOR = 10.0
EPS32 = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------- tolerance, rank


def default_rtol(d: int) -> float:
    """The default relative tolerance `DEFAULT_RTOL_FACTOR * d * eps_float32` (see module doc)."""
    return DEFAULT_RTOL_FACTOR * d * EPS32


def numerical_rank(eigenvalues, *, rtol: float | None = None, n_parameters: int | None = None):
    """The number of eigenvalues with |lambda| > rtol * max |lambda| (the numerical rank d1).

    `eigenvalues`: `(..., eigen)` array or a DataArray with an `eigen` dim (NaN entries, e.g.
    padding, are ignored). `rtol=None` uses `default_rtol(d)` where d is `n_parameters`, else
    the DataArray's `n_parameters` attr, else the length of the `eigen` axis. For a partial
    (Lanczos) spectrum the count is a lower bound on the rank when every returned eigenvalue is
    above the tolerance. Returns an int (1-D input), an integer array, or a DataArray over the
    non-`eigen` dims.
    """
    if isinstance(eigenvalues, xr.DataArray):
        require("eigen" in eigenvalues.dims, "numerical_rank needs a DataArray with an 'eigen' dim")
        d = n_parameters or eigenvalues.attrs.get("n_parameters") or eigenvalues.sizes["eigen"]
        rtol_used = default_rtol(int(d)) if rtol is None else float(rtol)
        values = eigenvalues.transpose(..., "eigen")
        rank = _rank_core(values.values, rtol_used)
        return xr.DataArray(
            rank,
            dims=values.dims[:-1],
            coords={k: v for k, v in values.coords.items() if "eigen" not in v.dims},
            attrs={"long_name": "numerical rank", "units": "1", "rtol": rtol_used},
        )
    values = np.asarray(eigenvalues)
    require(values.ndim >= 1, "numerical_rank needs at least one eigenvalue axis")
    d = n_parameters or values.shape[-1]
    rank = _rank_core(values, default_rtol(int(d)) if rtol is None else float(rtol))
    return int(rank) if rank.ndim == 0 else rank


def rank_above_gradient_floor(eigenvalues: xr.DataArray, grad_norm, *, rtol: float | None = None) -> xr.DataArray:
    """Numerical rank that also counts curvature below the gradient norm as flat.

    At a point that is only approximately critical (trained weights, or a population critical
    point on finite data; see "Statistical floor" in the module doc) flat directions pick up
    curvature of order |grad L|, so an eigenvalue is counted only where
    |lambda| > max(rtol * max |lambda|, |grad L|). `eigenvalues`: DataArray with an `eigen`
    dim; `grad_norm`: DataArray (or scalar) over its other dims. Returns an integer DataArray, or
    a float one with NaN where the rank is unknown: a non-finite gradient norm (the floor is
    unknown) or no finite eigenvalue (a non-finite Hessian), never a rank of 0 for either.
    """
    require("eigen" in eigenvalues.dims, "rank_above_gradient_floor needs a DataArray with an 'eigen' dim")
    d = eigenvalues.attrs.get("n_parameters") or eigenvalues.sizes["eigen"]
    rtol = default_rtol(int(d)) if rtol is None else float(rtol)
    magnitude = np.abs(eigenvalues.fillna(0.0))
    tol = np.maximum(rtol * magnitude.max("eigen"), grad_norm)
    rank = (magnitude > tol).sum("eigen").astype(np.int64)
    known = np.isfinite(grad_norm) & eigenvalues.notnull().any("eigen")
    if not bool(np.all(known)):
        rank = rank.where(known)
    return rank.assign_attrs(
        long_name="rank of the loss Hessian above max(rounding tolerance, gradient norm)", units="1", rtol=rtol)


def _rank_core(values: np.ndarray, rtol: float) -> np.ndarray:
    magnitude = np.abs(np.where(np.isnan(values), 0.0, values))
    tol = rtol * magnitude.max(axis=-1, keepdims=True)
    return np.sum(magnitude > tol, axis=-1).astype(np.int64)


# --------------------------------------------------------------------------- Hessian


def _flat_loss(loss_fn, params, data):
    flat, unravel = ravel_pytree(params)
    return (lambda w: loss_fn(unravel(w), data)), flat


def hvp(loss_fn: Callable, params: Any, data: Any) -> tuple[Callable, int]:
    """`(matvec, d)`: the Hessian-vector product v -> H v (forward-over-reverse), no H formed."""
    f, flat = _flat_loss(loss_fn, params, data)
    grad = jax.grad(f)
    return (lambda v: jax.jvp(grad, (flat,), (v,))[1]), flat.size


def lanczos_eigenvalues(matvec: Callable, d: int, num_steps: int, key: jax.Array) -> jax.Array:
    """Ritz values `(num_steps,)` (ascending) of a symmetric operator after `num_steps` Lanczos steps.

    Full reorthogonalisation: every new Krylov vector is orthogonalised (twice, classical
    Gram-Schmidt) against all previous ones, so the basis stays orthonormal in float32 and no
    spurious copies of converged eigenvalues appear; memory is `(num_steps + 1, d)`. When the
    Krylov space is exhausted (beta ~ 0, as for a low-rank Hessian) the recursion restarts with
    a fresh random vector orthogonal to the basis and a zero coupling, so T stays a valid
    projection of H. With `num_steps == d` the Ritz values are the whole spectrum; with fewer
    the extreme ones converge first (the top of |lambda| is what the rank needs). Pure JAX
    (a `lax.scan`), hence jittable and vmappable over instances.
    """
    keys = jax.random.split(key, num_steps + 1)
    v0 = jax.random.normal(keys[0], (d,))
    V = jnp.zeros((num_steps + 1, d)).at[0].set(v0 / jnp.linalg.norm(v0))

    def orthogonalise(V, w):
        for _ in range(2):
            w = w - V.T @ (V @ w)
        return w

    def step(carry, j):
        V, beta_prev, scale = carry
        v = V[j]
        w = matvec(v)
        alpha = v @ w
        w = w - alpha * v - beta_prev * V[jnp.maximum(j - 1, 0)] * (j > 0)
        w = orthogonalise(V, w)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        exhausted = beta <= 10 * EPS32 * jnp.sqrt(d) * scale
        fresh = orthogonalise(V, jax.random.normal(keys[j + 1], (d,)))
        nxt = jnp.where(exhausted, fresh / jnp.linalg.norm(fresh), w / jnp.where(exhausted, 1.0, beta))
        beta = jnp.where(exhausted, 0.0, beta)
        V = V.at[j + 1].set(nxt)
        return (V, beta, scale), (alpha, beta)

    _, (alphas, betas) = jax.lax.scan(step, (V, jnp.zeros(()), jnp.zeros(())), jnp.arange(num_steps))
    T = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return jnp.linalg.eigvalsh(T)


def _spectrum_one(loss_fn, params, data, *, method: str, num_eigs: int, num_steps: int, key):
    """Eigenvalues `(num_eigs,)`, descending, for one instance."""
    if method == "exact":
        return jnp.linalg.eigvalsh(hessian_matrix(loss_fn, params, data))[::-1]
    matvec, d = hvp(loss_fn, params, data)
    ritz = lanczos_eigenvalues(matvec, d, num_steps, key)
    top = ritz[jnp.argsort(-jnp.abs(ritz))[:num_eigs]]
    return jnp.sort(top)[::-1]


def _choose_method(method: str, d: int, num_eigs: int | None, num_steps: int | None):
    require(method in ("auto", "exact", "lanczos"), f"method must be 'auto', 'exact' or 'lanczos', got '{method}'")
    if method == "auto":
        method = "exact" if d <= EXACT_MAX_D else "lanczos"
    if method == "exact":
        return method, d, 0
    num_eigs = min(d, 100) if num_eigs is None else int(num_eigs)
    require(1 <= num_eigs <= d, f"num_eigs must be in 1..{d}, got {num_eigs}")
    num_steps = min(d, max(2 * num_eigs, num_eigs + 20)) if num_steps is None else int(num_steps)
    require(num_eigs <= num_steps <= d, f"num_steps must be in {num_eigs}..{d}, got {num_steps}")
    return method, num_eigs, num_steps


def _instance_shape(params, instance_dims: Sequence[str]) -> tuple[int, ...]:
    leaves = jax.tree_util.tree_leaves(params)
    require(len(leaves) > 0, "params has no arrays")
    k = len(instance_dims)
    shape = tuple(np.shape(leaves[0])[:k])
    for leaf in leaves:
        require(
            np.ndim(leaf) >= k and tuple(np.shape(leaf)[:k]) == shape,
            f"every params leaf must start with the instance dims {tuple(instance_dims)} of shape {shape}",
        )
    return shape


def _map_instances(fn, params, data, instance_dims, data_batched: bool, instance_chunk: int | None):
    """Apply `fn(params_i, data_i)` over the leading instance dims, vmapped in chunks.

    Returns `(result with leading instance shape, instance shape)`.
    """
    shape = _instance_shape(params, instance_dims)
    k, size = len(instance_dims), math.prod(shape)
    merge = lambda x: jnp.reshape(jnp.asarray(x), (size,) + tuple(np.shape(x)[k:]))
    flat_params = jax.tree_util.tree_map(merge, params)
    if data_batched:
        flat_data = jax.tree_util.tree_map(merge, data)
        out = jax.lax.map(lambda pd: fn(*pd), (flat_params, flat_data), batch_size=instance_chunk)
    else:
        out = jax.lax.map(lambda p: fn(p, data), flat_params, batch_size=instance_chunk)
    return jax.tree_util.tree_map(lambda x: x.reshape(shape + x.shape[1:]), out), shape


def _per_instance(fn, params, data, instance_dims, data_batched: bool, instance_chunk: int | None):
    """`fn(params, data)` compiled; mapped over the leading `instance_dims` when there are any."""
    if not instance_dims:
        return jax.jit(fn)(params, data)
    mapped = lambda p, x: _map_instances(fn, p, x, instance_dims, data_batched, instance_chunk)[0]
    return jax.jit(mapped)(params, data)


def _param_count(params, instance_dims: Sequence[str]) -> int:
    k = len(instance_dims)
    return int(sum(math.prod(np.shape(leaf)[k:]) for leaf in jax.tree_util.tree_leaves(params)))


def hessian_spectrum(
    loss_fn: Callable,
    params: Any,
    data: Any,
    *,
    method: str = "auto",
    num_eigs: int | None = None,
    num_steps: int | None = None,
    key: jax.Array | None = None,
    instance_dims: Sequence[str] = (),
    data_batched: bool = False,
    instance_chunk: int | None = None,
) -> xr.DataArray:
    """Eigenvalues of the Hessian of `loss_fn(params, data)`, dim `eigen`, descending.

    `method`: 'exact' (dense `curvature.hessian_matrix`, then `eigvalsh`), 'lanczos' (Hessian-vector
    products, `lanczos_eigenvalues`), or 'auto' = exact for d <= `EXACT_MAX_D`, else Lanczos.
    Lanczos returns the `num_eigs` (default min(d, 100)) eigenvalues largest in magnitude from
    `num_steps` (default min(d, max(2 num_eigs, num_eigs + 20))) steps started from `key`
    (default PRNGKey(0)). We wrote the Lanczos in JAX rather than calling scipy's `eigsh`
    so that it runs inside one compiled program, vmapped over instances, deterministically.

    `instance_dims`: names of leading axes of every params leaf (batched use); with
    `data_batched=True` every data leaf has them too, else the data is shared.
    Returns `(*instance_dims, eigen)` with attrs `n_parameters`, `method`.
    """
    d = _param_count(params, instance_dims)
    method, num_eigs, num_steps = _choose_method(method, d, num_eigs, num_steps)
    key = jax.random.PRNGKey(0) if key is None else key
    one = lambda p, x: _spectrum_one(loss_fn, p, x, method=method, num_eigs=num_eigs, num_steps=num_steps, key=key)
    values = _per_instance(one, params, data, instance_dims, data_batched, instance_chunk)
    return xr.DataArray(
        np.asarray(values),
        dims=(*instance_dims, "eigen"),
        coords={"eigen": np.arange(num_eigs)},
        attrs={
            "long_name": "Hessian eigenvalue of the loss (descending)",
            "units": "loss / parameter^2",
            "n_parameters": d,
            "method": method,
            "complete_spectrum": int(num_eigs == d),
            "lanczos_steps": num_steps,
        },
    )


# --------------------------------------------------------------------------- Gauss-Newton


def _jacobian_r_factor(forward_fn, params, inputs, chunk_size: int | None) -> jax.Array:
    """An upper-triangular R `(d, d)` with R^T R = J^T J, J = d outputs / d params `(n * out, d)`.

    Accumulated over chunks of samples by a TSQR recursion R <- qr([R; J_chunk]).R, which keeps
    the singular values of J to float32 accuracy (forming J^T J would square the condition
    number and lose half the digits).
    """
    flat, unravel = ravel_pytree(params)
    d = flat.size
    n = jax.tree_util.tree_leaves(inputs)[0].shape[0]
    if chunk_size is None:  # chunks whose Jacobian holds at most ~4M entries
        one = jax.tree_util.tree_map(lambda x: x[:1], inputs)
        rows_per_sample = math.prod(jax.eval_shape(lambda x: forward_fn(params, x), one).shape)
        chunk_size = max(1, 2**22 // max(1, rows_per_sample * d))
    chunk = min(int(chunk_size), n)
    n_chunks = -(-n // chunk)
    pad = n_chunks * chunk - n

    def jac(batch):
        out = lambda w: jnp.ravel(forward_fn(unravel(w), batch))
        return jax.jacfwd(out)(flat)  # forward mode: d tangents, cheaper than n * outputs cotangents

    if n_chunks == 1:
        J = jac(inputs)
        return jnp.linalg.qr(J, mode="r") if J.shape[0] >= d else J
    padded = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]), inputs)
    chunks = jax.tree_util.tree_map(lambda x: x.reshape((n_chunks, chunk) + x.shape[1:]), padded)
    valid = (jnp.arange(n_chunks * chunk) < n).reshape(n_chunks, chunk)

    def body(R, xs):
        batch, mask = xs
        J = jac(batch)
        rows_per_sample = J.shape[0] // chunk
        J = J * jnp.repeat(mask, rows_per_sample)[:, None]  # padded samples contribute nothing
        return jnp.linalg.qr(jnp.concatenate([R, J]), mode="r"), None

    R, _ = jax.lax.scan(body, jnp.zeros((d, d), flat.dtype), (chunks, valid))
    return R


def gauss_newton_singular_values(
    forward_fn: Callable, params: Any, inputs: Any, *, chunk_size: int | None = None
) -> jax.Array:
    """Singular values (descending, length min(d, n * outputs)) of the output Jacobian over the data."""
    return jnp.linalg.svd(_jacobian_r_factor(forward_fn, params, inputs, chunk_size), compute_uv=False)


def gauss_newton_rank(
    forward_fn: Callable,
    params: Any,
    inputs: Any,
    *,
    rtol: float | None = None,
    chunk_size: int | None = None,
    instance_dims: Sequence[str] = (),
    data_batched: bool = False,
    instance_chunk: int | None = None,
):
    """Rank of the output Jacobian J `(n * outputs, d)` stacked over the samples of `inputs`.

    This is the rank of the Gauss-Newton / Fisher matrix J^T diag(w) J for any positive output
    weights w (e.g. TMS importances), i.e. the dimension of the function-space tangent of the
    model at `params` as seen on the data. `forward_fn(params, inputs) -> outputs` with the
    sample axis first. Tolerance as `numerical_rank` applied to the singular values of J
    (default rtol = `default_rtol(d)`). `chunk_size` bounds memory: samples are processed in
    chunks (see `_jacobian_r_factor`; default: chunks whose Jacobian has ~4M entries). Returns an int, or a DataArray over `instance_dims`.
    """
    d = _param_count(params, instance_dims)
    rtol = default_rtol(d) if rtol is None else float(rtol)
    one = lambda p, x: gauss_newton_singular_values(forward_fn, p, x, chunk_size=chunk_size)
    sv = _per_instance(one, params, inputs, instance_dims, data_batched, instance_chunk)
    if not instance_dims:
        return numerical_rank(np.asarray(sv), rtol=rtol)
    return xr.DataArray(
        numerical_rank(np.asarray(sv), rtol=rtol),
        dims=tuple(instance_dims),
        attrs={"long_name": "Gauss-Newton (output Jacobian) rank", "units": "1", "rtol": rtol},
    )


# --------------------------------------------------------------------------- the lambda bound


def llc_bound_check(llc, d1, d, *, llc_std=None) -> xr.Dataset:
    """Check d1/2 <= lambda <= d1/2 + (d - d1)/4, elementwise (broadcasting, xarray-aware).

    The lower bound holds at any minimum whose Hessian has rank d1; the upper bound holds
    when the loss grows at least quartically along the flat directions (the generic case at
    a minimum, where the cubic term vanishes on the Hessian kernel). A violation therefore
    means an estimator bias (e.g. too short / too hot SGLD chains), a point that is not a
    local minimum, a degenerate (beyond-quartic) direction, or a loss that is not analytic at
    w* (the TMS's ReLU makes L_n only piecewise analytic; a kink such as K = |w| has lambda 1,
    not 1/2, so the bounds, even lambda <= d/2, need not hold there). A flag, not a proof.

    Returns a Dataset with `lower_bound`, `upper_bound`, `violates_bound` (bool),
    `bound_excess` (lambda minus the violated bound: negative below, positive above, 0
    inside, NaN where the LLC or d1 is NaN: unknown, never read as inside) and, if `llc_std`
    is given, `bound_excess_in_std` = bound_excess / llc_std.
    """
    as_da = lambda x: x if isinstance(x, xr.DataArray) else xr.DataArray(np.asarray(x, dtype=float))
    llc, d1, d = as_da(llc), as_da(d1), as_da(d)
    lower = d1 / 2
    upper = d1 / 2 + (d - d1) / 4
    excess = xr.where(llc < lower, llc - lower, xr.where(llc > upper, llc - upper, 0.0))
    excess = excess.where(llc.notnull() & lower.notnull() & upper.notnull())  # unknown, not inside
    ds = xr.Dataset(
        {
            "lower_bound": lower.assign_attrs(long_name="lower bound d1/2 on the LLC", units="1"),
            "upper_bound": upper.assign_attrs(long_name="upper bound d1/2 + (d - d1)/4 on the LLC", units="1"),
            "violates_bound": ((excess != 0) & excess.notnull()).assign_attrs(
                long_name="LLC outside the Hessian-rank bounds (False where the LLC or a bound is NaN)", units="1"),
            "bound_excess": excess.assign_attrs(
                long_name="LLC minus the violated bound (0 inside the bounds)", units="1"
            ),
        }
    )
    if llc_std is not None:
        ds["bound_excess_in_std"] = (excess / as_da(llc_std)).assign_attrs(
            long_name="bound excess in units of the LLC standard deviation", units="1"
        )
    return ds


def quadratic_llc_prediction(eigenvalues, *, nbeta: float, step_size: float, localization: float,
                             floor: float = 0.0) -> float:
    """E[nbeta (L - L(w*))] of full-batch Euler SGLD on the quadratic approximation of L at w*:
    `slt_superposition.curvature.quadratic_llc` (each direction of curvature h contributes
    nbeta h / (2 a (1 - eps a / 4)), a = nbeta h + gamma), with directions at or below `floor`
    counted as flat. NaN where a curved direction is unstable at that step size."""
    h = np.asarray(eigenvalues, np.float64).ravel()
    return float(quadratic_llc(np.where(h > floor, h, 0.0), step_size, localization, nbeta))


# --------------------------------------------------------------------------- bundle


def weight_basis_measures(
    loss_fn: Callable,
    forward_fn: Callable,
    params: Any,
    data: Any,
    *,
    inputs: Any = None,
    rtol: float | None = None,
    method: str = "auto",
    num_eigs: int | None = None,
    key: jax.Array | None = None,
    gn_chunk_size: int | None = None,
    instance_dims: Sequence[str] = (),
    data_batched: bool = False,
    instance_chunk: int | None = None,
) -> xr.Dataset:
    """Hessian spectrum, its rank d1, the Gauss-Newton rank and d, per instance, in one Dataset.

    `loss_fn(params, data)` gives the Hessian; `forward_fn(params, inputs)` the Jacobian, with
    `inputs` defaulting to `data` (pass `inputs=x` for supervised `data=(x, y)`). Batched
    arguments as in `hessian_spectrum`. Variables: `n_parameters`, `hessian_eigenvalues(...,
    eigen)`, `hessian_rank`, `hessian_rank_is_lower_bound`, `gn_rank`, `grad_norm`; the join with the LLC
    (and `llc_bound_check`) happens in `analysis.compare`.
    """
    inputs = data if inputs is None else inputs
    d = _param_count(params, instance_dims)
    rtol = default_rtol(d) if rtol is None else float(rtol)
    eig = hessian_spectrum(
        loss_fn, params, data, method=method, num_eigs=num_eigs, key=key,
        instance_dims=instance_dims, data_batched=data_batched, instance_chunk=instance_chunk,
    )
    rank = numerical_rank(eig, rtol=rtol)
    lower_bound_only = bool(eig.attrs["complete_spectrum"] == 0) & (rank == eig.sizes["eigen"])
    gn = gauss_newton_rank(
        forward_fn, params, inputs, rtol=rtol, chunk_size=gn_chunk_size,
        instance_dims=instance_dims, data_batched=data_batched, instance_chunk=instance_chunk,
    )
    gn = gn if isinstance(gn, xr.DataArray) else xr.DataArray(gn)
    grad_norm = lambda p, x: jnp.linalg.norm(ravel_pytree(jax.grad(loss_fn)(p, x))[0])
    gnorm = _per_instance(grad_norm, params, data, instance_dims, data_batched, instance_chunk)
    ds = xr.Dataset(
        {
            "n_parameters": xr.DataArray(d, attrs={"long_name": "parameter count d", "units": "1"}),
            "hessian_eigenvalues": eig,
            "hessian_rank": rank.assign_attrs(long_name="numerical rank d1 of the loss Hessian", units="1"),
            "hessian_rank_is_lower_bound": xr.DataArray(lower_bound_only).assign_attrs(
                long_name="partial (Lanczos) spectrum: hessian_rank is only a lower bound", units="1"
            ),
            "gn_rank": gn.assign_attrs(long_name="Gauss-Newton (output Jacobian) rank", units="1"),
            "grad_norm": xr.DataArray(np.asarray(gnorm), dims=tuple(instance_dims)).assign_attrs(
                long_name="norm of the loss gradient at params (0 at an exact critical point)",
                units="loss / parameter",
            ),
        },
        attrs={"rtol": rtol, "hessian_method": eig.attrs["method"]},
    )
    return ds
