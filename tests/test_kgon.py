"""Chen et al. classes: refined on n = 1e5 samples each is a minimum with the flat directions of its
class, and the LLC estimate through `calibrate` (the experiment's quick protocol) is within 5% of its lambda."""

import numpy as np
import pytest

from experiments.kgon_llc import (
    BIAS_STUDY,
    CASES,
    N_SAMPLES,
    QUICK,
    TOLERANCE,
    bias_dataset,
    bias_table,
    markdown_table,
    quadratic_llc,
    run_case,
    to_dataset,
)
from slt_superposition.theory import class_critical_point, critical_point_class


def test_bias_study_table_on_stub_rows():
    # the table writer of `--bias-study`, on made-up estimates (no SGLD): one line per BIAS_STUDY row, in order
    rows = [dict(step_size=eps, batch_size=batch or N_SAMPLES, num_steps=steps, localization=gamma, llc_mean=8.5 + i,
                 llc_se=0.1, llc_quadratic=8.6, llc_quadratic_minibatch=8.6 + 0.5 * i, n_diverged=0, seconds=1.0)
            for i, (eps, batch, steps, gamma) in enumerate(BIAS_STUDY)]
    ds = bias_dataset(rows, {"stub": True})
    assert all("long_name" in ds[v].attrs and "units" in ds[v].attrs for v in ds.data_vars)
    lines = bias_table(ds).splitlines()
    assert len(lines) == 2 + len(BIAS_STUDY)
    assert lines[2] == "| 3.16e-05 | 500 | 8000 | 1 | 8.50 +- 0.10 | 8.60 | 8.60 |"
    assert lines[6].startswith(f"| 1e-05 | full ({N_SAMPLES}) | 10000 | 1 | 12.50 +- 0.10 |")
    # the report's finding: the range of the estimates and how many lie within 2 SE of the prediction
    from experiments.kgon_llc import bias_finding

    text = bias_finding(ds)
    assert f"{len(BIAS_STUDY)} settings" in text and "from 8.50 (eps 3.16e-05, batch 500)" in text
    assert f"1 of {len(BIAS_STUDY)} lie within 2 SE" in text  # only 8.5 is within 0.2 of 8.6
    # against the minibatch prediction 8.6 + 0.5 i (estimates 8.5 + i): only row 0 is within 0.2
    assert f"1 of {len(BIAS_STUDY)} within 2 SE of the same prediction with their minibatch" in text


def test_quadratic_llc_limits():
    # 17 curved directions and the flat rotation: 17/2 as eps, gamma -> 0; eps raises it, gamma lowers it
    h = np.r_[np.linspace(0.03, 1.4, 17), 0.0]
    assert quadratic_llc(h, step_size=0.0, localization=0.0) == pytest.approx(8.5)
    assert quadratic_llc(h, step_size=1e-5, localization=0.0) > 8.5 > quadratic_llc(h, step_size=0.0, localization=100)


def test_cases_are_the_three_classes_with_a_theory():
    classes = [critical_point_class(*class_critical_point(k, p)) for k, p in CASES]
    assert [(c.label, c.llc) for c in classes] == [("6-gon", 8.5), ("5-gon", 7.0), ("5-gon+1", 8.5)]


def test_result_table_on_stub_rows():
    from experiments.kgon_llc import VARIABLES

    rows = [dict({name: 1.0 for name in VARIABLES}, case=f"c{i}", verdict="v", llc_theory=8.5, llc_mean=8.5 * (1 + e),
                 rel_error=e, within_tolerance=abs(e) <= TOLERANCE) for i, e in enumerate([0.01, -0.2])]
    ds = to_dataset(rows, {"stub": True})
    assert list(ds["within_tolerance"].values) == [True, False]
    lines = markdown_table(ds).splitlines()
    assert len(lines) == 4 and "| +1.0% |" in lines[2] and "| -20.0% |" in lines[3]


@pytest.mark.slow
@pytest.mark.xdist_group("kgon")  # one worker runs the three: they share their compiled chain programs
@pytest.mark.parametrize("k,positive,curved", [(6, 0, 17), (5, 0, 14), (5, 1, 17)])
def test_class_llc_through_calibrate_within_five_percent(k, positive, curved):
    row = run_case(k, positive, **QUICK)
    print({key: row[key] for key in ("llc_mean", "llc_se", "step_size", "num_steps", "batch_size", "verdict")})
    assert row["grad_norm"] < 1e-4  # the refined point is critical on the empirical loss
    assert row["empirical_loss"] == pytest.approx(row["population_loss"], abs=2e-3)
    # the Hessian of L_n at the refined point has the class's curved directions and no descent direction
    assert row["n_positive_eigen"] == curved == row["curved_directions"] and row["n_negative_eigen"] == 0
    assert row["n_diverged"] == 0
    if np.isfinite(row["llc_dead_frozen"]):
        # the 5-gon: its dead feature's three parameters are flat only inside |W_5|^2 < -b_5, and at
        # localization 1 chains leave that region (7.52 +- 0.34 when last run, docs/experiments/kgon_llc.md).
        # With them held fixed the 14 curved directions must give lambda within 5%, and the full
        # estimate must not be below that: the excess is the dead feature's, not the estimator's.
        assert abs(row["llc_dead_frozen"] - row["llc_theory"]) <= TOLERANCE * row["llc_theory"], row
        assert row["llc_mean"] >= row["llc_dead_frozen"] - 2 * row["llc_se"], row
    else:
        assert abs(row["llc_mean"] - row["llc_theory"]) <= TOLERANCE * row["llc_theory"], row


def test_figure_marks_every_class_and_the_frozen_estimate_only_where_there_is_one():
    from experiments.kgon_llc import VARIABLES, figure

    rows = [dict({name: 1.0 for name in VARIABLES}, case=case, verdict="v", llc_theory=theory, llc_mean=theory + 0.1,
                 llc_dead_frozen=frozen, llc_dead_frozen_se=0.1)
            for case, theory, frozen in [("6-gon", 8.5, np.nan), ("5-gon", 7.0, 7.1), ("5-gon+1", 8.5, np.nan)]]
    fig = figure(to_dataset(rows, {"stub": True}))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["6-gon", "5-gon", "5-gon+1"]
    labels = ax.get_legend_handles_labels()[1]
    assert "dead features held fixed" in labels and len(labels) == 4
    # the class lambdas are drawn at their values
    lambdas = next(c for c in ax.collections if c.get_label() == "$\\lambda$ of the class")
    assert lambdas.get_offsets()[:, 1].tolist() == [8.5, 7.0, 8.5]
    rows = [dict(r, llc_dead_frozen=np.nan) for r in rows]
    assert "dead features held fixed" not in figure(to_dataset(rows, {})).axes[0].get_legend_handles_labels()[1]


def test_run_on_stub_classes_writes_the_figure_and_names_it(tmp_path, monkeypatch):
    import experiments.kgon_llc as kgon
    from experiments.kgon_llc import VARIABLES

    def run_case(k, positive, **_):
        label = kgon.case_label(k, positive)
        return dict({name: 1.0 for name in VARIABLES}, case=label, verdict="v", llc_dead_frozen=np.nan)

    monkeypatch.setattr(kgon, "run_case", run_case)
    ds = kgon.run(tmp_path, size="quick", progress=False)
    assert ds.sizes["case"] == len(CASES)
    assert (tmp_path / "kgon_llc.png").stat().st_size > 0
    assert "Figure: kgon_llc.png." in (tmp_path / "report.md").read_text()


def test_bias_figure_has_one_line_per_setting():
    from experiments.kgon_llc import bias_figure

    rows = [dict(step_size=eps, batch_size=batch or N_SAMPLES, num_steps=steps, localization=gamma, llc_mean=8.5 + i,
                 llc_se=0.1, llc_quadratic=8.6, llc_quadratic_minibatch=8.7, n_diverged=0, seconds=1.0)
            for i, (eps, batch, steps, gamma) in enumerate(BIAS_STUDY)]
    ax = bias_figure(bias_dataset(rows, {})).axes[0]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert len(ticks) == len(BIAS_STUDY)
    assert ticks[0] == "$\\epsilon$ 3.16e-05, batch 500, 8000 steps, $\\gamma$ 1"
    assert ticks[4] == "$\\epsilon$ 1e-05, full batch, 10000 steps, $\\gamma$ 1"
    assert "$\\lambda$ = 8.5" in ax.get_legend_handles_labels()[1]
