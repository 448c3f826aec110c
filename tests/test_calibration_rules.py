"""calibrate's short bias check, on a stub sampler whose estimate is exactly linear in the step
size (lambda(eps) = lambda0 + c eps) with a chosen standard error: each instance is kept at the
largest step size whose fitted bias c eps is within max(bias_tol |lambda0|, 2 SE of the bias),
which the dataset of a real run cannot show (it does not store the smaller step size's SE)."""

from __future__ import annotations

import numpy as np

from slt_superposition.calibration import Runs, Sampler, comparisons_left, short_bias_stage

STEP_SIZES = np.array([1e-6, 1e-5, 1e-4, 1e-3])
LAMBDA0 = np.array([4.0, 4.0, 4.0, 4.0])
SLOPE = np.array([10.0, 4e3, 4e3, 1e6])  # c: bias c eps at eps = 1e-3 is 0.25%, 100%, 100%, 25000%
SE = np.array([1e-3, 1e-3, 2.0, 1e-3])  # instance 2: a bias as large as instance 1's, inside its noise
BIAS_TOL = 0.05


def _stub_sampler() -> Sampler:
    def run(key, step_size, num_steps, localization, batch_size) -> Runs:
        step_size, running = np.broadcast_to(step_size, LAMBDA0.shape), np.asarray(num_steps) > 0
        llc = np.where(running, LAMBDA0 + SLOPE * step_size, np.nan)
        se = np.where(running, SE, np.nan)
        n = len(LAMBDA0)
        return Runs(llc, se, np.ones(n), np.zeros(n, int), np.ones(n), llc[:, None])

    return Sampler(run, len(LAMBDA0))


def test_short_bias_check_keeps_the_largest_consistent_step_size():
    stage = short_bias_stage(_stub_sampler(), None, STEP_SIZES, np.full(4, len(STEP_SIZES)), sweep_steps=100,
                             bias_check_steps=100, max_steps=10**9, localization=1.0, batch_size=None,
                             bias_tol=BIAS_TOL, progress=False)
    for i in range(len(LAMBDA0)):
        # the rule, written out: the fit through (eps_j, eps_{j-1}) gives bias c eps_j exactly, and its
        # SE is 2 x eps_j / (eps_j - eps_{j-1}) x sqrt(2) SE
        expected = None
        for j in range(len(STEP_SIZES) - 1, 0, -1):
            factor = STEP_SIZES[j] / (STEP_SIZES[j] - STEP_SIZES[j - 1])
            allowed = max(BIAS_TOL * LAMBDA0[i], 2 * factor * np.sqrt(2) * SE[i])
            if SLOPE[i] * STEP_SIZES[j] <= allowed:
                expected = j
                break
        consistent = np.flatnonzero(stage.consistent[i])
        if expected is None:  # walked down to the smallest step size without passing
            assert stage.index[i] == 0 and consistent.size == 0
        else:
            assert stage.index[i] == expected and consistent.tolist() == [expected]
            np.testing.assert_allclose(stage.bias[i, expected], SLOPE[i] * STEP_SIZES[expected], rtol=1e-9)
            np.testing.assert_allclose(stage.llc0[i, expected], LAMBDA0[i], rtol=1e-9)
    # the cases the stub was built for: kept at the top by the tolerance (0), walked down (1, 3),
    # kept at the top only by the noise allowance (2)
    assert stage.index.tolist() == [3, 1, 3, 0]


def test_bias_check_bar_counts_up_to_its_bound_and_ends_full(capsys):
    # the bar's total is the most comparisons the walk could make (instance 3 can walk from the top,
    # index 3, to 0: 3), and the bar ends full at the comparisons it made
    index, active = np.array([3, 3, 1, 2]), np.array([True, True, True, False])
    assert comparisons_left(index, active, np.ones(4), STEP_SIZES, 10**9) == 3
    # a chain of sampler time 1 at eps 1e-5 takes 1e5 steps: with a cap of 2e4 only eps 1e-4 fits below 1e-3
    assert comparisons_left(index, active, np.ones(4), STEP_SIZES, 20_000) == 1
    assert comparisons_left(index, ~active, np.ones(4), STEP_SIZES, 10**9) == 2
    short_bias_stage(_stub_sampler(), None, STEP_SIZES, np.full(4, len(STEP_SIZES)), sweep_steps=100,
                     bias_check_steps=100, max_steps=10**9, localization=1.0, batch_size=None, bias_tol=BIAS_TOL,
                     progress=True)
    last = [line for line in capsys.readouterr().err.splitlines() if "calibrate: bias check" in line][-1]
    assert "100%" in last and " 3/3 " in last  # instance 3 walked the whole grid: 3 comparisons
