"""Does a sampler preconditioned by the Hessian at w* reach the trained TMS's LLC in fewer steps?

`python -m experiments.tms_sampler_time` found the LLC of trained TMS still rising at sampler
times eps x steps of 16 / gamma (160,000 steps at eps 1e-4), far beyond the flagship's budgets. SGLD
moves every direction with the one step size that the stiffest direction allows, so a direction held
only by the localization gamma relaxes in about 1 / (eps gamma) steps. Langevin dynamics with a
constant preconditioner M,

    w' = w - (eps / 2) M grad U(w) + sqrt(eps) M^(1/2) z,     U = nbeta L_n + (gamma / 2) |w - w*|^2,

has the same stationary distribution for any symmetric positive definite M (so the same LLC as eps -> 0),
and with M = (nbeta H_+ + gamma I)^-1 (H_+ the Hessian of L_n at w* with negative eigenvalues set to 0)
every direction of the quadratic approximation relaxes at rate 1 per unit of preconditioned time eps x steps:
the stiff ones as before, the flat ones at the rate gamma x (1 / gamma) they had in plain sampler time,
but at a step eps that is no longer held down by the stiff directions. In the quadratic approximation the
discretisation bias is then eps / 4 relative on every direction, whatever the spectrum.

The study runs this sampler (as plain Langevin on coordinates u with w = w* + V diag(a^-1/2) u, which is
the same chain) with the full-batch loss on the instances of `experiments.tms_sampler_time` (quick grid
n6_m2, seed 0, trained and refined as the flagship does, n = 4096, nbeta = n / log n, gamma = 1, 4
chains from w*), at two preconditioned step sizes, and prints at doubling times the estimate
nbeta (L_n(w) - L_n(w*)) averaged over the second half of the chain so far (as `calibrate`'s length
stage), with its standard error over chains, and the linear extrapolation to eps -> 0 from the pair. The
same code with M = I (`--plain`) is plain full-batch SGLD, to compare with the package's estimator
(`python -m experiments.tms_sampler_time --batch-size full`).

Where the chains go the curvature can be far from the Hessian at w*'s (the ends' curvature printed
above), so `--pilot-time T` takes M from the Hessian averaged over where plain SGLD chains (eps 1e-4)
are over the second half of a pilot run of sampler time T instead.

    python -m experiments.tms_preconditioned                               # eps 0.03 and 0.01, times up to 256
    python -m experiments.tms_preconditioned --plain --step-sizes 1e-4 --max-time 4
    python -m experiments.tms_preconditioned --pilot-time 1                # M from a plain pilot's curvature
    python -m experiments.tms_preconditioned --plain --metropolis --step-sizes 1e-3 3e-4   # plain MALA

`--metropolis` makes every step a proposal accepted with the Metropolis-adjusted Langevin (MALA)
probability: full batch, so the potential is exact and the chain leaves the localized posterior
exactly invariant at any step size (no discretisation bias; the price is rejected steps, whose rate
is printed).
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from experiments.tms_sampler_time import CHAINS, inputs
from slt_superposition.diagnostics import mala_log_acceptance, mean_and_se
from slt_superposition.llc import default_nbeta

LOCALIZATION = 1.0
PILOT_STEP_SIZE = 1e-4  # plain SGLD's step size on these instances (experiments.tms_sampler_time)
PILOT_SEGMENTS = 16


def flat_hessian(loss_fn, unravel, data):
    """w `(d,)` -> the Hessian `(d, d)` of L_n (`loss_fn` on the whole `data`) at the flat parameters w."""
    return jax.hessian(lambda w: loss_fn(unravel(w), data))


def coordinates(loss_fn, w_star, unravel, data, nbeta: float, gamma: float, plain: bool, H=None):
    """(S, h): w = w* + S u with S = V diag((nbeta h_+ + gamma)^-1/2) `(d, d)`, and the eigenvalues h
    `(d,)` of `H` `(d, d)` (default: the Hessian of L_n at w*); S = I for plain SGLD."""
    if H is None:
        H = flat_hessian(loss_fn, unravel, data)(w_star)
    h, V = jnp.linalg.eigh(0.5 * (H + H.T))
    if plain:
        return jnp.eye(w_star.shape[0], dtype=w_star.dtype), h
    return V * (nbeta * jnp.maximum(h, 0.0) + gamma) ** -0.5, h


def pilot_hessian(loss_fn, w_star, unravel, data, hessian, *, nbeta: float, gamma: float, sampler_time: float,
                  key, step_size: float = PILOT_STEP_SIZE, segments: int = PILOT_SEGMENTS):
    """The Hessian of L_n `(d, d)` (`hessian`, w -> its value) averaged over where plain SGLD chains
    from w* go: 4 chains at `step_size` for `sampler_time`, run in `segments` pieces; the positions at
    the ends of the second half's pieces are averaged over (segments / 2 per chain)."""
    identity = jnp.eye(w_star.shape[0], dtype=w_star.dtype)
    steps = max(1, int(round(sampler_time / step_size / segments)))
    start, total, count = None, 0.0, 0
    for segment in range(segments):
        _, final, _ = run_chains(loss_fn, w_star, unravel, data, identity, nbeta=nbeta, gamma=gamma, step_size=step_size,
                              steps=steps, key=jax.random.fold_in(key, segment), start=start)
        if not np.all(np.isfinite(final)):
            raise SystemExit("a pilot chain diverged; use a smaller pilot step size")
        start = final - np.asarray(w_star)
        if segment >= segments // 2:
            total = total + sum(hessian(jnp.asarray(w)) for w in final)
            count += len(final)
    return total / count


def run_chains(loss_fn, w_star, unravel, data, S, *, nbeta: float, gamma: float, step_size: float,
               steps: int, key, start=None, metropolis: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(chains, steps)` samples of nbeta (L_n(w_t) - L_n(w*)) along Langevin chains in u from u = 0
    (or from `start` `(chains, d)`), the chains' final positions w `(chains, d)` and their acceptance
    rates `(chains,)` (1 for plain Langevin). `metropolis`: every step is a proposal accepted with the
    MALA probability (the chain then leaves the posterior exactly invariant at any step size)."""
    flat = lambda w: loss_fn(unravel(w), data)
    loss_star = flat(w_star)

    def potential(u):
        w = w_star + S @ u
        loss = flat(w)
        return nbeta * loss + 0.5 * gamma * jnp.sum(jnp.square(S @ u)), loss

    value_and_grad = jax.value_and_grad(potential, has_aux=True)

    def step(u, z):
        g, loss = jax.grad(potential, has_aux=True)(u)
        u = u + (math.sqrt(step_size) * z - 0.5 * step_size * g)
        return u, (nbeta * (loss - loss_star), jnp.float32(1))

    def mala_step(carry, xs):  # the MALA probability as the package's kernel (diagnostics.mala_log_acceptance)
        (u, value, loss, g), (z, uniform) = carry, xs
        proposal = u + (math.sqrt(step_size) * z - 0.5 * step_size * g)
        (value_p, loss_p), g_p = value_and_grad(proposal)
        log_ratio = mala_log_acceptance(u, g, value, proposal, g_p, value_p, step_size)
        accept = jnp.log(uniform) < log_ratio  # NaN (a non-finite proposal) rejects
        new = jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), (proposal, value_p, loss_p, g_p),
                                     (u, value, loss, g))
        return new, (nbeta * (loss - loss_star), accept.astype(jnp.float32))

    def chain(k, u0):
        noise = jax.random.normal(k, (steps, w_star.shape[0]), w_star.dtype)
        if metropolis:
            uniforms = jax.random.uniform(jax.random.fold_in(k, 1), (steps,), w_star.dtype)
            (value, loss), g = value_and_grad(u0)
            (u, *_), (samples, accepted) = jax.lax.scan(mala_step, (u0, value, loss, g), (noise, uniforms))
        else:
            u, (samples, accepted) = jax.lax.scan(step, u0, noise)
        return samples, w_star + S @ u, accepted.mean()

    u0 = jnp.zeros((CHAINS,) + w_star.shape, w_star.dtype) if start is None else jnp.asarray(start, w_star.dtype)
    samples, final, rate = jax.jit(jax.vmap(chain))(jax.random.split(key, CHAINS), u0)
    return np.asarray(samples), np.asarray(final), np.asarray(rate)


def end_stiffness(hessian, final: np.ndarray, S, nbeta: float, gamma: float) -> str:
    """The top eigenvalue of S^T (nbeta H(w) + gamma I) S at each finite final position `(chains, d)`
    (`hessian`: w -> H(w)): the curvature the chain sees on its own coordinates u there (1 at w* for
    the preconditioned chain)."""
    tops = []
    for w in final:
        if not np.all(np.isfinite(w)):
            tops.append("diverged")
            continue
        A = S.T @ (nbeta * hessian(jnp.asarray(w)) + gamma * jnp.eye(w.shape[0])) @ S
        tops.append(f"{float(jnp.linalg.eigvalsh(0.5 * (A + A.T))[-1]):.3g}")
    return ", ".join(tops)


def describe_offset(final: np.ndarray, w_star, unravel) -> str:
    """Where the chains ended `(chains, d)`: |w - w*| and, per feature i, the RMS change over the
    chains that did not diverge of ||W_i|| and of b_i (TMS parameters {"W": (m, n), "b": (n,)})."""
    final = final[np.all(np.isfinite(final), axis=1)]
    if len(final) == 0:
        return "every chain diverged"
    start = jax.tree_util.tree_map(np.asarray, unravel(w_star))
    ends = [jax.tree_util.tree_map(np.asarray, unravel(jnp.asarray(w))) for w in final]
    rms = lambda values: np.sqrt(np.mean(np.square(values), axis=0))
    norms = rms([np.linalg.norm(e["W"], axis=0) - np.linalg.norm(start["W"], axis=0) for e in ends])
    biases = rms([e["b"] - start["b"] for e in ends])
    return (f"|w - w*| {np.mean(np.linalg.norm(final - np.asarray(w_star), axis=1)):.2f}; ||W_i|| at w* "
            f"{np.array2string(np.linalg.norm(start['W'], axis=0), precision=2)}, RMS change "
            f"{np.array2string(norms, precision=2)}; b_i at w* {np.array2string(start['b'], precision=2)}, "
            f"RMS change {np.array2string(biases, precision=2)}")


def second_half_estimates(samples: np.ndarray, checkpoints: list[int]) -> list[tuple[float, float]]:
    """(mean, SE over chains) of each chain's mean over steps [k/2, k) for every checkpoint k."""
    out = []
    for k in checkpoints:
        per_chain = samples[:, k // 2: k].mean(axis=1)
        out.append(tuple(map(float, mean_and_se(per_chain))))
    return out


def print_table(times: list[float], estimates: dict) -> None:
    """One row per time: the estimate +- SE at each step size, and with two the linear extrapolation
    to eps -> 0 from the pair."""
    sizes = list(estimates)
    header = "".join(f" | {'eps ' + format(eps, 'g'):>16}" for eps in sizes)
    print(f"  {'time':>7}{header}" + (" | eps -> 0 (linear)" if len(sizes) == 2 else ""))
    for j, t in enumerate(times):
        row = "".join(f" | {estimates[eps][j][0]:7.2f} +- {estimates[eps][j][1]:5.2f}" for eps in sizes)
        if len(sizes) == 2:
            (big, small), (vb, vs) = sizes, (estimates[sizes[0]][j][0], estimates[sizes[1]][j][0])
            row += f" | {vs - (vb - vs) * small / (big - small):7.2f}"
        print(f"  {t:7.3g}{row}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="6,2", help="n,m of the quick grid's model (default %(default)s)")
    parser.add_argument("--probabilities", type=float, nargs="+", default=[1.0, 0.16, 0.01])
    parser.add_argument("--step-sizes", type=float, nargs="+", default=[0.03, 0.01],
                        help="one or two step sizes (time per step), larger first; with two, the linear "
                             "extrapolation to eps -> 0 is printed (default %(default)s)")
    parser.add_argument("--min-time", type=float, default=0.25, help="first printed time (default %(default)s)")
    parser.add_argument("--max-time", type=float, default=256.0, help="last printed time (default %(default)s)")
    parser.add_argument("--plain", action="store_true", help="M = I: plain full-batch SGLD")
    parser.add_argument("--metropolis", action="store_true",
                        help="accept or reject every step (MALA: exact at any step size; with --plain, plain MALA)")
    parser.add_argument("--pilot-time", type=float, default=0.0,
                        help="M from the Hessian averaged over plain SGLD chains (eps 1e-4) run for this sampler "
                             "time from w*, instead of the Hessian at w* (default %(default)s: at w*)")
    args = parser.parse_args(argv)
    if len(args.step_sizes) > 2 or sorted(args.step_sizes, reverse=True) != args.step_sizes:
        parser.error("--step-sizes takes one or two step sizes, larger first")
    if min(args.step_sizes) <= 0 or not 0 < args.min_time <= args.max_time or args.pilot_time < 0:
        parser.error("step sizes and times must be positive, --min-time at most --max-time, --pilot-time >= 0")
    n, m = (int(v) for v in args.model.split(","))
    loss_fn, params, data, labels = inputs(n, m, args.probabilities)
    n_samples = jax.tree_util.tree_leaves(data)[0].shape[1]
    nbeta = default_nbeta(n_samples)
    times = [args.min_time * 2 ** i for i in range(int(round(math.log2(args.max_time / args.min_time))) + 1)]
    where = f"averaged over a plain pilot of sampler time {args.pilot_time:g}" if args.pilot_time else "at w*"
    print(f"n{n}_m{m}, quick grid, seed 0; n = {n_samples}, full batch, nbeta {nbeta:.1f}, gamma {LOCALIZATION:g}, "
          f"{CHAINS} chains; {'plain' if args.plain else 'preconditioned by (nbeta H_+ + gamma)^-1, H ' + where}"
          f"{', Metropolis-adjusted (MALA)' if args.metropolis else ' Langevin (no accept/reject)'}",
          flush=True)
    for i, label in enumerate(labels):
        pick = lambda tree: jax.tree_util.tree_map(lambda x: x[i], tree)
        w_star, unravel = ravel_pytree(pick(params))
        data_i = pick(data)
        hessian = jax.jit(flat_hessian(loss_fn, unravel, data_i))  # compiled once per instance
        if args.pilot_time and not args.plain:
            H = pilot_hessian(loss_fn, w_star, unravel, data_i, hessian, nbeta=nbeta, gamma=LOCALIZATION,
                              sampler_time=args.pilot_time, key=jax.random.key(11))
        else:
            H = hessian(w_star)
        S, h = coordinates(loss_fn, w_star, unravel, data_i, nbeta, LOCALIZATION, args.plain, H)
        a = nbeta * np.maximum(np.asarray(h), 0.0) + LOCALIZATION
        print(f"{label}: d = {w_star.shape[0]}, nbeta h + gamma from {a.min():.3g} to {a.max():.3g}; "
              f"{int(np.sum(np.asarray(h) < 0))} negative Hessian eigenvalues (min {float(h.min()):.2e})", flush=True)
        at_start = end_stiffness(hessian, np.asarray(w_star)[None], S, nbeta, LOCALIZATION)
        estimates = {}
        for eps in args.step_sizes:
            steps = int(round(times[-1] / eps))
            start = time.perf_counter()
            samples, final, rate = run_chains(loss_fn, w_star, unravel, data_i, S, nbeta=nbeta, gamma=LOCALIZATION,
                                              step_size=eps, steps=steps, key=jax.random.key(7),
                                              metropolis=args.metropolis)
            bad = int(np.sum(~np.all(np.isfinite(samples), axis=1)))
            estimates[eps] = second_half_estimates(samples, [max(2, int(round(t / eps))) for t in times])
            stiffness = end_stiffness(hessian, final, S, nbeta, LOCALIZATION)
            accepted = f", accepted {np.array2string(rate, precision=3)}" if args.metropolis else ""
            print(f"  eps {eps:g}: {steps} steps, {time.perf_counter() - start:.0f} s, {bad} non-finite chains{accepted}; "
                  f"at the end: top curvature of the chain's coordinates {stiffness} (eps x it < 4 for stability; "
                  f"{at_start} at w*), {describe_offset(final, w_star, unravel)}", flush=True)
        print_table(times, estimates)


if __name__ == "__main__":
    main()
