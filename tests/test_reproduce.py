"""`slt-superposition reproduce`: the registry, --list, clear errors, one real quick run."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from slt_superposition.cli import main
from slt_superposition.errors import InputError
from slt_superposition.experiments import EXPERIMENTS, load_runner

NAMES = ("tms-pentagon", "tms-phase-diagram", "tms-sticky-dimensions", "dln-validation", "kgon-llc", "tms-llc-vs-n",
         "normal-crossing", "weights-vs-activations", "sae-progressive-codes", "meta-sae", "per-feature-basis")


def test_list_names_every_experiment(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out
    assert set(EXPERIMENTS) == set(NAMES)


def test_unknown_name_is_a_clean_error(capsys, tmp_path):
    assert main(["reproduce", "no-such-thing", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown experiment 'no-such-thing'")
    assert not (tmp_path / "x").exists()


def test_missing_module_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "experiments.tms_pentagon", None)  # import fails as if absent
    with pytest.raises((InputError, ImportError)):
        load_runner("tms-pentagon")


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_module_has_run(name):
    assert callable(load_runner(name))


def test_phase_diagram_analytic_phases():
    from experiments.tms_phase_diagram import analytic_phase

    # dense data, feature 2 more important -> keep feature 2; sparse, equal importance -> antipodal
    assert analytic_phase(1.0, 3.0) == 1 and analytic_phase(1.0, 0.3) == 0
    assert analytic_phase(0.01, 1.0) == 2
    # boundary between "feature 1 only" and antipodal at r (s/3 - s^2/4) = (1 + r) s^2 / 6
    s = 0.5
    r_star = (s**2 / 6) / (s / 3 - s**2 / 4 - s**2 / 6)
    assert analytic_phase(s, r_star * 0.99) == 0 and analytic_phase(s, r_star * 1.01) == 2


@pytest.mark.slow
def test_pentagon_quick_run_writes_dataset_figure_and_report(tmp_path):
    out = tmp_path / "pentagon"
    assert main(["reproduce", "tms-pentagon", "--quick", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert f"slt-superposition reproduce tms-pentagon --quick --out {out}" in report
    assert (out / "pentagon.png").stat().st_size > 0
    from slt_superposition.io import open_result

    ds = open_result(out / "pentagon.nc", kind="train")
    np.testing.assert_allclose(ds["D_i"].values, 0.4, atol=0.02)
    np.testing.assert_allclose(ds["neighbour_angle"].values, 72.0, atol=3.0)


def _stub_row(variables, **extra):
    return {name: 1.0 for name in variables} | extra


@pytest.mark.parametrize("name", ["dln-validation", "kgon-llc"])
def test_report_names_the_reproduce_command(name, tmp_path, monkeypatch):
    """Run through `reproduce`, report.md names the `reproduce` command, not the test runner's argv."""
    import experiments.dln_validation as dln
    import experiments.kgon_llc as kgon

    if name == "dln-validation":
        monkeypatch.setattr(dln, "run_case", lambda widths, rank, kind, **_: _stub_row(
            dln.VARIABLES, case=dln.case_name(widths, rank, kind), widths="-".join(map(str, widths)), kind=kind))
    else:
        monkeypatch.setattr(kgon, "run_case", lambda k, spare, **_: _stub_row(
            kgon.VARIABLES, case=f"{k}-gon", llc_by_step=np.ones(2), llc_se_by_step=np.ones(2),
            step_sizes=np.array([1e-5, 3e-6])))
    out = tmp_path / name
    assert main(["reproduce", name, "--quick", "--out", str(out)]) == 0
    assert f"slt-superposition reproduce {name} --quick --out {out}" in (out / "report.md").read_text()
