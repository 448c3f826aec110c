"""The Metropolis-adjusted chain of experiments/dln_wide_drift.py samples the localized posterior exactly.

On a one-layer linear network (noiseless data, so w* minimises L_n and L_n is exactly quadratic) the
localized tempered posterior is Gaussian with precision nbeta H + gamma, and the estimator's target is
E[nbeta (L_n(w) - L_n(w*))] = (1/2) sum_j nbeta h_j / (nbeta h_j + gamma). At a step size of 1.5 / a_max
(a = nbeta h + gamma) plain SGLD reads far above it (the Euler chain's variance along a is
1 / (a (1 - eps a / 4))); the Metropolis-adjusted chain, with the same proposals, must not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.dln_wide_drift import BLOCK, chain_blocks
from experiments.dln_validation import LOCALIZATION, NBETA, NUM_CHAINS
from slt_superposition.curvature import hessian_eigenvalues
from toy_models.dln import dln_compressed_data, dln_data, dln_loss, dln_true_params

BLOCKS = 4  # the first is burn-in


def estimate(params, data, step_size: float, metropolis: bool) -> tuple[float, float, float]:
    """(LLC over blocks 2..BLOCKS, its standard error over chains, acceptance rate)."""
    run, _ = chain_blocks(params, data, step_size, LOCALIZATION, metropolis)
    flat = jnp.broadcast_to(jnp.concatenate([W.reshape(-1) for W in params]), (NUM_CHAINS, sum(W.size for W in params)))
    _, (sums, accepted) = run(flat, jax.random.split(jax.random.key(3), NUM_CHAINS), 0, BLOCKS)
    per_chain = NBETA * np.asarray(sums, np.float64)[1:].sum(axis=0) / ((BLOCKS - 1) * BLOCK)
    rate = float(np.asarray(accepted)[1:].sum() / ((BLOCKS - 1) * BLOCK * NUM_CHAINS))
    return per_chain.mean(), per_chain.std(ddof=1) / np.sqrt(NUM_CHAINS), rate


def test_metropolis_chain_reads_the_exact_gaussian_expectation():
    k_true, k_data = jax.random.split(jax.random.key(0))
    params = dln_true_params(k_true, (3, 2), 2)  # one layer: L_n quadratic in W
    data = dln_compressed_data(*dln_data(k_data, params, 10_000))
    h = np.asarray(hessian_eigenvalues(dln_loss, params, data), np.float64)
    a = NBETA * h + LOCALIZATION
    exact = 0.5 * float(np.sum(NBETA * h / a))
    eps = 1.5 / a.max()
    mala, mala_se, rate = estimate(params, data, eps, metropolis=True)
    plain, _, plain_rate = estimate(params, data, eps, metropolis=False)
    assert plain_rate == 1.0
    assert plain > 1.15 * exact  # the step size is large enough for a bias the test can see
    assert 0.3 < rate < 1.0
    assert abs(mala - exact) <= max(4 * mala_se, 0.03 * exact), (mala, mala_se, exact)
