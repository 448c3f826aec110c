"""Study: is the gap between minibatch and full-batch LLC estimates the minibatch's gradient noise?

`slt_superposition.minibatch_noise` predicts, on the quadratic approximation of L_n at w*, how much
i.i.d. minibatches of size B raise the estimate at step size eps: each Hessian direction's share
grows by eps nbeta^2 c_i / (4 B), c_i the rows' gradient variance along it. This measures it.

For each case (a refined point and its n rows) and step size, the LLC is estimated at each batch
size and at full batch with the same key, so the chains share their SGLD noise and the paired
difference (per chain, minibatch minus full batch; mean and standard error over chains) isolates
what the minibatch adds. Beside it: the predicted difference, `quadratic_llc_minibatch` at B minus
at full batch, and both quadratic predictions themselves.

Cases:
- `kgon6`: the refined 6-gon (Chen et al.'s class; experiments.kgon_llc, n = 1e5, full batch through
  the closed form of L_n), eps 3.16e-5 and 1e-5, batches 100 and 500: a regular minimum up to
  the rotation, where the quadratic approximation holds.
- `n6_m2`, `n20_m5`: TMS instances trained as `reproduce tms-llc-vs-n` trains them (p = 0.398,
  3000 steps) and refined on n rows: n6_m2 at n = 65,536 and eps 1e-4 (where batch 512 read 2 llc / d
  of about 1.37 against 1.12 at full batch), n20_m5 at n = 16,384 and eps 3e-4 and 1e-4.
- `n6_m2_dense`, `n6_m2_sparse`: n6_m2 at p = 1 and p = 0.05, n = 16,384 (the flagship's n), at
  step sizes around the ones the flagship's calibration chose there (`TMS_CASES`).

    python -m experiments.minibatch_bias [--cases kgon6 n6_m2 n20_m5] [--chains 8] [--sampling epoch]
    python -m experiments.minibatch_bias --flagship DIR [--models n6_m2 n20_m5]   # default: the run's models
    python -m experiments.minibatch_bias --flagship DIR --instance n5_m2 18 3 [--chains 16] [--lengths 300 4000]

`--flagship DIR` reads a finished `reproduce weights-vs-activations` run instead (its train_*.nc
and calibration/*.nc): it refines each model's instances again as the run did (same keys, so the
same points), predicts the minibatch bias of every instance at its calibrated step size and
localization for each batch size the calibration's minibatch stage tried, and prints beside it
what those paired checks measured: no chain is run.

`--instance MODEL P_INDEX SEED` (with `--flagship`) takes one instance's minibatch check apart: the
calibration's own paired runs again with its keys (so the stored numbers), pair by pair, with the
pooled batch-means standard error and the checks' (`diagnostics.difference_se`); then `--chains` pairs
on another key at each of `--lengths`, beside the bias predicted at w* and with the rows' gradient
variance where the full-batch chains ended, and how far those ended from w*. Both `--flagship` modes
read the run's own settings from its `weights_vs_activations.nc` (any size, any `--set` fields;
`weights_vs_activations.config_of_run`) and repeat its keys.

`--sampling epoch`: the minibatch chains draw their batches without replacement, a fresh permutation
every epoch (`SGLDConfig.sampling`), against the prediction for that sampling
(`minibatch_noise.epoch_terms`); their SGLD noise is then drawn in other chunks than full batch's, so
the excess is a difference of independent estimates, not a paired one.

Prints one markdown row per (case, eps, batch). The results are in docs/calibration.md ("The
minibatch's bias, predicted").
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, NamedTuple

import jax
import numpy as np

from slt_superposition.errors import require
from slt_superposition.diagnostics import mean_and_se
from slt_superposition.llc import SGLDConfig, default_nbeta, estimate_llc
from slt_superposition.markdown import table
from slt_superposition.minibatch_noise import noise_spectrum, quadratic_llc_minibatch

# the trained TMS cases: (model, feature probability, n, step sizes, batch sizes)
TMS_CASES = {"n6_m2": ("n6_m2", 0.398, 65_536, (1e-4,), (512,)),
             "n20_m5": ("n20_m5", 0.398, 16_384, (3e-4, 1e-4), (512,)),
             "n6_m2_dense": ("n6_m2", 1.0, 16_384, (1e-4, 3.16e-5), (512,)),
             "n6_m2_sparse": ("n6_m2", 0.05, 16_384, (1e-3, 1.78e-4), (512,))}
SAMPLER_TIME = {"kgon6": 0.25, **{name: 1.0 for name in TMS_CASES}}  # eps x steps per chain


class Case(NamedTuple):
    name: str
    loss_fn: Callable  # on rows (minibatches)
    full_loss: Callable  # the same L_n, full batch (kgon6: the closed form)
    params: dict
    data: object  # rows, leaves (n, ...)
    full_data: object
    n: int
    step_sizes: tuple
    batches: tuple
    key: jax.Array


class FlagshipModel(NamedTuple):
    loss_fn: Callable
    params: dict  # leaves (instance, ...)
    data: object  # leaves (instance, n, ...)
    calibration: object  # its calibration dataset
    key: jax.Array  # the model's key (`weights_vs_activations.model_key`)
    config: object  # the run's FlagshipConfig


def kgon_case() -> Case:
    from experiments.kgon_llc import N_SAMPLES, case_loss, kgon_loss, refined_kgon

    x, params, _, key = refined_kgon(6, 0)
    full_loss, full_data = case_loss(x, None)
    return Case("kgon6", kgon_loss, full_loss, params, x, full_data, N_SAMPLES, (3.16e-5, 1e-5), (100, 500), key)


def tms_case(name: str) -> Case:
    import experiments.tms_llc_vs_n as study

    model, p, n, step_sizes, batches = TMS_CASES[name]
    train = study._train(model, (p,), 3000)
    loss_fn, params, data, _, key = study.refined_point(train, 0, n)
    return Case(name, loss_fn, loss_fn, params, data, data, n, step_sizes, batches, key)


def estimate(case: Case, eps: float, batch: int | None, chains: int, sampling: str = "replacement"):
    steps = int(round(SAMPLER_TIME[case.name] / eps))
    config = SGLDConfig(step_size=eps, localization=1.0, num_chains=chains, num_steps=steps, num_burnin=steps // 2,
                        batch_size=batch, trace_every=max(1, steps // 200), sampling=sampling)
    loss_fn, data = (case.loss_fn, case.data) if batch else (case.full_loss, case.full_data)
    est = estimate_llc(loss_fn, case.params, data, config=config, key=case.key, checks=False)
    return est["llc_per_chain"].values.astype(np.float64), ~est["diverged"].values, steps


def mean_se(values: np.ndarray) -> tuple[float, float]:
    return tuple(map(float, mean_and_se(values[np.isfinite(values)])))


def measure(case: Case, chains: int, sampling: str = "replacement") -> list[dict]:
    spectrum = noise_spectrum(case.loss_fn, case.params, case.data)
    d = spectrum.eigenvalues.size
    nbeta = default_nbeta(case.n)
    rows = []
    for eps in case.step_sizes:
        t0 = time.perf_counter()
        full, full_ok, steps = estimate(case, eps, None, chains)
        predicted_full = float(quadratic_llc_minibatch(spectrum, eps, 1.0, nbeta, None))
        for batch in case.batches:
            mini, mini_ok, _ = estimate(case, eps, batch, chains, sampling)
            ok = full_ok & mini_ok
            predicted = float(quadratic_llc_minibatch(spectrum, eps, 1.0, nbeta, batch, sampling=sampling, n=case.n))
            m, m_se = mean_se(mini[ok])
            f, f_se = mean_se(full[ok])
            diff, diff_se = mean_se(mini[ok] - full[ok])
            rows.append({"case": case.name, "n": case.n, "d": d, "eps": f"{eps:g}", "batch": batch, "steps": steps,
                         "chains": int(ok.sum()), "minibatch": f"{m:.2f} +- {m_se:.2f}",
                         "full batch": f"{f:.2f} +- {f_se:.2f}",
                         "paired excess" if sampling == "replacement" else "excess (not paired)":
                             f"{diff:+.2f} +- {diff_se:.2f} ({diff / f:+.1%})",
                         "predicted excess": f"{predicted - predicted_full:+.2f} ({predicted / predicted_full - 1:+.1%})",
                         "quadratic (full / batch)": f"{predicted_full:.2f} / {predicted:.2f}",
                         "seconds": f"{time.perf_counter() - t0:.0f}"})
            print(table(list(rows[-1]), [rows[-1].values()]).splitlines()[-1], flush=True)
    return rows


def flagship_model(run_dir: str, label: str) -> FlagshipModel:
    """One model of a finished flagship run, refined again as the run refined it (its settings, read
    from the run, and its keys: so the same points), with one instance axis (the grid dims flattened,
    `GRID_DIMS` order)."""
    import jax.numpy as jnp
    import xarray as xr

    import experiments.weights_vs_activations as flagship
    from slt_superposition.grid import GRID_DIMS
    from slt_superposition.io import open_result

    config = flagship.config_of_run(run_dir)
    labels = [flagship.model_label(n, m) for n, m in config.models]
    require(label in labels, f"{run_dir} has no model {label!r} (its models: {', '.join(labels)})")
    n_features, n_hidden = (int(part[1:]) for part in label.split("_"))
    train = open_result(f"{run_dir}/train_{label}.nc", kind="train")
    calibration = xr.open_dataset(f"{run_dir}/calibration/{label}.nc")
    key = flagship.model_key(n_features, n_hidden, config)
    loss_fn, params, data, _ = flagship._refined_inputs(train, config, jax.random.fold_in(key, 2))
    leading = len(GRID_DIMS)  # params and data lead with the grid dims; one instance axis instead
    flat = lambda tree: jax.tree_util.tree_map(lambda x: jnp.reshape(x, (-1,) + x.shape[leading:]), tree)
    return FlagshipModel(loss_fn, flat(params), flat(data), calibration, key, config)


def flagship_comparison(run_dir: str, models: list[str]) -> None:
    """Per model of a finished flagship run and per batch size its calibration tried: the predicted
    minibatch bias (median, largest, share above 2%) against the paired checks' measured relative
    difference (median, share failed), and on the instances that failed, the predictions."""
    from slt_superposition.grid import GRID_DIMS
    from slt_superposition.minibatch_noise import noise_spectrum_batched, predicted_batch_bias

    for label in models:
        t0 = time.perf_counter()
        loss_fn, params, data, calibration, _, config = flagship_model(run_dir, label)
        spectrum = noise_spectrum_batched(loss_fn, params, data, data_batched=True)
        n = config.llc_samples
        dims = GRID_DIMS
        eps = calibration["chosen_step_size"].transpose(*dims).values.ravel()
        gamma = calibration["chosen_localization"].transpose(*dims).values.ravel()
        print(f"{label}: {eps.size} instances, n = {n}, nbeta = n / log n ({time.perf_counter() - t0:.0f} s)")
        for j, batch in enumerate(calibration["batch_check"].values):
            predicted = predicted_batch_bias(spectrum, eps, gamma, default_nbeta(n), int(batch))
            measured = calibration["batch_check_rel_diff"].isel(batch_check=j).transpose(*dims).values.ravel()
            passed = calibration["batch_check_passed"].isel(batch_check=j).transpose(*dims).values.ravel().astype(bool)
            se = calibration["batch_check_se"].isel(batch_check=j).transpose(*dims).values.ravel()
            ran = np.isfinite(measured)
            failed = ran & ~passed
            print(f"  batch {int(batch)}: predicted median {np.median(predicted[ran]):+.2%}, largest "
                  f"{predicted[ran].max():+.2%}, above 2% on {(predicted[ran] > 0.02).mean():.0%}; measured median "
                  f"{np.median(measured[ran]):+.2%}, failed on {failed.sum()} of {ran.sum()}"
                  + (" (measured +- SE / predicted: " + ", ".join(
                      f"{m:+.1%} +- {e:.1%} / {v:+.2%}" for m, e, v in zip(measured[failed], se[failed],
                                                                         predicted[failed])) + ")"
                     if failed.any() else ""))


def instance_study(run_dir: str, label: str, p_index: int, seed: int, chains: int, lengths: list[int]) -> None:
    """A flagship instance's minibatch check, taken apart: the calibration's own paired runs again
    (same keys, so the same numbers), chain by chain, with the pooled batch-means SE and the SE the
    checks use now (`diagnostics.difference_se`); then `chains` paired chains on another key at
    each of `lengths`, against the bias predicted from w* and from where the full-batch chains ended."""
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from slt_superposition.calibration import BATCH_MEANS, _sampler
    from slt_superposition.curvature import dense_hessian
    from slt_superposition.diagnostics import batch_means_se, difference_se
    from slt_superposition.grid import GRID_DIMS
    from slt_superposition.minibatch_noise import NoiseSpectrum, gradient_variance_along, predicted_batch_bias

    loss_fn, params, data, calibration, key, config = flagship_model(run_dir, label)
    where = {"feature_probability": p_index, "importance_decay": 0, "seed": seed}
    index = int(np.ravel_multi_index([where[d] for d in GRID_DIMS], [calibration.sizes[d] for d in GRID_DIMS]))
    cal = calibration.isel(where)
    n, n_inst = config.llc_samples, int(jax.tree_util.tree_leaves(params)[0].shape[0])
    nbeta = default_nbeta(n)
    eps, gamma = float(cal["chosen_step_size"]), float(cal["chosen_localization"])
    p1, d1 = (jax.tree_util.tree_map(lambda x: x[index], tree) for tree in (params, data))
    w_star, unravel = ravel_pytree(p1)
    print(f"{label} at p = {float(cal['feature_probability']):.4g}, seed {seed}: eps {eps:g}, localization {gamma:g}, "
          f"n = {n}, d = {w_star.size}")
    # the calibration's batch stage: its key, its chains, its check lengths (calibrate_batched's key split)
    cal_key, other_key = jax.random.split(jax.random.fold_in(key, 1))  # as the flagship's _calibrated_llc
    batch_key = jax.random.split(cal_key, 4)[3]  # as calibrate_batched
    sampler = _sampler(loss_fn, params, data, data_batched=True, n=n, d=w_star.size, nbeta=nbeta,
                       num_chains=config.calibration_chains, burnin_fraction=0.5, mesh=None)
    runs = {}  # (chain length, batch) -> the calibration's run of that length, only this instance active

    def run(length: int, batch):
        if (length, batch) not in runs:
            runs[length, batch] = sampler.run(batch_key, eps, np.where(np.arange(n_inst) == index, length, 0), gamma,
                                              batch)
        return runs[length, batch]

    for j, batch in enumerate(cal["batch_check"].values):
        length = int(cal["batch_check_steps"].isel(batch_check=j))
        mini, ref = run(length, int(batch)), run(length, None)
        paired = mini.per_chain[index] - ref.per_chain[index]
        trace = (mini.trace.astype(np.float64) - ref.trace)[index][None]
        healthy = np.isfinite(paired)[None]
        pooled, now = (nbeta * f(trace, mini.post[index][None], healthy, BATCH_MEANS)[0] / abs(ref.llc[index])
                       for f in (batch_means_se, difference_se))
        print(f"  calibration's check at batch {int(batch)}, {length} steps: full batch {ref.llc[index]:.3f}, "
              f"minibatch {mini.llc[index]:.3f}, {np.nanmean(paired) / abs(ref.llc[index]):+.1%} "
              f"(stored {float(cal['batch_check_rel_diff'].isel(batch_check=j)):+.1%}); per chain "
              f"{', '.join(f'{v:+.2f}' for v in paired)}; SE pooled batch means {pooled:.1%} "
              f"(stored {float(cal['batch_check_se'].isel(batch_check=j)):.1%}), "
              f"with the chains' spread {now:.1%}")
    # more chains, another key, longer; the Hessian at w* once: its eigenvalues, and the directions along
    # which the rows' gradient variance is read at w* and where the chains ended
    h, V = np.linalg.eigh(np.asarray(dense_hessian(lambda v, rows: loss_fn(unravel(v), rows), w_star, d1), np.float64))
    spectrum = NoiseSpectrum(h, gradient_variance_along(loss_fn, p1, d1, V))
    for length in lengths:
        sample = lambda batch: estimate_llc(
            loss_fn, p1, d1, key=jax.random.fold_in(other_key, 99), checks=False,
            config=SGLDConfig(step_size=eps, localization=gamma, num_chains=chains, num_steps=length,
                              num_burnin=length // 2, batch_size=batch, trace_every=max(1, length // 50)))
        full_run = sample(None)
        reference = full_run["llc_per_chain"].values.astype(np.float64)
        ends = full_run["final_position"].values
        distance = np.linalg.norm(ends - np.asarray(w_star), axis=-1) / float(jnp.linalg.norm(w_star))
        c_end = np.mean([gradient_variance_along(loss_fn, unravel(jnp.asarray(e, jnp.float32)), d1, V) for e in ends],
                        axis=0)
        at_ends = NoiseSpectrum(h, c_end)
        print(f"  {chains} chains x {length} steps: full batch {reference.mean():.3f} +- "
              f"{mean_and_se(reference)[1]:.3f}; the chains ended {np.median(distance):.2f} x |w*| "
              f"from w* (median; {distance.min():.2f} to {distance.max():.2f})")
        for batch in cal["batch_check"].values:
            diff = sample(int(batch))["llc_per_chain"].values.astype(np.float64) - reference
            m, se = mean_se(diff)
            print(f"    batch {int(batch)}: paired excess {m / reference.mean():+.1%} +- {se / reference.mean():.1%} "
                  f"(per chain {np.min(diff):+.2f} to {np.max(diff):+.2f}); predicted at w* "
                  f"{float(predicted_batch_bias(spectrum, eps, gamma, nbeta, int(batch))):+.2%}, with the rows' "
                  f"gradient variance where the chains ended {float(predicted_batch_bias(at_ends, eps, gamma, nbeta, int(batch))):+.2%}",
                  flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["kgon6", "n6_m2", "n20_m5"], choices=list(SAMPLER_TIME))
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--sampling", choices=["replacement", "epoch"], default="replacement",
                        help="the minibatch chains' sampling (full batch is the same either way); with epoch the "
                             "chains draw other noise than their full-batch twins, so the excess is not paired")
    parser.add_argument("--flagship", metavar="DIR", help="a finished weights-vs-activations run to read instead")
    parser.add_argument("--models", nargs="+", help="with --flagship: the models to read (default: every model of "
                                                    "the run)")
    parser.add_argument("--instance", nargs=3, metavar=("MODEL", "P_INDEX", "SEED"),
                        help="with --flagship: one instance's minibatch check taken apart (e.g. n5_m2 18 3)")
    parser.add_argument("--lengths", nargs="+", type=int, default=[300, 4000],
                        help="with --instance: chain lengths of the paired runs on another key")
    args = parser.parse_args(argv)
    if args.instance:
        if not args.flagship:
            parser.error("--instance needs --flagship DIR")
        label, p_index, seed = args.instance
        instance_study(args.flagship, label, int(p_index), int(seed), args.chains, args.lengths)
        return
    if args.flagship:
        from experiments.weights_vs_activations import config_of_run, model_label

        models = args.models or [model_label(n, m) for n, m in config_of_run(args.flagship).models]
        flagship_comparison(args.flagship, models)
        return
    rows = []
    for name in args.cases:
        case = kgon_case() if name == "kgon6" else tms_case(name)
        rows += measure(case, args.chains, args.sampling)
    print()
    print(table(list(rows[0]), [row.values() for row in rows]))


if __name__ == "__main__":
    from slt_superposition.errors import InputError

    try:
        main()
    except InputError as err:  # a folder without a finished run, a model it lacks: one line
        raise SystemExit(f"error: {err}") from None
