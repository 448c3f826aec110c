"""The localization study's table on stub rows (no SGLD)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from experiments.llc_localization import VARIABLES, table


def test_table_shows_the_frozen_estimate_only_where_there_is_one():
    rows = [dict({name: 1.0 for name in VARIABLES}, localization=g, llc_dead_frozen=f, share_outside_flat=s,
                 share_outside_flat_se=0.01, label=lab)
            for g, f, s, lab in [(1.0, np.nan, np.nan, "6-gon"), (100.0, 6.9, 0.25, "5-gon")]]
    ds = xr.Dataset({name: ("case", np.array([r[name] for r in rows])) for name in VARIABLES} |
                    {"label": ("case", np.array([r["label"] for r in rows]))}, coords={"case": ["a", "b"]})
    lines = table(ds).splitlines()
    assert lines[2] == "| 6-gon | 1 | 1 | 1.00 +- 1.00 | - | 1.00 | - |"
    assert lines[3] == "| 5-gon | 100 | 1 | 1.00 +- 1.00 | 6.90 +- 1.00 | 1.00 | 25.0% +- 1.0% |"


def test_run_only_one_class_then_the_rest(tmp_path, monkeypatch):
    """run() on stub classes: --only computes one class's rows, a rerun without it adds the other's."""
    import experiments.llc_localization as loc
    from experiments.kgon_llc import case_label

    calls = []

    def run_class(k, positive, **_):
        calls.append(case_label(k, positive))
        return [dict({name: 1.0 for name in VARIABLES}, case=f"{calls[-1]} gamma={g:g}", label=calls[-1],
                     localization=g, llc_dead_frozen=np.nan, share_outside_flat=np.nan) for g in loc.GAMMAS]

    monkeypatch.setattr(loc, "run_class", run_class)
    names = [case_label(*c) for c in loc.CASES]
    part = loc.run(tmp_path, size="quick", progress=False, only=[names[1]])
    assert calls == [names[1]] and part.sizes["case"] == len(loc.GAMMAS)
    assert f"--only {names[1]} --out {tmp_path}" in (tmp_path / "report.md").read_text()
    whole = loc.run(tmp_path, size="quick", progress=False)
    assert calls == [names[1], names[0]]
    assert list(dict.fromkeys(whole["label"].values.tolist())) == names  # in the order of CASES
