"""How far does refining trained TMS weights to a critical point of L_n move them, and why?

The flagship measures both bases at each instance's trained weights refined to a critical point
of L_n (`analysis.refine`: full-batch L-BFGS on the LLC's n samples). This trains a few
instances as the flagship's quick grid does and, for each, prints the relative move
||w_refined - w_trained|| / ||w_trained|| (`analysis.refine.relative_move`), the loss gained
L_n(trained) - L_n(refined) and ||grad L_n|| at the trained weights, at several n, for two
learning-rate schedules (the flagship's constant one and a cosine decay to 0), and checks that
plain gradient descent on L_n from the trained weights (a discretised gradient flow) ends where
L-BFGS does: if it does, refinement is local in the sense that matters (it follows the loss
downhill from the trained weights), however far that is.

    python -m experiments.refinement_distance            # n5_m2 and n20_m5, n up to 65,536
    python -m experiments.refinement_distance --models 20x5 --n-samples 4096
    python -m experiments.refinement_distance --tiny     # seconds: what tests/ runs
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np

from analysis.refine import _grad_norm, refine_batched, relative_move
from experiments.weights_vs_activations import QUICK, model_key, model_train_config
from toy_models.train import llc_inputs, train_grid

FEATURE_PROBABILITIES = (1.0, 0.398, 0.158, 0.0251)


@dataclasses.dataclass(frozen=True)
class Settings:
    models: tuple[tuple[int, int], ...] = ((5, 2), (20, 5))
    feature_probabilities: tuple[float, ...] = FEATURE_PROBABILITIES
    seeds: int = 2
    train_steps: int = 3000  # the quick grid's
    schedules: tuple[str, ...] = ("constant", "cosine")
    n_samples: tuple[int, ...] = (4096, 16_384, 65_536)
    gd_learning_rate: float = 0.05
    gd_steps: int = 100_000  # plain gradient descent on L_n at the smallest n: where does the flow end?


TINY = Settings(models=((5, 2),), feature_probabilities=(1.0, 0.158), seeds=1, train_steps=300,
                schedules=("constant",), n_samples=(512,), gd_steps=2000)


def gradient_descent(loss_fn, params, data, *, learning_rate: float, steps: int):
    """Plain full-batch gradient descent on every instance (leaves `(instance, ...)`), `steps` steps."""

    def one(p, d):
        step = lambda _, q: jax.tree_util.tree_map(lambda a, g: a - learning_rate * g, q, jax.grad(loss_fn)(q, d))
        return jax.lax.fori_loop(0, steps, step, p)

    return jax.jit(jax.vmap(one))(params, data)


def measure(n: int, m: int, settings: Settings, schedule: str) -> list[dict]:
    """One row per (n_samples, feature probability, seed) for model (n, m) trained with `schedule`."""
    config = dataclasses.replace(model_train_config(n, m, QUICK), feature_probabilities=settings.feature_probabilities,
                                 seeds=settings.seeds, steps=settings.train_steps, schedule=schedule)
    train = train_grid(config, progress=False)
    rows = []
    for i, n_samples in enumerate(settings.n_samples):
        loss_fn, params, data = llc_inputs(train, n_samples=n_samples, key=jax.random.fold_in(model_key(n, m, QUICK), 2))
        refined, before, _ = refine_batched(loss_fn, params, data, steps=QUICK.refine_steps, tol=QUICK.refine_tol)
        loss = jax.jit(jax.vmap(loss_fn))
        gained = np.asarray(loss(params, data) - loss(refined, data))
        moved = np.asarray(relative_move(params, refined))
        apart, gd_grad, gd_above = (np.full_like(moved, np.nan) for _ in range(3))
        if i == 0:  # where plain gradient descent ends, against L-BFGS's end
            flowed = gradient_descent(loss_fn, params, data, learning_rate=settings.gd_learning_rate,
                                      steps=settings.gd_steps)
            apart = np.asarray(relative_move(refined, flowed))
            gd_grad = np.asarray(jax.jit(jax.vmap(lambda p, d: _grad_norm(jax.grad(loss_fn)(p, d))))(flowed, data))
            gd_above = np.asarray(loss(flowed, data) - loss(refined, data))
        for j in range(moved.size):
            rows.append({"model": f"n{n}_m{m}", "schedule": schedule, "n": n_samples,
                         "p": config.feature_probabilities[j // settings.seeds], "seed": j % settings.seeds,
                         "move": float(moved[j]), "gained": float(gained[j]), "grad": float(np.asarray(before)[j]),
                         "gd_apart": float(apart[j]), "gd_grad": float(gd_grad[j]), "gd_above": float(gd_above[j])})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | schedule | n | p | seed | move | L_n gained | grad at trained | GD end vs L-BFGS end "
             "| grad at GD end | L_n(GD end) - L_n(L-BFGS end) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gd = ("| | |" if np.isnan(r["gd_apart"])
              else f"{r['gd_apart']:.3f} | {r['gd_grad']:.1e} | {r['gd_above']:+.1e} |")
        lines.append(f"| {r['model']} | {r['schedule']} | {r['n']} | {r['p']:.3g} | {r['seed']} | {r['move']:.3f} | "
                     f"{r['gained']:.2e} | {r['grad']:.1e} | {gd}")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per (model, schedule, p): the median move at each n, as one line each."""
    out = []
    keys = sorted({(r["model"], r["schedule"], r["p"]) for r in rows}, key=lambda k: (k[0], k[1], -k[2]))
    for model, schedule, p in keys:
        by_n = {}
        for r in rows:
            if (r["model"], r["schedule"], r["p"]) == (model, schedule, p):
                by_n.setdefault(r["n"], []).append(r["move"])
        moves = ", ".join(f"n={n}: {np.median(v):.3f}" for n, v in sorted(by_n.items()))
        out.append(f"{model} {schedule:8s} p={p:<6.3g} median move {moves}")
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run of the same code (tests)")
    parser.add_argument("--models", type=lambda v: tuple(tuple(int(x) for x in nm.split("x")) for nm in v.split(",")),
                        help="models as NxM, comma-separated (default: 5x2,20x5)")
    parser.add_argument("--n-samples", type=lambda v: tuple(int(x) for x in v.split(",")),
                        help="the n of L_n, comma-separated (default: 4096,16384,65536); the first runs gradient descent")
    args = parser.parse_args(argv)
    settings = TINY if args.tiny else Settings()
    settings = dataclasses.replace(settings, **{k: v for k, v in (("models", args.models),
                                                                  ("n_samples", args.n_samples)) if v})
    rows = []
    for n, m in settings.models:
        for schedule in settings.schedules:
            rows += measure(n, m, settings, schedule)
            print(f"n{n}_m{m} {schedule}: done", flush=True)
    print(table(rows))
    print()
    print(summary(rows))
    apart = np.array([r["gd_apart"] for r in rows if not np.isnan(r["gd_apart"])])
    print(f"\nplain gradient descent ({settings.gd_steps} steps at lr {settings.gd_learning_rate}) ends within "
          f"5% of ||w|| of L-BFGS's end on {int((apart < 0.05).sum())} of {apart.size} instances (median "
          f"{np.median(apart):.4f}, largest {apart.max():.3f} ||w||)")


if __name__ == "__main__":
    main()
