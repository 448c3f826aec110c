"""experiments/length_rule_pairing.py: the two standard errors of a change it compares."""

from __future__ import annotations

import numpy as np

from experiments.length_rule_pairing import change_errors


def test_paired_error_drops_a_level_each_chain_keeps_and_added_error_does_not():
    rng = np.random.default_rng(0)
    instances, chains = 200, 8
    level = rng.normal(0, 1.0, (instances, chains))  # each chain's own level, kept over both windows ...
    before = level + rng.normal(0, 0.1, (instances, chains))  # ... against little noise within a window
    now = level + rng.normal(0, 0.1, (instances, chains))
    none = np.zeros(instances)
    added, paired = change_errors(before, now, none, none, none)
    # added: sqrt(2 (1 + 0.01) / 8) ~ 0.50; paired: sqrt(2 0.01 / 8) ~ 0.05
    assert 0.4 < np.median(added) < 0.6 and 0.04 < np.median(paired) < 0.06
    independent = rng.normal(0, 1.0, (instances, chains))
    added, paired = change_errors(independent, rng.normal(0, 1.0, (instances, chains)), none, none, none)
    assert 0.9 < np.median(paired / added) < 1.1  # nothing shared: the two agree
    floor = np.full(instances, 7.0)
    added, paired = change_errors(before, now, floor, floor, floor)  # the batch means floor both
    np.testing.assert_allclose(added, np.hypot(7.0, 7.0))
    np.testing.assert_allclose(paired, 7.0)
