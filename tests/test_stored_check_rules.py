"""The stored checks' pass rule (`checks.within`) on checks that ran without a healthy pair.

A check not run (NaN relative difference and NaN standard error: a full-batch estimate's batch check,
a Metropolis estimate's step-size check) passes; a check whose every pair diverged ran and showed
nothing, so it must fail and leave the estimate untrusted (it passed before: NaN read as "not run").
No chain is run here: the checks' arithmetic on hand-made chain outputs.
"""

from __future__ import annotations

import numpy as np

from slt_superposition.checks import _paired_batch_check, _step_size_check, within
from slt_superposition.llc import SGLDConfig


def test_a_check_not_run_passes_and_one_that_ran_without_a_healthy_pair_fails():
    assert within(np.nan, np.nan, 0.05)  # not run
    assert not within(np.nan, np.inf, 0.05)  # ran, every pair diverged
    assert not within(0.01, np.nan, 0.05)  # too short to resolve
    assert within(0.01, 0.01, 0.05) and not within(0.2, 0.01, 0.05)


def test_step_size_check_with_every_pair_divergent_fails():
    chains, blocks = 2, 20
    rng = np.random.default_rng(0)
    pair = {"llc_coarse": 1.0 + 0.01 * rng.standard_normal((2, chains)),
            "llc_fine": 1.0 + 0.01 * rng.standard_normal((2, chains)),
            "diverged": np.array([[False, False], [True, True]]),  # instance 1: every pair diverged
            "diff_blocks": 0.001 * rng.standard_normal((2, chains, blocks))}
    pair["llc_coarse"][1] = pair["llc_fine"][1] = np.nan  # what divergent pairs leave behind
    out = _step_size_check(pair, np.array([400, 400]))
    assert np.isfinite(out["step_check_se"][0]) and np.isinf(out["step_check_se"][1])
    passed = within(out["step_check_rel_diff"], out["step_check_se"], 0.05)
    assert passed.tolist() == [True, False]


def test_batch_check_with_every_pair_divergent_fails():
    chains, steps, every = 2, 500, 10

    def sample(config, key):  # instance 1's minibatch chains both diverged
        full = config.batch_size is None
        rng = np.random.default_rng(1 if full else 2)
        trace = 0.5 + 0.001 * rng.standard_normal((2, chains, steps // every))
        diverged = np.zeros((2, chains), bool)
        if not full:
            diverged[1] = True
        llc = 1.0 + 0.001 * rng.standard_normal((2, chains))
        return {"llc_per_chain": np.where(diverged, np.nan, llc), "diverged": diverged, "loss_trace": trace}

    config = SGLDConfig(step_size=1e-3, localization=1.0, num_chains=chains, num_steps=steps, num_burnin=steps // 2,
                        batch_size=100)
    _, rel, se = _paired_batch_check(sample, config, np.array([steps, steps]), np.array([0.5, 0.5]),
                                     np.array([100.0, 100.0]), key=None)
    assert np.isnan(rel[1]) and np.isinf(se[1]) and np.isfinite(se[0])
    assert within(rel, se, 0.02).tolist() == [True, False]


def test_a_short_batch_check_reads_its_trace_as_its_own_call_would():
    """The paired runs shared one trace block length (steps of the longest / 50): an instance whose
    check ran 600 steps beside one of 4000 (an extended check) got 4 post-burn-in blocks, too few for
    batch means, so a NaN standard error (unresolved, failed) because of its neighbour; and beside
    another length, another standard error than its own call gives. Each instance's trace now holds
    50 blocks of its own length."""
    chains = 2
    seen = []

    def sample(config, key):  # a noisy paired difference, one value per trace block
        every, steps = np.asarray(config.trace_every), np.asarray(config.num_steps)
        seen.append(np.broadcast_to(every, steps.shape).tolist())
        blocks = int(np.max(-(-steps // every)))
        rng = np.random.default_rng(0 if config.batch_size is None else 1)
        return {"llc_per_chain": 1.0 + 0.001 * rng.standard_normal((2, chains)), "diverged": np.zeros((2, chains), bool),
                "loss_trace": 0.5 + 0.001 * rng.standard_normal((2, chains, blocks))}

    config = SGLDConfig(step_size=1e-3, localization=1.0, num_chains=chains, num_steps=4000, num_burnin=2000,
                        batch_size=100)
    _, _, se = _paired_batch_check(sample, config, np.array([600, 4000]), np.array([0.5, 0.5]),
                                   np.array([100.0, 100.0]), key=None)
    assert seen[0] == [12, 80] and np.isfinite(se).all()
