"""The batch check runs again, longer, where its first run could not resolve its tolerance."""

import warnings

import jax
import numpy as np
import pytest

from linear_regression import regression_loss, regression_problem
from slt_superposition import SGLDConfig, estimate_llc
from slt_superposition import checks
from slt_superposition.checks import resolving_steps, within


def test_resolving_steps_extends_only_unresolved_checks_consistent_with_no_bias():
    steps = np.full(5, 300)
    rel = np.array([0.001, 0.001, 0.5, np.nan, 0.001])
    se = np.array([0.01, 0.04, 0.04, 0.04, 0.2])
    got = resolving_steps(steps, rel, se, 0.02, np.full(5, 2400))
    # resolved: kept; SE 2x the tolerance: 4 x 1.3 x the steps; a bias found or no check: kept;
    # SE 10x the tolerance: the cap
    np.testing.assert_array_equal(got, [300, int(np.ceil(300 * 4 * checks.EXTENSION_MARGIN)), 300, 300, 2400])


# batch 16 of 400 rows at eps 1e-3: a 200-step check leaves the batch check unresolved
CONFIG = SGLDConfig(step_size=1e-3, localization=1.0, num_chains=2, num_steps=1600, num_burnin=800, batch_size=16)
NAMES = ("llc_full_batch_check", "batch_check_rel_diff", "batch_check_se")


@pytest.fixture(scope="module")
def problem():
    return regression_problem(400)


def test_an_unresolved_batch_check_runs_again_as_long_as_it_needs(problem, monkeypatch):
    params, data = problem
    estimate = lambda check_steps: estimate_llc(regression_loss, params, data, config=CONFIG, key=jax.random.key(3),
                                                check_steps=check_steps)
    with monkeypatch.context() as patch:
        patch.setattr(checks, "MAX_CHECK_EXTENSION", 1)
        first = estimate(200)
    assert float(first.batch_check_steps) == 200
    assert float(first.batch_check_se) > 0.02  # unresolved: the check failed
    assert not within(first.batch_check_rel_diff.values, first.batch_check_se.values, 0.02)
    extended = estimate(200)
    # the second run: as long as the SE asked for, at most 8x and the estimate's own 1600 steps
    assert float(extended.batch_check_steps) == 1600
    assert within(extended.batch_check_rel_diff.values, extended.batch_check_se.values, 0.02)
    # ... and it is the check a 1600-step first run gives (same keys), which needs no second run
    direct = estimate(1600)
    assert float(direct.batch_check_steps) == 1600
    for name in NAMES:
        np.testing.assert_array_equal(extended[name].values, direct[name].values)
    # the LLC itself is untouched by the checks
    np.testing.assert_array_equal(first.llc_per_chain.values, extended.llc_per_chain.values)


def test_relative_difference_against_a_zero_check_warns_nothing():
    """An instance whose check LLC is exactly 0 (a loss constant near w*) gives inf, or NaN ("no
    difference", which `within` passes) when both arms are 0, without a RuntimeWarning."""
    a = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 4.0]])
    b = np.array([[0.0, 0.0], [0.0, 0.0], [2.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rel, mean_a, mean_b = checks.relative_difference(a, b, np.ones_like(a, bool))
    assert np.isnan(rel[0]) and np.isinf(rel[1]) and rel[2] == 0.5
    np.testing.assert_array_equal(mean_b, [0.0, 0.0, 2.0])
