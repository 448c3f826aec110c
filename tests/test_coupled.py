"""The coupled eps / (eps / 3) chains of the step-size check: each chain is an ordinary SGLD
chain, and one Brownian path makes their difference far less noisy than either estimate."""

import jax
import numpy as np
import pytest

from slt_superposition import SGLDConfig
from slt_superposition.coupled import sample_coupled
from slt_superposition.curvature import hessian_eigenvalues, quadratic_llc
from slt_superposition.llc import chain_settings, chain_shape
from linear_regression import regression_loss, regression_problem  # tests/linear_regression.py


@pytest.fixture(scope="module")
def coupled_run():
    params, (x, y) = regression_problem()
    n = 400
    nbeta = n / np.log(n)
    eigs = np.asarray(hessian_eigenvalues(regression_loss, params, (x, y)))
    eps = 1.6 / (nbeta * eigs.max() + 1.0)  # eps a / 4 = 0.4 on the top direction: a clear bias
    config = SGLDConfig(step_size=eps, localization=1.0, num_chains=32, num_steps=3000, num_burnin=500)
    one = jax.tree_util.tree_map(lambda a: a[None], params)
    out = sample_coupled(regression_loss, one, (x, y), jax.random.split(jax.random.key(1), 1),
                         chain_settings(config, nbeta, 1), chain_shape(config, n, 3), data_batched=False)
    return {k: np.asarray(v[0], np.float64) for k, v in out.items()}, eigs, eps, nbeta


def test_each_coupled_chain_has_its_own_stationary_llc(coupled_run):
    out, eigs, eps, nbeta = coupled_run
    assert not out["diverged"].any()
    for name, step in (("llc_coarse", eps), ("llc_fine", eps / 3)):
        chains = out[name]
        se = chains.std(ddof=1) / np.sqrt(len(chains))
        assert chains.mean() == pytest.approx(quadratic_llc(eigs, step, 1.0, nbeta), abs=4 * se), name


def test_the_coupled_difference_is_the_discretisation_bias_with_a_small_error(coupled_run):
    out, eigs, eps, nbeta = coupled_run
    diff = out["llc_coarse"] - out["llc_fine"]
    predicted = quadratic_llc(eigs, eps, 1.0, nbeta) - quadratic_llc(eigs, eps / 3, 1.0, nbeta)
    diff_se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() == pytest.approx(predicted, abs=4 * diff_se)
    assert predicted > 8 * diff_se  # resolved
    # the noise cancels: the paired difference is much less noisy than an independent pair
    single_se = out["llc_fine"].std(ddof=1) / np.sqrt(len(diff))
    assert diff_se < 0.5 * np.sqrt(2) * single_se  # measured about 0.3 here; about 1 without the coupling
    # the batch means of each chain's difference average to its difference
    blocks = out["diff_blocks"]
    assert np.isfinite(blocks).all()
    np.testing.assert_allclose(blocks.mean(axis=1), diff, rtol=0.02, atol=1e-3)


def test_the_coupling_study_draws_both_checks_and_names_its_figure(tmp_path, monkeypatch):
    # run() on stub rows (no SGLD): the dataset, the figure (one point per step size for each check) and the report
    import experiments.step_check_coupling as study

    rows = [dict(step_size=eps, coupled=0.01 * i, coupled_se=0.001, independent=0.02 * i, independent_se=0.01,
                 quadratic=0.01 * i) for i, eps in enumerate(study.STEP_SIZES)]
    monkeypatch.setattr(study, "study", lambda **_: rows)
    ds = study.run(tmp_path, progress=False)
    assert ds["coupled"].values.tolist() == [r["coupled"] for r in rows]
    assert (tmp_path / "step_check_coupling.png").stat().st_size > 0
    assert "Figure: step_check_coupling.png." in (tmp_path / "report.md").read_text()
    ax = study.figure(ds).axes[0]
    assert ax.get_xscale() == "log"
    assert set(ax.get_legend_handles_labels()[1]) == {"coupled (one Brownian path)", "independent chains",
                                                      "quadratic prediction"}
