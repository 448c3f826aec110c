"""Small matrix products as fused elementwise code, for the SGLD chains on a CPU.

The toy models sampled here multiply tiny matrices: the TMS forward pass is
`(batch, 6) @ (6, 2)` then `(batch, 2) @ (2, 6)`, once per chain and step. XLA:CPU hands every
`dot_general` to a library GEMM call (Eigen), whose fixed cost per call and whose kernels for a
2- or 6-wide operand cost more than the arithmetic; under `vmap` over chains each product is a
batched GEMM. Written as a broadcast multiply and a sum over the contracted axes instead, the
product fuses into the elementwise code around it. `python benchmarks/llc_throughput.py` prints
the chain step with and without this rewrite, side by side.

    fast = small_dots_as_elementwise(loss_fn)        # same signature, same values up to rounding
    jax.value_and_grad(fast)(params, batch)

How: `loss_fn` is traced to a jaxpr at the shapes it is called with; the jaxpr is evaluated
again with each small `dot_general` (the two smallest of its per-batch-element sizes M, N, K
multiplied at most `limit`, or M N K at most `TINY`; floating point, no preferred type other
than its inputs') replaced by multiply-and-sum. Larger products stay library GEMMs, which are
faster there (TMS 20x5 and wider; docs/benchmarks.md, "Which products to write elementwise").
Nested `jit`s are inlined the same way; every other primitive (custom derivatives, control
flow) is bound unchanged, so differentiation and `vmap` of the result work as for `loss_fn`.
The sums run in another order than the GEMM's, so results differ from `loss_fn`'s in the last
bits (tests/test_chain_small_dots.py checks values and gradients agree to float32 rounding).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.extend.core import Literal

# a dot is "small" when the two smallest of M, N, K (per batch element) multiply to at most this:
# TMS 6x2 (x @ W.T: M = batch, N = 2, K = 6 -> 12) is rewritten, 20x5 (5 x 20 = 100) is not;
# `python benchmarks/small_dots_rule.py` prints the forms side by side on TMS and DLN shapes
SMALL = 16
# ... or when it is tiny: M N K at most this (a deep linear network's products on its few compressed
# rows, e.g. (6, 3) @ (3, 10), where the GEMM call costs more than the arithmetic)
TINY = 4096


def product_sizes(lhs, rhs, dimension_numbers) -> tuple[int, int, int]:
    """(M, N, K) of `lax.dot_general(lhs, rhs, dimension_numbers)` per batch element: lhs's free
    sizes, rhs's free sizes and the contracted sizes, each multiplied out."""
    (lc, rc), (lb, rb) = dimension_numbers
    m = math.prod(s for d, s in enumerate(lhs.shape) if d not in lc and d not in lb)
    n = math.prod(s for d, s in enumerate(rhs.shape) if d not in rc and d not in rb)
    return m, n, math.prod(lhs.shape[d] for d in lc)


def _is_small(lhs, rhs, dimension_numbers, limit: int) -> bool:
    if not (jnp.issubdtype(lhs.dtype, jnp.floating) and lhs.dtype == rhs.dtype):
        return False
    smallest, second, largest = sorted(product_sizes(lhs, rhs, dimension_numbers))
    return smallest * second <= limit or smallest * second * largest <= TINY


def dot_as_elementwise(lhs: jax.Array, rhs: jax.Array, dimension_numbers) -> jax.Array:
    """`lax.dot_general(lhs, rhs, dimension_numbers)` as a broadcast multiply and a sum.

    Output axes as dot_general's: batch axes, then lhs free axes, then rhs free axes."""
    (lc, rc), (lb, rb) = dimension_numbers
    lf = [d for d in range(lhs.ndim) if d not in lc and d not in lb]
    rf = [d for d in range(rhs.ndim) if d not in rc and d not in rb]
    left = jnp.transpose(lhs, list(lb) + lf + list(lc))
    right = jnp.transpose(rhs, list(rb) + rf + list(rc))
    batch = left.shape[: len(lb)]
    l_free = left.shape[len(lb): len(lb) + len(lf)]
    r_free = right.shape[len(rb): len(rb) + len(rf)]
    k = math.prod(lhs.shape[d] for d in lc)
    left = left.reshape(batch + l_free + (1,) * len(rf) + (k,))
    right = right.reshape(batch + (1,) * len(lf) + r_free + (k,))
    return jnp.sum(left * right, axis=-1)


def evaluate_rewritten(jaxpr, consts, args, rule: Callable) -> list:
    """`jax.core.eval_jaxpr` with nested jits inlined and each equation first offered to `rule`.

    `rule(eqn, values)` returns the equation's outputs (a list) to replace it, or None to bind it
    unchanged. Shared by the rewrites of this module and `slt_superposition.long_sums`."""
    env: dict = {}
    read = lambda v: v.val if isinstance(v, Literal) else env[v]
    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        name, params = eqn.primitive.name, eqn.params
        outs = rule(eqn, values)
        if outs is not None:
            pass
        elif name in ("pjit", "jit"):
            inner = params["jaxpr"]
            outs = evaluate_rewritten(inner.jaxpr, inner.consts, values, rule)
        else:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(params))
            if not eqn.primitive.multiple_results:
                outs = [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def rewritten(fun: Callable, rule: Callable) -> Callable:
    """`fun` (pytrees in, pytree out) evaluated through `evaluate_rewritten` with `rule`.

    Traces `fun` at each call's shapes (inside an enclosing `jit`, once per compilation)."""

    def call(*args: Any):
        flat, tree = jax.tree_util.tree_flatten(args)
        closed, out_shape = jax.make_jaxpr(lambda *xs: fun(*jax.tree_util.tree_unflatten(tree, xs)),
                                           return_shape=True)(*flat)
        outs = evaluate_rewritten(closed.jaxpr, closed.consts, flat, rule)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

    return call


def small_dots_as_elementwise(fun: Callable, limit: int = SMALL) -> Callable:
    """`fun` (pytrees in, pytree out) with its small matrix products computed elementwise.

    Traces `fun` at each call's shapes (inside an enclosing `jit`, once per compilation)."""

    def rule(eqn, values):
        params = eqn.params
        if (eqn.primitive.name == "dot_general"
                and params.get("preferred_element_type") in (None, eqn.invars[0].aval.dtype)
                and _is_small(eqn.invars[0].aval, eqn.invars[1].aval, params["dimension_numbers"], limit)):
            return [dot_as_elementwise(*values, params["dimension_numbers"])]
        return None

    return rewritten(fun, rule)
