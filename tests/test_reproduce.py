"""`slt-superposition reproduce`: the registry, --list, clear errors, one real quick run."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from slt_superposition.cli import main
from slt_superposition.errors import InputError
from experiments.registry import EXPERIMENTS, load_runner

NAMES = ("tms-pentagon", "tms-phase-diagram", "tms-sticky-dimensions", "tms-critical-points", "dln-validation",
         "kgon-llc", "kgon-bias-study", "llc-localization", "step-check-coupling", "tms-llc-vs-n", "normal-crossing",
         "normal-crossing-study", "weights-vs-activations", "sae-recovery", "sae-progressive-codes", "meta-sae",
         "per-feature-basis")


def test_list_names_every_experiment(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out
    assert set(EXPERIMENTS) == set(NAMES)
    # each line says which sizes and whether --only: the flagship has both sizes, the critical points neither
    lines = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in EXPERIMENTS}
    assert "--quick --full " in lines["weights-vs-activations"] and "--only" not in lines["weights-vs-activations"]
    assert "--quick --only " in lines["kgon-llc"]
    assert "--quick" not in lines["tms-critical-points"] and "--only" not in lines["tms-critical-points"]


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


def _stub_dln(monkeypatch, calls):
    import experiments.dln_validation as dln

    def stub(widths, rank, kind, **_):
        calls.append(dln.case_name(widths, rank, kind))
        return _stub_row(dln.VARIABLES, case=calls[-1], widths="-".join(map(str, widths)), kind=kind)

    monkeypatch.setattr(dln, "run_case", stub)
    return dln


def test_only_runs_named_cases_and_a_rerun_completes_the_rest(tmp_path, monkeypatch):
    """dln-validation's cases are chunks of a resumable sweep: --only computes just those, a run
    without it computes only the rest, and the report names each command."""
    calls = []
    dln = _stub_dln(monkeypatch, calls)
    names = [dln.case_name(*c) for c in dln.all_cases(True)]
    out = tmp_path / "dln"
    assert main(["reproduce", "dln-validation", "--quick", "--only", names[1], "--out", str(out)]) == 0
    assert calls == [names[1]]
    assert f"reproduce dln-validation --quick --only {names[1]} --out {out}" in (out / "report.md").read_text()
    assert main(["reproduce", "dln-validation", "--quick", "--out", str(out)]) == 0
    assert calls == [names[1], names[0]]
    from slt_superposition.io import open_result

    assert list(open_result(out / "dln_validation.nc")["case"].values) == names


def test_bad_case_size_and_option_are_one_line_errors(tmp_path, monkeypatch, capsys):
    _stub_dln(monkeypatch, [])
    for argv, message in (
            (["dln-validation", "--quick", "--only", "no-such-case"], "dln-validation has no case no-such-case"),
            (["tms-pentagon", "--only", "x"], "experiment 'tms-pentagon' has no named cases"),
            (["tms-pentagon", "--full"], "experiment 'tms-pentagon' has no --full (its sizes: quick, default; run it "
                                        "without --full)"),
            (["tms-pentagon", "--quick", "--full"], "--quick and --full exclude each other"),
            (["tms-pentagon", "--set", "steps=3"], "experiment 'tms-pentagon' has no option steps"),
            (["weights-vs-activations", "--set", "config=1"],  # a settings object: Python API only
             "experiment 'weights-vs-activations' has no option config (its options: models, "),
            (["per-feature-basis", "--set", "settings=1"],  # its Settings object: Python API only
             "experiment 'per-feature-basis' has no option settings (its options: none; settings takes a settings "
             "object, from Python only)"),
            (["weights-vs-activations", "--set", "seeds='x'"], "--set seeds: expected int (like 8), got 'x'"),
            (["weights-vs-activations", "--set", "llc_chains=1"], "llc_chains must be at least 2, got 1"),
            (["weights-vs-activations", "--set", "models=((6, 0),)"], "models must be (n_features, n_hidden) pairs"),
            (["weights-vs-activations", "--set", "calibration_step_sizes=()"], "calibration_step_sizes must be positive"),
            (["weights-vs-activations", "--set", "susceptibility_factor=-1"], "susceptibility_factor must be positive"),
            (["tms-pentagon", "--set", "steps"], "--set takes NAME=VALUE")):
        out = tmp_path / "x"
        assert main(["reproduce", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert not out.exists(), argv  # nothing left behind by a refused run


def test_a_settings_object_is_python_only_but_an_option_named_settings_is_not():
    """Refused are the parameters that take a dataclass (per-feature-basis's `settings: Settings`,
    weights-vs-activations' `config`), not every parameter so named: sae-recovery's `settings` is a
    list of setting names, given as `--set settings=NAME,NAME` (docs/experiments/sae_recovery.md)."""
    from experiments.registry import check_request, parse_options

    options = parse_options(["settings=resample,topk", "models=n20_m5", "train_dir=/tmp/sae13/train"])
    assert check_request("sae-recovery", "full", None, options) is load_runner("sae-recovery")
    assert check_request("sae-recovery", "default", None, parse_options(["settings=['resample']"]))
    for name, option in (("per-feature-basis", "settings"), ("weights-vs-activations", "config")):
        with pytest.raises(InputError, match=f"has no option {option} .*{option} takes a settings object, from Python"):
            check_request(name, "default", None, {option: 1})


def test_a_folder_of_another_experiment_is_refused_and_default_sizes_have_their_own_folders(
        tmp_path, monkeypatch, capsys):
    out = tmp_path / "pent"
    out.mkdir()
    (out / "report.md").write_text("# TMS pentagon\n\n    slt-superposition reproduce tms-pentagon --quick --out pent\n")
    assert main(["reproduce", "dln-validation", "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} holds the results of tms-pentagon (its report.md)") and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]  # nothing written, nothing replaced
    # the same experiment at another size: its finished run is not replaced either
    for argv, found in ((["tms-pentagon"], "quick"), (["tms-pentagon", "--quick"], "default")):
        if found == "default":
            (out / "report.md").write_text("# TMS pentagon\n\n    slt-superposition reproduce tms-pentagon --out pent\n")
        assert main(["reproduce", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {out} holds a {found}-size run of tms-pentagon") and err.count("\n") == 1, err
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]
    # without --out: the default, quick and full sizes each their own folder under results/
    from experiments import registry

    folders = []
    monkeypatch.setattr(registry, "reproduce", lambda name, out_dir, **kw: folders.append(str(out_dir)))
    monkeypatch.chdir(tmp_path)
    for flag in ([], ["--quick"], ["--full"]):
        assert main(["reproduce", "weights-vs-activations", *flag]) == 0
    assert folders == ["results/weights-vs-activations", "results/quick/weights-vs-activations",
                       "results/full/weights-vs-activations"]


def test_set_replaces_fields_of_the_flagship_size_and_the_report_names_them(tmp_path, monkeypatch):
    import experiments.weights_vs_activations as wva
    from experiments.registry import changed_fields, command_line, reproduce

    seen = {}

    class Stop(Exception):
        pass

    def sweep(name, config, *args, **kwargs):
        seen.update(config)
        raise Stop

    monkeypatch.setattr(wva, "run_sweep", sweep)
    monkeypatch.setattr(wva, "run_development", lambda *args, **kwargs: None)
    monkeypatch.setattr(wva, "check_sweep_folder", lambda *args, **kwargs: None)
    options = {"calibration_max_steps": 19200, "models": [[6, 2]], "min_feature_probability": 1 / 20}
    with pytest.raises(Stop):
        reproduce("weights-vs-activations", tmp_path, size="quick", progress=False, options=options)
    assert seen["calibration_max_steps"] == 19200 and seen["models"] == ((6, 2),)
    assert seen["min_feature_probability"] == 0.05 and seen["seeds"] == wva.QUICK.seeds  # the rest is the size's
    changed = changed_fields(wva.replace_fields(wva.QUICK, options), wva.QUICK)
    assert changed == {"models": ((6, 2),), "min_feature_probability": 0.05, "calibration_max_steps": 19200}
    assert command_line("weights-vs-activations", "out", "quick", **changed) == (
        "slt-superposition reproduce weights-vs-activations --quick --set 'models=((6, 2),)' "
        "--set min_feature_probability=0.05 --set calibration_max_steps=19200 --out out")


def test_set_passes_an_option_and_the_report_names_it(tmp_path, monkeypatch):
    import experiments.normal_crossing as nc

    seen = []

    def stub(powers, *, estimate_chains, **_):
        seen.append(estimate_chains)
        return dict({name: 0.01 for name in nc.VARIABLES}, case=nc.case_name(powers), powers="1",
                    verdict="stub", lambda_asymptotic=0.5, llc_quadrature=0.3, llc_mean=0.3, rel_error=0.0,
                    quadrature_vs_asymptotic=-0.1, within_tolerance=True, trusted=True)

    monkeypatch.setattr(nc, "run_case", stub)
    out = tmp_path / "nc"
    assert main(["reproduce", "normal-crossing", "--quick", "--set", "estimate_chains=4", "--only", "w01",
                 "--out", str(out)]) == 0
    assert seen == [4]
    assert "reproduce normal-crossing --quick --only w01 --set estimate_chains=4 --out" in (out / "report.md").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_every_run_has_the_one_shape(name):
    import inspect

    parameters = inspect.signature(load_runner(name)).parameters
    assert list(parameters)[0] == "out_dir"
    assert parameters["size"].default == "default" and parameters["size"].kind == inspect.Parameter.KEYWORD_ONLY
    assert parameters["progress"].default is True and parameters["progress"].kind == inspect.Parameter.KEYWORD_ONLY
    assert ("only" in parameters) == EXPERIMENTS[name].cases


def test_every_command_the_docs_give_exists():
    """Each `slt-superposition reproduce NAME` in README.md and docs/ names a registered experiment,
    and each `python -m experiments.M` given as a command to run (an indented line) a module that
    still has a command line of its own."""
    import importlib
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))])
    names = set(re.findall(r"slt-superposition reproduce ([a-z][a-z0-9-]+)", text))
    assert names and names <= set(EXPERIMENTS), sorted(names - set(EXPERIMENTS))
    for module in set(re.findall(r"^    python -m (experiments\.[a-z_]+)", text, flags=re.MULTILINE)):
        assert callable(getattr(importlib.import_module(module), "main", None)), module


def test_sticky_chunk_table_needs_that_experiments_sweep(tmp_path, capsys):
    """`--set chunks_only=True` reads a folder's finished chunks: where the folder holds no sweep, or
    another experiment's, it says so on one line and creates nothing (it made the folder and claimed a
    dataset, or raised a traceback on another sweep's chunks)."""
    missing = tmp_path / "nothere"
    assert main(["reproduce", "tms-sticky-dimensions", "--quick", "--set", "chunks_only=True",
                 "--out", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {missing} holds no tms-sticky-dimensions sweep") and err.count("\n") == 1, err
    assert not missing.exists()
    other = tmp_path / "other"
    (other / "sweep").mkdir(parents=True)
    (other / "sweep" / "manifest.json").write_text('{"name": "tms-phase-diagram", "config": {}, "chunks": []}')
    assert main(["reproduce", "tms-sticky-dimensions", "--quick", "--set", "chunks_only=True",
                 "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert "sweep holds a sweep of tms-phase-diagram, not of tms-sticky-dimensions" in err and err.count("\n") == 1
