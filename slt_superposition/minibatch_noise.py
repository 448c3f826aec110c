"""The minibatch's share of an LLC estimate, predicted on the quadratic approximation from the
rows' gradients at w*.

With i.i.d. minibatch indices (`SGLDConfig.sampling="replacement"`, the default) a step's
gradient is grad L_B(w) = grad L_n(w) + e_B. Near w* the error e_B is the spread of the rows'
own gradients there: mean 0 and covariance C / B, with C the covariance over the n rows of
grad l_j(w*) (l_j the loss of row j; `loss_fn` must be the mean of its rows' losses and take a
batch of one row, which the minibatch chains require too: `llc` refuses any other loss before a
chain runs). On L_n's quadratic approximation, Hessian H = V diag(h) V^T, the chain

    u' = (I - eps K / 2) u - (eps nbeta / 2) e_B + sqrt(eps) xi,   K = nbeta H + gamma I,

is linear with step noise of covariance eps I + (eps nbeta / 2)^2 C / B, independent of u. Its
stationary covariance solves the discrete Lyapunov equation, and the estimate's expectation
nbeta tr(H Sigma) / 2 (the minibatch B_t of step t is independent of w_t, so E[L_B(w_t) -
L_B(w*)] = E[L_n(w_t) - L_n(w*)]) needs only its diagonal in H's eigenbasis:

    sum_i  nbeta h_i / (2 a_i (1 - eps a_i / 4))  *  (1 + eps nbeta^2 c_i / (4 B)),

a_i = nbeta h_i + gamma, c_i = v_i^T C v_i. The first factor is full batch's discretised
prediction (`curvature.quadratic_llc`); the second, the minibatch's, grows linearly in eps / B.
So the minibatch bias relative to full batch is a weighted mean of eps nbeta^2 c_i / (4 B): a
number from one Hessian and one pass of per-row gradients, no chain.

With "epoch" sampling (`SGLDConfig.sampling="epoch"`: each epoch a fresh permutation cut into
K = n // B batches, the n - K B left-over rows unused that epoch) the batches of one epoch are
drawn without replacement: along direction i each has variance (c_i / B)(n - B) / (n - 1) and two
of the same epoch have covariance -c_i / (n - 1), so their sum nearly cancels over an epoch. Two
things follow (`epoch_terms`, averaged over the K positions in an epoch, q = 0 .. K - 1, with
rho = 1 - eps a_i / 2 and S_q = (1 - rho^q) / (1 - rho)):

- the chain's spread: the noise the chain has accumulated, sum_j rho^j e_(t-1-j), counts the
  batches of the current epoch and of every earlier one with their covariances; slow directions
  (rho near 1) see an epoch's noise cancel, fast ones see each batch as it is;
- the evaluation: the batch B_t at which L_B(w_t) is read holds the rows the current epoch has
  not used yet, and the chain has just moved against the noise of the rows it has used, so
  E[e_t . u_t] = (eps nbeta / 2) c_i / (n - 1) S_q > 0 per direction: the estimate reads the
  loss on rows the recent steps did not fit, higher than L_n's. This term does not vanish as
  h_i -> 0 and, for slow directions, is about eps nbeta^2 c_i / (4 B) in absolute terms, so
  epoch sampling can bias the estimate *more* than i.i.d. batches of the same size.

What it leaves out: the rows' Hessians also differ (noise that grows with |u|, second order near
w*), and everything beyond the quadratic approximation (flat and singular directions).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from slt_superposition.curvature import (MAX_DENSE_PARAMETERS, curvature_batched, dense_hessian, quadratic_terms,
                                        summed_terms)
from slt_superposition.errors import require

PyTree = Any
ROW_CHUNK = 4096  # rows whose gradients are computed together


class NoiseSpectrum(NamedTuple):
    """The Hessian of L_n at w* and the rows' gradient spread, in the Hessian's eigenbasis.

    eigenvalues:        `(d,)` ascending, h_i.
    gradient_variance:  `(d,)` c_i = v_i^T C v_i, the variance over the rows of the row gradients'
                        component along eigenvector i.
    """

    eigenvalues: np.ndarray
    gradient_variance: np.ndarray


def _one_instance(loss_fn: Callable, params: PyTree, data: PyTree, chunk: int) -> tuple[jax.Array, jax.Array]:
    """Traced, one instance: H's eigenvalues `(d,)` (`jnp.linalg.eigvalsh`, as
    `curvature.hessian_eigenvalues`) and the rows' gradient variance along its eigenvectors `(d,)`,
    the rows taken `chunk` at a time (a running sum: memory `chunk x d`)."""
    w, unravel = ravel_pytree(params)
    flat = lambda v, rows: loss_fn(unravel(v), rows)
    H = dense_hessian(flat, w, data)
    V = jnp.linalg.eigh(H)[1]
    return jnp.linalg.eigvalsh(H), _variance_along(flat, w, data, V, chunk)


def _variance_along(flat: Callable, w: jax.Array, data: PyTree, V: jax.Array, chunk: int) -> jax.Array:
    """Traced: the variance over the rows of `data` of each row's gradient of `flat(w, rows)` at the
    flat `w` `(d,)` along the columns of `V` `(d, k)`, `(k,)`; rows taken `chunk` at a time."""
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    chunk = min(chunk, n)
    n_chunks = -(-n // chunk)
    one_row = lambda row: jax.grad(flat)(w, jax.tree_util.tree_map(lambda a: a[None], row)) @ V

    def add(sums, c):
        index = c * chunk + jnp.arange(chunk)
        valid = (index < n)[:, None]
        rows = jax.tree_util.tree_map(lambda a: jnp.take(a, jnp.minimum(index, n - 1), axis=0), data)
        P = jnp.where(valid, jax.vmap(one_row)(rows), 0.0)
        return (sums[0] + P.sum(axis=0), sums[1] + (P ** 2).sum(axis=0)), None

    zeros = jnp.zeros(V.shape[1], w.dtype)
    (total, squares), _ = jax.lax.scan(add, (zeros, zeros), jnp.arange(n_chunks))
    mean = total / n
    return jnp.maximum(squares / n - mean ** 2, 0.0)


@functools.lru_cache(maxsize=16)
def _along(loss_fn: Callable, chunk: int) -> Callable:
    def variance(params, data, vectors):
        w, unravel = ravel_pytree(params)
        return _variance_along(lambda v, rows: loss_fn(unravel(v), rows), w, data, vectors, chunk)

    return jax.jit(variance)


def gradient_variance_along(loss_fn: Callable, params: PyTree, data: PyTree, vectors, chunk: int = ROW_CHUNK
                            ) -> np.ndarray:
    """The rows' gradient variance at `params` (one instance; data leaves `(n, ...)`) along the columns
    of `vectors` `(d, k)`, `(k,)`: `noise_spectrum`'s c_i read at any point (e.g. where a chain ended)
    along directions fixed elsewhere (e.g. the Hessian's eigenvectors at w*)."""
    return np.asarray(_along(loss_fn, chunk)(params, data, jnp.asarray(vectors, jnp.float32)), np.float64)


@functools.lru_cache(maxsize=16)
def _batched(loss_fn: Callable, data_batched: bool, chunk: int) -> Callable:
    """jit(params, data -> (eigenvalues, gradient_variance), each `(instance, d)`), one instance at a
    time (lax.map: a dense Hessian holds d x n intermediates per instance)."""
    one = lambda p, x: _one_instance(loss_fn, p, x, chunk)
    if data_batched:
        return jax.jit(lambda p, x: jax.lax.map(lambda a: one(*a), (p, x)))
    return jax.jit(lambda p, x: jax.lax.map(lambda a: one(a, x), p))


def noise_spectrum_batched(loss_fn: Callable, params: PyTree, data: PyTree, *, data_batched: bool,
                           chunk: int = ROW_CHUNK) -> NoiseSpectrum:
    """`noise_spectrum` for every instance (leading axis of params, and of data if `data_batched`),
    in one compiled program: a `NoiseSpectrum` of `(instance, d)` arrays."""
    h, c = _batched(loss_fn, data_batched, chunk)(params, data)
    return NoiseSpectrum(np.asarray(h, np.float64), np.asarray(c, np.float64))


def curvature_with_noise(loss_fn: Callable, params: PyTree, data: PyTree, *, data_batched: bool, key) -> dict:
    """`curvature.curvature_batched`'s dict plus `gradient_variance (instance, d)` (None beyond
    `MAX_DENSE_PARAMETERS`), from one Hessian per instance: for the checks and the calibration of
    minibatch chains, which need both."""
    d = sum(int(np.prod(np.shape(x)[1:])) for x in jax.tree_util.tree_leaves(params))
    if d > MAX_DENSE_PARAMETERS:
        return {**curvature_batched(loss_fn, params, data, data_batched=data_batched, key=key),
                "gradient_variance": None}
    spectrum = noise_spectrum_batched(loss_fn, params, data, data_batched=data_batched)
    return {"eigenvalues": spectrum.eigenvalues, "top": spectrum.eigenvalues[:, -1],
            "gradient_variance": spectrum.gradient_variance}


def noise_spectrum(loss_fn: Callable, params: PyTree, data: PyTree, chunk: int = ROW_CHUNK) -> NoiseSpectrum:
    """H's eigenvalues at `params` and the rows' gradient variance along each eigenvector, `(d,)` each
    (one instance; data leaves `(n, ...)`): `noise_spectrum_batched` of a one-instance stack. A dense
    Hessian: for models of up to a few thousand parameters."""
    stacked = jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], params)
    h, c = noise_spectrum_batched(loss_fn, stacked, data, data_batched=False, chunk=chunk)
    return NoiseSpectrum(h[0], c[0])


def minibatch_factors(gradient_variance, step_size, nbeta, batch_size) -> np.ndarray:
    """Each direction's minibatch factor 1 + eps nbeta^2 c_i / (4 B), `(..., d)`; 1 for full batch
    (`batch_size` None)."""
    c = np.asarray(gradient_variance, np.float64)
    if batch_size is None:
        return np.ones_like(c)
    eps, nbeta, B = (np.asarray(v, np.float64)[..., None] for v in (step_size, nbeta, batch_size))
    require(np.all(B >= 1), f"batch_size must be a positive whole number, not {batch_size}")
    return 1 + eps * nbeta ** 2 * c / (4 * B)


EPOCH_CHUNK = 256  # positions in an epoch summed together (memory: ... x d x this)


def epoch_terms(spectrum: NoiseSpectrum, step_size, localization, nbeta, batch_size: int, n: int) -> np.ndarray:
    """Each direction's share of E[lambda_hat] with "epoch" sampling of `batch_size` of `n` rows,
    `(..., d)` (the module docstring): nbeta h_i E[u_i^2] / 2 + nbeta E[e_i u_i], averaged over the
    K = n // B positions of an epoch; inf where the direction is unstable (eps a >= 4)."""
    require(isinstance(batch_size, (int, np.integer)) and 1 <= batch_size < n,
            f"epoch sampling needs a whole batch_size below n = {n}, not {batch_size}")
    h = np.clip(np.asarray(spectrum.eigenvalues, np.float64), 0.0, None)
    c = np.asarray(spectrum.gradient_variance, np.float64)
    eps, gamma, nbeta = (np.asarray(v, np.float64)[..., None] for v in (step_size, localization, nbeta))
    K, left_over = n // batch_size, n % batch_size
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        x = eps * (nbeta * h + gamma) / 2  # 1 - rho
        stable = x < 2
        # x = 0 (no localization on a flat direction) as its limit: S_q = q
        xs = np.where(stable, np.maximum(x, np.finfo(np.float64).tiny), 1.0)
        rho = 1 - xs

        def one_minus_power(q):  # 1 - rho^q, without cancellation for small x (q broadcast last)
            small = xs[..., None] < 0.5
            return np.where(small, -np.expm1(q * np.log1p(-np.where(small, xs[..., None], 0.0))),
                            1 - rho[..., None] ** q)

        sum1 = np.zeros(np.broadcast(xs, c).shape)  # sum_q S_q
        sum2 = np.zeros_like(sum1)  # sum_q S_q^2
        for start in range(0, K, EPOCH_CHUNK):
            S = one_minus_power(np.arange(start, min(K, start + EPOCH_CHUNK), dtype=np.float64)) / xs[..., None]
            sum1, sum2 = sum1 + S.sum(axis=-1), sum2 + (S ** 2).sum(axis=-1)
        s = one_minus_power(np.float64(K))[..., 0] / (K * xs)  # S_K / K
        # variance of the accumulated noise per unit c / (n - 1), written so that the large parts cancel exactly
        noise = c / (n - 1) * ((left_over / batch_size) / (xs * (2 - xs)) + sum1 * (1 + s) / (2 - xs) - sum2 / K)
        spread = eps / (xs * (2 - xs)) + (eps * nbeta / 2) ** 2 * noise  # E[u_i^2]
        unseen = nbeta * (eps * nbeta / 2) * c / (n - 1) * sum1 / K  # nbeta E[e_i u_i]
        return np.where(stable, np.where(h > 0, nbeta * h * spread / 2, 0.0) + unseen, np.inf)


def quadratic_llc_minibatch(spectrum: NoiseSpectrum, step_size, localization, nbeta, batch_size, *,
                            sampling: str = "replacement", n: int | None = None) -> np.ndarray:
    """E[lambda_hat] of SGLD with minibatches of `batch_size` (None: full batch) on the quadratic
    approximation: with i.i.d. batches (`sampling="replacement"`) `curvature.quadratic_llc`'s terms
    times `minibatch_factors`; with `sampling="epoch"` (needs `n`) `epoch_terms`. Settings broadcast
    over the spectrum's leading axes; NaN where a direction is unstable."""
    require(sampling in ("replacement", "epoch"), f"unknown sampling {sampling!r}")
    if sampling == "epoch" and batch_size is not None:
        require(n is not None, "epoch sampling's prediction needs n, the number of rows")
        return summed_terms(epoch_terms(spectrum, step_size, localization, nbeta, batch_size, int(n)))
    terms = quadratic_terms(spectrum.eigenvalues, step_size, localization, nbeta)
    return summed_terms(terms * minibatch_factors(spectrum.gradient_variance, step_size, nbeta, batch_size))


def predicted_batch_bias(spectrum: NoiseSpectrum, step_size, localization, nbeta, batch_size, *,
                         sampling: str = "replacement", n: int | None = None) -> np.ndarray:
    """The minibatch's relative bias against full batch at the same step size,
    `quadratic_llc_minibatch(B) / quadratic_llc_minibatch(None) - 1`; 0 without curved directions."""
    full = quadratic_llc_minibatch(spectrum, step_size, localization, nbeta, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        mini = quadratic_llc_minibatch(spectrum, step_size, localization, nbeta, batch_size, sampling=sampling, n=n)
        return np.where(full > 0, mini / full - 1, 0.0)

