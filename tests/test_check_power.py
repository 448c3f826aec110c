"""The bias checks' power: failed, unresolved, and the check length that would resolve them."""

import numpy as np
import xarray as xr

from analysis.check_power import check_power, main


def stub():
    return xr.Dataset({
        "llc_step_check_rel_diff": ("instance", np.array([0.0, 0.2, 0.01, 0.0])),
        "llc_step_check_se": ("instance", np.array([0.01, 0.01, 0.10, 0.02])),
        "llc_batch_check_rel_diff": ("instance", np.array([0.0, 0.005, np.nan, 0.03])),
        "llc_batch_check_se": ("instance", np.array([0.04, 0.01, np.nan, 0.002])),
    })


def test_counts_and_the_length_that_would_resolve_each_unresolved_check():
    step, batch = check_power(stub(), check_steps=300)
    # step: instance 1 resolved but 20% off; instance 2 unresolved (se 10% > 5%): 300 (0.10/0.05)^2 = 1200 steps
    assert (step["failed"], step["unresolved"], step["resolved_too_large"]) == (2, 1, 1)
    assert step["steps_to_resolve_median"] == 1200
    # batch: instance 2 ran full batch (no check); 0 unresolved (se 4% > 2%): 300 (0.04/0.02)^2 = 1200;
    # instance 3 resolved and 3% off (> 2% + 2 SE)
    assert (batch["estimates"], batch["failed"], batch["unresolved"], batch["resolved_too_large"]) == (3, 2, 1, 1)
    assert batch["steps_to_resolve_median"] == 1200


def test_command_prints_one_row_per_model_and_check(tmp_path, capsys):
    path = tmp_path / "chunk.nc"
    stub().expand_dims(model=["n6_m2"]).to_netcdf(path)
    main([str(path), "--check-steps", "300"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| n6_m2")]
    assert rows == ["| n6_m2 | step size | 5% | 4 | 2 | 1 | 1 | 1,200, 1,200 |",
                    "| n6_m2 | batch | 2% | 3 | 2 | 1 | 1 | 1,200, 1,200 |"]


def test_a_rerun_batch_check_is_extrapolated_from_its_own_length():
    ds = stub().assign(llc_batch_check_steps=("instance", np.array([2400.0, 300.0, np.nan, 300.0])))
    _, batch = check_power(ds, check_steps=300)
    # instance 0 already ran 2400 steps (a rerun) with se 4%: 2400 (0.04/0.02)^2 = 9600
    assert batch["steps_to_resolve_median"] == 9600
