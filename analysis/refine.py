"""Refine trained weights to a critical point of the empirical loss L_n, every instance at once.

The LLC is a property of a local minimum w* of L_n (the loss on the n samples the estimate
uses). A trained network is only near one: optimisers stop where the minibatch gradient noise
balances the step, and a TMS trained on fresh samples every step is near a minimum of the
population loss, not of L_n. At nbeta = n / log n a loss gap of 1 / nbeta moves the estimate by
1, so the estimate reads low (even negative) where chains find lower loss than w*. Minimising
L_n (full batch) from the trained weights removes that gap; the gradient norm before and
after is recorded so that a point still far from critical can be flagged.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

PyTree = Any
REFINE_STEPS = 300  # L-BFGS iterations (each with a zoom line search)


def _grad_norm(grad: PyTree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(grad)))


def refine(loss_fn: Callable, params: PyTree, data: PyTree, *, steps: int = REFINE_STEPS
           ) -> tuple[PyTree, jax.Array, jax.Array]:
    """Minimise `loss_fn(params, data)` (one instance, full batch) by L-BFGS (`optax.lbfgs`)
    from `params`. Plain gradient descent stalls along the small curvatures of a TMS (a ReLU
    network trained to the population optimum): at a learning rate of 0.05 it took 1500 steps
    to lower ||grad L_n|| 6-9x, and larger rates overshoot at dense data; L-BFGS reaches
    1e-7 in a few hundred iterations (tests/test_refine.py).

    Returns (refined params, ||grad L_n|| before, ||grad L_n|| after). If the result has a
    higher loss than the input (not expected), the input params are returned.
    """
    objective = lambda p: loss_fn(p, data)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def body(carry, _):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        return (optax.apply_updates(p, updates), state), None

    (refined, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    better = objective(refined) <= objective(params)
    out = jax.tree_util.tree_map(lambda new, old: jnp.where(better, new, old), refined, params)
    grad = jax.grad(objective)
    return out, _grad_norm(grad(params)), _grad_norm(grad(out))


@functools.lru_cache(maxsize=16)
def _batched_program(loss_fn: Callable, steps: int, one_at_a_time: bool) -> Callable:
    """One jitted program per (loss_fn, steps, layout): `jax.jit`'s cache then compiles it once
    per input shape, so repeated calls with the same loss function and shapes share one
    compilation (a new lambda per call compiled every time). Compiled with XLA's default
    options, as `refine` alone is: L-BFGS amplifies rounding differences, and
    tests/test_refine.py compares the two.

    `one_at_a_time`: instances in sequence (`jax.lax.map`) instead of side by side
    (`jax.vmap`). Under `vmap` the line search's while loop runs every instance for as many
    trial steps as the slowest one needs, and the batched arithmetic rounds differently, which
    L-BFGS amplifies: an instance's result then depends on which other instances share its
    batch. In sequence each instance runs exactly as `refine` alone does
    (`benchmarks/refine_batched.py` times both)."""
    one = lambda p, d: refine(loss_fn, p, d, steps=steps)
    if one_at_a_time:
        return jax.jit(lambda params, data: jax.lax.map(lambda pd: one(*pd), (params, data)))
    return jax.jit(jax.vmap(one))


def refine_batched(loss_fn: Callable, params: PyTree, data: PyTree, *, steps: int = REFINE_STEPS,
                   one_at_a_time: bool | None = None) -> tuple[PyTree, jax.Array, jax.Array]:
    """`refine` for every instance in one program: params and data leaves `(instance, ...)`.
    Returns (params, grad norm before `(instance,)`, grad norm after `(instance,)`).

    `one_at_a_time` (default: on a CPU) runs the instances in sequence inside the program, each
    bit for bit as `refine` would; otherwise they run side by side (`jax.vmap`), which a GPU
    may prefer, at the cost described in `_batched_program`."""
    if one_at_a_time is None:
        one_at_a_time = jax.default_backend() == "cpu"
    return _batched_program(loss_fn, int(steps), bool(one_at_a_time))(params, data)
