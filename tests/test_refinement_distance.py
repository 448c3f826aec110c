"""experiments.refinement_distance: how far refinement moves trained weights, and whether gradient
descent on L_n ends where L-BFGS does."""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments.refinement_distance import TINY, measure, summary, table


def test_rows_measure_the_move_the_loss_gained_and_where_gradient_descent_ends():
    settings = dataclasses.replace(TINY, gd_steps=20_000)
    rows = measure(5, 2, settings, "constant")
    assert [(r["p"], r["seed"], r["n"]) for r in rows] == [(1.0, 0, 512), (0.158, 0, 512)]
    for r in rows:
        assert r["move"] > 0 and r["gained"] >= 0 and r["grad"] > 0  # refinement never raises L_n
    # plain gradient descent from the trained weights ends where L-BFGS does (within 5% of ||w||)
    assert all(r["gd_apart"] < 0.05 for r in rows), [r["gd_apart"] for r in rows]
    assert all(r["gd_grad"] < r["grad"] and abs(r["gd_above"]) < r["gained"] for r in rows)
    assert "| n5_m2 | constant | 512 | 0.158 | 0 |" in table(rows)
    assert "n5_m2 constant p=1      median move n=512:" in summary(rows)
    assert np.isfinite([r["move"] for r in rows]).all()
