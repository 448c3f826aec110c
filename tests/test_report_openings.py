"""The reports of kgon-llc, tms-critical-points, tms-llc-vs-n and llc-localization open with
their command and one paragraph of what they found, counted from the dataset (stub rows here,
no SGLD; tms-critical-points runs for real: it is exact and takes seconds)."""

from __future__ import annotations

import numpy as np
import xarray as xr


def _opening(text: str) -> tuple[str, str, str]:
    """(title line, command line, finding paragraph) of a report."""
    title, command, finding = text.split("\n\n")[:3]
    return title, command, finding


def test_kgon_finding_counts_classes_within_tolerance():
    from experiments.kgon_llc import TOLERANCE, VARIABLES, finding, to_dataset

    errors = [0.01, -0.2, 0.04]
    rows = [dict({name: 1.0 for name in VARIABLES}, case=f"c{i}", verdict="v", llc_theory=8.5, llc_mean=8.5 * (1 + e),
                 rel_error=e, within_tolerance=abs(e) <= TOLERANCE, converged=i == 0, bias_consistent=True,
                 n_diverged=i) for i, e in enumerate(errors)]
    text = finding(to_dataset(rows, {"stub": True}))
    within = sum(abs(e) <= TOLERANCE for e in errors)
    assert f"{within} of 3 estimates lie within {TOLERANCE:.0%}" in text
    assert "from -20.0% (c1) to +4.0% (c2)" in text
    assert "settled for 1 of 3" in text and "passed for 3 of 3" in text and f"{sum(range(3))} chains diverged" in text
    assert "\n" not in text


def test_tms_critical_points_report_opens_with_command_and_finding(tmp_path):
    from experiments.tms_critical_points import run

    ds = run(tmp_path)
    title, command, finding = _opening((tmp_path / "report.md").read_text())
    assert title.startswith("# Critical-point classes")
    assert command == f"Command: `slt-superposition reproduce tms-critical-points --out {tmp_path}`"
    minima = int(ds["minimum"].sum())
    assert f"{ds.sizes['class']} classes" in finding
    assert f"{minima} are minima and {ds.sizes['class'] - minima} saddles" in finding
    lam = ds["llc"].values
    assert f"runs from {np.nanmin(lam):g}" in finding and f"to {np.nanmax(lam):g}" in finding
    assert (tmp_path / "tms_critical_points.png").stat().st_size > 0  # its figure, named in the report
    assert "Figure: tms_critical_points.png." in (tmp_path / "report.md").read_text()


def _llc_vs_n_stub() -> xr.Dataset:
    from experiments.tms_llc_vs_n import VARIABLES

    dims = ("model", "feature_probability", "n")
    ds = xr.Dataset({name: (dims, np.ones((1, 2, 3))) for name in VARIABLES},
                    coords={"model": ["n6_m2"], "feature_probability": [1.0, 0.1], "n": [2**12, 2**14, 2**16]})
    ds["llc"] = (dims, np.array([[[7.0, 8.0, 8.6], [5.0, np.nan, 6.0]]]))
    ds["llc_se"] = (dims, np.full((1, 2, 3), 0.02))
    ds["n_parameters"] = (dims, np.full((1, 2, 3), 18.0))
    ds["symmetry_bound"] = (dims, np.full((1, 2, 3), 8.5))
    ds["converged"] = (dims, np.array([[[1, 0, 1], [0, 0, 0]]]))
    ds["two_llc_over_d"] = 2 * ds["llc"] / ds["n_parameters"]
    return ds


def test_llc_vs_n_finding_over_every_point():
    from experiments.tms_llc_vs_n import finding

    ds = _llc_vs_n_stub()
    text = finding(ds)
    frac = ds["two_llc_over_d"].values
    assert text.startswith("5 points (1 model(s) x 2 sparsities x n from 2^12 to 2^16)")
    assert f"from {np.nanmin(frac):.3f} to {np.nanmax(frac):.3f}" in text
    assert "1 of 5 estimates exceed the symmetry bound" in text  # only 8.6 > 8.5 + 2 x 0.02
    assert "settled at 2 and its bias check passed at 5 of them" in text


def test_localization_finding_per_class():
    from experiments.llc_localization import VARIABLES, finding

    gammas = [1.0, 100.0, 1.0, 100.0]
    labels = ["6-gon", "6-gon", "5-gon", "5-gon"]
    means = [8.4, 6.0, 7.1, 5.5]
    quad = [8.45, 7.0, 7.0, 5.5]
    ds = xr.Dataset({name: ("case", np.ones(4)) for name in VARIABLES} | {"label": ("case", np.array(labels))},
                    coords={"case": list("abcd")})
    ds["localization"], ds["llc_mean"], ds["llc_quadratic"] = ("case", gammas), ("case", means), ("case", quad)
    ds["llc_se"] = ("case", np.full(4, 0.1))
    ds["llc_theory"] = ("case", [8.5, 8.5, 7.0, 7.0])
    text = finding(ds)
    assert "gamma = 1, 100 with the same key" in text
    assert "6-gon (lambda 8.5): 8.40 +- 0.10 at gamma 1, 6.00 +- 0.10 at gamma 100" in text
    assert "5-gon (lambda 7): 7.10 +- 0.10 at gamma 1, 5.50 +- 0.10 at gamma 100" in text
    near = sum(abs(m - q) <= 0.2 for m, q in zip(means, quad))
    assert f"{near} of 4 estimates lie within 2 SE of the quadratic prediction" in text
    # the share of steps outside the dead feature's flat region, only for the class that has one
    ds["share_outside_flat"] = ("case", [np.nan, np.nan, 0.4, 0.02])
    text = finding(ds)
    assert text.endswith("(outside its flat region): 5-gon: 40% at gamma 1, 2% at gamma 100.")

