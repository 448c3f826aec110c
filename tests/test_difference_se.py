"""The standard error of a paired difference sees a pair whose chains parted."""

import numpy as np

from slt_superposition.diagnostics import batch_means_se, chain_means_se, difference_se, mean_and_se

BLOCKS = 40
GROUPS = 8


def _differences(offsets, seed=0, noise=0.1):
    """`(1, chain, block)`: per-block paired differences, white noise around each chain's offset."""
    rng = np.random.default_rng(seed)
    offsets = np.asarray(offsets, np.float64)
    return (offsets[:, None] + noise * rng.standard_normal((offsets.size, BLOCKS)))[None]


def _all(trace):
    return np.ones((1, trace.shape[-1]), bool), np.ones(trace.shape[:2], bool)


def test_a_parted_pair_raises_the_standard_error_to_the_chains_spread():
    """Four pairs, one of which parted for the whole run (its difference -3.6, as the default grid's
    n5_m2 check at p = 0.0127): pooled batch means call the mean of -0.9 resolved to about 0.3;
    the spread of the four chains' means says about 0.9, and that is what `difference_se` gives."""
    trace = _differences([-3.6, -0.3, -0.2, -0.2])
    post, chains = _all(trace)
    pooled = batch_means_se(trace, post, chains, GROUPS)[0]
    over_chains = chain_means_se(trace, post, chains)[0]
    means = trace[0].mean(axis=1)
    np.testing.assert_allclose(over_chains, means.std(ddof=1) / 2, rtol=1e-12)
    assert over_chains > 2.5 * pooled
    np.testing.assert_allclose(difference_se(trace, post, chains, GROUPS)[0], over_chains, rtol=1e-12)


def test_pairs_that_stay_together_keep_the_batch_means_error():
    """Every chain's difference white noise around 0: the chains' means agree to within the batch
    noise, and the batch means (32 of them, not 4) are the error, as before."""
    trace = _differences([0.0, 0.0, 0.0, 0.0], seed=1, noise=1.0)
    post, chains = _all(trace)
    pooled = batch_means_se(trace, post, chains, GROUPS)
    got = difference_se(trace, post, chains, GROUPS)
    assert got[0] >= pooled[0]
    np.testing.assert_allclose(got, np.fmax(pooled, chain_means_se(trace, post, chains)))


def test_masks_and_missing_values():
    """Only healthy chains and post-burn-in blocks count; too few batches stay NaN, as
    `batch_means_se`; one healthy chain has no spread over chains (NaN), and the batch means stand."""
    trace = _differences([-3.6, 0.0, 0.0])
    post = np.ones((1, BLOCKS), bool)
    post[0, :20] = False
    trace[0, 0, :20] = np.nan  # burn-in blocks may be anything
    chains = np.array([[True, True, False]])
    expected = trace[0, :2, 20:].mean(axis=1).std(ddof=1) / np.sqrt(2)
    np.testing.assert_allclose(chain_means_se(trace, post, chains)[0], expected, rtol=1e-12)
    assert np.isnan(difference_se(trace, post[:, :BLOCKS] & (np.arange(BLOCKS) >= BLOCKS - 4), chains, GROUPS)[0])
    one = np.array([[True, False, False]])
    assert np.isnan(chain_means_se(trace, post, one)[0])
    np.testing.assert_allclose(difference_se(trace, post, one, GROUPS), batch_means_se(trace, post, one, GROUPS))


def test_mean_and_se_over_chains():
    values = np.array([[1.0, 2.0, 3.0, 6.0], [2.0, 2.0, 2.0, 2.0]])
    mean, se = mean_and_se(values)  # over the last axis (chains)
    np.testing.assert_allclose(mean, [3.0, 2.0])
    np.testing.assert_allclose(se, [np.sqrt(((1 - 3) ** 2 + 1 + 0 + 9) / 3) / 2, 0.0])
    mean0, se0 = mean_and_se(values, axis=0)
    np.testing.assert_allclose(se0[0], np.std([1.0, 2.0], ddof=1) / np.sqrt(2))
    one_mean, one_se = mean_and_se(np.array([4.0]))  # one value: a mean but no spread to read
    assert one_mean == 4.0 and np.isnan(one_se) and np.ndim(one_se) == 0
