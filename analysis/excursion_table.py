"""The flagship's estimates split by where their chains ended: stayed in w*'s configuration or left it.

Per model of a `compare` dataset (the flagship's grid, with `llc_chains_left` since 2026-12-06):
how many instances had a chain end with other features live than at w*, and, for those and for
the others, the median 2 llc / d, the share above the symmetry bound by more than 2 SE
(`analysis.compare.above_symmetry_bound`) and the share trusted. It answers whether the out-of-range estimates are the ones
whose chains left (`analysis.chain_excursions`; docs/experiments/tms_llc_vs_n.md, "Where the chains go").
`--split refinement-move` splits by how far refinement moved the trained weights instead
(`refinement_move` above `FAR_MOVE`, runs since 2026-12-06): are the out-of-range estimates the
ones read far from where training stopped?

    python -m analysis.excursion_table results/default/weights_vs_activations.nc [--by-probability]
    python -m analysis.excursion_table results/default/weights_vs_activations.nc --split refinement-move
"""

from __future__ import annotations

import argparse

import numpy as np
import xarray as xr

from analysis.compare import above_symmetry_bound, flagship_dataset_path
from analysis.refine import FAR_MOVE


NEEDS = ("llc_chains_left", "llc_chain_distance_max", "excess_degeneracy", "excess_degeneracy_se", "d_eff_fraction",
         "llc_trusted")
# how each split divides a model's instances: (the variable it reads, the rule, the two sides' names)
SPLITS = {
    "chains-left": ("llc_chains_left", lambda one: one["llc_chains_left"] > 0, ("left", "stayed")),
    "refinement-move": ("refinement_move", lambda one: one["refinement_move"] > FAR_MOVE, ("moved", "near")),
}
SIDE_LABELS = {"left": "a chain left w*'s live set", "stayed": "every chain stayed",
               "moved": f"refinement moved > {FAR_MOVE:.0%} of \\|w\\|", "near": f"refinement moved <= {FAR_MOVE:.0%}"}


def excursion_sides(one: xr.Dataset, split: str = "chains-left") -> dict[str, dict]:
    """For one model's instances (any dims), two sides by `split` (`SPLITS`): "left" / "stayed",
    whether a chain ended in another live set than w*'s, or "moved" / "near", whether refinement
    moved the weights by more than `FAR_MOVE` of their norm. Each side: instances, of (all
    instances), median 2 llc / d, share above the symmetry bound, share trusted, median largest
    chain distance (NaN where a side has no instance)."""
    _, rule, (first, second) = SPLITS[split]
    in_first = rule(one).values.ravel()
    above = above_symmetry_bound(one).values.ravel()
    trusted = one["llc_trusted"].values.ravel().astype(bool)
    fraction = one["d_eff_fraction"].values.ravel()
    distance = one["llc_chain_distance_max"].values.ravel()
    sides = {}
    for side, mask in ((first, in_first), (second, ~in_first)):
        count = int(mask.sum())
        of = lambda values, reduce: float(reduce(values[mask])) if count else np.nan
        sides[side] = {"instances": count, "of": in_first.size, "d_eff_fraction": of(fraction, np.nanmedian),
                       "above_bound": of(above, np.mean), "trusted": of(trusted, np.mean),
                       "distance": of(distance, np.nanmedian)}
    return sides


def excursion_rows(ds: xr.Dataset, split: str = "chains-left") -> list[dict]:
    """`excursion_sides` of every model of a `compare` dataset, as rows with "model" and "side"."""
    return [{"model": str(model), "side": side} | row for model in ds["model"].values
            for side, row in excursion_sides(ds.sel(model=model), split).items()]


def by_probability(ds: xr.Dataset) -> list[str]:
    """Per model, over the feature probabilities: the share of seeds on which a chain left w*'s live
    set and the share above the symmetry bound (three lines per model: p, left, above)."""
    lines, width = [], max(len(str(model)) for model in ds["model"].values)
    for model in ds["model"].values:
        one = ds.sel(model=model)
        seeds = [d for d in one["llc_chains_left"].dims if d != "feature_probability"]
        left = (one["llc_chains_left"] > 0).mean(seeds).values
        above = above_symmetry_bound(one).mean(seeds).values
        for label, values, form in (("p", one["feature_probability"].values, "6.3g"), ("left", left, "6.2f"),
                                    ("above", above, "6.2f")):
            lines.append(f"{str(model):<{width}} {label + ':':<6}" + "".join(f" {x:{form}}" for x in values))
    return lines


def format_rows(rows: list[dict]) -> list[str]:
    """The rows as a markdown table."""
    lines = ["| model | split | instances | median 2 llc / d | above the symmetry bound | trusted | "
             "median largest distance (x \\|w*\\|) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        side = SIDE_LABELS[r["side"]]
        share = lambda x: "-" if np.isnan(x) else f"{x:.0%}"
        value = lambda x: "-" if np.isnan(x) else f"{x:.2f}"
        lines.append(f"| {r['model']} | {side} | {r['instances']} of {r['of']} | {value(r['d_eff_fraction'])} | "
                     f"{share(r['above_bound'])} | {share(r['trusted'])} | {value(r['distance'])} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a flagship weights_vs_activations.nc (or a joined sweep's chunks), or the "
                                        "run's folder")
    parser.add_argument("--by-probability", action="store_true",
                        help="also print, per model and feature probability, the share of seeds on which a chain "
                             "left and the share above the symmetry bound")
    parser.add_argument("--split", choices=tuple(SPLITS), default="chains-left",
                        help="split each model's instances by whether a chain left w*'s live set (default) or by "
                             f"whether refinement moved the trained weights by more than {FAR_MOVE:.0%}% of their norm")
    args = parser.parse_args(argv)
    path = flagship_dataset_path(args.dataset)
    args.dataset = str(path)
    ds = xr.load_dataset(path)
    missing = [name for name in NEEDS + (SPLITS[args.split][0],) if name not in ds]
    if missing:
        raise SystemExit(f"{args.dataset} has no {', '.join(dict.fromkeys(missing))} (flagship runs since "
                         "2026-12-06 store llc_chains_left and refinement_move)")
    print("\n".join(format_rows(excursion_rows(ds, args.split))))
    if args.by_probability:
        print()
        print("\n".join(by_probability(ds)))


if __name__ == "__main__":
    main()
