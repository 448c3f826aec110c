"""Metropolis-adjusted chains (`SGLDConfig(metropolis=True)`, `slt_superposition.mala`).

On L(w) = (1/2) sum_j h_j w_j^2 the localized tempered posterior is Gaussian with precision
a_j = nbeta h_j + gamma, so the estimator's target is exactly sum_j nbeta h_j / (2 a_j). At a step
size of 2 / max a plain SGLD reads far above it (its Euler chain's variance along a is
1 / (a (1 - eps a / 4))); the Metropolis-adjusted chain, whose proposals are those SGLD steps,
must read the exact value.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from slt_superposition import SGLDConfig, calibrate, estimate_llc
from slt_superposition.curvature import quadratic_llc
from slt_superposition.errors import InputError

H = np.array([1e-2, 1.0, 10.0], np.float32)
NBETA, GAMMA = 100.0, 1.0
A = NBETA * H + GAMMA
EXACT = float(np.sum(NBETA * H / (2 * A)))


def quadratic(params, data):
    return 0.5 * jnp.mean(jnp.sum(data["h"] * jnp.square(params["w"]), axis=-1))


DATA = {"h": jnp.broadcast_to(jnp.asarray(H), (50, 3))}
PARAMS = {"w": jnp.zeros(3, jnp.float32)}


def _estimate(metropolis: bool, loss=quadratic):
    config = SGLDConfig(step_size=2.0 / A.max(), localization=GAMMA, nbeta=NBETA, num_chains=4, num_steps=12_000,
                        num_burnin=2000, metropolis=metropolis)
    return estimate_llc(loss, PARAMS, DATA, config=config, key=jax.random.key(0))


def test_metropolis_chain_reads_the_exact_gaussian_value_where_sgld_is_biased():
    plain, exact_chain = _estimate(False), _estimate(True)
    euler = quadratic_llc(H, 2.0 / A.max(), GAMMA, NBETA)
    assert float(plain.llc_mean) > 1.25 * EXACT and abs(float(plain.llc_mean) / euler - 1) < 0.1  # the bias is there
    value, se = float(exact_chain.llc_mean), float(exact_chain.llc_se)
    assert se < 0.05 * EXACT
    assert abs(value - EXACT) < max(3 * se, 0.02 * EXACT), (value, se, EXACT)
    rate = exact_chain["mala_acceptance"].values
    assert np.all((0.5 < rate) & (rate < 0.95)), rate  # realised rates: some proposals rejected
    assert "accepted" in exact_chain["mala_acceptance"].attrs["long_name"]
    # the stored checks: no step-size check to run, the exact posterior's quadratic value, no end bias
    assert np.isnan(float(exact_chain.step_check_rel_diff)) and np.isnan(float(exact_chain.step_bias_end))
    assert float(exact_chain.llc_quadratic) == pytest.approx(EXACT, rel=1e-6)
    assert json.loads(exact_chain.attrs["config"])["metropolis"] is True


def test_a_non_finite_proposal_is_rejected_not_a_divergence():
    """Where the loss is NaN (|w| > 0.3 on the softest direction), SGLD chains go there and diverge; a
    Metropolis-adjusted chain rejects such proposals and stays where the potential is finite."""

    def walled(params, data):
        w = params["w"]
        return quadratic(params, data) + jnp.where(jnp.abs(w[0]) > 0.3, jnp.nan, 0.0)

    assert int(_estimate(False, walled).n_diverged) > 0
    ds = _estimate(True, walled)
    assert int(ds.n_diverged) == 0 and np.all(np.isfinite(ds.final_position.values))
    assert np.all(np.abs(ds.final_position.values[:, 0]) <= 0.3)


def test_metropolis_needs_full_batch():
    config = SGLDConfig(step_size=1e-3, localization=1.0, num_chains=2, num_steps=10, batch_size=10, metropolis=True)
    with pytest.raises(InputError, match="full batch"):
        estimate_llc(quadratic, PARAMS, DATA, config=config, key=jax.random.key(0))
    with pytest.raises(InputError, match="full batch"):
        calibrate(quadratic, PARAMS, DATA, key=jax.random.key(0), batch_size=10, metropolis=True)
    with pytest.raises(InputError, match="metropolis must be True or False"):
        estimate_llc(quadratic, PARAMS, DATA, key=jax.random.key(0),
                     config=SGLDConfig(step_size=1e-3, localization=1.0, num_chains=2, num_steps=10, metropolis="yes"))


def test_calibration_of_metropolis_chains_is_not_held_by_the_curvature_bound():
    common = dict(key=jax.random.key(1), nbeta=NBETA, batch_size=None, step_sizes=[1e-5, 1e-4, 1e-3, 1e-2],
                  min_steps=1000, max_steps=4000, sweep_steps=500)
    plain, _ = calibrate(quadratic, PARAMS, DATA, **common)
    config, ds = calibrate(quadratic, PARAMS, DATA, metropolis=True, **common)
    bound = ds.attrs["step_size_bound"]  # calibrate's one-instance scalars are attrs
    assert plain.step_size <= bound < config.step_size  # SGLD stays under the bias bound; MALA need not
    assert config.metropolis and not plain.metropolis
    assert float(ds["acceptance"].sel(step_size=config.step_size)) >= ds.attrs["acceptance_threshold"]
    assert "not applied" in ds.attrs["verdict"] and "bias checks not run" in ds.attrs["verdict"]


def test_llc_command_runs_metropolis_chains_and_refuses_a_minibatch(tmp_path, capsys):
    from slt_superposition.cli import main
    from test_robustness import _train_like  # tests/test_robustness.py

    path = _train_like(tmp_path / "t.nc")
    out = tmp_path / "l.nc"
    assert main(["llc", str(path), "--out", str(out), "--metropolis"]) == 2  # default --batch-size 500
    err = capsys.readouterr().err
    assert "error: --metropolis needs full batch (--batch-size 0)" in err and "Traceback" not in err
    assert not out.exists()
    code = main(["llc", str(path), "--out", str(out), "--metropolis", "--batch-size", "0", "--n-samples", "200",
                 "--steps", "400", "--burnin", "100", "--chains", "2", "--step-size", "1e-3"])
    assert code == 0, capsys.readouterr().err[-500:]
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert json.loads(ds.attrs["config"])["metropolis"] is True
    assert "accepted" in ds["mala_acceptance"].attrs["long_name"]
    assert np.all((ds["mala_acceptance"].values > 0) & (ds["mala_acceptance"].values <= 1))
