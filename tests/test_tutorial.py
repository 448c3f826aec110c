"""docs/tutorial.py (a jupytext notebook) runs top to bottom, with the small settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.py"


@pytest.mark.slow
def test_tutorial_runs_as_a_script(tmp_path):
    env = {**os.environ, "SLT_TUTORIAL_SMALL": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(TUTORIAL)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "chose step_size" in out  # the calibration verdict
    assert "||grad L_n|| at the trained weights" in out and "refined: at most" in out  # the LLC at a critical point
    assert "llc_mean" in out and "rhat" in out and "mala" in out  # the diagnostics table
    assert "overcompleteness" in out and "d_eff_fraction" in out  # the comparison
    assert not list(tmp_path.iterdir())  # it writes nothing


def test_tutorial_is_a_percent_notebook():
    text = TUTORIAL.read_text()
    assert text.count("# %% [markdown]") >= 5 and "format_name: percent" in text
    compile(text, str(TUTORIAL), "exec")
