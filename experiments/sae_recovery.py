"""SAE recovery on the flagship grid, where it is well posed: counted per model and overall.

    slt-superposition reproduce sae-recovery [--quick | --full] --out DIR
        [--set train_dir=DIR] [--set settings=NAME,NAME] [--set seeds=1] [--set models=n20_m5]
        [--set all_sizes=True]

Trains the flagship grid's models (`FlagshipConfig`: same models, feature probabilities,
training steps; saved as `train_<model>.nc` in `train_dir`, default `DIR/train`, reused if there)
and runs only the SAE stage on them, under one or more SAE settings (`SETTINGS`). For every
instance where recovery is well posed (`analysis.sae_recovery.well_posed`: n_rep > m and
n_rep p <= m / 2) it scores the SAE with n_rep latents (Hungarian-matched cosine and MMCS >=
0.95) and counts the recovered share per model and overall against the target (90% of the
well-posed instances, every model), with the dead-latent fraction and FVU; with `all_sizes`
(every dictionary size m..n+1, as the flagship trains) also the recovered overcompleteness
against k/m. Sizes: `quick` the quick flagship grid (3 models, 6 probabilities), `default` the
default grid, both under `RECOMMENDED` only; `full` the default grid under every setting of
`SETTINGS` side by side (the comparison in docs/experiments/sae_recovery.md). Seed 0 of every
feature probability (`seeds`: more), as the flagship. Writes `sae_recovery.nc`,
`sae_recovery.png` and `report.md`.
"""

from __future__ import annotations

import dataclasses
import sys
import zlib
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from analysis.measures import n_represented, represented_features
from analysis.sae import recovered_overcompleteness
from analysis.sae_recovery import expected_active, grid_saes, recovery_scores, recovery_share, well_posed
from experiments.registry import header
from slt_superposition import markdown
from slt_superposition.errors import require
from slt_superposition.io import save_dataset, write_text
from toy_models.train import TrainConfig, train_grid


@dataclasses.dataclass(frozen=True)
class SaeSettings:
    samples: int = 8192
    steps: int = 3000
    restarts: int = 1
    schedule: str = "constant"
    kind: str = "topk"
    batch_size: int = 256
    train_b_pre: bool = True
    init_from_data: bool = False
    k_rule: str = "features"
    resample: bool = False


SETTINGS = {
    "before": SaeSettings(),  # the flagship's SAE stage before this study
    "restarts4-decay": SaeSettings(restarts=4, schedule="decay"),
    "more-data": SaeSettings(samples=32_768, steps=6000, restarts=4, schedule="decay"),
    "fixed-b-pre": SaeSettings(restarts=4, schedule="decay", train_b_pre=False),
    "fixed-b-pre-data-init": SaeSettings(restarts=4, schedule="decay", train_b_pre=False, init_from_data=True),
    "fixed-b-pre-more-data": SaeSettings(samples=32_768, steps=6000, restarts=4, schedule="decay", train_b_pre=False),
    "fixed-b-pre-8-restarts": SaeSettings(restarts=8, schedule="decay", train_b_pre=False),
    "batch-topk-fixed-b-pre": SaeSettings(restarts=4, schedule="decay", kind="batch-topk", train_b_pre=False),
    "resample": SaeSettings(restarts=4, schedule="decay", train_b_pre=False, resample=True),
    "represented-k": SaeSettings(restarts=4, schedule="decay", train_b_pre=False, k_rule="represented"),
    "resample-represented-k": SaeSettings(restarts=4, schedule="decay", train_b_pre=False, resample=True,
                                          k_rule="represented"),
    "batch-topk": SaeSettings(restarts=4, schedule="decay", kind="batch-topk"),
    "batch-topk-more-data": SaeSettings(samples=32_768, steps=6000, restarts=4, schedule="decay", kind="batch-topk"),
}


def trained_models(train_dir: Path, seeds: int, config=None, progress: bool = True) -> dict[str, xr.Dataset]:
    """The flagship grid's training datasets (seeds 0..seeds-1; `config` a `FlagshipConfig`, default
    the default one), trained once into `train_dir`."""
    from experiments.weights_vs_activations import FlagshipConfig

    config = config or FlagshipConfig()
    out = {}
    for n, m in config.models:
        path = train_dir / f"train_n{n}_m{m}.nc"
        tc = TrainConfig(n_features=n, n_hidden=m, feature_probabilities=config.feature_probabilities,
                         seeds=max(seeds, 1), steps=config.train_steps, batch_size=config.batch_size)
        if path.exists():
            ds = xr.load_dataset(path)
            same = ds.sizes["feature_probability"] == len(config.feature_probabilities) and np.allclose(
                ds["feature_probability"].values, config.feature_probabilities)
            require(same and ds.sizes["seed"] >= seeds,
                    f"{path} was trained on another grid (or fewer seeds); give another train_dir")
        else:
            ds = train_grid(tc, progress=progress)
            save_dataset(ds, path)
        out[f"n{n}_m{m}"] = ds.isel(seed=slice(0, seeds))
    return out


def study_model(train: xr.Dataset, settings: SaeSettings, key, *, all_sizes: bool = False) -> xr.Dataset:
    """Recovery scores of one model's instances (every grid point) under `settings`."""
    W = train["W"]
    posed = well_posed(W)
    n, m = train.sizes["feature"], train.sizes["hidden"]
    n_rep = n_represented(W)
    if all_sizes:
        sizes = list(range(m, n + 2))
    else:  # only the sizes the score needs (n_rep of the well-posed instances): the same numbers, less compute
        sizes = sorted({int(v) for v in np.unique(n_rep.where(posed).values) if np.isfinite(v)}) or [n]
    sub = train.isel(feature_probability=np.flatnonzero(posed.any(("importance_decay", "seed")).values))
    if sub.sizes["feature_probability"] == 0:
        return xr.Dataset({"well_posed": posed})
    sae = grid_saes(sub, n_samples=settings.samples, key=key, dict_sizes=sizes, kind=settings.kind,
                    steps=settings.steps, restarts=settings.restarts, schedule=settings.schedule,
                    batch_size=settings.batch_size, train_b_pre=settings.train_b_pre,
                    init_from_data=settings.init_from_data, k_rule=settings.k_rule, resample=settings.resample)
    scores = recovery_scores(sae, sub["W"]).reindex(feature_probability=train["feature_probability"])
    scores["well_posed"] = posed
    scores["expected_active"] = expected_active(W, W["feature_probability"])
    scores["n_represented"] = n_rep
    scores["sae_k"] = sae["k"].reindex(feature_probability=train["feature_probability"])
    if all_sizes:  # every size m..n+1, as the flagship trains: the recovered overcompleteness against k/m
        ro = recovered_overcompleteness(sae, sub["W"], feature_mask=represented_features(sub["W"]))
        scores["sae_recovered_overcompleteness"] = ro.reindex(feature_probability=train["feature_probability"])
        scores["k_over_m"] = (n_rep / m).assign_attrs(long_name="represented features per dimension k/m", units="1")
    return scores


NAME = "sae-recovery"
RECOMMENDED = "resample"  # what the flagship's SAE stage should use (docs/experiments/sae_recovery.md)
TARGET = 0.9  # share of the well-posed instances recovered, overall and for every model


def run(out_dir: Path, *, size: str = "default", progress: bool = True, train_dir: str | Path | None = None,
        settings: str | list[str] | None = None, seeds: int = 1, models: str | list[str] | None = None,
        all_sizes: bool = False) -> xr.Dataset:
    """The recovery count (module docstring). `settings`, `models`: names (a list or a comma
    string); default `RECOMMENDED` (`full`: every setting) and every model of the grid."""
    from experiments.weights_vs_activations import QUICK, FlagshipConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_dir = Path(train_dir or out_dir / "train")
    train_dir.mkdir(parents=True, exist_ok=True)
    names = _names(settings) or (list(SETTINGS) if size == "full" else [RECOMMENDED])
    unknown = [name for name in names if name not in SETTINGS]
    require(not unknown, f"unknown settings {unknown} (known: {', '.join(SETTINGS)})")
    config = QUICK if size == "quick" else FlagshipConfig()
    grid = trained_models(train_dir, seeds, config, progress)
    only = _names(models)
    require(not only or set(only) <= set(grid), f"unknown models {only} (the grid: {', '.join(grid)})")
    grid = {label: ds for label, ds in grid.items() if not only or label in only}
    rows, per_setting = [], []
    for name in names:
        parts = []
        for label, train in grid.items():
            key = jax.random.fold_in(jax.random.key(3), zlib.crc32(label.encode()))
            ds = study_model(train, SETTINGS[name], key, all_sizes=all_sizes).squeeze("importance_decay", drop=True)
            got, posed = recovery_share(ds.get("sae_recovered", xr.zeros_like(ds["well_posed"])), ds["well_posed"])
            rows.append({"setting": name, "model": label, "recovered": got, "well_posed": posed,
                         "dead": _median(ds, "sae_dead_at_n_rep"), "fvu": _median(ds, "sae_fvu_at_n_rep"),
                         "matched": _median(ds, "sae_matched_cosine"), **_overcompleteness(ds)})
            if progress:
                print(f"{name:16s} {label:7s} recovered {got}/{posed} well-posed", file=sys.stderr, flush=True)
            parts.append(ds.expand_dims(model=[label]))
        per_setting.append(xr.concat(parts, "model", join="outer").expand_dims(setting=[name]))
    result = xr.concat(per_setting, "setting", join="outer")
    result.attrs["settings"] = repr({name: dataclasses.asdict(SETTINGS[name]) for name in names})
    result.attrs["size"] = size
    save_dataset(result, out_dir / "sae_recovery.nc")
    from slt_superposition import figure_style as fs

    figure_path = fs.save(figure(result), out_dir / "sae_recovery.png")
    options = {key: value for key, value in (("train_dir", str(train_dir) if train_dir != out_dir / "train" else None),
                                             ("settings", settings), ("seeds", seeds if seeds != 1 else None),
                                             ("models", models), ("all_sizes", all_sizes or None)) if value is not None}
    write_report(rows, names, out_dir, figure_path, size, options)
    return result


def _names(value) -> list[str]:
    if not value:
        return []
    return [v for v in value.split(",") if v] if isinstance(value, str) else list(value)


def _overcompleteness(ds: xr.Dataset) -> dict:
    """Over the well-posed instances with every size trained: how many reach the recovered
    overcompleteness targets at all, and how many at exactly k/m (n_rep latents)."""
    if "sae_recovered_overcompleteness" not in ds:
        return {}
    posed = ds["well_posed"].values.astype(bool)
    ro, k_m = ds["sae_recovered_overcompleteness"].values[posed], ds["k_over_m"].values[posed]
    return {"overcomplete_reached": int(np.isfinite(ro).sum()), "overcomplete_exact": int(np.sum(np.isclose(ro, k_m))),
            "overcomplete_below": int(np.sum(ro < k_m - 1e-9))}


def _median(ds: xr.Dataset, name: str) -> float:
    if name not in ds:
        return float("nan")
    values = ds[name].where(ds["well_posed"]).values
    return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")


def figure(result: xr.Dataset):
    """Matched cosine of the n_rep-latent SAE against p, one panel per model, one line per setting
    (only well-posed instances have an SAE)."""
    from slt_superposition import figure_style as fs

    models = list(result["model"].values)
    with fs.style():
        fig, axes = fs.subplots(1, len(models), width=fs.PAGE, panel_aspect=1.0, sharey=True)
        for ax, model in zip(axes[0], models):
            for i, setting in enumerate(result["setting"].values):
                ds = result.sel(model=model, setting=setting)
                if "sae_matched_cosine" not in ds:
                    continue
                score = ds["sae_matched_cosine"]
                if "seed" in score.dims:
                    score = score.isel(seed=0)
                    posed = ds["well_posed"].isel(seed=0)
                else:
                    posed = ds["well_posed"]
                p = ds["feature_probability"].values
                colour = fs.PALETTE[i % len(fs.PALETTE)]
                ax.plot(p, score.values, color=colour, lw=0.8, label=str(setting))
                ax.scatter(p[posed.values], score.values[posed.values], color=colour, s=8, zorder=3)
            ax.axhline(0.95, color=fs.REFERENCE, lw=0.5, ls="--")
            ax.set(xscale="log", title=str(model), xlabel="feature probability p")
        axes[0, 0].set_ylabel("matched cosine (n_rep latents)")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fs.legend_below(fig, handles, labels)
    return fig


def target_met(rows: list[dict], setting: str) -> tuple[bool, float, dict[str, float]]:
    """(met, overall share, share per model) of `setting`: met when the overall share and every
    model's share of the well-posed instances recovered are >= TARGET."""
    mine = [r for r in rows if r["setting"] == setting]
    per_model = {r["model"]: r["recovered"] / r["well_posed"] for r in mine if r["well_posed"]}
    total = sum(r["recovered"] for r in mine) / max(sum(r["well_posed"] for r in mine), 1)
    return total >= TARGET and all(v >= TARGET for v in per_model.values()), total, per_model


def write_report(rows: list[dict], names: list[str], out_dir: Path, figure_path: Path, size: str = "default",
                 options: dict | None = None) -> Path:
    """report.md: the target per setting (overall and per model), then per model the counts, median
    dead fraction, FVU and matched cosine at n_rep latents (and the recovered overcompleteness
    against k/m where every size was trained)."""
    verdicts = {name: target_met(rows, name) for name in names}
    finding = ("Recovery (matched cosine and MMCS >= 0.95 with n_rep latents) of the well-posed instances "
               "(n_rep > m and n_rep p <= m / 2), against the target of "
               f"{TARGET:.0%} overall and for every model: " + "; ".join(
                   f"{name} {sum(r['recovered'] for r in rows if r['setting'] == name)} of "
                   f"{sum(r['well_posed'] for r in rows if r['setting'] == name)} ({total:.0%}; lowest model "
                   f"{min(per_model.values(), default=float('nan')):.0%}): target {'met' if met else 'not met'}"
                   for name, (met, total, per_model) in verdicts.items()) + ".")
    extra = any("overcomplete_reached" in r for r in rows)
    headers = ["setting", "model", "recovered / well posed", "median dead fraction", "median FVU",
               "median matched cosine"] + (["reach the overcompleteness targets", "at exactly k/m", "below k/m"]
                                           if extra else [])
    table = [[r["setting"], r["model"], f"{r['recovered']} / {r['well_posed']}", f"{r['dead']:.3f}", f"{r['fvu']:.4f}",
              f"{r['matched']:.3f}"] + ([str(r.get("overcomplete_reached", "")), str(r.get("overcomplete_exact", "")),
                                          str(r.get("overcomplete_below", ""))] if extra else []) for r in rows]
    totals = [[name, f"{sum(r['recovered'] for r in rows if r['setting'] == name)} / "
                     f"{sum(r['well_posed'] for r in rows if r['setting'] == name)} ({total:.0%})",
               "met" if met else "not met"] for name, (met, total, _) in verdicts.items()]
    text = (header("SAE recovery on the flagship grid", NAME, out_dir, size, finding, **(options or {}))
            + markdown.table(headers, table) + "\n\n"
            + markdown.table(["setting", "recovered / well posed (all models)", f"target ({TARGET:.0%} overall and "
                              "per model)"], totals)
            + (("\n\nRecovered overcompleteness (`analysis.sae.recovered_overcompleteness`: the smallest "
                "dictionary with MMCS >= 0.9 and FVU <= 0.05, over m) against k/m = n_rep/m, over the "
                "well-posed instances.") if extra else "")
            + f"\n\n![matched cosine]({figure_path.name})\n")
    return write_text(out_dir / "report.md", text)


def diagnose(train_dir: Path, feature_probabilities=(0.233572, 0.143845, 0.088587)) -> list[dict]:
    """Why TopK(1) with a trained b_pre fails at the denser well-posed end of n4_m2 (seed 0): for
    each p, the FVU of 4 restarts (trained b_pre, decayed lr), the b_pre kept, the matched cosine,
    and the FVU of the true dictionary (unit columns of W, tied encoder, b_pre = 0) under TopK(1)."""
    import jax.numpy as jnp

    from analysis.sae import fvu, sae_decode, sae_encode, train_sae
    from analysis.sae_match import matched_cosine
    from analysis.sae_recovery import hidden_activations

    train = trained_models(Path(train_dir), 1)["n4_m2"]
    sub = train.sel(feature_probability=list(feature_probabilities), method="nearest")
    acts = hidden_activations(sub, n_samples=8192, key=jax.random.key(3))
    sae = train_sae(acts, dict_sizes=[4], k=1, steps=3000, restarts=4, schedule="decay", key=jax.random.key(5))
    rows = []
    for i, p in enumerate(sub["feature_probability"].values):
        W = sub["W"].isel(feature_probability=i).squeeze().values
        h = acts.isel(feature_probability=i).squeeze().values
        unit = W / np.linalg.norm(W, axis=0)
        ideal = {"W_dec": jnp.asarray(unit), "W_enc": jnp.asarray(unit.T), "b_enc": jnp.zeros(4), "b_pre": jnp.zeros(2)}
        one = sae.isel(feature_probability=i).squeeze()
        rows.append({"p": float(p), "restart_fvu": np.round(one["restart_train_fvu"].values, 3).tolist(),
                     "b_pre": np.round(one["b_pre"].values, 2).tolist(), "W_columns": np.round(W, 2).tolist(),
                     "matched_cosine": round(matched_cosine(W, one["decoder"].values), 3),
                     "true_dictionary_fvu": round(fvu(h, sae_decode(ideal, sae_encode(ideal, jnp.asarray(h), 1))), 3)})
        print(rows[-1])
    return rows


def diagnose_misses(train_dir: Path, model: str = "n20_m5", inits: int = 8, steps: int = 3000) -> list[dict]:
    """Why the flagship's setting (`fixed-b-pre`) misses some well-posed instances of `model` (seed
    0 of the default grid in `train_dir`): per instance, `inits` single initialisations of the
    n_rep-latent SAE (k = round(n p), b_pre fixed, decayed lr, no resampling), each with its FVU,
    matched cosine, MMCS, latent frequencies and largest latent-latent cosine; the FVU of the
    true dictionary (unit represented columns, tied encoder, no training); and the SAE started at
    the true dictionary (`train_sae(init_decoder=...)`) after the same training. Prints and returns
    one row per instance."""
    import jax.numpy as jnp

    from analysis.sae import fvu, mmcs, sae_decode, sae_encode, train_sae
    from analysis.sae_match import matched_cosine
    from analysis.sae_recovery import hidden_activations, k_for

    train = trained_models(Path(train_dir), 1)[model]
    posed = well_posed(train["W"]).squeeze(("importance_decay", "seed")).values
    sub = train.isel(feature_probability=np.flatnonzero(posed))
    acts = hidden_activations(sub, n_samples=8192, key=jax.random.key(3)).squeeze(("importance_decay", "seed"))
    n, m = train.sizes["feature"], train.sizes["hidden"]
    W = sub["W"].squeeze(("importance_decay", "seed")).transpose("feature_probability", "hidden", "feature").values
    columns = [w[:, np.linalg.norm(w, axis=0) > 0.5] for w in W]  # represented columns per instance
    fps = sub["feature_probability"].values
    ks = np.array([k_for(n, m, p) for p in fps])
    rows = []
    for k in np.unique(ks):
        index = np.flatnonzero(ks == k)
        sizes = sorted({c.shape[1] for c in (columns[i] for i in index)})
        a = np.repeat(acts.values[index][:, None], inits, axis=1)  # (instance, init, sample, hidden)
        common = dict(dict_sizes=sizes, k=int(k), steps=steps, restarts=1, schedule="decay", train_b_pre=False,
                      key=jax.random.key(5))
        random = train_sae(a, instance_dims=("instance", "init"), **common)
        truth = np.stack([np.resize(columns[i].T, (max(sizes), m)).T for i in index])  # pad by repeating columns
        started = train_sae(acts.values[index], instance_dims=("instance",), init_decoder=truth, **common)
        for j, i in enumerate(index):
            cols, h = columns[i], acts.values[i]
            size = cols.shape[1]
            unit = cols / np.linalg.norm(cols, axis=0)
            ideal = {"W_dec": jnp.asarray(unit), "W_enc": jnp.asarray(unit.T), "b_enc": jnp.zeros(size),
                     "b_pre": jnp.zeros(m)}
            one = random.isel(instance=j).sel(dict_size=size)
            decoders = [one["decoder"].isel(init=r).values[:, :size] for r in range(inits)]
            latent_cos = [np.max(d.T @ d - 2 * np.eye(size)) for d in decoders]
            frequency = one["latent_frequency"].values[:, :size]
            s = started.isel(instance=j).sel(dict_size=size)
            row = {"p": float(fps[i]), "k": int(k), "n_rep": size,
                   "true_dictionary_fvu": round(fvu(h, sae_decode(ideal, sae_encode(ideal, jnp.asarray(h),
                                                                                       int(k)))), 3),
                   "init_fvu": np.round(one["fvu"].values, 3).tolist(),
                   "init_matched": [round(matched_cosine(cols, d), 3) for d in decoders],
                   "init_mmcs": [round(float(mmcs(cols, d)), 3) for d in decoders],
                   "init_min_frequency": np.round(frequency.min(axis=1), 3).tolist(),
                   "init_median_frequency": np.round(np.median(frequency, axis=1), 3).tolist(),
                   "init_max_latent_cosine": np.round(latent_cos, 2).tolist(),
                   "truth_start_fvu": round(float(s["fvu"]), 3),
                   "truth_start_matched": round(matched_cosine(cols, s["decoder"].values[:, :size]), 3)}
            rows.append(row)
            print(row, flush=True)
    return rows
