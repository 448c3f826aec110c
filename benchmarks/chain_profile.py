"""Where the CPU time of the SGLD chain program goes: two views, printed by llc_throughput.py.

    python benchmarks/chain_profile.py      # the LLC benchmark's one-instance program alone

1. Ablations, side by side: the compiled one-instance program (8 chains x 1000 steps of the
   llc_throughput TMS) against copies with one part removed or swapped (no minibatch index draw,
   no noise draw, no gather, only the LLC observer, library GEMMs for the small products, the
   gradient's sums over rows as XLA emits them, plain float32 running sums), timed
   in interleaved rounds (best CPU time of the process and best wall time of each). A part's
   cost is the full program's time minus the ablated copy's.
2. The XLA profiler (`jax.profiler` trace with XLA:CPU's per-operation trace events): each
   compiled operation's exclusive time, attributed to the part of the chain program whose
   `jax.named_scope` (`slt_superposition.chain.SCOPES`) produced it; time in the thunk executor
   itself (dispatching the operations) and in the loops' control is shown apart.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from slt_superposition import chain, compensated, llc as llc_module
from slt_superposition.observers import llc_observer


@contextlib.contextmanager
def patched(module, **attrs):
    """Temporarily replace module attributes (read when a chain program is traced)."""
    saved = {name: getattr(module, name) for name in attrs}
    for name, value in attrs.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def one_instance_lowered(loss_fn, params, data, config, *, observers=None):
    """The lowered (not yet compiled) one-instance chain program and its inputs: `(lowered, args)`.
    Traced now, so `patched` chain attributes apply."""
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    d = sum(x.size for x in jax.tree_util.tree_leaves(params))
    nbeta = llc_module.resolve_nbeta(config, n)
    settings = llc_module.chain_settings(config, nbeta, 1)
    shape = llc_module.chain_shape(config, n, d)
    program = jax.vmap(chain.instance_program(loss_fn, shape, observers), in_axes=(0, None, 0, 0))
    args = (jax.tree_util.tree_map(lambda a: a[None], params), data, jax.random.key(1)[None], settings)
    return jax.jit(program).lower(*args), args


def one_instance_program(loss_fn, params, data, config, *, observers=None, compiler_options=None):
    """The compiled one-instance chain program and its inputs: `(compiled, args)`; call
    `compiled(*args)`. Traced now, so `patched` chain attributes apply."""
    lowered, args = one_instance_lowered(loss_fn, params, data, config, observers=observers)
    options = llc_module.CPU_COMPILER_OPTIONS if compiler_options is None else compiler_options
    return lowered.compile(compiler_options=options or None), args


def variants(loss_fn, params, data, config) -> dict:
    """name -> (compiled, args): the program as shipped and its ablated copies."""
    B = config.batch_size
    n = jax.tree_util.tree_leaves(data)[0].shape[0]
    # a constant index table (computed once, here): the gather as usual, no random bits at all
    fixed = lambda shape, chunk, key, c: jnp.asarray((np.arange(chunk * B) * 7 % n).reshape(chunk, B), jnp.int32)
    first_rows = jax.tree_util.tree_map(lambda a: a[:B], data)
    no_gather_loss = lambda p, batch: loss_fn(p, first_rows)  # the same B rows every step
    build = lambda **kw: one_instance_program(loss_fn, params, data, config, **kw)
    out = {"as shipped": build()}
    with patched(chain, _chunk_batches=fixed):
        out["minibatch indices not drawn (a constant table)"] = build()
    with patched(chain, standard_normal=lambda key, shape, dtype: jnp.full(shape, 0.01, dtype)):
        out["SGLD noise not drawn (a constant)"] = build()
    with patched(chain, _chunk_batches=lambda shape, chunk, key, c: None):
        out["indices not drawn, no gather (first B rows)"] = one_instance_program(no_gather_loss, params, data,
                                                                                   config)
    out["observers: the LLC sum only"] = build(observers=(llc_observer(),))
    with patched(chain, ELEMENTWISE_DOTS=False):
        out["library GEMMs for the small products"] = build()
    with patched(chain, LONG_SUMS=False):
        out["sums over rows as XLA emits them"] = build()
    with patched(compensated, ENABLED=False):
        out["plain float32 running sums (not compensated)"] = build()
    return out


def time_side_by_side(programs: dict, rounds: int = 7) -> dict:
    """name -> (best CPU seconds of this process, best wall seconds), over interleaved rounds."""
    best = {name: [float("inf"), float("inf")] for name in programs}
    for name, (compiled, args) in programs.items():
        jax.block_until_ready(compiled(*args))
    for _ in range(rounds):
        for name, (compiled, args) in programs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled(*args))
            best[name][0] = min(best[name][0], time.process_time() - cpu)
            best[name][1] = min(best[name][1], time.perf_counter() - wall)
    return best


def print_ablations(loss_fn, params, data, config, rounds: int = 7) -> dict:
    times = time_side_by_side(variants(loss_fn, params, data, config), rounds)
    full_cpu = times["as shipped"][0]
    print(f"  ablations (one instance, {config.num_chains} chains x {config.num_steps} steps; best of {rounds} "
          f"interleaved rounds; cost = as shipped - ablated, CPU time):")
    for name, (cpu, wall) in times.items():
        cost = "" if name == "as shipped" else f"   cost {(full_cpu - cpu) * 1e3:+7.1f} ms ({(full_cpu - cpu) / full_cpu:+.0%})"
        print(f"    {name:46s} cpu {cpu * 1e3:7.1f} ms  wall {wall * 1e3:7.1f} ms{cost}")
    return times


def _scope_of_instructions(hlo_text: str) -> dict:
    """instruction name -> the chain part (SCOPES value) in its op_name metadata, if any."""
    parts = tuple(chain.SCOPES.values())
    out = {}
    for match in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name=\"([^\"]*)\"", hlo_text, re.M):
        name, op_name = match.groups()
        found = [p for p in parts if f"/{p}/" in op_name or op_name.endswith(f"/{p}")]
        if found:
            out[name] = found[-1]  # the innermost scope
    return out


def _fusion_scopes(hlo_text: str) -> dict:
    """fused computation name -> the chain part most of its instructions came from."""
    scopes = _scope_of_instructions(hlo_text)
    out = {}
    for block in re.finditer(r"^%?([\w.\-]+) \([^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S):
        names = re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = ", block.group(2), re.M)
        counts = collections.Counter(scopes[n] for n in names if n in scopes)
        if counts:
            out[block.group(1)] = counts.most_common(1)[0][0]
    return out


def thunk_profile(compiled, args) -> dict:
    """Exclusive time per chain part (seconds) of one call of `compiled`, from the jax profiler.

    Needs the program compiled with `xla_cpu_enable_xprof_traceme`."""
    from jax.profiler import ProfileData

    text = compiled.as_text()
    scopes = _scope_of_instructions(text)
    fusion_scope = _fusion_scopes(text)
    calls = {m.group(1): m.group(2) for m in re.finditer(r"%?([\w.\-]+) = [^\n]*?calls=%?([\w.\-]+)", text)}
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder)
        jax.block_until_ready(compiled(*args))
        jax.profiler.stop_trace()
        profile = ProfileData.from_file(glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0])
    totals = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):
                continue
            events = sorted(((e.start_ns, e.duration_ns, e.name) for e in line.events), key=lambda e: (e[0], -e[1]))
            stack = []  # (end, name, child time)
            exclusive = []

            def close(until):
                while stack and stack[-1][0] <= until:
                    end, name, start, duration, children = stack.pop()
                    exclusive.append((name, duration - children))
                    if stack:
                        stack[-1][4] += duration

            for start, duration, name in events:
                close(start)
                stack.append([start + duration, name, start, duration, 0])
            close(float("inf"))
            for name, ns in exclusive:
                if name.startswith("ThunkExecutor"):
                    part = "thunk executor (dispatching operations)"
                elif name.startswith("while"):
                    part = "loop control (while)"
                else:
                    part = scopes.get(name) or fusion_scope.get(calls.get(name, ""), "other (copies, loop bookkeeping)")
                totals[part] += ns / 1e9
    return dict(totals)


def print_thunk_profile(loss_fn, params, data, config) -> dict:
    options = {**llc_module.CPU_COMPILER_OPTIONS, "xla_cpu_enable_xprof_traceme": True}
    compiled, args = one_instance_program(loss_fn, params, data, config, compiler_options=options)
    totals = thunk_profile(compiled, args)
    whole = sum(totals.values())
    labels = {chain.SCOPES["indices"]: "minibatch index draw (RNG)", chain.SCOPES["noise"]: "SGLD noise draw (RNG)",
              chain.SCOPES["gather"]: "minibatch gather", chain.SCOPES["step"]: "loss, gradient and SGLD update",
              chain.SCOPES["observers"]: "observers (LLC, MALA, trace, divergence)"}
    print(f"  XLA profiler, exclusive time per part of one call ({whole * 1e3:.1f} ms traced, tracing included):")
    for part, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"    {labels.get(part, part):46s} {seconds * 1e3:7.1f} ms  {seconds / whole:5.1%}")
    return totals


def main() -> None:
    import math

    from toy_models.data import high_sparsity_limit
    from toy_models.tms import tms_loss

    from slt_superposition import SGLDConfig

    angles = 2 * np.pi * np.arange(6) / 6
    params = {"W": jnp.asarray(1.32053 * np.stack([np.cos(angles), np.sin(angles)]), jnp.float32),
              "b": jnp.full((6,), -0.61814, jnp.float32)}
    x = high_sparsity_limit(jax.random.key(0), 1000, 6)
    config = SGLDConfig(step_size=5e-4, localization=100.0, nbeta=1000 / math.log(1000), num_chains=8,
                        num_steps=1000, num_burnin=200, batch_size=500)
    loss = lambda p, batch: tms_loss(p, batch)
    print_ablations(loss, params, x, config)
    print_thunk_profile(loss, params, x, config)


if __name__ == "__main__":
    main()
