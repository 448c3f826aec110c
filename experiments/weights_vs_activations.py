"""The flagship: the weight basis (LLC, Hessian and Gauss-Newton rank) against the activation
basis (represented features, features per dimension, SAE recovery) on the same trained TMS.

    slt-superposition reproduce weights-vs-activations [--quick|--full] [--set FIELD=VALUE ...] --out DIR

(`--set` replaces one field of `FlagshipConfig`, e.g. `--set calibration_max_steps=19200` for longer
chains; the report's command line names every field that differs from the size's settings.)

For every model (n features, m hidden) in the grid, every (feature probability, seed) instance
is trained in one program, refined to a critical point of L_n on the LLC's n samples
(`analysis.refine`), its LLC estimated there with one compiled program (`calibrate_batched`
chooses every instance's own step size and chain length; every estimate carries its bias checks
and a `trusted` flag), its Hessian and Gauss-Newton ranks computed at the same point, TopK SAEs of several
dictionary sizes trained on the hidden activations of the same point, and both sides (k/m, D* and
the SAEs read the refined weights too) joined by `analysis.compare.compare`. A second part follows Chen et al.'s 6-feature, 2-neuron TMS along
training (LLC and k/m of every snapshot, Metropolis-adjusted chains on the closed form of L_n).
Each model is one chunk of a resumable sweep.
Writes `weights_vs_activations.nc`, `development.nc`, the per-model `train_*.nc`, figures and
`report.md` into the output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from analysis.chain_excursions import chain_excursions
from analysis.compare import FLAGSHIP_DATASET, compare, join_models, out_of_range_cause
from analysis.development import development, full_batch_inputs
from analysis.measures import feature_norms, n_represented, represented_features
from analysis.refine import refine_batched, relative_move
from analysis.retrain_response import retrain_perturbed, training_response
from analysis.sae import mmcs, recovered_overcompleteness
from analysis.sae_recovery import grid_saes, recovery_line, recovery_scores, well_posed
from analysis.susceptibility_report import flagship_susceptibility_chains, flagship_susceptibility_summary
from analysis.weight_basis import rank_above_gradient_floor, weight_basis_measures
from slt_superposition import grid
from slt_superposition.calibration import calibrate_batched
from slt_superposition.errors import InputError, require
from experiments.registry import changed_fields, command_line, replace_fields
from slt_superposition.io import save_dataset
from slt_superposition.llc import SGLDConfig, estimate_llc_batched
from slt_superposition.provenance import provenance_attrs, read_config
from slt_superposition.sharding import is_multiprocess
from slt_superposition.sweep import check_sweep_folder, run_sweep
from toy_models.tms import tms_forward
from toy_models.train import GRID_DIMS, TrainConfig, llc_inputs, train_grid

NAME = "weights-vs-activations"
KGON_LLC = {5: 7.0, 6: 8.5}  # Chen et al. 2023, theoretical LLC of the 5- and 6-gon (docs/references.md)


HALF_DECADES = tuple(float(10.0 ** (e / 2)) for e in range(-12, -3))  # 1e-6 .. 1e-2
QUARTER_DECADES = tuple(float(10.0 ** (e / 4)) for e in range(-24, -7))  # 1e-6 .. 1e-2


CHAIN_COUNT_FIELDS = ("llc_chains", "calibration_chains")  # at least 2: R-hat compares chains


@dataclasses.dataclass(frozen=True)
class FlagshipConfig:
    """Every setting that decides the flagship's numbers (stored in the dataset's attrs)."""

    models: tuple[tuple[int, int], ...] = ((4, 2), (5, 2), (6, 2), (8, 2), (20, 5))
    n_feature_probabilities: int = 20  # log-spaced from 1 to min_feature_probability
    min_feature_probability: float = 0.01
    seeds: int = 8
    train_steps: int = 5000
    batch_size: int = 1024
    llc_samples: int = 16_384  # n, the data set the LLC (and nbeta = n / log n) refers to
    llc_chains: int = 2  # per instance in the grid (8 seeds per feature probability)
    llc_batch_size: int = 512
    calibration_chains: int = 4
    calibration_step_sizes: tuple[float, ...] = QUARTER_DECADES  # 1e-6..1e-2; ratio 1.78, so the long check is cheap
    calibration_sweep_steps: int = 500
    calibration_min_steps: int = 1000
    calibration_max_steps: int = 4000
    calibration_long_check_steps: int = 7200  # calibrate's long-chain bias check (stage 3) at most this long
    check_steps: int = 300  # short paired runs of the minibatch check (calibration) and the stored bias checks
    # None: the Hessian and Gauss-Newton ranks on every LLC sample, L_n itself (refined to a critical point
    # of it); an int: on the first that many, cheaper, but the Hessian of another loss, at a point that is
    # not critical for it (its gradient sets the rank's floor): ranks and "not a minimum" then misread
    hessian_samples: int | None = None
    refine_steps: int = 300  # at most this many L-BFGS iterations on L_n before the LLC and the Hessian (analysis.refine)
    refine_tol: float = 1e-6  # ... stopping once ||grad L_n|| is at most this
    sae_seeds: int = 1  # SAEs are trained on the first `sae_seeds` seeds of every feature probability
    sae_samples: int = 8192
    sae_steps: int = 3000
    sae_restarts: int = 4  # initialisations per dictionary; the lowest training FVU is kept
    sae_train_b_pre: bool = False  # b_pre fixed at the activations' median (0): docs/experiments/sae_recovery.md
    sae_resample: bool = True  # dead, rare and duplicate latents resampled at 20/40/60% of the SAE steps (same page)
    development_steps: int = 10_000  # plain SGD from a small initialisation (Chen et al.'s k-gon dynamics)
    development_learning_rate: float = 0.1
    development_init_scale: float = 0.01  # W starts near the origin saddle, so training steps through k-gons
    development_batch_size: int = 256
    development_seeds: int = 4
    development_snapshots: int = 24
    # n of the development's LLC data: its estimates are compared with the classes' asymptotic lambda,
    # so it runs where the finite-n excess is small (experiments/development_final_vs_n.py); the
    # closed form of L_n makes its cost independent of n
    development_samples: int = 65_536
    # its calibration's chain-length cap: the closed form is cheap, so the chains can reach the
    # calibration's sampler-time floor, which the grid's cap (`calibration_max_steps`) cannot
    development_max_steps: int = 32_000
    development_long_check_steps: int = 64_000
    # Metropolis-adjusted chains (SGLDConfig.metropolis) for the development's full-batch closed form:
    # no discretisation bias, and step sizes about 3x SGLD's (docs/experiments/weights_vs_activations.md)
    development_metropolis: bool = True
    # fragility (analysis.fragility_test): susceptibilities read from the LLC's own chains, and retraining at q'
    susceptibility_features: tuple[int, ...] = (0, 1)  # perturbations: feature j's probability x factor
    susceptibility_factor: float = 0.75
    susceptibility_eval_samples: int = 256  # Delta L on each instance's first samples of the LLC's n
    retrain_features: tuple[int, ...] = (0,)  # retrained at q' from the same initialisation
    retrain_seeds: int = 1  # on the first seeds of every feature probability
    seed: int = 0

    def __post_init__(self):
        """One-line `InputError` for a field no run could use (one field at a time; settings that
        only fail together, such as a batch larger than n, fail where they are used)."""
        if not self.models or not all(isinstance(nm, tuple) and len(nm) == 2
                                      and all(type(v) is int and v >= 1 for v in nm) for nm in self.models):
            raise InputError(f"models must be (n_features, n_hidden) pairs of positive ints, got {self.models!r}")
        if not 0 < self.min_feature_probability <= 1:
            raise InputError(f"min_feature_probability must be in (0, 1], got {self.min_feature_probability}")
        if self.n_feature_probabilities > 1 and self.min_feature_probability == 1:
            raise InputError("min_feature_probability must be below 1 when n_feature_probabilities > 1")
        steps = self.calibration_step_sizes
        if not steps or not all(isinstance(e, (int, float)) and 0 < e < np.inf for e in steps):
            raise InputError(f"calibration_step_sizes must be positive numbers, got {steps!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if type(value) is float and not 0 < value < np.inf:
                raise InputError(f"{field.name} must be positive and finite, got {value}")
            if type(value) is not int:
                continue
            least = 0 if field.name == "seed" else 2 if field.name in CHAIN_COUNT_FIELDS else 1
            if value < least:
                raise InputError(f"{field.name} must be at least {least}, got {value}")

    @property
    def feature_probabilities(self) -> tuple[float, ...]:
        values = np.geomspace(1.0, self.min_feature_probability, self.n_feature_probabilities)
        return tuple(float(np.float32(v)) for v in values)


QUICK = FlagshipConfig(models=((5, 2), (6, 2), (20, 5)), n_feature_probabilities=6, seeds=2, train_steps=3000,
                       llc_samples=4096, llc_chains=2, calibration_chains=2,
                       calibration_step_sizes=HALF_DECADES, calibration_sweep_steps=300, calibration_min_steps=600,
                       calibration_max_steps=2400, calibration_long_check_steps=2400,
                       sae_samples=2048, sae_steps=800, sae_restarts=1, sae_resample=False, development_steps=3000, development_seeds=4,
                       development_snapshots=12, development_max_steps=2400, development_long_check_steps=2400)
FULL = FlagshipConfig(n_feature_probabilities=40, seeds=16, train_steps=10_000, llc_samples=65_536, llc_chains=8,
                      calibration_chains=8, calibration_step_sizes=HALF_DECADES,
                      calibration_sweep_steps=1000, calibration_min_steps=2000, calibration_max_steps=8000,
                      calibration_long_check_steps=32_000,
                      sae_seeds=4, sae_steps=5000, sae_restarts=2, development_seeds=8)


def model_label(n: int, m: int) -> str:
    """The model's name in datasets, figures and reports: "n6_m2" for 6 features in 2 dimensions."""
    return f"n{n}_m{m}"


def _grid_inputs(train: xr.Dataset, n_samples: int, key):
    """`llc_inputs` of every instance, with the grid dims (not one flat axis) leading each leaf."""
    loss_fn, params, data = llc_inputs(train, n_samples=n_samples, key=key)
    grid_shape = grid.grid_shape(train)
    unflat = lambda tree: jax.tree_util.tree_map(lambda x: x.reshape(grid_shape + x.shape[1:]), tree)
    return loss_fn, unflat(params), unflat(data)


CHECK_VARIABLES = ("step_size", "num_steps", "trusted", "calibration_converged", "step_check_rel_diff",
                   "step_check_se", "batch_check_rel_diff", "batch_check_se", "batch_check_steps", "llc_quadratic",
                   "hessian_top_eigenvalue", "step_size_bound", "rhat", "hessian_top_eigenvalue_end", "step_bias_end",
                   "batch_bias_predicted")


def _refined_inputs(train: xr.Dataset, config: FlagshipConfig, key):
    """(loss_fn, params, data, refinement): each instance's n = `llc_samples` samples of its own
    data and its trained weights refined to a critical point of L_n on them (`analysis.refine`:
    full-batch L-BFGS), grid dims leading every leaf; `refinement` holds the gradient norms
    before and after and the relative distance moved (`analysis.refine.relative_move`), `(grid...)`."""
    loss_fn, params, data = _grid_inputs(train, config.llc_samples, key)
    grid_shape = grid.grid_shape(train)
    flat = lambda tree: jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[len(grid_shape):]), tree)
    refined, before, after = refine_batched(loss_fn, flat(params), flat(data), steps=config.refine_steps,
                                            tol=config.refine_tol)
    moved = relative_move(flat(params), refined)
    params = jax.tree_util.tree_map(lambda x: x.reshape(grid_shape + x.shape[1:]), refined)
    return loss_fn, params, data, {"before": np.asarray(before).reshape(grid_shape),
                                   "after": np.asarray(after).reshape(grid_shape),
                                   "moved": np.asarray(moved).reshape(grid_shape)}


def _at_refined_point(train: xr.Dataset, params: dict) -> xr.Dataset:
    """`train` with `W` and `b` replaced by the refined point (`_refined_inputs`'s params, grid dims
    leading): the activation side (k/m, D*, the degeneracy budget) and the SAEs then read the same
    weights as the LLC and the Hessian. Everything else (the training loss, the configuration) is
    the training run's."""
    W = train["W"].transpose(*GRID_DIMS, "hidden", "feature")
    b = train["b"].transpose(*GRID_DIMS, "feature")
    at = train.copy()
    at["W"] = W.copy(data=np.asarray(params["W"], W.dtype))
    at["b"] = b.copy(data=np.asarray(params["b"], b.dtype))
    return at


def _calibrated_llc(inputs, train: xr.Dataset, config: FlagshipConfig, key, out_dir: Path
                    ) -> tuple[xr.Dataset, dict, xr.Dataset]:
    """LLC of every instance at its refined point: `calibrate_batched` calibrates every instance
    (its own step size and chain length, no interpolation), then one program samples every
    instance's chains with the susceptibilities' observables recorded
    (`flagship_susceptibility_chains`), and `estimate_llc_batched` reads the LLC from those chains
    and stores the bias checks per instance. The calibration is saved as `calibration/<model>.nc`
    (plot it with `slt-superposition plot`). Returns (llc, calibration summary, susceptibilities)."""
    cal_key, llc_key = jax.random.split(key)
    loss_fn, params, data, _ = inputs
    dims = grid.grid_coords(train)
    label = model_label(train.sizes["feature"], train.sizes["hidden"])
    sgld, sweep = _calibrate(loss_fn, params, data, cal_key, config, instance_dims=dims)
    save_dataset(sweep, out_dir / "calibration" / f"{label}.nc")
    options = dict(instance_dims=dims, features=config.susceptibility_features, factor=config.susceptibility_factor,
                   eval_samples=config.susceptibility_eval_samples)
    chains = flagship_susceptibility_chains(loss_fn, params, data, config=sgld, key=llc_key, **options)
    llc = estimate_llc_batched(loss_fn, params, data, config=sgld, key=llc_key, instance_dims=dims,
                               check_steps=config.check_steps, calibration=sweep, sampled=chains)
    summary = {"converged": float(sweep["converged"].mean()), "batch_size": sgld.batch_size,
               "step_size_range": [float(np.min(sgld.step_size)), float(np.max(sgld.step_size))],
               "num_steps_range": [int(np.min(sgld.num_steps)), int(np.max(sgld.num_steps))],
               "trusted": float(llc["trusted"].mean())}
    return llc, summary, flagship_susceptibility_summary(chains, **options)


def _calibrate(loss_fn, params, data, key, config: FlagshipConfig, *, instance_dims=None, data_batched=True,
               metropolis: bool = False):
    """`calibrate_batched` (with `calibration_chains` chains) on the flagship's budget; the chosen
    config gets `llc_chains` chains. `metropolis`: Metropolis-adjusted chains (full batch only)."""
    sgld, sweep = calibrate_batched(
        loss_fn, params, data, key=key, instance_dims=instance_dims, data_batched=data_batched,
        batch_size=config.llc_batch_size, num_chains=config.calibration_chains,
        step_sizes=config.calibration_step_sizes, sweep_steps=config.calibration_sweep_steps,
        min_steps=config.calibration_min_steps, max_steps=config.calibration_max_steps,
        long_check_max_steps=config.calibration_long_check_steps, batch_check_steps=config.check_steps,
        metropolis=metropolis,
    )
    return dataclasses.replace(sgld, num_chains=config.llc_chains), sweep


def _weight_basis(inputs, train: xr.Dataset, config: FlagshipConfig) -> xr.Dataset:
    """Hessian and Gauss-Newton ranks at the refined point (the LLC's w*), on the LLC's samples
    (the first `hessian_samples` of them where that is set)."""
    loss_fn, params, data, _ = inputs
    if config.hessian_samples is not None:
        data = jax.tree_util.tree_map(lambda x: x[..., : config.hessian_samples, :], data)
    basis = weight_basis_measures(loss_fn, tms_forward, params, data, inputs=data["x"],
                                  instance_dims=GRID_DIMS, data_batched=True)
    basis = basis.assign_coords(grid.grid_coords(train))
    # refined weights are critical only to refine_tol: curvature below |grad L| counts as flat
    basis["hessian_rank_rounding"] = basis["hessian_rank"].assign_attrs(
        long_name="rank of the loss Hessian above the float32 rounding tolerance only")
    basis["hessian_rank"] = rank_above_gradient_floor(basis["hessian_eigenvalues"], basis["grad_norm"],
                                                      rtol=basis.attrs["rtol"])
    return basis


def _response(train: xr.Dataset, train_config: TrainConfig, susceptibilities: xr.Dataset,
              config: FlagshipConfig, refined: xr.Dataset) -> xr.Dataset:
    """Fragility two ways (`analysis.fragility_test`): the susceptibilities of ||W_i|| and D_i to
    each perturbation (read from the LLC's own chains, `_calibrated_llc`, at the refined point
    `refined`), and the weights retrained at q' from the same initialisation on the first
    `retrain_seeds` seeds."""
    seeds = tuple(int(s) for s in train["seed"].values[: config.retrain_seeds])
    retrained = retrain_perturbed(dataclasses.replace(train_config, seeds=seeds), config.retrain_features,
                                  config.susceptibility_factor)
    response = training_response(retrained, train["W"])
    sus = susceptibilities.copy()
    sus["feature_norm_trained"] = feature_norms(train["W"]).assign_attrs(
        long_name="||W_i|| of the trained weights", units="1")
    sus["feature_norm_refined"] = feature_norms(refined["W"]).assign_attrs(
        long_name="||W_i|| at the refined point, where the susceptibilities are read", units="1")
    return xr.merge([sus, response], join="outer", combine_attrs="override")


def _sae(train: xr.Dataset, config: FlagshipConfig, key) -> xr.Dataset:
    """SAEs on the hidden activations of the first seeds (of `train`'s weights: the flagship passes
    the refined point, `_at_refined_point`): recovered overcompleteness, and the
    recovery of W's represented columns with n_rep latents where that is well posed
    (`analysis.sae_recovery`; settings measured in docs/experiments/sae_recovery.md)."""
    sub = train.isel(seed=slice(0, config.sae_seeds))
    n, m = train.sizes["feature"], train.sizes["hidden"]
    sizes = list(range(m, n + 2))  # k <= n, so n + 1 latents always suffice to show recovery
    # TopK with k = the expected number of active features (at least 1, at most m); one program per distinct k
    sae = grid_saes(sub, n_samples=config.sae_samples, key=key, dict_sizes=sizes, steps=config.sae_steps,
                    restarts=config.sae_restarts, schedule="decay", train_b_pre=config.sae_train_b_pre,
                    resample=config.sae_resample)
    W = sub["W"]
    represented = represented_features(W)
    scores = recovery_scores(sae, W)
    return xr.Dataset(
        {
            "sae_recovered_overcompleteness": recovered_overcompleteness(sae, W, feature_mask=represented),
            "sae_mmcs": mmcs(W, sae["decoder"], feature_mask=represented),
            "sae_fvu": sae["fvu"],
            "sae_dead_fraction": sae["dead_fraction"],
            "sae_well_posed": well_posed(W).astype(float),
            **{name: scores[name] for name in ("sae_matched_cosine", "sae_mmcs_at_n_rep", "sae_fvu_at_n_rep",
                                              "sae_dead_at_n_rep")},
            "sae_recovered": scores["sae_recovered"].astype(float),
        }
    )


@contextlib.contextmanager
def _stage(what: str, enabled: bool = True):
    """Print what is being done and, when it ends, how long it took (stderr)."""
    start = time.time()
    if enabled:
        print(f"{what} ...", file=sys.stderr, flush=True)
    yield
    if enabled:
        print(f"{what}: done in {time.time() - start:.1f} s", file=sys.stderr, flush=True)


def model_key(n: int, m: int, config: FlagshipConfig) -> jax.Array:
    """The key of model (n features, m hidden): refinement, calibration and SAEs fold from it."""
    return jax.random.fold_in(jax.random.key(config.seed), n * 1000 + m)


def model_train_config(n: int, m: int, config: FlagshipConfig) -> TrainConfig:
    """The training grid of model (n, m): every feature probability x seed of `config`."""
    return TrainConfig(n_features=n, n_hidden=m, feature_probabilities=config.feature_probabilities,
                       seeds=config.seeds, steps=config.train_steps, batch_size=config.batch_size)


def compute_model(n: int, m: int, config: FlagshipConfig, out_dir: Path, progress: bool = True) -> xr.Dataset:
    """Train, measure and join one model's grid; also saves its `train_<label>.nc`."""
    label = model_label(n, m)
    key = model_key(n, m, config)
    train_config = model_train_config(n, m, config)
    with _stage(f"{label}: train {train_config.n_instances} instances", progress):
        train = train_grid(train_config, progress=progress)
    save_dataset(train, out_dir / f"train_{label}.nc")
    with _stage(f"{label}: refine every instance to a critical point of L_n", progress):
        inputs = _refined_inputs(train, config, jax.random.fold_in(key, 2))
    with _stage(f"{label}: calibrate, then every LLC and susceptibility from one set of chains", progress):
        llc, calibration, susceptibilities = _calibrated_llc(inputs, train, config, jax.random.fold_in(key, 1),
                                                             out_dir)
    with _stage(f"{label}: Hessian and Gauss-Newton ranks", progress):
        basis = _weight_basis(inputs, train, config)
    refined = _at_refined_point(train, inputs[1])  # both bases read this point
    with _stage(f"{label}: sparse autoencoders", progress):
        sae = _sae(refined, config, jax.random.fold_in(key, 3))
    with _stage(f"{label}: retraining at q'", progress):
        response = _response(train, train_config, susceptibilities, config, refined)
    ds = compare(refined, llc, basis.drop_vars("hessian_eigenvalues"), sae)
    ds = ds.merge(chain_excursions(llc, np.asarray(inputs[1]["W"]), np.asarray(inputs[1]["b"])))  # where chains ended
    ds["W_refined"] = refined["W"].assign_attrs(long_name="W at the refined point, where both bases are read",
                                                units="1")
    ds["b_refined"] = refined["b"].assign_attrs(long_name="b at the refined point", units="1")
    ds["n_represented_trained"] = n_represented(train["W"]).assign_attrs(
        long_name="represented features k at the trained weights, before refinement (n_represented: at the refined "
                  "point)", units="1")
    for name in CHECK_VARIABLES:
        ds[f"llc_{name}" if not name.startswith("llc_") else name] = llc[name]
    ds["hessian_eigenvalues"] = basis["hessian_eigenvalues"]
    refinement = inputs[3]
    ds["grad_norm_trained"] = xr.Variable(GRID_DIMS, refinement["before"], {
        "long_name": "||grad L_n|| at the trained weights (n = llc_samples), before refinement", "units": "1"})
    ds["grad_norm_refined"] = xr.Variable(GRID_DIMS, refinement["after"], {
        "long_name": "||grad L_n|| at the refined point, where the LLC and the Hessian are measured", "units": "1"})
    ds["refinement_move"] = xr.Variable(GRID_DIMS, refinement["moved"], {
        "long_name": "||w_refined - w_trained|| / ||w_trained||: how far refinement moved the weights", "units": "1"})
    ds["out_of_range_cause"] = out_of_range_cause(ds)
    ds = ds.merge(response, join="left")
    ds = ds.squeeze("importance_decay")
    ds.attrs.update(calibration=json.dumps(calibration))
    return ds.expand_dims(model=[label]).assign_coords(n_features=("model", [n]), n_hidden=("model", [m]))


SIZES = {"quick": QUICK, "default": FlagshipConfig(), "full": FULL}
# models computed at once, each in its own thread, with the development part in a third: most of a
# model's time (compiling, small chain programs) keeps one core busy, and no model's numbers depend
# on what runs beside it (docs/benchmarks.md, "The quick flagship's wall time")
WORKERS = 2


def config_of_run(out_dir) -> FlagshipConfig:
    """The settings a finished run in `out_dir` used, read from its `weights_vs_activations.nc`
    (whatever size and `--set` fields made it), so a study that rebuilds the run's models gets its
    n, keys and grid. `InputError` if the folder holds no finished run, or one whose settings this
    version cannot read."""
    path = Path(out_dir) / FLAGSHIP_DATASET
    require(path.is_file(), f"{out_dir} holds no finished {NAME} run (no {path.name})")
    with xr.open_dataset(path) as ds:
        stored, commit = read_config(ds.attrs), ds.attrs.get("git_commit", "unknown")
    names = {f.name for f in dataclasses.fields(FlagshipConfig)}
    unknown = sorted(set(stored) - names - {"feature_probabilities"})
    require(not unknown, f"{path} was written with settings this version does not have ({', '.join(unknown)}); "
                         f"read it with the commit that made it ({commit})")
    return replace_fields(FlagshipConfig(), {k: v for k, v in stored.items() if k in names})


def run(out_dir: Path, *, size: str = "default", progress: bool = True,
        config: FlagshipConfig | None = None, **fields) -> xr.Dataset:
    """Run the flagship at `size` ("quick", "default", "full"; `config` replaces that size's
    settings, and `fields` replace single fields of them: `reproduce --set FIELD=VALUE`) into
    `out_dir`; returns the joined dataset (also saved there)."""
    config = replace_fields(config or SIZES[size], fields)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    config_dict = dataclasses.asdict(config) | {"feature_probabilities": config.feature_probabilities}
    chunks = [{"n_features": n, "n_hidden": m} for n, m in config.models]
    workers = 1 if is_multiprocess() else WORKERS  # several processes compute every chunk together
    stop = threading.Event()  # set when the models fail: the development part ends at its next stage
    with ThreadPoolExecutor(max_workers=1) as beside:
        # the development part runs beside the models (on several processes: after them, as they do),
        # once the sweep's folder is known to be ours
        development_part = lambda: run_development(config, out_dir, progress, stop=stop)
        dev_future = None
        if workers > 1:
            check_sweep_folder(NAME, config_dict, chunks, out_dir / "sweep")
            dev_future = beside.submit(development_part)
        try:
            ds = run_sweep(
                NAME, config_dict, chunks,
                lambda c: compute_model(c["n_features"], c["n_hidden"], config, out_dir, progress),
                out_dir / "sweep", combine=join_models, progress=progress, workers=workers,
                cost=lambda c: c["n_features"] * c["n_hidden"],  # the largest model first
            )
        except BaseException as err:  # a model's error (or Ctrl-C): said now, raised once the development part stops
            stop.set()
            if dev_future is not None and not dev_future.done():
                said = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                print(f"{NAME}: {said}; stopping the development part at the end of its current stage",
                      file=sys.stderr, flush=True)
            raise
        ds.attrs.update(provenance_attrs("compare", config_dict))
        save_dataset(ds, out_dir / FLAGSHIP_DATASET)
        dev = dev_future.result() if dev_future is not None else development_part()

    from analysis.compare_plots import plot_comparison, plot_development

    from analysis.fragility_plots import plot_fragility

    figures = plot_comparison(ds, out_dir) + plot_development(dev, out_dir, kgon_llc=KGON_LLC)
    figures.append(plot_fragility(ds, out_dir))
    write_report(ds, dev, out_dir, figures, config, seconds=time.time() - start, size=size)
    return ds


class DevelopmentStopped(Exception):
    """The development part ended early: the models it runs beside had failed (`run`'s `stop`)."""


def run_development(config: FlagshipConfig, out_dir: Path, progress: bool = True,
                    stop: threading.Event | None = None) -> xr.Dataset:
    """The development part: Chen et al.'s TMS trained by SGD with weight snapshots, every snapshot's
    LLC (n = `development_samples`, one calibration for all) and class; saved as `development.nc`.
    `stop`: when set, `DevelopmentStopped` is raised before the next stage (nothing is saved)."""
    dev_config = TrainConfig(
        n_features=6, n_hidden=2, feature_probabilities=(1.0,), seeds=config.development_seeds,
        steps=config.development_steps, batch_size=config.development_batch_size, data="high_sparsity_limit",
        optimizer="sgd", learning_rate=config.development_learning_rate, init_scale=config.development_init_scale,
        snapshot_steps=tuple(np.unique(np.geomspace(10, config.development_steps, config.development_snapshots)
                                       .astype(int)).tolist()),
    )

    def check_stop():
        if stop is not None and stop.is_set():
            raise DevelopmentStopped("the development part stopped: the models it ran beside had failed")

    check_stop()
    with _stage("development: calibrate on a trained 6-feature TMS", progress):
        dev_sgld, settled = _development_sgld(dev_config, config, out_dir)
    check_stop()
    with _stage(f"development: train {config.development_seeds} seeds by SGD, every snapshot's LLC", progress):
        dev = development(dev_config, sgld=dev_sgld, n_samples=config.development_samples,
                          key=jax.random.key(config.seed + 1), check_steps=config.check_steps,
                          progress=progress)
    dev = require_development_settled(dev, settled)
    dev.attrs.update(provenance_attrs("development", {"train": dataclasses.asdict(dev_config),
                                                      "sgld": dev_sgld.to_dict(),
                                                      "n_samples": config.development_samples}))
    save_dataset(dev, out_dir / "development.nc")
    return dev


def require_development_settled(dev: xr.Dataset, settled: bool) -> xr.Dataset:
    """`dev` with `llc_trusted` and `llc_final_refined_trusted` requiring the development calibration's
    chain-length rule to have settled (`settled`), as the flagship's `llc_trusted` requires its own:
    every snapshot runs the chain length that calibration chose."""
    out = dev.copy()
    for name in ("llc_trusted", "llc_final_refined_trusted"):
        if name in out:
            out[name] = (out[name] & settled).assign_attrs(
                long_name=out[name].attrs.get("long_name", name) + ", and the development calibration's "
                                                                   "chain-length rule settled")
    out.attrs["calibration_converged"] = int(bool(settled))
    return out


def _development_sgld(dev_config: TrainConfig, config: FlagshipConfig, out_dir: Path) -> tuple[SGLDConfig, bool]:
    """Calibrate once on a fully trained 6-feature TMS; used for every snapshot. In the Chen et al.
    setting at full batch, through the closed form of L_n (`development.full_batch_inputs`: exact
    L_n at about the cost of a minibatch, no minibatch check), with chains of at most
    `development_max_steps`, Metropolis-adjusted where `development_metropolis` (the exact potential
    is what the accept/reject step needs). The sweep is saved as `calibration/development.nc`.
    Returns (the config with scalar settings, whether its chain-length rule settled)."""
    probe = train_grid(dataclasses.replace(dev_config, seeds=(0,), snapshot_steps=()), progress=False)
    loss_fn, params, data = llc_inputs(probe, n_samples=config.development_samples,
                                       key=jax.random.key(config.seed + 2))
    exact_loss, exact_data = full_batch_inputs(probe, loss_fn, data)
    if exact_loss is not loss_fn:
        loss_fn, data, config = exact_loss, exact_data, dataclasses.replace(config, llc_batch_size=None)
    config = dataclasses.replace(config, calibration_max_steps=config.development_max_steps,
                                 calibration_long_check_steps=config.development_long_check_steps)
    metropolis = config.development_metropolis and config.llc_batch_size is None
    sgld, sweep = _calibrate(loss_fn, params, data, jax.random.key(config.seed + 3), config, metropolis=metropolis)
    save_dataset(sweep, out_dir / "calibration" / "development.nc")
    scalar = {name: np.asarray(getattr(sgld, name)).reshape(-1)[0].item()
              for name in ("step_size", "localization", "num_steps", "num_burnin")}
    return dataclasses.replace(sgld, **scalar), bool(np.all(sweep["converged"].values))


def write_report(ds: xr.Dataset, dev: xr.Dataset, out_dir: Path, figures: list[Path], config: FlagshipConfig,
                 *, seconds: float, size: str) -> Path:
    """`report.md`: the command, a table per model, and what the data says (numbers computed here)."""
    from analysis.compare_plots import findings, headline, summary_table
    from analysis.fragility_test import fragility_section

    command = command_line(NAME, out_dir, size, **changed_fields(config, SIZES[size]))
    lines = [
        "# Weights vs activations",
        "",
        f"Made by `{command}` in {seconds / 60:.1f} minutes "
        f"(git {ds.attrs.get('git_commit', 'unknown')}). Dataset: `weights_vs_activations.nc` "
        "(open with `xarray.open_dataset`), development: `development.nc`.",
        "",
        headline(ds),
        "",
        recovery_line(ds),
        "",
        f"Grid: models {', '.join(model_label(n, m) for n, m in config.models)}; "
        f"{config.n_feature_probabilities} feature probabilities from 1 to {config.min_feature_probability} "
        f"(log-spaced) x {config.seeds} seeds; {config.train_steps} AdamW steps; LLC from "
        f"{config.llc_chains} chains per instance on n = {config.llc_samples} samples (nbeta = n / log n); "
        f"`calibrate_batched` ({config.calibration_chains} chains) chose every instance's own step size and chain "
        "length (`llc_step_size`, `llc_num_steps` in the dataset); every estimate carries its bias checks "
        f"({config.check_steps}-step paired runs at step size / 3 and with full batch; a batch check that did not "
        f"resolve its tolerance runs again, longer: `llc_batch_check_steps`) and a `trusted` flag "
        "(`llc_trusted`). The development part's LLC data has n = "
        f"{config.development_samples} samples, at full batch through the closed form of L_n"
        f"{', with Metropolis-adjusted chains (no step-size bias)' if config.development_metropolis else ''}: "
        "its estimates are compared with the asymptotic lambda of their classes, so it runs at an n where the "
        f"finite-n excess is small, with chains of at most {config.development_max_steps} steps "
        "(`experiments/development_final_vs_n.py`).",
        "",
        "## What the data says",
        "",
        *findings(ds, dev, kgon_llc=KGON_LLC),
        "",
        "## Table (means over seeds)",
        "",
        summary_table(ds),
        "",
        *fragility_section(ds.assign_attrs(susceptibility_factor=config.susceptibility_factor),
                           figure=None),
        "## Figures",
        "",
        *[f"![{p.stem}]({p.name})" for p in figures],
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
