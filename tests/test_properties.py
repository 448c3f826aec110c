"""Property tests (hypothesis): activation measures, the SGLD kernel, the CLI."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, example, given, settings, strategies as st
from scipy.stats import special_ortho_group

from analysis.measures import ZERO_NORM, feature_dimensionality_array, feature_norms_array
from slt_superposition.cli import main
from slt_superposition.sgld import sgld, tree_normal

FAST = settings(max_examples=40, deadline=None, derandomize=True)  # the same examples on every run (CI)


@st.composite
def weights(draw):
    """W: (m, n) with m in 1..6, n in 1..12, standard normal entries times a scale."""
    m, n = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.floats(1e-2, 1e2))
    return np.random.default_rng(seed).normal(size=(m, n)) * scale


@FAST
@given(weights())
def test_feature_dimensionality_in_unit_interval_and_sum_at_most_m(W):
    D = feature_dimensionality_array(W)
    assert np.all(D >= 0) and np.all(D <= 1 + 1e-12)
    assert D.sum() <= W.shape[0] + 1e-9


@FAST
@given(weights(), st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
@example(np.array([[1.92211462e-05]]), 0, 0.03125)  # scaling takes the column below ZERO_NORM
def test_feature_dimensionality_invariances(W, seed, c):
    rng = np.random.default_rng(seed)
    D = feature_dimensionality_array(W)
    perm = rng.permutation(W.shape[1])
    np.testing.assert_allclose(feature_dimensionality_array(W[:, perm]), D[perm], rtol=1e-9, atol=1e-12)
    Q = special_ortho_group.rvs(W.shape[0], random_state=rng) if W.shape[0] > 1 else np.array([[-1.0]])
    np.testing.assert_allclose(feature_dimensionality_array(Q @ W), D, rtol=1e-9, atol=1e-12)
    # scale invariance holds for the columns live (norm above ZERO_NORM) before and after scaling;
    # a column that scaling takes below ZERO_NORM is dead there (D = 0)
    scaled = feature_dimensionality_array(c * W)
    live_before, live_after = feature_norms_array(W) > ZERO_NORM, feature_norms_array(c * W) > ZERO_NORM
    both = live_before & live_after
    np.testing.assert_allclose(scaled[both], D[both], rtol=1e-9, atol=1e-12)
    assert np.all(scaled[~live_after] == 0)


@FAST
@given(st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_orthonormal_columns_have_D_one_and_sum_m(m, seed):
    Q = special_ortho_group.rvs(m, random_state=seed) if m > 1 else np.array([[1.0]])
    D = feature_dimensionality_array(Q)
    np.testing.assert_allclose(D, 1.0, rtol=1e-12)
    np.testing.assert_allclose(D.sum(), m, rtol=1e-12)


@FAST
@given(st.integers(3, 12), st.floats(0, 2 * np.pi), st.floats(0.1, 10))
def test_regular_polygon_in_the_plane_sums_to_two(k, phase, radius):
    theta = phase + 2 * np.pi * np.arange(k) / k
    W = radius * np.stack([np.cos(theta), np.sin(theta)])
    D = feature_dimensionality_array(W)
    np.testing.assert_allclose(D, 2 / k, rtol=1e-9)  # pentagon 2/5, square 1/2, triangle 2/3
    np.testing.assert_allclose(D.sum(), 2.0, rtol=1e-9)


# ----------------------------------------------------------------------------- SGLD kernel


def _quadratic_problem(seed):
    rng = np.random.default_rng(seed)
    A = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    data = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    loss_fn = lambda p, x: jnp.mean((x @ A @ p["w"] - 1.0) ** 2) + jnp.sum(p["b"] ** 2)
    anchor = {"w": jnp.asarray(rng.normal(size=(3,)), jnp.float32), "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
    return loss_fn, anchor, data


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1), st.floats(1e-4, 1e-1), st.floats(0.1, 100.0))
def test_sgld_without_its_noise_is_gradient_descent(seed, step_size, nbeta):
    """With localization 0, w' + (its own noise removed) = w - (eps/2) nbeta grad L."""
    loss_fn, w0, data = _quadratic_problem(seed)
    kernel = sgld(loss_fn, w0, step_size=step_size, localization=0.0, nbeta=nbeta)
    key = jax.random.key(seed % 1000)
    state, info = kernel.step(key, kernel.init(w0), data)
    noise = tree_normal(key, w0)
    grad = jax.grad(loss_fn)(w0, data)
    for name in w0:
        denoised = state.position[name] - jnp.sqrt(jnp.float32(step_size)) * noise[name]
        gd = w0[name] - 0.5 * step_size * nbeta * grad[name]
        np.testing.assert_allclose(denoised, gd, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(info.loss, loss_fn(w0, data), rtol=1e-6)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1), st.floats(4.0, 10.0))
def test_sgld_infinite_localization_pins_w_at_anchor(seed, log10_gamma):
    """eps * gamma = 1: the chain is an AR(1) around w* with std ~ 1.15/sqrt(gamma)."""
    gamma = 10.0**log10_gamma
    loss_fn, anchor, data = _quadratic_problem(seed)
    start = jax.tree_util.tree_map(lambda a: a + 1.0, anchor)
    kernel = sgld(loss_fn, anchor, step_size=1.0 / gamma, localization=gamma, nbeta=1.0)

    def body(state, key):
        state, _ = kernel.step(key, state, data)
        return state, None

    state, _ = jax.lax.scan(body, kernel.init(start), jax.random.split(jax.random.key(seed % 1000), 60))
    for name in anchor:
        assert float(jnp.max(jnp.abs(state.position[name] - anchor[name]))) < 8.0 / np.sqrt(gamma)


# ----------------------------------------------------------------------------- CLI fuzzing

TOKENS = ["--steps", "-1", "0", "abc", "1.5", "-0.1", "nan", "inf", "--feature-probability", "-p", "--n-features",
          "-n", "--n-hidden", "-m", "--out", "/nonexistent-dir/x/y.nc", "--seeds", "--seed", "x,y", "", "--bogus",
          "--quick", "--list-not", "no-such-experiment", "missing.nc", "--step-size", "--calibrate", "1e999"]


# capsys is read (and so reset) after every example
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["train", "llc", "plot", "reproduce", "nosuchcommand"]), st.lists(st.sampled_from(TOKENS), max_size=8))
def test_fuzzed_cli_arguments_give_clean_errors(capsys, command, args):
    argv = [command, *args]
    if command == "train":  # never let a fuzzed call start a real training run
        argv += ["--steps", "0"]
    code = main(argv)  # an uncaught exception (a traceback) fails the test
    out = capsys.readouterr()
    assert code == 2, (argv, code, out.err[-500:])
    assert "Traceback" not in out.err
    assert out.err.strip().startswith("error:") or "Usage:" in out.err or "Error" in out.err
