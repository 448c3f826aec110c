"""The critical-point classes' figure: loss against lambda, and the leading free energy n L + lambda log n
of each class against the lowest-loss one, with where they cross (exact, nothing sampled)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from experiments.tms_critical_points import crossing, figure, leading_free_energy


def test_crossing_is_where_the_leading_free_energies_meet():
    # the 5-gon (L 0.06874, lambda 7) against the 6-gon (0.04819, 8.5): n (L5 - L6) = 1.5 log n
    n = crossing(0.06874, 7.0, 0.04819, 8.5)
    assert 400 < n < 500
    assert leading_free_energy(0.06874, 7.0, n) == pytest.approx(leading_free_energy(0.04819, 8.5, n), abs=1e-6)
    # before it the 5-gon's is lower, after it the 6-gon's
    assert leading_free_energy(0.06874, 7.0, n / 2) < leading_free_energy(0.04819, 8.5, n / 2)
    assert leading_free_energy(0.06874, 7.0, 2 * n) > leading_free_energy(0.04819, 8.5, 2 * n)
    # no crossing where the higher-loss class does not also have the lower lambda
    assert np.isnan(crossing(0.06180, 8.5, 0.04819, 8.5)) and np.isnan(crossing(0.04819, 8.5, 0.06874, 7.0))


def _classes(lam_4gon=np.nan) -> xr.Dataset:
    rows = [("4-gon", 0.11111, lam_4gon), ("5-gon", 0.06874, 7.0), ("5-gon+1", 0.06180, 8.5), ("6-gon", 0.04819, 8.5)]
    return xr.Dataset({"population_loss": ("class", [r[1] for r in rows]), "llc": ("class", [r[2] for r in rows]),
                       "minimum": ("class", [True] * len(rows))}, coords={"class": [r[0] for r in rows]})


def test_figure_compares_each_class_with_a_theory_against_the_lowest_loss_one():
    fig = figure(_classes())
    left, right = fig.axes
    names = {t.get_text() for t in left.texts}
    assert {"4-gon", "5-gon", "5-gon+1", "6-gon"} <= names and "no theory" in names
    labels = right.get_legend_handles_labels()[1]
    assert labels == ["5-gon $-$ 6-gon", "5-gon+1 $-$ 6-gon"]  # the 4-gon has no lambda: not drawn
    assert [t.get_text() for t in right.texts] == [f"n = {crossing(0.06874, 7.0, 0.04819, 8.5):.0f}"]
    # with a lambda for every class, nothing is marked as without a theory
    assert "no theory" not in {t.get_text() for t in figure(_classes(9.0)).axes[0].texts}


def test_the_finding_names_the_crossing():
    from experiments.tms_critical_points import crossings_sentence

    text = crossings_sentence(_classes())
    assert f"the 5-gon's is below the 6-gon's up to n = {crossing(0.06874, 7.0, 0.04819, 8.5):.0f}" in text
    assert "5-gon+1" not in text  # the same lambda as the 6-gon, a higher loss: no crossing
    assert crossings_sentence(_classes().assign(llc=("class", [np.nan] * 4))) == ""
    # and with no lambda anywhere the figure still draws its left panel
    assert len(figure(_classes().assign(llc=("class", [np.nan] * 4))).axes[0].lines) >= 4
