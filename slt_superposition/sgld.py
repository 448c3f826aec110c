"""The SGLD kernel used for LLC estimation (Lau et al. 2023), blackjax style.

One step, at position w with minibatch B:

    drift = nbeta * grad L_B(w) + localization * (w - w*)
    w'    = w + (N(0, step_size) - (step_size / 2) * drift)      (the increment summed first)

`w*` (the `anchor`) is the point whose local learning coefficient is estimated. The kernel
is a pair of pure functions over pytrees:

    kernel = sgld(loss_fn, anchor, step_size=..., localization=..., nbeta=...)
    state = kernel.init(position)
    state, info = kernel.step(key, state, minibatch)
    state, info = kernel.step_with_noise(state, minibatch, noise)  # noise ~ N(0, I) given

(`step_with_noise` lets a caller draw many steps' noise in one call, which is cheaper.)

Why not `blackjax.sgld`: blackjax's kernel takes a *log-density gradient estimator* and
returns only the new position. The LLC needs, from the same gradient evaluation, the
minibatch loss at the pre-step position (the sample of L that enters lambda_hat) and, for
the MALA acceptance proxy, the full drift (loss gradient *and* the localization pull) and
the potential U(w) = nbeta L_B(w) + (localization / 2) ||w - w*||^2. Recomputing those
outside blackjax would double the gradient evaluations; the update itself is four lines.

`step_size`, `localization` and `nbeta` may be traced scalars (so a sweep over them does
not recompile). `value_and_grad` may replace `jax.value_and_grad(loss_fn)` by a function that
computes the same pair another way (the chain program passes one rewritten for XLA:CPU,
`slt_superposition.chain.loss_and_gradient`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any


class SGLDState(NamedTuple):
    """The chain's state: only its position (a pytree shaped like the model params)."""

    position: PyTree


class SGLDInfo(NamedTuple):
    """What one step saw at its *pre-step* position w_t (as devinterp records draws).

    loss:      L_B(w_t), the minibatch loss, scalar.
    potential: U(w_t) = nbeta L_B(w_t) + (localization / 2) ||w_t - w*||^2, scalar.
    drift:     grad U(w_t) = nbeta grad L_B(w_t) + localization (w_t - w*), pytree like w.
    position:  w_t itself (the MALA proxy needs both ends of a transition).
    """

    loss: jax.Array
    potential: jax.Array
    drift: PyTree
    position: PyTree


class SGLDKernel(NamedTuple):
    init: Callable[[PyTree], SGLDState]
    step: Callable[[jax.Array, SGLDState, PyTree], tuple[SGLDState, SGLDInfo]]
    step_with_noise: Callable[[SGLDState, PyTree, PyTree], tuple[SGLDState, SGLDInfo]]


def tree_normal(key: jax.Array, tree: PyTree) -> PyTree:
    """Standard normal noise shaped like `tree`, one independent key per leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noise = [jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, noise)


def tree_sq_norm(tree: PyTree) -> jax.Array:
    """Sum of squares of every entry of `tree` (a scalar)."""
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree))


def sgld(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    anchor: PyTree,
    *,
    step_size,
    localization,
    nbeta,
    value_and_grad: Callable[[PyTree, PyTree], tuple[jax.Array, PyTree]] | None = None,
) -> SGLDKernel:
    """SGLD localized at `anchor` (= w*) for `loss_fn(params, minibatch) -> scalar`.

    Returns `SGLDKernel(init, step)`; `step(key, state, minibatch) -> (state, SGLDInfo)`.
    `value_and_grad(params, minibatch) -> (loss, grad)`: defaults to `jax.value_and_grad(loss_fn)`.
    """
    evaluate = potential_and_drift(loss_fn, anchor, localization=localization, nbeta=nbeta,
                                   value_and_grad=value_and_grad)

    def init(position: PyTree) -> SGLDState:
        return SGLDState(position)

    def step(key: jax.Array, state: SGLDState, minibatch: PyTree) -> tuple[SGLDState, SGLDInfo]:
        return step_with_noise(state, minibatch, tree_normal(key, state.position))

    def step_with_noise(state: SGLDState, minibatch: PyTree, noise: PyTree) -> tuple[SGLDState, SGLDInfo]:
        """The same step with the standard normal draw `noise` (shaped like the position) given."""
        w = state.position
        loss, potential, drift = evaluate(w, minibatch)
        return SGLDState(langevin_move(w, drift, noise, step_size)), SGLDInfo(loss, potential, drift, w)

    return SGLDKernel(init, step, step_with_noise)


def potential_and_drift(loss_fn, anchor: PyTree, *, localization, nbeta, value_and_grad=None) -> Callable:
    """`(w, batch) -> (L_B(w), U(w), grad U(w))` with U = nbeta L_B + (localization / 2) ||w - w*||^2,
    from one evaluation of `value_and_grad` (default `jax.value_and_grad(loss_fn)`); the potential
    and drift of both kernels (`sgld`, `slt_superposition.mala`)."""
    value_and_grad = value_and_grad or jax.value_and_grad(loss_fn)

    def evaluate(w: PyTree, batch: PyTree) -> tuple[jax.Array, jax.Array, PyTree]:
        loss, grad = value_and_grad(w, batch)
        offset = jax.tree_util.tree_map(jnp.subtract, w, anchor)
        drift = jax.tree_util.tree_map(lambda g, o: nbeta * g + localization * o, grad, offset)
        return loss, nbeta * loss + 0.5 * localization * tree_sq_norm(offset), drift

    return evaluate


def langevin_move(w: PyTree, drift: PyTree, noise: PyTree, step_size) -> PyTree:
    """The Langevin step w + (sqrt(eps) z - (eps / 2) drift), in w's dtype: SGLD's move and MALA's
    proposal. The increment is summed first: at small step sizes the drift alone is below half a
    float32 unit of w and `w - drift` would round it away every step (a localization-only chain at
    eps 1e-8 and |w| ~ 1 then random-walks instead of relaxing: tests/test_sgld.py)."""
    scale = jnp.sqrt(step_size)
    return jax.tree_util.tree_map(lambda x, d, z: (x + (scale * z - 0.5 * step_size * d)).astype(jnp.result_type(x)),
                                  w, drift, noise)
