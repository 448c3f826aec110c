"""The preconditioned Langevin chain of experiments/tms_preconditioned.py samples the right distribution.

On L(w) = (1/2) sum_j h_j w_j^2 with curvatures spanning four decades, the chain preconditioned by
(nbeta H + gamma)^-1 has curvature 1 on every direction of its coordinates u, so at step size eps its
Euler stationary variance is 1 / (1 - eps / 4) times the exact one on each (an AR(1) with
coefficient 1 - eps / 2), and
E[nbeta (L(w) - L(w*))] = sum_j nbeta h_j / (2 a_j) / (1 - eps / 4), a_j = nbeta h_j + gamma.
At eps = 1 a preconditioner off by a^0.05 (curvature a^0.1, up to 2, on a direction) reads 30% high.
Plain SGLD at the same step size is unstable on the stiffest direction (eps a > 4). With a Metropolis
accept/reject (MALA) the same preconditioned chain reads the exact expectation, without the 4/3."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments.tms_preconditioned import coordinates, run_chains, second_half_estimates

H = np.array([1e-2, 1.0, 10.0], dtype=np.float32)  # nbeta h + gamma from 2 to 1001
NBETA, GAMMA, EPS, STEPS = 100.0, 1.0, 1.0, 40_000  # eps 1: a 1 / (1 - 1/4) = 4/3 variance factor


def loss_fn(params, data):
    return 0.5 * jnp.sum(data["h"] * jnp.square(params["w"]))


def _chains(plain: bool, metropolis: bool = False):
    w_star, unravel = ravel_pytree({"w": jnp.zeros(3, jnp.float32)})
    data = {"h": jnp.asarray(H)}
    S, h = coordinates(loss_fn, w_star, unravel, data, NBETA, GAMMA, plain)
    np.testing.assert_allclose(np.sort(np.asarray(h)), H, rtol=1e-5)
    return run_chains(loss_fn, w_star, unravel, data, S, nbeta=NBETA, gamma=GAMMA, step_size=EPS, steps=STEPS,
                      key=jax.random.key(0), metropolis=metropolis)


def test_preconditioned_chain_reads_the_quadratic_expectation():
    a = NBETA * H + GAMMA
    expected = float(np.sum(NBETA * H / (2 * a)) / (1 - EPS / 4))
    samples, final, rate = _chains(plain=False)
    assert np.all(rate == 1.0)
    assert np.all(np.isfinite(samples)) and final.shape == (4, 3)
    (mean, se), = second_half_estimates(samples, [STEPS])
    # second half of 4 chains x 40,000 steps, relaxation time about 2 steps: se well under 1% of the value
    assert se < 0.02 * expected
    assert abs(mean - expected) < max(3 * se, 0.01 * expected), (mean, se, expected)


def test_plain_chain_at_that_step_size_diverges():
    samples, _, _ = _chains(plain=True)
    assert EPS * (NBETA * H.max() + GAMMA) > 4
    assert not np.all(np.isfinite(samples))


def test_metropolis_adjusted_chain_reads_the_exact_expectation():
    a = NBETA * H + GAMMA
    exact = float(np.sum(NBETA * H / (2 * a)))
    samples, _, rate = _chains(plain=False, metropolis=True)
    assert np.all(np.isfinite(samples)) and np.all((0.5 < rate) & (rate < 1.0)), rate
    (mean, se), = second_half_estimates(samples, [STEPS])
    assert se < 0.02 * exact
    # the Langevin chain's 4/3 would be 33% high: far outside this
    assert abs(mean - exact) < max(3 * se, 0.01 * exact), (mean, se, exact)
