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
    assert lines[2] == "| 6-gon | 1 | 1 | 1 | 1.00 +- 1.00 | - | 1.00 | - |"
    assert lines[3] == "| 5-gon | 100 | 1 | 1 | 1.00 +- 1.00 | 6.90 +- 1.00 | 1.00 | 25.0% +- 1.0% |"


def test_run_only_one_class_then_the_rest(tmp_path, monkeypatch):
    """run() on stub classes: --only computes one class's rows, a rerun without it adds the other's."""
    import experiments.llc_localization as loc
    from experiments.kgon_llc import case_label

    calls = []

    def run_class(k, positive, **_):
        calls.append(case_label(k, positive))
        return [dict({name: 1.0 for name in VARIABLES}, case=f"{calls[-1]} gamma={g:g}", label=calls[-1],
                     localization=g, llc_dead_frozen=np.nan, share_outside_flat=np.nan) for g in loc.GAMMAS]

    def run_trained(model, p, **_):
        calls.append(loc.trained_label(model, p))
        return [dict({name: 1.0 for name in VARIABLES}, case=f"{calls[-1]} gamma={g:g}", label=calls[-1],
                     localization=g, llc_theory=np.nan, llc_dead_frozen=np.nan, share_outside_flat=np.nan)
                for g in loc.GAMMAS]

    monkeypatch.setattr(loc, "run_class", run_class)
    monkeypatch.setattr(loc, "run_trained", run_trained)
    names = [case_label(*c) for c in loc.CASES]
    trained = [loc.trained_label(*c) for c in loc.QUICK_TRAINED]
    part = loc.run(tmp_path, size="quick", progress=False, only=[names[1]])
    assert calls == [names[1]] and part.sizes["case"] == len(loc.GAMMAS)
    assert f"--only {names[1]} --out {tmp_path}" in (tmp_path / "report.md").read_text()
    whole = loc.run(tmp_path, size="quick", progress=False)
    assert calls == [names[1], names[0], *trained]
    assert list(dict.fromkeys(whole["label"].values.tolist())) == names + trained  # in the order of the cases
    assert "trained, symmetry bound 1" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "llc_localization.png").stat().st_size > 0  # the figure of every case, named in the report
    assert "Figure: llc_localization.png." in (tmp_path / "report.md").read_text()


def test_frozen_features_hold_the_masked_columns_and_leave_the_loss_and_the_free_gradient_alone():
    import jax
    import jax.numpy as jnp

    from experiments.llc_localization import dead_columns, frozen_features

    rng = np.random.default_rng(0)
    W = rng.normal(size=(2, 5)).astype(np.float32)
    W[:, [1, 3]] = 0.0
    b = np.array([0.1, -0.2, 0.3, 0.0, -0.1], np.float32)
    params = {"W": jnp.asarray(W), "b": jnp.asarray(b)}
    mask = dead_columns(params)
    assert mask.tolist() == [False, True, False, True, False]  # zero columns with b <= 0; column 4 is live
    x = jnp.asarray(rng.uniform(size=(64, 5)), jnp.float32)
    loss_fn = lambda p, x: jnp.mean((x - jax.nn.relu(x @ p["W"].T @ p["W"] + p["b"])) ** 2)
    loss, free = frozen_features(loss_fn, params, mask)
    assert free["W"].shape == (2, 3) and free["b"].shape == (3,)
    np.testing.assert_array_equal(np.asarray(loss(free, x)), np.asarray(loss_fn(params, x)))
    g_full, g_free = jax.grad(loss_fn)(params, x), jax.grad(loss)(free, x)
    np.testing.assert_allclose(np.asarray(g_free["W"]), np.asarray(g_full["W"])[:, ~mask], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_free["b"]), np.asarray(g_full["b"])[~mask], rtol=1e-6)
