"""The localization study's table on stub rows (no SGLD)."""

from __future__ import annotations

import numpy as np
import xarray as xr

from experiments.llc_localization import VARIABLES, table


def test_table_shows_the_frozen_estimate_only_where_there_is_one():
    rows = [dict({name: 1.0 for name in VARIABLES}, localization=g, llc_dead_frozen=f, label=lab)
            for g, f, lab in [(1.0, np.nan, "6-gon"), (100.0, 6.9, "5-gon")]]
    ds = xr.Dataset({name: ("case", np.array([r[name] for r in rows])) for name in VARIABLES} |
                    {"label": ("case", np.array([r["label"] for r in rows]))}, coords={"case": ["a", "b"]})
    lines = table(ds).splitlines()
    assert lines[2] == "| 6-gon | 1 | 1 | 1.00 +- 1.00 | - | 1.00 |"
    assert lines[3] == "| 5-gon | 100 | 1 | 1.00 +- 1.00 | 6.90 +- 1.00 | 1.00 |"
