"""The SGLD kernel and the MALA acceptance proxy, checked against their formulas."""

import jax
import jax.numpy as jnp
import numpy as np

from slt_superposition.diagnostics import mala_acceptance_probability, mala_log_acceptance
from slt_superposition.sgld import sgld, tree_normal


def quadratic(params, batch):
    return jnp.mean(jnp.sum((batch - params["w"]) ** 2, axis=-1)) + jnp.sum(params["b"] ** 2)


def test_step_is_the_sgld_update():
    anchor = {"w": jnp.array([0.3, -0.2]), "b": jnp.array(0.5)}
    position = {"w": jnp.array([0.1, 0.4]), "b": jnp.array(-0.1)}
    batch = jnp.array([[1.0, 2.0], [0.0, -1.0], [0.5, 0.5]])
    eps, gamma, nbeta = 1e-3, 7.0, 20.0
    kernel = sgld(quadratic, anchor, step_size=eps, localization=gamma, nbeta=nbeta)
    key = jax.random.key(3)
    state, info = kernel.step(key, kernel.init(position), batch)

    loss, grad = jax.value_and_grad(quadratic)(position, batch)
    noise = tree_normal(key, position)
    for name in ("w", "b"):
        drift = nbeta * grad[name] + gamma * (position[name] - anchor[name])
        expected = position[name] - 0.5 * eps * drift + np.sqrt(eps) * noise[name]
        np.testing.assert_allclose(state.position[name], expected, rtol=1e-6)
        np.testing.assert_allclose(info.drift[name], drift, rtol=1e-6)
        np.testing.assert_array_equal(info.position[name], position[name])
    offset_sq = sum(float(jnp.sum((position[k] - anchor[k]) ** 2)) for k in anchor)
    np.testing.assert_allclose(info.loss, loss, rtol=1e-6)
    np.testing.assert_allclose(info.potential, nbeta * loss + 0.5 * gamma * offset_sq, rtol=1e-6)


def test_step_is_deterministic_and_key_dependent():
    anchor = {"w": jnp.zeros(2), "b": jnp.zeros(())}
    kernel = sgld(quadratic, anchor, step_size=1e-2, localization=1.0, nbeta=5.0)
    batch = jnp.ones((4, 2))
    a, _ = kernel.step(jax.random.key(0), kernel.init(anchor), batch)
    b, _ = kernel.step(jax.random.key(0), kernel.init(anchor), batch)
    c, _ = kernel.step(jax.random.key(1), kernel.init(anchor), batch)
    np.testing.assert_array_equal(a.position["w"], b.position["w"])
    assert not np.allclose(a.position["w"], c.position["w"])


def test_noise_has_variance_step_size():
    """With zero drift (flat loss, no localization) the increment is N(0, eps)."""
    flat = lambda p, batch: 0.0 * jnp.sum(p["w"]) + 0.0 * jnp.mean(batch)
    eps = 0.04
    kernel = sgld(flat, {"w": jnp.zeros(20000)}, step_size=eps, localization=0.0, nbeta=1.0)
    state, _ = kernel.step(jax.random.key(0), kernel.init({"w": jnp.zeros(20000)}), jnp.zeros((1, 1)))
    assert abs(float(jnp.var(state.position["w"])) / eps - 1.0) < 0.05


def test_mala_acceptance_matches_devinterp_formula():
    """devinterp.slt.mala.mala_acceptance_probability, written out for flat vectors."""
    rng = np.random.default_rng(0)
    prev, cur, g_prev, g_cur = (rng.normal(size=5) for _ in range(4))
    u_prev, u_cur, lr = 1.3, 1.1, 0.05
    log_q_cur_to_prev = -np.sum((prev - cur - lr * 0.5 * -g_cur) ** 2) / (2 * lr)
    log_q_prev_to_cur = -np.sum((cur - prev - lr * 0.5 * -g_prev) ** 2) / (2 * lr)
    expected = min(1.0, np.exp(log_q_cur_to_prev - log_q_prev_to_cur + u_prev - u_cur))
    got = mala_acceptance_probability(
        mala_log_acceptance({"w": prev}, {"w": g_prev}, u_prev, {"w": cur}, {"w": g_cur}, u_cur, lr))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_mala_accepts_tiny_steps_on_a_quadratic():
    """For a Gaussian target and eps -> 0, Langevin proposals are (almost) always accepted."""
    loss = lambda p, batch: 0.5 * jnp.sum(p["w"] ** 2) + 0.0 * jnp.mean(batch)
    anchor = {"w": jnp.ones(50)}
    for eps, low, high in ((1e-6, 0.99, 1.0), (1.5, 0.0, 0.9)):
        kernel = sgld(loss, anchor, step_size=eps, localization=0.0, nbeta=1.0)
        state = kernel.init(anchor)
        state, info0 = kernel.step(jax.random.key(0), state, jnp.zeros((1, 1)))
        _, info1 = kernel.step(jax.random.key(1), state, jnp.zeros((1, 1)))
        p = float(mala_acceptance_probability(mala_log_acceptance(
            info0.position, info0.drift, info0.potential, info1.position, info1.drift, info1.potential, eps)))
        assert low <= p <= high, (eps, p)


def test_small_step_drift_is_not_rounded_away():
    """At eps 1e-8 the localization pull on one step is far below half a float32 unit of w = 100:
    subtracted from w on its own it would vanish and the chain would random-walk (variance
    eps x steps = 1e-3); with the increment summed first the chain relaxes to the localized
    Gaussian's variance 1 / gamma = 1e-4 (Euler-Maruyama: 1 / (gamma (1 - eps gamma / 4)))."""
    gamma, eps, steps, chains = 1e4, 1e-8, 100_000, 256
    anchor = jnp.float32(100.0)
    kernel = sgld(lambda w, batch: 0.0 * w, anchor, step_size=eps, localization=gamma, nbeta=1.0)

    def run(key):
        def body(w, k):
            state, _ = kernel.step(k, kernel.init(w), None)
            return state.position, None

        return jax.lax.scan(body, anchor, jax.random.split(key, steps))[0]

    w = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), chains))
    # 256 chains: the sample variance is within about 2 x sqrt(2 / 256) = 18% of the truth
    np.testing.assert_allclose(float(jnp.var(w - anchor)), 1 / (gamma * (1 - eps * gamma / 4)), rtol=0.25)
