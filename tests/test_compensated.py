"""Compensated running sums: they keep the terms a plain float32 sum rounds away, compiled too."""

import jax
import jax.numpy as jnp
import numpy as np

from slt_superposition import compensated
from slt_superposition.observers import (ChainSettings, StepContext, acceptance_observer, llc_observer,
                                         moments_observer, trace_observer)
from slt_superposition.sgld import SGLDInfo


def _scan_sum(values, use_compensation: bool):
    def body(state, x):
        return (compensated.add(state, x) if use_compensation else state + x), None

    init = compensated.zeros() if use_compensation else jnp.zeros((), jnp.float32)
    total, _ = jax.lax.scan(body, init, values)
    return compensated.value(total) if use_compensation else total


def test_terms_below_half_an_ulp_are_kept_through_jit():
    # 2^24 + 1 is a tie in float32 and rounds back to 2^24: a plain sum never moves
    values = jnp.concatenate([jnp.array([2.0**24], jnp.float32), jnp.ones(1000, jnp.float32)])
    plain = jax.jit(lambda v: _scan_sum(v, False))(values)
    kept = jax.jit(lambda v: _scan_sum(v, True))(values)
    assert float(plain) == 2.0**24
    assert float(kept) == 2.0**24 + 1000


def test_long_sum_of_small_alike_terms_matches_float64():
    # a DLN chain's LLC sum after about 16 million steps: a total of 8192 (ulp 2^-10, about 1e-3),
    # then 2^20 excess losses of about 5e-4 each. The plain float32 sum gets what they add wrong by
    # about 5%; the compensated one to float32 rounding of the total.
    terms = np.random.default_rng(0).gamma(4.5, 1.2e-4, size=2**20).astype(np.float32)
    values = np.concatenate([np.float32([8192.0]), terms])
    added = terms.astype(np.float64).sum()
    plain = float(jax.jit(lambda v: _scan_sum(v, False))(values)) - 8192.0
    kept = float(jax.jit(lambda v: _scan_sum(v, True))(values)) - 8192.0
    assert abs(plain / added - 1) > 0.02
    assert abs(kept - added) <= 2.0**-10


def test_add_at_touches_one_entry():
    state = compensated.add_at(compensated.zeros((3,)), 1, jnp.float32(2.0**24))
    for _ in range(4):
        state = compensated.add_at(state, 1, jnp.float32(1.0))
    np.testing.assert_array_equal(np.asarray(compensated.value(state)), [0.0, 2.0**24 + 4, 0.0])


def _run_observer(observer, excess, position=None, start=None, trace_every=None):
    """Drive one observer over the steps t = 0 .. len(excess) - 1 (all post-burn-in), as the chain
    program does, from `start(state)` of its initial state; returns (final state, outputs)."""
    steps = len(excess)
    settings = ChainSettings(step_size=jnp.float32(1e-3), localization=jnp.float32(1.0), nbeta=jnp.float32(1.0),
                             num_steps=jnp.int32(steps), num_burnin=jnp.int32(0),
                             trace_every=jnp.int32(trace_every or steps))
    position = jnp.zeros((steps, 2), jnp.float32) if position is None else position
    init = observer.init(jnp.zeros((2,), jnp.float32), settings)

    def body(state, xs):
        t, e, p = xs
        ctx = StepContext(t=t, active=jnp.array(True), post=jnp.array(True), loss=e, excess=e, finite=jnp.array(True))
        info = SGLDInfo(position=p, drift=jnp.zeros_like(p), potential=jnp.float32(0.0), loss=e)
        return observer.update(state, ctx, info, settings), None

    state, _ = jax.lax.scan(body, init if start is None else start(init),
                            (jnp.arange(steps, dtype=jnp.int32), jnp.asarray(excess, jnp.float32), position))
    return state, observer.finalize(state, settings)


def test_chain_observers_keep_small_terms_after_a_large_one():
    # one excess of 2^20 (ulp 0.125), then 4095 of 0.03: a plain float32 sum drops every one of them
    excess = np.full(4096, 0.03, np.float32)
    excess[0] = 2.0**20
    expected = (2.0**20 + 4095 * np.float64(np.float32(0.03))) / 4096
    run = jax.jit(lambda e: (_run_observer(llc_observer(), e)[1]["llc_per_chain"],
                             _run_observer(trace_observer(1), e)[1]["loss_trace"]))
    llc, trace = run(excess)
    np.testing.assert_allclose(float(llc), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(trace), [expected], rtol=1e-6)


def test_trace_blocks_restart_and_keep_small_terms():
    # 4 blocks of 1024 steps: block j holds the value j + 1, except that block 2 starts with 2^20
    excess = np.repeat(np.float32([1.0, 2.0, 3.0, 4.0]), 1024) * np.float32(0.03)
    excess[2048] = 2.0**20
    _, out = jax.jit(lambda e: _run_observer(trace_observer(4), e, trace_every=1024))(excess)
    expected = np.float64(np.float32([0.03, 0.06, 0.09, 0.12]))
    expected[2] = (2.0**20 + 1023 * np.float64(np.float32(0.09))) / 1024
    np.testing.assert_allclose(np.asarray(out["loss_trace"]), expected, rtol=1e-6)


def test_moments_observer_keeps_small_terms():
    excess = np.full(4096, 0.03, np.float32)
    position = np.zeros((4096, 2), np.float32)
    position[:, 0] = 0.03
    position[0, 0] = 2.0**20
    observer = moments_observer(lambda w: (w[:1], w[:1]))
    out = jax.jit(lambda e, p: _run_observer(observer, e, position=p)[1])(excess, position)
    expected = (2.0**20 + 4095 * np.float64(np.float32(0.03))) / 4096
    np.testing.assert_allclose(float(out["observable_offset"][0]), expected, rtol=1e-6)


def test_acceptance_sum_does_not_saturate():
    # from a sum of 2^24 (as after 2^24 accepted transitions) every further acceptance of 1 is a tie
    # that a plain float32 sum rounds away; the positions do not move, so each acceptance is 1
    start = lambda state: state._replace(total=compensated.CompensatedSum(jnp.float32(2.0**24), jnp.float32(0.0)))
    state, _ = jax.jit(lambda e: _run_observer(acceptance_observer(), e, start=start))(np.zeros(1000, np.float32))
    total = np.float64(state.total.total) + np.float64(state.total.compensation)
    assert total == 2.0**24 + 999  # transitions t = 1 .. 999
