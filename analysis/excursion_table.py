"""The flagship's estimates split by where their chains ended: stayed in w*'s configuration or left it.

Per model of a `compare` dataset (the flagship's grid, with `llc_chains_left` since 2026-12-06):
how many instances had a chain end with other features live than at w*, and, for those and for
the others, the median 2 llc / d, the share above the symmetry bound by more than 2 SE
(`analysis.compare.above_symmetry_bound`) and the share trusted. It answers whether the out-of-range estimates are the ones
whose chains left (`analysis.chain_excursions`; docs/experiments/tms_llc_vs_n.md, "Where the chains go").

    python -m analysis.excursion_table results/default/weights_vs_activations.nc [--by-probability]
"""

from __future__ import annotations

import argparse

import numpy as np
import xarray as xr

from analysis.compare import above_symmetry_bound


NEEDS = ("llc_chains_left", "llc_chain_distance_max", "excess_degeneracy", "excess_degeneracy_se", "d_eff_fraction",
         "llc_trusted")


def excursion_sides(one: xr.Dataset) -> dict[str, dict]:
    """For one model's instances (any dims), {"left": ..., "stayed": ...}: "left" are the instances
    on which a chain ended in another live set than w*'s. Each side: instances, of (all instances),
    median 2 llc / d, share above the symmetry bound, share trusted, median largest chain distance
    (NaN where a side has no instance)."""
    left = (one["llc_chains_left"] > 0).values.ravel()
    above = above_symmetry_bound(one).values.ravel()
    trusted = one["llc_trusted"].values.ravel().astype(bool)
    fraction = one["d_eff_fraction"].values.ravel()
    distance = one["llc_chain_distance_max"].values.ravel()
    sides = {}
    for side, mask in (("left", left), ("stayed", ~left)):
        count = int(mask.sum())
        of = lambda values, reduce: float(reduce(values[mask])) if count else np.nan
        sides[side] = {"instances": count, "of": left.size, "d_eff_fraction": of(fraction, np.nanmedian),
                       "above_bound": of(above, np.mean), "trusted": of(trusted, np.mean),
                       "distance": of(distance, np.nanmedian)}
    return sides


def excursion_rows(ds: xr.Dataset) -> list[dict]:
    """`excursion_sides` of every model of a `compare` dataset, as rows with "model" and "side"."""
    return [{"model": str(model), "side": side} | row for model in ds["model"].values
            for side, row in excursion_sides(ds.sel(model=model)).items()]


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
    lines = ["| model | chains | instances | median 2 llc / d | above the symmetry bound | trusted | "
             "median largest distance (x \\|w*\\|) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        side = "a chain left w*'s live set" if r["side"] == "left" else "every chain stayed"
        share = lambda x: "-" if np.isnan(x) else f"{x:.0%}"
        value = lambda x: "-" if np.isnan(x) else f"{x:.2f}"
        lines.append(f"| {r['model']} | {side} | {r['instances']} of {r['of']} | {value(r['d_eff_fraction'])} | "
                     f"{share(r['above_bound'])} | {share(r['trusted'])} | {value(r['distance'])} |")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a flagship weights_vs_activations.nc (or a joined sweep's chunks)")
    parser.add_argument("--by-probability", action="store_true",
                        help="also print, per model and feature probability, the share of seeds on which a chain "
                             "left and the share above the symmetry bound")
    args = parser.parse_args(argv)
    ds = xr.load_dataset(args.dataset)
    missing = [name for name in NEEDS if name not in ds]
    if missing:
        raise SystemExit(f"{args.dataset} has no {', '.join(missing)} (flagship runs since 2026-12-06 store "
                         "llc_chains_left)")
    print("\n".join(format_rows(excursion_rows(ds))))
    if args.by_probability:
        print()
        print("\n".join(by_probability(ds)))


if __name__ == "__main__":
    main()
