"""DLN validation subset in CI: calibrate + estimate_llc against Aoyagi's lambda."""

import numpy as np
import pytest

from experiments.dln_validation import run_case

# small, fast cases of the panel; the full panel is experiments/dln_validation.py
CI_CASES = [((3, 5), 2), ((8, 2, 8), 2)]


@pytest.mark.slow
def test_dln_subset_within_error_bounds():
    rows = [run_case(w, r, "singular", max_steps=20_000, step_sizes=(1e-8, 3.16e-8, 1e-7, 3.16e-7, 1e-6, 1e-5, 1e-4),
                     sweep_steps=1000, min_steps=5000, batch_check_steps=500) for w, r in CI_CASES]
    for row in rows:
        print(row["case"], row["lambda_theory"], row["llc_mean"], row["step_size"], row["num_steps"])
    errors = np.array([abs(row["rel_error"]) for row in rows])
    assert all(row["n_diverged"] == 0 for row in rows)
    assert np.median(errors) <= 0.10, rows
    assert errors.max() <= 0.20, rows


@pytest.mark.slow
def test_dln_subset_with_metropolis_adjusted_chains():
    """The same cases and budget through calibrate(metropolis=True): step sizes limited by the
    acceptance rate, not the curvature bound (at least the SGLD calibration's), and estimates within
    the same bounds."""
    options = dict(max_steps=20_000, step_sizes=(1e-8, 3.16e-8, 1e-7, 3.16e-7, 1e-6, 1e-5, 1e-4), sweep_steps=1000,
                   min_steps=5000)
    rows = [run_case(w, r, "singular", metropolis=True, **options) for w, r in CI_CASES]
    for row in rows:
        print(row["case"], row["lambda_theory"], row["llc_mean"], row["step_size"], row["num_steps"],
              row["mala_acceptance"])
    errors = np.array([abs(row["rel_error"]) for row in rows])
    assert all(row["n_diverged"] == 0 and 0.5 < row["mala_acceptance"] < 1 for row in rows)
    assert np.median(errors) <= 0.10, rows
    assert errors.max() <= 0.20, rows


def test_summary_line_says_none_settled_instead_of_nan():
    import numpy as np
    import xarray as xr

    from experiments.dln_validation import _summary_line, summary

    ds = xr.Dataset({"kind": ("case", ["singular", "singular"]), "rel_error": ("case", [0.02, -0.08]),
                     "converged": ("case", [0, 0]), "widths": ("case", ["3-5", "4-4"])})
    line = _summary_line(summary(ds))
    assert "nan" not in line and line.endswith("2 not settled by the calibration's length rule (converged: no), "
                                               "none settled")
    ds["converged"] = ("case", [1, 0])
    assert _summary_line(summary(ds)).endswith("max 2.0% over the settled ones")
    assert np.isclose(summary(ds)["max_abs_rel_error"], 0.08)


def test_the_report_command_carries_the_set_fields(tmp_path, monkeypatch):
    """`--set max_acceptance_drop=0.3` (and `metropolis=True`) reach the report's command line, as the
    dataset's config records them."""
    import experiments.dln_validation as dv

    given = []
    monkeypatch.setattr(dv, "run_cases", lambda *args, **kwargs: None)
    monkeypatch.setattr(dv, "write_outputs", lambda ds, out_dir, size, only, options: given.append(options))
    dv.run(tmp_path, size="quick", progress=False, max_acceptance_drop=0.3)
    dv.run(tmp_path, size="quick", progress=False, metropolis=True)
    dv.run(tmp_path, size="quick", progress=False)
    assert given == [{"max_acceptance_drop": 0.3}, {"metropolis": True}, {}]
    from experiments.registry import command_line

    assert "--set max_acceptance_drop=0.3" in command_line("dln-validation", tmp_path, "quick", None, **given[0])
