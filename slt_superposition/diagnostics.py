"""Chain health for LLC estimates: MALA acceptance proxy, R-hat / ESS, divergence.

- MALA acceptance proxy (as devinterp's `MalaAcceptanceRate`): treat each realised SGLD
  transition w -> w' as a Metropolis-adjusted Langevin proposal with potential
  U(w) = nbeta L_B(w) + (localization / 2) ||w - w*||^2 and drift grad U, and compute the
  probability MALA would have accepted it,

      log a = log q(w' -> w) - log q(w -> w') + U(w) - U(w'),
      log q(a -> b) = -||b - a + (eps / 2) grad U(a)||^2 / (2 eps),

  min(1, exp(log a)). Near 1: steps far smaller than needed (slow mixing); near 0: steps
  too large (the discretisation dominates); about 0.9 is the usual healthy target.
  As in devinterp, U and grad U at the two ends use the two steps' (different) minibatches.
  Unlike devinterp 1.3 (whose trace keeps a spurious 0 for the first draw), the
  per-chain mean here averages exactly the post-burn-in transitions.
- R-hat and effective sample size of the post-burn-in loss trace across chains: blackjax's
  `potential_scale_reduction` (Gelman-Rubin: `masked_rhat`, which the calibration also uses) and
  `effective_sample_size` (Geyer's initial monotone sequence on FFT autocovariances, as Stan),
  written in numpy over any leading axes, so that a new trace shape (every chain length, every set
  of healthy chains) compiles nothing; the same numbers to float32 rounding
  (tests/test_chain_statistics.py compares them with blackjax's).
- Divergence: a chain is flagged if any loss along it is non-finite, or if any sample
  nbeta (L_B(w_t) - L_B(w*)) exceeds `DIVERGENCE_FACTOR * d` (d = number of parameters).
  A healthy chain has samples whose *mean* is lambda <= d / 2, with fluctuations of order
  d, so 100 d is far outside healthy behaviour yet reached at once by an exploding chain.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from slt_superposition.sgld import tree_sq_norm

DIVERGENCE_FACTOR = 100.0


def effective_sample_size(trace) -> np.ndarray:
    """Total effective sample size of `trace (..., chain, draw)` over its chains, `(...)`: M N / tau
    with tau = -1 + 2 sum_t rho_t, the autocorrelations rho_t (FFT autocovariances averaged over
    chains, the between-chain variance added to the variance) summed in pairs up to the first
    non-positive pair and made monotone (Geyer's initial monotone sequence, as Stan), tau at least
    1 / log10(M N); 0 where the trace never moves, NaN where it holds a NaN. blackjax's
    `effective_sample_size`, step by step. Needs 2 draws."""
    from scipy.fft import next_fast_len

    x = np.asarray(trace, np.float64)
    chains, n = x.shape[-2:]
    moves = (x != x[..., :1]).any(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN or inf draws: answered below
        chain_mean = x.mean(axis=-1, keepdims=True)
        spectrum = np.fft.rfft(x - chain_mean, n=next_fast_len(2 * n), axis=-1)
        autocov = np.fft.irfft(spectrum * np.conjugate(spectrum), n=next_fast_len(2 * n), axis=-1)[..., :n] / n
        autocov = autocov.mean(axis=-2)  # (..., lag)
        var0 = autocov[..., 0] * n / (n - 1.0)
        degenerate = np.isfinite(var0) & (~moves | (var0 <= 0.0))
        weighted = var0 * (n - 1.0) / n
        if chains > 1:
            weighted = weighted + chain_mean[..., 0].var(axis=-1, ddof=1)
        weighted = np.where(degenerate, 1.0, weighted)
        even_n = n - n % 2
        rho = np.concatenate([np.ones_like(var0)[..., None],
                              1.0 - (var0[..., None] - autocov[..., 1:even_n]) / weighted[..., None]], axis=-1)
        even, odd = rho[..., 0::2], rho[..., 1::2]  # (..., pair)
        # initial positive sequence: the pairs before the first non-positive one, and the even
        # term of that one where it is positive
        positive = np.logical_and.accumulate((even + odd) > 0.0, axis=-1)
        pairs = even.shape[-1]
        last = np.maximum(positive.sum(axis=-1) - 1, 0)  # the last positive pair (0 where none)
        after = np.minimum(last + 1, pairs - 1)[..., None]  # clamped, as jax's gather
        odd = np.where(positive, odd, 0.0)
        keep_even = positive.copy()
        inside = (last + 1 < pairs)[..., None]
        np.put_along_axis(keep_even, after, np.where(inside, np.take_along_axis(even, after, -1) > 0,
                                                     np.take_along_axis(keep_even, after, -1)), axis=-1)
        even = np.where(keep_even, even, 0.0)
        # initial monotone sequence: each pair's sum at most every earlier one's
        sums = even + odd
        running_min = np.minimum.accumulate(sums, axis=-1)
        lowered = sums > np.concatenate([sums[..., :1], running_min[..., :-1]], axis=-1)
        even = np.where(lowered, running_min / 2.0, even)
        odd = np.where(lowered, running_min / 2.0, odd)
        total = chains * n
        tau = -1.0 + 2.0 * (even + odd).sum(axis=-1) - np.take_along_axis(even, after, -1)[..., 0]
        ess = total / np.maximum(tau, 1.0 / np.log10(total))
    ess = np.where(degenerate, 0.0, ess)
    return np.where(np.isnan(x).any(axis=(-2, -1)), np.nan, ess)


def mala_log_acceptance(prev_position, prev_drift, prev_potential, position, drift, potential, step_size):
    """log of the MALA acceptance ratio of the transition prev_position -> position (scalar).

    Positions and drifts are pytrees of the same structure; potentials are scalars.
    """
    half = 0.5 * step_size
    forward = jax.tree_util.tree_map(lambda b, a, g: b - a + half * g, position, prev_position, prev_drift)
    backward = jax.tree_util.tree_map(lambda a, b, g: a - b + half * g, prev_position, position, drift)
    log_q_forward = -tree_sq_norm(forward) / (2.0 * step_size)
    log_q_backward = -tree_sq_norm(backward) / (2.0 * step_size)
    return log_q_backward - log_q_forward + prev_potential - potential


def mala_acceptance_probability(log_ratio):
    """min(1, exp(log_ratio)); NaN stays NaN."""
    return jnp.exp(jnp.minimum(log_ratio, 0.0))


def rhat_and_ess(trace: np.ndarray, healthy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R-hat and total effective sample size of `trace: (..., chain, draw)` over healthy chains.

    `healthy: (..., chain)` marks the chains to use (divergent ones are left out). Returns two
    arrays of shape `(...)`: R-hat is NaN with fewer than 2 healthy chains, both are NaN with
    no healthy chain or fewer than 4 draws. R-hat is `masked_rhat` over the healthy chains; the
    ESS of instances whose chains are all healthy is one vectorised call.
    """
    trace = np.asarray(trace, dtype=np.float32)
    healthy = np.asarray(healthy, bool)
    batch_shape = trace.shape[:-2]
    flat = trace.reshape((-1,) + trace.shape[-2:])
    ok = healthy.reshape((-1, trace.shape[-2]))
    rhat = np.full(flat.shape[0], np.nan)
    ess = np.full(flat.shape[0], np.nan)
    if flat.shape[-1] >= 4:
        all_ok = ok.all(axis=1)
        rhat = masked_rhat(flat, np.ones((len(flat), flat.shape[-1]), bool), ok)
        if all_ok.any():
            ess[all_ok] = effective_sample_size(flat[all_ok])
        for i in np.flatnonzero(~all_ok & ok.any(axis=1)):
            ess[i] = effective_sample_size(flat[i][ok[i]])
    return rhat.reshape(batch_shape), ess.reshape(batch_shape)


def masked_rhat(trace: np.ndarray, draws: np.ndarray, chains: np.ndarray) -> np.ndarray:
    """Gelman-Rubin R-hat (blackjax's `potential_scale_reduction` formula) per instance, each over
    its own draws and chains, vectorised in numpy (no compilation per shape).

    trace: `(instance, chain, draw)`; draws: `(instance, draw)` bool, the draws to use;
    chains: `(instance, chain)` bool, the chains to use. Returns `(instance,)`: NaN with fewer
    than 2 chains or 2 draws.
    """
    trace = np.asarray(trace, np.float64)
    use = np.asarray(chains, bool)[:, :, None] & np.asarray(draws, bool)[:, None, :]
    n = np.asarray(draws, bool).sum(axis=1).astype(np.float64)  # (instance,)
    m = np.asarray(chains, bool).sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(use, trace, 0.0)
        mean = x.sum(axis=2) / n[:, None]  # (instance, chain)
        var = (np.where(use, trace - mean[:, :, None], 0.0) ** 2).sum(axis=2) / (n[:, None] - 1)
        ok_chain = np.asarray(chains, bool)
        grand = np.where(ok_chain, mean, 0.0).sum(axis=1) / m
        between = n * (np.where(ok_chain, mean - grand[:, None], 0.0) ** 2).sum(axis=1) / (m - 1)
        within = np.where(ok_chain, var, 0.0).sum(axis=1) / m
        rhat = np.sqrt((between / within + n - 1) / n)
    return np.where((m >= 2) & (n >= 2), rhat, np.nan)


def mean_and_se(values, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard error of the mean) of `values` along `axis`, e.g. over chains: std (ddof 1)
    / sqrt(count); the SE is NaN where fewer than 2 values (no spread to read). Scalars for 1-D input."""
    values = np.asarray(values)
    count = values.shape[axis]
    mean = values.mean(axis=axis)
    if count < 2:
        return mean, np.full_like(mean, np.nan, dtype=np.float64)[()]
    return mean, values.std(axis=axis, ddof=1) / np.sqrt(count)


def batch_means_se(trace: np.ndarray, post: np.ndarray, chains: np.ndarray, groups: int) -> np.ndarray:
    """Standard error of the post-burn-in mean of a trace (the loss, or a paired difference) from
    batch means: each healthy chain's post-burn-in blocks `trace (instance, chain, block)`
    (`post (instance, block)`, `chains (instance, chain)`) averaged into `groups` consecutive
    batches, pooled over chains (with 2 to 4 chains, the spread over chains alone has 1 to 3
    degrees of freedom). Returns `(instance,)`, NaN with fewer than 3 finite batches."""
    trace, post, chains = np.asarray(trace, np.float64), np.asarray(post, bool), np.asarray(chains, bool)
    n_inst = trace.shape[0]
    out = np.full(n_inst, np.nan)
    for i in range(n_inst):
        cols = np.flatnonzero(post[i])
        use = np.flatnonzero(chains[i])
        if len(cols) < groups or len(use) == 0:
            continue
        means = np.stack([trace[i][np.ix_(use, part)].mean(axis=1) for part in np.array_split(cols, groups)], axis=1)
        values = means[np.isfinite(means)]
        if values.size > 2:
            out[i] = values.std(ddof=1) / np.sqrt(values.size)
    return out


def chain_means_se(trace: np.ndarray, post: np.ndarray, chains: np.ndarray) -> np.ndarray:
    """Standard error over chains of each healthy chain's post-burn-in mean of `trace (instance,
    chain, block)` (`post (instance, block)`, `chains (instance, chain)`): `(instance,)`, NaN with
    fewer than 2 chains."""
    trace = np.asarray(trace, np.float64)
    use = np.asarray(chains, bool)[:, :, None] & np.asarray(post, bool)[:, None, :] & np.isfinite(trace)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(use, trace, 0.0).sum(axis=2) / use.sum(axis=2)  # (instance, chain), NaN if no block
        ok = np.isfinite(means)
        count = ok.sum(axis=1)
        grand = np.where(ok, means, 0.0).sum(axis=1) / count
        var = (np.where(ok, means - grand[:, None], 0.0) ** 2).sum(axis=1) / (count - 1)
        return np.where(count >= 2, np.sqrt(var / count), np.nan)


def difference_se(trace: np.ndarray, post: np.ndarray, chains: np.ndarray, groups: int) -> np.ndarray:
    """Standard error of the post-burn-in mean of a paired difference (`trace (instance, chain,
    block)`, one chain minus its twin on common random numbers): the batch-means one
    (`batch_means_se`), at least the spread of the chains' own means (`chain_means_se`).

    Pooling batches over chains treats every batch as independent. A pair whose two chains part
    (e.g. the minibatch chain takes a different side of a ReLU kink than its full-batch twin)
    keeps its difference for the rest of the run: one chain's batches then share an offset, the
    pooled batch means count them as independent, and only the spread over chains shows it.
    NaN where `batch_means_se` is (too few batches)."""
    pooled = batch_means_se(trace, post, chains, groups)
    return np.where(np.isnan(pooled), np.nan, np.fmax(pooled, chain_means_se(trace, post, chains)))
