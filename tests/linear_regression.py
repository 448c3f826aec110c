"""A small linear regression shared by the sampler tests: y = x w + noise, n = 400, d = 3,
with w* the least-squares fit (a regular minimum: the LLC is d / 2 as n grows)."""

import jax
import jax.numpy as jnp


def regression_loss(params, batch):
    """Half the mean squared residual; params {"w": (3,)}, batch (x: (n, 3), y: (n,))."""
    x, y = batch
    return 0.5 * jnp.mean((y - x @ params["w"]) ** 2)


def regression_problem(n: int = 400, seed: int = 0):
    """(params at the least-squares fit, (x, y)) for `regression_loss`."""
    kx, ky, kw = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, 3))
    y = x @ jax.random.normal(kw, (3,)) + 0.5 * jax.random.normal(ky, (n,))
    return {"w": jnp.linalg.lstsq(x, y)[0]}, (x, y)
