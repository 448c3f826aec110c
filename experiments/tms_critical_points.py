"""The critical-point classes of the Chen et al. (2023) TMS (c = 6, m = 2, x = mu e_i), derived.

For k = 4, 5, 6 live features forming the regular k-gon and 0 .. 6 - k dead features with a
positive bias (the rest negative), `slt_superposition.theory.class_critical_point` builds the
class's critical point and `critical_point_class` reads off the exact population loss, the
eigenvalue counts of the exact population Hessian, minimum or saddle, and the theoretical
lambda (half the curved directions, where the flat ones are exactly the rotation orbit and
the negative-bias dead features). Nothing is sampled: the numbers are exact up to float64.

    slt-superposition reproduce tms-critical-points --out results/tms_critical_points
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from experiments.registry import header, row_variables
from slt_superposition.io import save_dataset
from slt_superposition.provenance import provenance_attrs
from slt_superposition.theory import EIGEN_TOL, TMSClass, derived_classes

VARIABLES = {
    "k": ("live features (the regular k-gon)", "1"),
    "positive_dead": ("dead features with positive bias (1/12)", "1"),
    "nonpositive_dead": ("dead features with negative bias", "1"),
    "population_loss": ("exact population loss at the class point", "loss"),
    "smooth": ("population loss C^2 at the class point", "1"),
    "curved_directions": (f"exact population Hessian eigenvalues above {EIGEN_TOL:g} (-1: not C^2)", "1"),
    "flat_directions": ("eigenvalues within the tolerance of 0 (-1: not C^2)", "1"),
    "negative_directions": ("eigenvalues below minus the tolerance (-1: not C^2)", "1"),
    "expected_flat": ("rotation orbit + 3 per negative-bias dead feature (-1: not C^2)", "1"),
    "minimum": ("no direction lowers the loss to second order", "1"),
    "llc": ("theoretical lambda = curved / 2 (NaN: no theory)", "1"),
}


def _row(c: TMSClass) -> dict:
    as_int = lambda v: -1 if v is None else int(v)
    return dict(k=c.k, positive_dead=c.positive_dead, nonpositive_dead=c.nonpositive_dead,
                population_loss=c.critical_loss, smooth=bool(c.smooth), curved_directions=as_int(c.curved_directions),
                flat_directions=as_int(c.flat_directions), negative_directions=as_int(c.negative_directions),
                expected_flat=as_int(c.expected_flat), minimum=bool(c.minimum),
                llc=np.nan if c.llc is None else c.llc, label=c.label, reason=c.reason)


def markdown_table(classes: list[TMSClass]) -> str:
    lines = ["| class | k | dead b > 0 | dead b < 0 | population loss | curved | flat (expected) | negative | "
             "minimum or saddle | lambda |", "|---" * 10 + "|"]
    for c in classes:
        hessian = (f"{c.curved_directions} | {c.flat_directions} ({c.expected_flat}) | {c.negative_directions}"
                   if c.smooth else "not C^2 | - | -")
        kind = ("minimum" if c.minimum else "saddle") + ("" if c.smooth else " (directional search)")
        lam = f"{c.llc:g}" if c.llc is not None else "no theory"
        lines.append(f"| {c.label} | {c.k} | {c.positive_dead} | {c.nonpositive_dead} | {c.critical_loss:.5f} | "
                     f"{hessian} | {kind} | {lam} |")
    return "\n".join(lines) + "\n"


def run(out_dir: Path, *, size: str = "default", progress: bool = True) -> xr.Dataset:
    """Derive every class; write tms_critical_points.nc and report.md under `out_dir` (one size:
    the derivation is exact and takes seconds; nothing to show progress for)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = derived_classes()
    rows = [_row(c) for c in classes]
    data = row_variables(rows, VARIABLES, "class")
    data["reason"] = xr.Variable("class", np.array([r["reason"] for r in rows]), {"long_name": "why no theory"})
    ds = xr.Dataset(data, coords={"class": [r["label"] for r in rows]})
    ds.attrs.update(provenance_attrs("tms_critical_points", dict(eigen_tol=EIGEN_TOL)))
    save_dataset(ds, out_dir / "tms_critical_points.nc")
    table = markdown_table(classes)
    notes = "".join(f"- {c.label}: {c.reason}\n" for c in classes if c.reason)
    (out_dir / "report.md").write_text(
        header("Critical-point classes of the Chen et al. TMS (c = 6, m = 2)", "tms-critical-points", out_dir, size,
               finding(ds))
        + f"{table}\n{notes}")
    return ds


def finding(ds: xr.Dataset) -> str:
    """One paragraph: how many classes, how many are minima, saddles and not C^2, and the
    range of the theoretical lambdas (computed from `ds`)."""
    n = ds.sizes["class"]
    smooth, minimum = ds["smooth"].values.astype(bool), ds["minimum"].values.astype(bool)
    lam = ds["llc"].values
    has = np.isfinite(lam)
    lo, hi = (int(np.nanargmin(lam)), int(np.nanargmax(lam))) if has.any() else (0, 0)
    labels = ds["class"].values
    theory = (f"lambda = curved directions / 2 runs from {lam[lo]:g} ({labels[lo]}) to {lam[hi]:g} ({labels[hi]})"
              if has.any() else "no class has a theoretical lambda")
    return (f"{n} classes (k = {', '.join(str(k) for k in sorted(set(ds['k'].values.tolist())))} live features "
            f"with the remaining features dead), each derived exactly (float64, nothing sampled): "
            f"{int(minimum.sum())} are minima and {int((~minimum).sum())} saddles of the population loss; "
            f"{int((~smooth).sum())} are not C^2 there (read by a directional search). For the {int(has.sum())} "
            f"classes with a theory, {theory}; the others say why below the table.")

