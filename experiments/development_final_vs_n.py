"""Study: the development part's final snapshots, each calibrated, against n.

The flagship's development part (Chen et al.'s 6-feature, 2-neuron TMS trained by SGD from a
small initialisation) calibrates once, on seed 0's final weights, and uses that step size and
chain length for every snapshot of every seed. At the grid's n = 16,384 (its setting until this
study) its final snapshots, all in the class 5-gon with one positive dead bias (lambda 8.5),
read 9.58, 10.42, 9.34, 8.75: median |relative error| 11%, all above. This trains
the same development grid (the flagship's settings; `--size`), and for each n estimates every
seed's final weights with its *own* calibration (`calibrate_batched` on the flagship's budget,
full batch through the closed form of L_n, so the cost does not grow with n), and prints each
estimate against its class's lambda.

    python -m experiments.development_final_vs_n [--size default] [--log2-n 14 16 18] [--sampler sgld]

With `--flagship OUT` it instead runs the flagship's own development part at `--size`
(`weights_vs_activations.run_development`: one calibration for every snapshot, n =
`development_samples`, chains of at most `development_max_steps`; `--n`, `--max-steps` and
`--long-check-steps` override them) into OUT and prints the chosen settings and the report's
development finding. Without it, `--max-steps` sets the per-seed calibrations' cap. `--sampler`:
Metropolis-adjusted chains (`mala`, the flagship's `development_metropolis` default) or plain SGLD
(`sgld`, the flagship's development sampler until 2026-12-05, which printed the numbers above).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from analysis.development import full_batch_inputs
from experiments.weights_vs_activations import SIZES, _calibrate
from slt_superposition import estimate_llc_batched, grid
from slt_superposition.theory import critical_point_class
from toy_models.train import TrainConfig, llc_inputs, train_grid


def development_config(size: str) -> tuple[TrainConfig, object]:
    """The flagship's development training at `size`, without snapshots (the final weights)."""
    config = SIZES[size]
    return TrainConfig(
        n_features=6, n_hidden=2, feature_probabilities=(1.0,), seeds=config.development_seeds,
        steps=config.development_steps, batch_size=config.development_batch_size, data="high_sparsity_limit",
        optimizer="sgd", learning_rate=config.development_learning_rate, init_scale=config.development_init_scale,
    ), config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="the flagship size to follow")
    parser.add_argument("--log2-n", type=int, nargs="+", default=[14, 16, 18], help="sample counts n = 2^k")
    parser.add_argument("--flagship", metavar="OUT", help="run the flagship's development part into OUT instead")
    parser.add_argument("--n", type=int, help="with --flagship: development_samples")
    parser.add_argument("--max-steps", type=int,
                        help="the calibration's chain-length cap (with --flagship: development_max_steps)")
    parser.add_argument("--long-check-steps", type=int, help="with --max-steps: the long check's cap (default twice)")
    parser.add_argument("--sampler", choices=("mala", "sgld"), default="mala",
                        help="Metropolis-adjusted chains (the flagship's development default) or plain SGLD")
    args = parser.parse_args(argv)
    metropolis = args.sampler == "mala"
    if args.n is not None and not args.flagship:
        parser.error("--n goes with --flagship (the per-seed study takes --log2-n)")
    if args.long_check_steps is not None and args.max_steps is None:
        parser.error("--long-check-steps goes with --max-steps")
    caps = {}
    if args.max_steps is not None:
        caps = {"max_steps": args.max_steps, "long_check_steps": args.long_check_steps or 2 * args.max_steps}
    if args.flagship:
        flagship_development(args.size, Path(args.flagship), args.n, metropolis=metropolis, **caps)
        return
    if not all(8 <= k <= 24 for k in args.log2_n):
        parser.error("--log2-n values must be in 8..24")
    train_config, config = development_config(args.size)
    print(f"sampler: {'Metropolis-adjusted (MALA)' if metropolis else 'plain SGLD'}", flush=True)
    if caps:
        config = dataclasses.replace(config, calibration_max_steps=caps["max_steps"],
                                     calibration_long_check_steps=caps["long_check_steps"])
    train = train_grid(train_config, progress=False)
    W = train["W"].transpose(*grid.GRID_DIMS, "hidden", "feature").values.reshape(-1, 2, 6)
    b = train["b"].transpose(*grid.GRID_DIMS, "feature").values.reshape(-1, 6)
    classes = [critical_point_class(w, bias) for w, bias in zip(W, b)]
    for k in args.log2_n:
        start = time.perf_counter()
        key = jax.random.key(config.seed + 10 * k)
        loss_fn, params, data = llc_inputs(train, n_samples=2 ** k, key=jax.random.fold_in(key, 0))
        loss_fn, data = full_batch_inputs(train, loss_fn, data)
        dims = grid.grid_coords(train)
        sgld, sweep = _calibrate(loss_fn, params, data, jax.random.fold_in(key, 1),
                                 dataclasses.replace(config, llc_batch_size=None), instance_dims=dims,
                                 metropolis=metropolis)
        llc = estimate_llc_batched(loss_fn, params, data, config=sgld, key=jax.random.fold_in(key, 2),
                                   instance_dims=dims, check_steps=config.check_steps, calibration=sweep)
        mean, se = llc["llc_mean"].values.ravel(), llc["llc_se"].values.ravel()
        eps, steps = np.ravel(sgld.step_size), np.ravel(sgld.num_steps)
        rel = []
        print(f"n = 2^{k}: {time.perf_counter() - start:.0f} s", flush=True)
        for i, c in enumerate(classes):
            theory = c.llc
            err = (mean[i] - theory) / theory if theory else float("nan")
            rel.append(abs(err))
            print(f"    seed {i}: {c.label}, llc {mean[i]:.2f} +- {se[i]:.2f} vs {theory if theory else 'no theory'}"
                  f" ({err:+.0%}); eps {eps[i]:.2g}, {int(steps[i])} steps, settled "
                  f"{bool(sweep['converged'].values.ravel()[i])}", flush=True)
        print(f"    median |relative error| {np.nanmedian(rel):.0%}", flush=True)


def flagship_development(size: str, out: Path, n: int | None = None, max_steps: int | None = None,
                         long_check_steps: int | None = None, metropolis: bool = True) -> None:
    """The flagship's development part at `size` (overrides: n, and the chain caps, both or neither;
    `metropolis`: its sampler) into `out`; prints the calibration's choice and the report's
    development finding."""
    import xarray as xr

    from analysis.compare_plots import _development_finding
    from experiments.weights_vs_activations import KGON_LLC, run_development

    config = dataclasses.replace(SIZES[size], development_metropolis=metropolis)
    if n is not None:
        config = dataclasses.replace(config, development_samples=n)
    if max_steps is not None:
        if long_check_steps is None:
            raise ValueError("max_steps needs long_check_steps (main() defaults it to twice max_steps)")
        config = dataclasses.replace(config, development_max_steps=max_steps,
                                     development_long_check_steps=long_check_steps)
    start = time.perf_counter()
    dev = run_development(config, out, progress=False)
    calibration = xr.open_dataset(out / "calibration" / "development.nc")
    choice = {name: calibration[name].values.item() for name in ("chosen_step_size", "chosen_num_steps", "converged")}
    print(f"{time.perf_counter() - start:.0f} s; n = {config.development_samples}, at most "
          f"{config.development_max_steps} steps, {'MALA' if metropolis else 'SGLD'}: eps "
          f"{choice['chosen_step_size']:.2g}, {choice['chosen_num_steps']} steps, settled {bool(choice['converged'])}; "
          f"snapshots trusted {int(dev['llc_trusted'].sum())} of {dev['llc_trusted'].size}")
    print(_development_finding(dev, KGON_LLC))


if __name__ == "__main__":
    main()
