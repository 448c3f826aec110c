"""What an SGLD chain records, one small observer per quantity (devinterp's callbacks, as
init / update / finalize triples of pure functions).

An observer sees every step of one chain through `StepContext` (the step index, whether the
chain is still running and past burn-in, the minibatch loss and its excess over L_n(w*),
whether everything the step computed is finite) and the kernel's `SGLDInfo` (pre-step position,
drift, potential). Its state is a small pytree carried through the scan; `finalize` turns it
into named outputs. The chain program (`slt_superposition.chain`) composes them; adding a
quantity means adding an observer, not widening one carry.

Steps t = 0 .. num_steps - 1; post-burn-in steps are t >= num_burnin (n_draws =
num_steps - num_burnin of them). Steps at t >= num_steps (the padding of the last chunk, or
of a chain shorter than others in the same program) are inactive and change nothing.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from slt_superposition import compensated
from slt_superposition.diagnostics import DIVERGENCE_FACTOR, mala_acceptance_probability, mala_log_acceptance
from slt_superposition.sgld import SGLDInfo

PyTree = Any


class ChainSettings(NamedTuple):
    """Runtime settings of one chain (scalars; per instance under vmap).

    step_size, localization, nbeta: float32. num_steps, num_burnin, trace_every: int32.
    """

    step_size: jax.Array
    localization: jax.Array
    nbeta: jax.Array
    num_steps: jax.Array
    num_burnin: jax.Array
    trace_every: jax.Array


class StepContext(NamedTuple):
    """What every observer sees of step t besides the kernel's info.

    t: int32 step index. active: t < num_steps. post: active and t >= num_burnin.
    loss: the loss recorded, L_n(w*) + excess. excess: L_B(w_t) - L_B(w*) (at full batch L_n(w_t) -
    L_n(w*); `chain.minibatch_excess`). finite: loss, drift and new position finite.
    accepted: whether the step's move was accepted (always for SGLD; `slt_superposition.mala`).
    """

    t: jax.Array
    active: jax.Array
    post: jax.Array
    loss: jax.Array
    excess: jax.Array
    finite: jax.Array
    accepted: jax.Array | bool = True


class Observer(NamedTuple):
    """init(w_star, settings) -> state; update(state, ctx, info, settings) -> state;
    finalize(state, settings) -> dict of outputs."""

    init: Callable[[jax.Array, ChainSettings], PyTree]
    update: Callable[[PyTree, StepContext, SGLDInfo, ChainSettings], PyTree]
    finalize: Callable[[PyTree, ChainSettings], dict]


def _draws(settings: ChainSettings) -> jax.Array:
    return (settings.num_steps - settings.num_burnin).astype(jnp.float32)


def llc_observer() -> Observer:
    """`llc_per_chain` = nbeta * mean over post-burn-in steps of the excess L_B(w_t) - L_B(w*)
    (a compensated sum: `slt_superposition.compensated`)."""

    def update(total, ctx, info, settings):
        return compensated.add(total, jnp.where(ctx.post, ctx.excess, 0.0))

    def finalize(total, settings):
        return {"llc_per_chain": settings.nbeta * compensated.value(total) / _draws(settings)}

    return Observer(lambda w, s: compensated.zeros(), update, finalize)


class _AcceptanceState(NamedTuple):
    prev_position: jax.Array
    prev_drift: jax.Array
    prev_potential: jax.Array
    total: compensated.CompensatedSum


def acceptance_observer() -> Observer:
    """`mala_acceptance`: mean MALA acceptance proxy over the post-burn-in transitions
    w_{t-1} -> w_t with t > num_burnin (NaN with fewer than two draws)."""

    def init(w_star, settings):
        return _AcceptanceState(w_star, jnp.zeros_like(w_star), jnp.zeros((), jnp.float32), compensated.zeros())

    def update(state, ctx, info, settings):
        accept = mala_acceptance_probability(mala_log_acceptance(
            state.prev_position, state.prev_drift, state.prev_potential,
            info.position, info.drift, info.potential, settings.step_size))
        counted = ctx.active & (ctx.t > settings.num_burnin)
        keep = lambda new, old: jnp.where(ctx.active, new, old)
        return _AcceptanceState(keep(info.position, state.prev_position), keep(info.drift, state.prev_drift),
                                keep(info.potential, state.prev_potential),
                                compensated.add(state.total, jnp.where(counted, accept, 0.0)))

    def finalize(state, settings):
        transitions = _draws(settings) - 1
        total = compensated.value(state.total)
        return {"mala_acceptance": jnp.where(transitions > 0, total / jnp.maximum(transitions, 1), jnp.nan)}

    return Observer(init, update, finalize)


def metropolis_acceptance_observer() -> Observer:
    """`mala_acceptance` of a Metropolis-adjusted chain (`SGLDConfig(metropolis=True)`): the share of
    post-burn-in steps whose proposal was accepted (NaN without draws), the realised rate rather
    than the proxy of `acceptance_observer`."""

    def update(count, ctx, info, settings):
        return count + (ctx.post & ctx.accepted).astype(jnp.int32)

    def finalize(count, settings):
        draws = _draws(settings)
        return {"mala_acceptance": jnp.where(draws > 0, count / jnp.maximum(draws, 1), jnp.nan)}

    return Observer(lambda w, s: jnp.zeros((), jnp.int32), update, finalize)


def below_init_observer() -> Observer:
    """`n_below_init`: post-burn-in steps with L_B(w_t) < L_B(w*) (a count: the dataset divides it
    on the host, so the fraction has the same bits whatever devices ran the chain)."""

    def update(count, ctx, info, settings):
        return count + (ctx.post & (ctx.excess < 0)).astype(jnp.int32)

    def finalize(count, settings):
        return {"n_below_init": count}

    return Observer(lambda w, s: jnp.zeros((), jnp.int32), update, finalize)


class _DivergenceState(NamedTuple):
    nonfinite: jax.Array
    max_excess: jax.Array


def divergence_observer(n_parameters: int) -> Observer:
    """`diverged`: a non-finite loss, drift (gradient) or position at any active step, or a
    sample nbeta (L_B(w_t) - L_B(w*)) above `DIVERGENCE_FACTOR * d` (see diagnostics)."""

    def init(w_star, settings):
        return _DivergenceState(jnp.zeros((), bool), jnp.full((), -jnp.inf, jnp.float32))

    def update(state, ctx, info, settings):
        excess = jnp.where(ctx.active & ctx.finite, ctx.excess, -jnp.inf)
        return _DivergenceState(state.nonfinite | (ctx.active & ~ctx.finite), jnp.maximum(state.max_excess, excess))

    def finalize(state, settings):
        exploded = settings.nbeta * state.max_excess > DIVERGENCE_FACTOR * n_parameters
        return {"diverged": state.nonfinite | exploded}

    return Observer(init, update, finalize)


class _TraceState(NamedTuple):
    trace: jax.Array
    block_sum: compensated.CompensatedSum


def trace_observer(n_blocks: int) -> Observer:
    """`loss_trace (n_blocks,)`: means of the recorded loss L_n(w*) + excess over blocks of `trace_every` steps;
    blocks past the chain's end are NaN. The current block's sum is a compensated scalar, written into its
    block every step (one update of the trace per step, as a plain sum would need)."""

    def update(state, ctx, info, settings):
        k = settings.trace_every
        block = ctx.t // k
        length = jnp.clip(settings.num_steps - block * k, 1, k).astype(jnp.float32)
        restart = lambda x: jnp.where(ctx.t % k == 0, 0.0, x)  # a block's first step starts a new sum
        block_sum = compensated.add(compensated.CompensatedSum(*map(restart, state.block_sum)),
                                    jnp.where(ctx.active, ctx.loss / length, 0.0))
        index = jnp.minimum(block, n_blocks - 1)
        trace = state.trace.at[index].set(jnp.where(ctx.active, compensated.value(block_sum), state.trace[index]))
        return _TraceState(trace, block_sum)

    def finalize(state, settings):
        started = jnp.arange(n_blocks) * settings.trace_every < settings.num_steps
        return {"loss_trace": jnp.where(started, state.trace, jnp.nan)}

    init = lambda w, s: _TraceState(jnp.zeros((n_blocks,), jnp.float32), compensated.zeros())
    return Observer(init, update, finalize)


def default_observers(n_parameters: int, n_blocks: int, metropolis: bool = False) -> tuple[Observer, ...]:
    """The observers behind every `llc` dataset (`metropolis`: the realised acceptance rate instead
    of the MALA proxy)."""
    acceptance = metropolis_acceptance_observer() if metropolis else acceptance_observer()
    return (llc_observer(), acceptance, below_init_observer(), divergence_observer(n_parameters),
            trace_observer(n_blocks))


class _MomentsState(NamedTuple):
    ref_phi: jax.Array
    ref_delta: jax.Array
    sum_phi: compensated.CompensatedSum
    sum_delta: compensated.CompensatedSum
    sum_cross: compensated.CompensatedSum


def moments_observer(evaluate: Callable[[jax.Array], tuple[jax.Array, jax.Array]]) -> Observer:
    """Post-burn-in moments of per-draw values, for covariances along the chain (susceptibilities).

    `evaluate(w) -> (phi (K,), delta (J,))` at a flat position w (observables and loss
    differences, `slt_superposition.susceptibility`). Values are centred at w* (phi* =
    phi(w*), delta* = delta(w*)) so float32 sums keep the fluctuations' digits. Outputs, means
    over the post-burn-in steps at the pre-step position w_t: `observable_offset (K,)` of
    phi - phi*, `delta_offset (J,)` of delta - delta*, `cross_moment (K, J)` of
    (phi - phi*)(delta - delta*); the chain's covariance is cross_moment - outer(offsets). Compensated sums.
    """

    def init(w_star, settings):
        phi, delta = evaluate(w_star)
        zeros = lambda shape: compensated.zeros(shape, phi.dtype)
        return _MomentsState(phi, delta, zeros(phi.shape), zeros(delta.shape), zeros(phi.shape + delta.shape))

    def update(state, ctx, info, settings):
        phi, delta = evaluate(info.position)
        a, c = phi - state.ref_phi, delta - state.ref_delta
        keep = lambda total, value: compensated.add(total, jnp.where(ctx.post, value, 0.0))
        return state._replace(sum_phi=keep(state.sum_phi, a), sum_delta=keep(state.sum_delta, c),
                              sum_cross=keep(state.sum_cross, a[:, None] * c[None, :]))

    def finalize(state, settings):
        draws = _draws(settings)
        mean = lambda total: compensated.value(total) / draws
        return {"observable_offset": mean(state.sum_phi), "delta_offset": mean(state.sum_delta),
                "cross_moment": mean(state.sum_cross), "observable_at_init": state.ref_phi,
                "delta_at_init": state.ref_delta}

    return Observer(init, update, finalize)
