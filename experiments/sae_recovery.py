"""Study: does the flagship's SAE stage recover the TMS features where recovery is well posed?

    python -m experiments.sae_recovery --out results/sae-recovery [--train-dir DIR] [--settings a,b] [--seeds 1]

Trains the default flagship grid's models (`FlagshipConfig`: same models, feature
probabilities, training steps; saved as `train_<model>.nc` in `--train-dir`, reused if there)
and runs only the SAE stage on them under several SAE settings, side by side. For every
instance where recovery is well posed (`analysis.sae_recovery.well_posed`: n_rep > m and
n_rep p <= m / 2) it scores the SAE with n_rep latents (Hungarian-matched cosine and MMCS >=
0.95) and counts the recovered share per model and setting, with the dead-latent fraction and
FVU. Writes `sae_recovery.nc`, `sae_recovery.png` and `report.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import zlib
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from analysis.measures import n_represented
from analysis.sae_recovery import expected_active, grid_saes, recovery_scores, recovery_share, well_posed
from slt_superposition import markdown
from slt_superposition.experiments import module_command
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


def trained_models(train_dir: Path, seeds: int) -> dict[str, xr.Dataset]:
    """The default flagship grid's training datasets (seeds 0..seeds-1), trained once into `train_dir`."""
    from experiments.weights_vs_activations import FlagshipConfig

    config = FlagshipConfig()
    out = {}
    for n, m in config.models:
        path = train_dir / f"train_n{n}_m{m}.nc"
        if not path.exists():
            tc = TrainConfig(n_features=n, n_hidden=m, feature_probabilities=config.feature_probabilities,
                             seeds=max(seeds, 1), steps=config.train_steps, batch_size=config.batch_size)
            save_dataset(train_grid(tc, progress=True), path)
        out[f"n{n}_m{m}"] = xr.load_dataset(path).isel(seed=slice(0, seeds))
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
    return scores


def run(out_dir: Path, *, train_dir: Path | None = None, settings: list[str] | None = None, seeds: int = 1,
        all_sizes: bool = False, only_models: list[str] | None = None) -> xr.Dataset:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_dir = Path(train_dir or out_dir / "train")
    train_dir.mkdir(parents=True, exist_ok=True)
    names = settings or list(SETTINGS)
    models = trained_models(train_dir, seeds)
    models = {label: ds for label, ds in models.items() if not only_models or label in only_models}
    rows, per_setting = [], []
    for name in names:
        parts = []
        for label, train in models.items():
            start = time.time()
            key = jax.random.fold_in(jax.random.key(3), zlib.crc32(label.encode()))
            ds = study_model(train, SETTINGS[name], key, all_sizes=all_sizes).squeeze("importance_decay", drop=True)
            got, posed = recovery_share(ds.get("sae_recovered", xr.zeros_like(ds["well_posed"])), ds["well_posed"])
            rows.append((name, label, got, posed, _median(ds, "sae_dead_at_n_rep"), _median(ds, "sae_fvu_at_n_rep"),
                         _median(ds, "sae_matched_cosine"), time.time() - start))
            print(f"{name:16s} {label:7s} recovered {got}/{posed} well-posed; {time.time() - start:.0f} s",
                  file=sys.stderr, flush=True)
            parts.append(ds.expand_dims(model=[label]))
        per_setting.append(xr.concat(parts, "model", join="outer").expand_dims(setting=[name]))
    result = xr.concat(per_setting, "setting", join="outer")
    result.attrs["settings"] = repr({name: dataclasses.asdict(SETTINGS[name]) for name in names})
    save_dataset(result, out_dir / "sae_recovery.nc")
    from slt_superposition import figure_style as fs

    figure_path = fs.save(figure(result), out_dir / "sae_recovery.png")
    write_report(rows, names, out_dir, figure_path)
    return result


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


def write_report(rows, names, out_dir: Path, figure_path: Path) -> Path:
    totals = {name: (sum(r[2] for r in rows if r[0] == name), sum(r[3] for r in rows if r[0] == name)) for name in names}
    best = max(names, key=lambda name: totals[name][0] / max(totals[name][1], 1))
    finding = (f"Of the well-posed instances (overcomplete and expected active features <= m / 2), each setting "
               f"recovered: " + "; ".join(f"{name} {got} of {posed}" for name, (got, posed) in totals.items())
               + f". The best is {best} ({totals[best][0] / max(totals[best][1], 1):.0%}); per model below.")
    lines = [markdown.opening("SAE recovery on the default flagship grid",
                              module_command("experiments.sae_recovery"), finding).rstrip("\n"),
             "", "| setting | model | recovered / well posed | median dead fraction | median FVU | "
             "median matched cosine | seconds |", "|---|---|---|---|---|---|---|"]
    for name, label, got, posed, dead, fvu, matched, seconds in rows:
        lines.append(f"| {name} | {label} | {got} / {posed} | {dead:.3f} | {fvu:.4f} | {matched:.3f} | {seconds:.0f} |")
    lines += ["", "| setting | recovered / well posed (all models) |", "|---|---|"]
    for name in names:
        got = sum(r[2] for r in rows if r[0] == name)
        posed = sum(r[3] for r in rows if r[0] == name)
        lines.append(f"| {name} | {got} / {posed} ({got / max(posed, 1):.0%}) |")
    lines += ["", f"![matched cosine]({figure_path.name})", ""]
    return write_text(out_dir / "report.md", "\n".join(lines))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="sae_recovery")
    parser.add_argument("--out", type=Path, default=Path("results/sae-recovery"))
    parser.add_argument("--train-dir", type=Path, default=None, help="where the trained grids are (or go)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per feature probability (the flagship: 1)")
    parser.add_argument("--models", default="", help="comma list of model labels (e.g. n20_m5); default all")
    parser.add_argument("--diagnose", action="store_true", help="only the n4_m2 b_pre diagnosis (`diagnose`)")
    parser.add_argument("--all-sizes", action="store_true", help="train every dictionary size m..n+1 (as the "
                        "flagship does) instead of only the n_rep sizes the score needs")
    args = parser.parse_args(argv)
    if args.diagnose:
        diagnose(args.train_dir or args.out / "train")
        return 0
    unknown = [s for s in args.settings.split(",") if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown} (known: {', '.join(SETTINGS)})")
    run(args.out, train_dir=args.train_dir, settings=args.settings.split(","), seeds=args.seeds,
        all_sizes=args.all_sizes, only_models=[m for m in args.models.split(",") if m])
    print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
