"""Chen et al. 6-gon: refined on n = 1e5 samples it is a minimum with exactly one flat direction
(the rotation), and the LLC estimate by the experiment's protocol is within 10% of 8.5."""

import numpy as np
import pytest

from experiments.kgon_llc import BIAS_STUDY, N_SAMPLES, QUICK, bias_dataset, bias_table, quadratic_llc, run_case


def test_bias_study_table_on_stub_rows():
    # the table writer of `--bias-study`, on made-up estimates (no SGLD): one line per BIAS_STUDY row, in order
    rows = [dict(step_size=eps, batch_size=batch or N_SAMPLES, num_steps=steps, localization=gamma, llc_mean=8.5 + i,
                 llc_se=0.1, llc_quadratic=8.6, n_diverged=0, seconds=1.0)
            for i, (eps, batch, steps, gamma) in enumerate(BIAS_STUDY)]
    ds = bias_dataset(rows, {"stub": True})
    assert all("long_name" in ds[v].attrs and "units" in ds[v].attrs for v in ds.data_vars)
    lines = bias_table(ds).splitlines()
    assert len(lines) == 2 + len(BIAS_STUDY)
    assert lines[2] == "| 3.16e-05 | 500 | 8000 | 1 | 8.50 +- 0.10 | 8.60 |"
    assert lines[6].startswith(f"| 1e-05 | full ({N_SAMPLES}) | 10000 | 1 | 12.50 +- 0.10 |")


def test_quadratic_llc_limits():
    # 17 curved directions and the flat rotation: 17/2 as eps, gamma -> 0; eps raises it, gamma lowers it
    h = np.r_[np.linspace(0.03, 1.4, 17), 0.0]
    assert quadratic_llc(h, step_size=0.0, localization=0.0) == pytest.approx(8.5)
    assert quadratic_llc(h, step_size=1e-5, localization=0.0) > 8.5 > quadratic_llc(h, step_size=0.0, localization=100)


@pytest.mark.slow
def test_six_gon_llc_within_ten_percent():
    # the experiment's quick protocol (n = 1e5, refine, localization 1, batch 500, two step sizes
    # at equal sampler time 0.2, 4 chains); the full run uses 8 chains and sampler time 0.25
    row = run_case(6, 0.0, **QUICK)
    print(row["llc_by_step"], row["llc_se_by_step"], row["llc_extrapolated"])
    assert row["grad_norm"] < 1e-4  # the refined point is critical on the empirical loss
    assert row["empirical_loss"] == pytest.approx(0.04819, abs=2e-3)
    # 18 parameters, 17 curved directions, no descent direction: 8.5 = 17 / 2
    assert row["n_positive_eigen"] == 17 and row["n_negative_eigen"] == 0
    assert row["n_diverged"] == 0
    assert abs(row["llc_mean"] - 8.5) <= 0.1 * 8.5, row
    assert abs(row["llc_extrapolated"] - 8.5) <= 0.1 * 8.5, row
