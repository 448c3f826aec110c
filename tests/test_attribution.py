"""Each out-of-range flagship estimate is attributed to the first failing cause."""

import numpy as np
import xarray as xr

from analysis.compare import out_of_range_cause


def stub(**overrides):
    n = 6
    base = dict(
        llc_mean=np.ones(n), budget_out_of_range=np.array([True, True, True, True, True, False]),
        # above the symmetry bound (excess < -2 SE) but for the fifth, out of range below 0
        excess_degeneracy=np.array([-1.0, -1.0, -1.0, -1.0, 3.0, 0.0]), excess_degeneracy_se=np.full(n, 0.1),
        llc_step_check_rel_diff=np.array([0.2, 0.0, 0.0, 0.0, 0.0, 0.2]), llc_step_check_se=np.full(n, 0.01),
        llc_batch_check_rel_diff=np.array([0.0, 0.1, 0.0, 0.0, 0.0, 0.0]), llc_batch_check_se=np.full(n, 0.005),
        grad_norm_refined=np.array([0.0, 0.0, 0.1, 0.0, 0.0, 0.0]))
    base.update(overrides)
    ds = xr.Dataset({k: ("instance", v) for k, v in base.items()})
    eig = np.tile(np.linspace(0.0, 2.0, 4), (n, 1))
    ds["hessian_eigenvalues"] = (("instance", "eigen"), eig)
    return ds


def test_first_failing_cause_in_order():
    causes = out_of_range_cause(stub()).values.tolist()
    assert causes == ["step size", "batch", "not a minimum", "finite n", "lower loss found", ""]


def test_an_excess_from_an_unsettled_calibration_is_not_put_on_finite_n():
    settled = np.array([True, True, True, False, False, True])
    causes = out_of_range_cause(stub(llc_calibration_converged=settled)).values.tolist()
    # the fourth (above the bound, every check passed) is unsettled; below 0 stays "lower loss found"
    assert causes == ["step size", "batch", "not a minimum", "unsettled", "lower loss found", ""]


def test_a_saddle_is_not_a_minimum_and_an_unresolved_check_is_a_failed_one():
    ds = stub()
    ds["hessian_eigenvalues"][3, 0] = -0.5  # negative curvature: w* is a saddle of L_n
    assert out_of_range_cause(ds).values[3] == "not a minimum"
    ds = stub(llc_step_check_se=np.full(6, 0.2))  # SE above the 5% tolerance: the check saw nothing
    assert (out_of_range_cause(ds).values[:4] == "step size").all()


def test_untrusted_reasons_count_each_failing_check():
    from analysis.compare import untrusted_reasons

    ds = stub(llc_rhat=np.array([1.0, 1.3, 1.0, 1.05, 1.0, 1.2]), llc_n_diverged=np.array([0, 0, 1, 0, 0, 0]),
              llc_calibration_converged=np.array([True, True, True, False, True, True]))
    counts = untrusted_reasons(ds)
    # step check fails on 0 and 5, batch on 1; R-hat on 1 and 5; one divergence; one unsettled; a dataset
    # written before the bias at the chains' ends was stored counts none for it
    assert counts == {"R-hat": 2, "step size": 2, "curvature at the chains' ends": 0, "batch": 1, "divergence": 1,
                      "calibration unsettled": 1}
    ds["llc_step_bias_end"] = ("instance", np.array([0.0, 0.01, 0.2, np.inf, 0.04, np.nan]))
    assert untrusted_reasons(ds)["curvature at the chains' ends"] == 2  # above 5%, or unstable there


def test_a_bias_at_the_chains_ends_is_a_step_size_cause():
    ds = stub(llc_step_bias_end=np.array([0.0, 0.0, 0.0, 0.3, 0.0, 0.0]))
    # the fourth passed every other check: its chains ended where the step size is biased by 30%
    assert out_of_range_cause(ds).values.tolist() == ["step size", "batch", "not a minimum", "step size",
                                                      "lower loss found", ""]


def test_variables_stored_in_another_dims_order_are_read_per_instance():
    """A 2 x 2 grid whose gradient norm is stored (s, p) while llc_mean is (p, s): each cause stays with its
    instance (reading .values without aligning swapped the off-diagonal instances)."""
    flat = stub()
    grid = lambda v: v[:4].reshape(2, 2)
    ds = xr.Dataset({name: (("p", "s"), grid(flat[name].values)) for name in flat.data_vars if name != "hessian_eigenvalues"})
    ds["hessian_eigenvalues"] = (("p", "s", "eigen"), flat["hessian_eigenvalues"].values[:4].reshape(2, 2, -1))
    expected = [["step size", "batch"], ["not a minimum", "finite n"]]
    assert out_of_range_cause(ds).values.tolist() == expected
    ds["grad_norm_refined"] = ds["grad_norm_refined"].transpose("s", "p")
    ds["hessian_eigenvalues"] = ds["hessian_eigenvalues"].transpose("eigen", "s", "p")
    assert out_of_range_cause(ds).values.tolist() == expected
