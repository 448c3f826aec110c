"""Refine trained weights to a critical point of the empirical loss L_n, every instance at once.

The LLC is a property of a local minimum w* of L_n (the loss on the n samples the estimate
uses). A trained network is only near one: optimisers stop where the minibatch gradient noise
balances the step, and a TMS trained on fresh samples every step is near a minimum of the
population loss, not of L_n. At nbeta = n / log n a loss gap of 1 / nbeta moves the estimate by
1, so the estimate reads low (even negative) where chains find lower loss than w*. Minimising
L_n (full batch) from the trained weights removes that gap; the gradient norm before and
after is recorded so that a point still far from critical can be flagged, and `relative_move`
says how far the weights went. Usually a few percent; but L_n's downhill flow from the trained
weights can be long (at dense data a shallow valley about ||w|| long, where training with a
constant or a decaying learning rate stops early), and where a feature was half-grown it can
complete another configuration than longer training would: the refined point is then the
critical point the trained weights flow to on L_n, not where training stopped
(experiments/refinement_distance.py; plain gradient descent on L_n ends at the same point on
most instances).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

PyTree = Any
REFINE_STEPS = 300  # at most this many L-BFGS iterations (each with a zoom line search)
REFINE_TOL = 1e-6  # stop once ||grad L_n|| is at most this
FAR_MOVE = 0.1  # a refinement that moved the weights by more than this fraction of their norm is reported


def _grad_norm(grad: PyTree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(grad)))


def refine(loss_fn: Callable, params: PyTree, data: PyTree, *, steps: int = REFINE_STEPS, tol: float = REFINE_TOL
           ) -> tuple[PyTree, jax.Array, jax.Array]:
    """Minimise `loss_fn(params, data)` (one instance, full batch) by L-BFGS (`optax.lbfgs`)
    from `params`, for at most `steps` iterations, stopping once ||grad L_n|| <= `tol`. Plain
    gradient descent stalls along the small curvatures of a TMS (a ReLU network trained to the
    population optimum): at a learning rate of 0.05 it took 1500 steps to lower ||grad L_n||
    6-9x, and larger rates overshoot at dense data; L-BFGS reaches 1e-7 in a few hundred
    iterations (tests/test_refine.py).

    Why 1e-6 is critical enough: a gradient g left at w* tilts the sampled potential, which
    moves the estimate by about nbeta^2 |g|^2 / gamma along a flat direction: 3e-6 at n = 16,384,
    gamma 1; 1e-4 at n = 2^17. On 32 instances of the flagship's default n6_m2 grid (n = 16,384)
    the median instance got there in 29 iterations and the mean in 63 (3 of 32 did not within
    300), against 300 for every instance without the stop.

    Returns (refined params, ||grad L_n|| before, ||grad L_n|| after). If the result has a
    higher loss than the input (not expected), the input params are returned.
    """
    objective = lambda p: loss_fn(p, data)
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def body(carry):
        p, state, i, _ = carry
        value, grad = value_and_grad(p, state=state)
        norm = _grad_norm(grad)
        updates, new_state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        done = norm <= tol  # p is already critical enough: keep it
        keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(done, b, a), new, old)
        return keep(optax.apply_updates(p, updates), p), keep(new_state, state), i + 1, norm

    def unfinished(carry):
        _, _, i, norm = carry
        return (i < steps) & (norm > tol)

    norm_dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))  # the gradient norm's (float64 params too)
    start = (params, opt.init(params), jnp.zeros((), jnp.int32), jnp.asarray(jnp.inf, norm_dtype))
    refined, _, _, _ = jax.lax.while_loop(unfinished, body, start)
    better = objective(refined) <= objective(params)
    out = jax.tree_util.tree_map(lambda new, old: jnp.where(better, new, old), refined, params)
    grad = jax.grad(objective)
    return out, _grad_norm(grad(params)), _grad_norm(grad(out))


@functools.lru_cache(maxsize=16)
def _batched_program(loss_fn: Callable, steps: int, tol: float, one_at_a_time: bool) -> Callable:
    """One jitted program per (loss_fn, steps, tol, layout): `jax.jit`'s cache then compiles it once
    per input shape, so repeated calls with the same loss function and shapes share one
    compilation (a new lambda per call compiled every time). Compiled with XLA's default
    options, as `refine` alone is: L-BFGS amplifies rounding differences, and
    tests/test_refine.py compares the two.

    `one_at_a_time`: instances in sequence (`jax.lax.map`) instead of side by side
    (`jax.vmap`). Under `vmap` the line search's while loop runs every instance for as many
    trial steps as the slowest one needs (and every instance as many iterations as the slowest
    needs to reach `tol`), and the batched arithmetic rounds differently, which
    L-BFGS amplifies: an instance's result then depends on which other instances share its
    batch. In sequence each instance runs exactly as `refine` alone does
    (`benchmarks/refine_batched.py` times both)."""
    one = lambda p, d: refine(loss_fn, p, d, steps=steps, tol=tol)
    if one_at_a_time:
        return jax.jit(lambda params, data: jax.lax.map(lambda pd: one(*pd), (params, data)))
    return jax.jit(jax.vmap(one))


def refine_batched(loss_fn: Callable, params: PyTree, data: PyTree, *, steps: int = REFINE_STEPS,
                   tol: float = REFINE_TOL, one_at_a_time: bool = True) -> tuple[PyTree, jax.Array, jax.Array]:
    """`refine` for every instance in one program: params and data leaves `(instance, ...)`.
    Returns (params, grad norm before `(instance,)`, grad norm after `(instance,)`).

    `one_at_a_time` (default) runs the instances in sequence inside the program, each bit for
    bit as `refine` would, on every backend; `False` runs them side by side (`jax.vmap`), at the
    cost described in `_batched_program`. In sequence was the faster layout on a CPU and on a GPU
    alike (`benchmarks/refine_batched.py`; docs/benchmarks.md)."""
    return _batched_program(loss_fn, int(steps), float(tol), bool(one_at_a_time))(params, data)


def relative_move(before: PyTree, after: PyTree) -> jax.Array:
    """How far refinement moved each instance, relative to where it started:
    ||after - before|| / ||before|| over every parameter. Leaves `(instance, ...)`; returns
    `(instance,)` (the module docstring says how far refinement moves a trained TMS)."""
    sq = lambda tree: sum(jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=1) for x in jax.tree_util.tree_leaves(tree))
    diff = jax.tree_util.tree_map(lambda a, b: b - a, before, after)
    return jnp.sqrt(sq(diff) / sq(before))

