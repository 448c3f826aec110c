"""Report markdown: cells that cannot break a table, counts in words, one opening for every report."""

from __future__ import annotations

import pytest

from slt_superposition import markdown


def test_pipes_in_cells_are_escaped():
    text = markdown.table(("measure", "value"), [("||W_i||", "1.0"), ("a\nb", "x|y")])
    lines = text.splitlines()
    assert lines[2] == "| \\|\\|W_i\\|\\| | 1.0 |"
    assert lines[3] == "| a b | x\\|y |"
    # every row splits into the header's number of columns once escaped pipes are ignored
    widths = {len(line.replace("\\|", "").strip("|").split("|")) for line in lines}
    assert widths == {2}


def test_row_width_checked():
    with pytest.raises(ValueError):
        markdown.table(("a", "b"), [(1,)])


def test_counts_and_opening():
    assert markdown.counts({"feature 1 only": 6, "other": 0}) == "feature 1 only 6, other 0"
    top = markdown.opening("demo", "slt-superposition reproduce demo --out x", "It  found\n  this.")
    assert top == "# demo\n\nCommand: `slt-superposition reproduce demo --out x`\n\nIt found this.\n\n"


def test_phase_diagram_report_has_no_dict_reprs(tmp_path):
    import numpy as np
    import xarray as xr

    from experiments.tms_phase_diagram import _report

    p, r = np.array([1.0, 0.1]), np.array([0.5, 2.0])
    ds = xr.Dataset({"phase": (("feature_probability", "importance_decay"), [[0, 1], [2, 2]]),
                     "phase_predicted": (("feature_probability", "importance_decay"), [[0, 1], [2, 0]])},
                    coords={"feature_probability": p, "importance_decay": r},
                    attrs={"config": '{"seeds": [0, 1, 2]}'})
    _report(tmp_path, ds, 0.75, tmp_path / "phase_diagram.png", "quick")
    text = (tmp_path / "report.md").read_text()
    assert "{" not in text and "}" not in text
    assert text.startswith("# tms-phase-diagram\n\nCommand: `slt-superposition reproduce tms-phase-diagram --quick")
    assert "agrees with the phase of lowest analytic loss at 75.0% of the points" in text
    assert "| antipodal pair | 2 | 1 |" in text


def test_flagship_headline_counts_from_the_data():
    import numpy as np
    import xarray as xr

    from analysis.compare_plots import headline

    over = np.array([[True, True], [False, True]])
    under = np.array([[True, False], [False, True]])
    ds = xr.Dataset({"activations_overcomplete": (("feature_probability", "seed"), over),
                     "weights_undercomplete": (("feature_probability", "seed"), under, {"long_name": "excess > 2 SE"}),
                     "undercomplete_weights_overcomplete_activations": (("feature_probability", "seed"), over & under),
                     "llc_trusted": (("feature_probability", "seed"), np.array([[True, True], [True, False]]))},
                    attrs={"n_features": 5, "n_hidden": 2})
    text = headline(ds)
    assert text.startswith("Over 4 trained instances (n = 5, m = 2), 3 have overcomplete activations (k > m) and 2 "
                           "have both overcomplete activations and undercomplete weights (excess > 2 SE).")
    assert ("3 of the 4 LLC estimates are trusted (every stored bias check passed and the calibration's chain-length "
            "rule settled)") in text
