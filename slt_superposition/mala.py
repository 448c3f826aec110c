"""The Metropolis-adjusted Langevin kernel (MALA): the SGLD step as a proposal, accepted or rejected.

At position w with the whole data set (no minibatch: the accept/reject step needs the exact
potential), the proposal is the SGLD step of `slt_superposition.sgld`,

    w' = w + (N(0, step_size) - (step_size / 2) grad U(w)),   U = nbeta L_n + (localization / 2) ||w - w*||^2,

accepted with probability min(1, exp(U(w) - U(w') + log q(w | w') - log q(w' | w))), q(. | w) the
proposal's Gaussian density; a rejected step stays at w. The chain then leaves the localized tempered
posterior exp(-U) exactly invariant at every step size: no discretisation bias, whatever the curvature
where the chain goes (the price is rejected steps; the acceptance rate says how many). The log ratio
is `diagnostics.mala_log_acceptance`, the one the SGLD chains' acceptance proxy reads; the move and
the potential are `sgld`'s (`langevin_move`, `potential_and_drift`).

The state carries the loss, potential and drift at the current position, so a step evaluates the
loss and its gradient once (at the proposal), as an SGLD step does. `SGLDInfo` describes the pre-step
position, as for SGLD, so the chain's observers read both kernels alike.

    kernel = mala(loss_fn, anchor, step_size=..., localization=..., nbeta=...)
    state = kernel.init(position, data)
    state, info, accepted = kernel.step_with_noise(state, data, noise, uniform)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from slt_superposition.diagnostics import mala_log_acceptance
from slt_superposition.sgld import SGLDInfo, langevin_move, potential_and_drift

PyTree = Any


class MALAState(NamedTuple):
    """The current position and what the kernel knows there: L_n(w), U(w) (scalars) and grad U(w)."""

    position: PyTree
    loss: jax.Array
    potential: jax.Array
    drift: PyTree


class MALAKernel(NamedTuple):
    init: Callable[[PyTree, PyTree], MALAState]
    step_with_noise: Callable[[MALAState, PyTree, PyTree, jax.Array], tuple[MALAState, SGLDInfo, jax.Array]]


def mala(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    anchor: PyTree,
    *,
    step_size,
    localization,
    nbeta,
    value_and_grad: Callable[[PyTree, PyTree], tuple[jax.Array, PyTree]] | None = None,
) -> MALAKernel:
    """MALA localized at `anchor` (= w*) for `loss_fn(params, data) -> scalar` on the whole data.

    `step_with_noise(state, data, noise, uniform) -> (state, info, accepted)`: `noise` ~ N(0, I)
    shaped like the position, `uniform` ~ U(0, 1) a scalar; `info` is the pre-step position's
    (`SGLDInfo`), `accepted` a boolean scalar. A proposal whose loss, drift or position is not
    finite is rejected. Settings may be traced scalars, as for `sgld`.
    """
    potential = potential_and_drift(loss_fn, anchor, localization=localization, nbeta=nbeta,
                                    value_and_grad=value_and_grad)

    def evaluate(w: PyTree, data: PyTree) -> MALAState:
        return MALAState(w, *potential(w, data))

    def step_with_noise(state: MALAState, data: PyTree, noise: PyTree, uniform: jax.Array):
        new = evaluate(langevin_move(state.position, state.drift, noise, step_size), data)
        log_ratio = mala_log_acceptance(state.position, state.drift, state.potential, new.position, new.drift,
                                        new.potential, step_size)
        finite = (jnp.isfinite(new.loss) & jnp.isfinite(log_ratio)
                  & jnp.all(jnp.asarray([jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(new)])))
        accepted = finite & (jnp.log(uniform) < log_ratio)
        kept = jax.tree_util.tree_map(lambda a, b: jnp.where(accepted, a, b), new, state)
        info = SGLDInfo(state.loss, state.potential, state.drift, state.position)
        return kept, info, accepted

    return MALAKernel(evaluate, step_with_noise)
