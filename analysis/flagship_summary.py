"""What a flagship run says so far: the report's findings for every model whose chunk is done.

The flagship (`reproduce weights-vs-activations`) writes each model as a chunk of a resumable
sweep (`<out>/sweep/chunk-*.nc`) and the report only once every model is done. For a run that
is still going, or was stopped, this prints the headline and the per-model findings of the
finished models (the same sentences the report would hold for them; the development part is
not in the chunks), then the stored checks' power (`analysis.check_power`). Each out-of-range
estimate's attribution is recomputed from the stored variables by the current
`analysis.compare.out_of_range_cause`.

    python -m analysis.flagship_summary results/default/sweep    # or results/default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import xarray as xr

from analysis.check_power import check_power
from analysis.compare import join_models, out_of_range_cause
from analysis.compare_plots import findings, headline


def finished_models(sweep_dir: Path) -> xr.Dataset:
    """The finished chunks of a flagship sweep folder, joined along `model` as the run joins them."""
    paths = sorted(Path(sweep_dir).glob("chunk-*.nc"))
    if not paths:
        raise SystemExit(f"no finished model in {sweep_dir} (no chunk-*.nc)")
    return join_models([xr.load_dataset(p) for p in paths])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the flagship run's sweep folder (<out>/sweep; the run's "
                                                     "folder <out> also does)")
    args = parser.parse_args(argv)
    if not any(args.sweep_dir.glob("chunk-*.nc")) and (args.sweep_dir / "sweep").is_dir():
        args.sweep_dir = args.sweep_dir / "sweep"  # the run's folder was given
    ds = finished_models(args.sweep_dir)
    if "out_of_range_cause" in ds:  # chunks written before a change of the rule keep their own labels otherwise
        ds["out_of_range_cause"] = out_of_range_cause(ds.drop_vars("out_of_range_cause"))
    manifest = args.sweep_dir / "manifest.json"
    steps = json.loads(manifest.read_text()).get("config", {}).get("check_steps", 300) if manifest.exists() else 300
    print(headline(ds))
    print()
    for line in findings(ds):
        print(line)
        print()
    print(f"Stored checks of {steps} steps (`python -m analysis.check_power`):")
    print("| model | check | failed | unresolved | steps to resolve (median, 90%) |")
    print("|---|---|---|---|---|")
    for model in ds["model"].values:
        for r in check_power(ds.sel(model=model), steps):
            print(f"| {model} | {r['check']} | {r['failed']} of {r['estimates']} | {r['unresolved']} | "
                  f"{r['steps_to_resolve_median']:,.0f}, {r['steps_to_resolve_p90']:,.0f} |")


if __name__ == "__main__":
    main()
