"""R-hat (`masked_rhat`) and the effective sample size, written in numpy (`diagnostics`), give blackjax's numbers:
on independent, strongly autocorrelated, anticorrelated, odd-length, two-chain, one-chain, frozen,
offset and NaN traces, and through `rhat_and_ess` with some chains left out."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from blackjax import diagnostics

from slt_superposition.diagnostics import effective_sample_size, masked_rhat, rhat_and_ess

# blackjax's functions compiled (one program per trace shape: faster than their op-by-op calls)
blackjax_ess = jax.jit(diagnostics.effective_sample_size, static_argnames=("chain_axis", "sample_axis"))
blackjax_rhat = jax.jit(diagnostics.potential_scale_reduction, static_argnames=("chain_axis", "sample_axis"))


def potential_scale_reduction(trace: np.ndarray) -> np.ndarray:
    """`masked_rhat` over every draw and chain of `trace (..., chain, draw)`, `(...)`."""
    flat = trace.reshape((-1,) + trace.shape[-2:])
    rhat = masked_rhat(flat, np.ones((len(flat), flat.shape[-1]), bool), np.ones(flat.shape[:2], bool))
    return rhat.reshape(trace.shape[:-2])[()]


def _ar1(rng, chains: int, draws: int, rho: float, offsets=None) -> np.ndarray:
    """`(chain, draw)` float32: an AR(1) process with coefficient `rho` per chain, plus each chain's offset."""
    x = np.zeros((chains, draws))
    noise = rng.standard_normal((chains, draws))
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    return (x + (0.0 if offsets is None else np.asarray(offsets)[:, None])).astype(np.float32)


def _cases():
    rng = np.random.default_rng(0)
    yield "independent", _ar1(rng, 4, 200, 0.0)
    yield "autocorrelated", _ar1(rng, 4, 200, 0.9)
    yield "every pair positive", _ar1(rng, 4, 40, 0.995)  # the truncation never triggers
    yield "anticorrelated", _ar1(rng, 4, 200, -0.7)
    yield "odd length", _ar1(rng, 3, 51, 0.5)
    yield "four draws", _ar1(rng, 2, 4, 0.3)
    yield "two chains", _ar1(rng, 2, 100, 0.8)
    yield "offset chains", _ar1(rng, 4, 100, 0.5, offsets=[0.0, 0.0, 3.0, 3.0])
    yield "one chain", _ar1(rng, 1, 100, 0.6)
    yield "frozen", np.full((4, 20), 2.5, np.float32)
    yield "frozen apart", np.repeat(np.arange(4, dtype=np.float32)[:, None], 20, axis=1)


@pytest.mark.parametrize("name, trace", list(_cases()), ids=[name for name, _ in _cases()])
def test_the_same_numbers_as_blackjax(name, trace):
    ess = effective_sample_size(trace)
    np.testing.assert_allclose(ess, float(blackjax_ess(trace, chain_axis=0, sample_axis=1)), rtol=2e-4, atol=1e-6)
    if trace.shape[0] >= 2 and np.ptp(trace, axis=1).any():
        np.testing.assert_allclose(potential_scale_reduction(trace),
                                   float(blackjax_rhat(trace, chain_axis=0, sample_axis=1)), rtol=1e-5)
    if name == "offset chains":
        assert potential_scale_reduction(trace) > 1.5  # the chains disagree
    if name.startswith("frozen"):
        assert ess == 0.0


def test_leading_axes_are_instances_and_a_nan_stays_in_its_instance():
    cases = [trace for name, trace in _cases() if trace.shape == (4, 200)]
    stacked = np.stack(cases)  # (instance, chain, draw)
    stacked[1, 2, 7] = np.nan
    ess, rhat = effective_sample_size(stacked), potential_scale_reduction(stacked)
    assert ess.shape == rhat.shape == (len(cases),)
    assert np.isnan(ess[1]) and np.isfinite(np.delete(ess, 1)).all()
    for i in (0, 2):
        np.testing.assert_allclose(ess[i], effective_sample_size(stacked[i]), rtol=1e-12)
        np.testing.assert_allclose(rhat[i], potential_scale_reduction(stacked[i]), rtol=1e-12)


def test_rhat_and_ess_leave_out_the_unhealthy_chains():
    rng = np.random.default_rng(1)
    trace = np.stack([_ar1(rng, 4, 120, 0.7) for _ in range(3)])  # (instance, chain, draw)
    trace[1, 3] += 50.0  # a chain far away: left out as unhealthy, it must not count
    healthy = np.ones((3, 4), bool)
    healthy[1, 3] = False
    healthy[2, 1:] = False  # one healthy chain: an ESS, no R-hat
    rhat, ess = rhat_and_ess(trace, healthy)
    kept = trace[1, :3]
    np.testing.assert_allclose(rhat[1], float(blackjax_rhat(kept, chain_axis=0, sample_axis=1)), rtol=1e-5)
    np.testing.assert_allclose(ess[1], float(blackjax_ess(kept, chain_axis=0, sample_axis=1)), rtol=2e-4)
    np.testing.assert_allclose(ess[0], float(blackjax_ess(trace[0], chain_axis=0, sample_axis=1)), rtol=2e-4)
    assert np.isnan(rhat[2]) and np.isfinite(ess[2])
    assert rhat[1] < 1.2  # the far chain would have made it huge
    short_rhat, short_ess = rhat_and_ess(trace[..., :3], healthy)  # fewer than 4 draws: nothing
    assert np.isnan(short_rhat).all() and np.isnan(short_ess).all()
