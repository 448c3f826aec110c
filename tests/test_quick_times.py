"""benchmarks/quick_times.py: which experiments it times, and that it never reuses a folder."""

from __future__ import annotations

import pytest

from benchmarks.quick_times import main, quick_names
from experiments.registry import EXPERIMENTS, check_size


def test_times_every_experiment_with_a_quick_size_and_only_those():
    names = quick_names()
    assert "weights-vs-activations" in names and "tms-critical-points" not in names
    for name in names:
        check_size(name, "quick")  # reproduce accepts --quick for each
    assert len(names) == sum("quick" in e.sizes for e in EXPERIMENTS.values())


def test_refuses_an_existing_folder_and_a_name_without_quick(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path), "tms-pentagon"])  # exists: an earlier run would be resumed, not timed
    assert stop.value.code == 2 and "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "new"), "tms-critical-points"])
    assert stop.value.code == 2 and "no quick size: tms-critical-points" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
