"""experiments/mala_step_efficiency.py: its measurement on a case with an exact answer, and its rule.

On a one-layer linear network (noiseless data: L_n exactly quadratic, w* its minimum) the localized
tempered posterior is Gaussian and the target is (1/2) sum_j nbeta h_j / (nbeta h_j + gamma). The
study's chains at a small and at a large step size must both read it (the Metropolis step makes
every step size exact), with the acceptance rate falling as the step grows.
"""

from __future__ import annotations

import jax
import numpy as np

from experiments.dln_validation import LOCALIZATION, NBETA
from experiments.mala_step_efficiency import measure, rule_choice
from slt_superposition.curvature import hessian_eigenvalues
from toy_models.dln import dln_compressed_data, dln_data, dln_loss, dln_true_params


def test_every_step_size_reads_the_gaussian_target_and_acceptance_falls():
    k_true, k_data = jax.random.split(jax.random.key(0))
    params = dln_true_params(k_true, (3, 2), 2)
    data = dln_compressed_data(*dln_data(k_data, params, 10_000))
    h = np.asarray(hessian_eigenvalues(dln_loss, params, data), np.float64)
    a = NBETA * h + LOCALIZATION
    exact = 0.5 * float(np.sum(NBETA * h / a))
    rows = [measure(params, data, eps / a.max(), steps=8192, chains=8, localization=LOCALIZATION, nbeta=NBETA,
                    key=jax.random.key(1)) for eps in (0.3, 2.0)]
    assert rows[0]["acceptance"] > rows[1]["acceptance"] > 0.2
    for row in rows:
        assert row["per_chain"].shape == (8,)
        assert abs(row["mean"] - exact) <= max(4 * row["se"], 0.03 * exact), (row["step_size"], row["mean"], exact)


def test_rule_choice_is_the_largest_step_size_accepted_at_least_nine_tenths():
    rows = [{"step_size": 1e-7, "acceptance": 0.99}, {"step_size": 3e-7, "acceptance": 0.91},
            {"step_size": 1e-6, "acceptance": 0.5}]
    assert rule_choice(rows)["step_size"] == 3e-7
    assert rule_choice([{"step_size": 1e-6, "acceptance": 0.5}]) is None
