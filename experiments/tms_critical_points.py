"""The critical-point classes of the Chen et al. (2023) TMS (c = 6, m = 2, x = mu e_i), derived.

For k = 4, 5, 6 live features forming the regular k-gon and 0 .. 6 - k dead features with a
positive bias (the rest negative), `slt_superposition.theory.class_critical_point` builds the
class's critical point and `critical_point_class` reads off the exact population loss, the
eigenvalue counts of the exact population Hessian, minimum or saddle, and the theoretical
lambda (half the curved directions, where the flat ones are exactly the rotation orbit and
the negative-bias dead features). Nothing is sampled: the numbers are exact up to float64.
The figure sets each class's loss against its lambda, and the two leading terms of its local
free energy, n L + lambda log n, against the lowest-loss class's over n (`figure`, `crossing`).

    slt-superposition reproduce tms-critical-points --out results/tms_critical_points
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from scipy.special import lambertw

from experiments.registry import header, row_variables
from slt_superposition import figure_style as fs
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
    """Derive every class; write tms_critical_points.nc, tms_critical_points.png (`figure`) and
    report.md under `out_dir` (one size:
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
    fs.save(figure(ds), out_dir / "tms_critical_points.png")
    (out_dir / "report.md").write_text(
        header("Critical-point classes of the Chen et al. TMS (c = 6, m = 2)", "tms-critical-points", out_dir, size,
               finding(ds))
        + f"{table}\n{notes}\nFigure: tms_critical_points.png.\n")
    return ds


N_RANGE = (10.0, 1e4)  # sample counts of the free-energy panel


def leading_free_energy(loss, llc, n):
    """n L + lambda log n, the two leading terms of a class's local free energy at n samples
    (Watanabe; the log log n and constant terms left out): `loss`, `llc` broadcast against `n`."""
    return n * loss + llc * np.log(n)


def crossing(loss_a, llc_a, loss_b, llc_b) -> float:
    """The n > e at which classes a and b have the same leading free energy (a's loss above b's,
    its lambda below): n (L_a - L_b) = (lambda_b - lambda_a) log n, that is n / log n = c, whose
    root above e is n = -c W_-1(-1 / c) (Lambert W); NaN where there is none (c <= e included)."""
    dl, dlam = loss_a - loss_b, llc_b - llc_a
    if not (dl > 0 and dlam > 0 and dlam / dl > np.e):
        return float("nan")
    c = dlam / dl
    return float(-c * lambertw(-1.0 / c, -1).real)


def lowest_loss_with_theory(ds: xr.Dataset) -> int | None:
    """Index of the class with a lambda and the lowest population loss (None: no class has a lambda)."""
    loss, lam = ds["population_loss"].values, ds["llc"].values
    return int(np.nanargmin(np.where(np.isfinite(lam), loss, np.nan))) if np.isfinite(lam).any() else None


def figure(ds: xr.Dataset):
    """Left: each class's population loss against its lambda (minima filled, saddles open; the
    classes without a theory at their loss on the top edge). Right: the leading free energy
    n L + lambda log n of each class with a theory, less the lowest-loss class's, against n: where
    a curve is below 0, that class has the lower free energy (the posterior's preference at n,
    to leading order)."""
    loss, lam, labels = ds["population_loss"].values, ds["llc"].values, [str(c) for c in ds["class"].values]
    minimum = ds["minimum"].values.astype(bool)
    has = np.isfinite(lam)
    with fs.style():
        fig, axes = fs.subplots(1, 2, width=fs.PAGE, panel_aspect=0.65)
        left, right = axes[0, 0], axes[0, 1]
        top = np.nanmax(lam) + 1.5 if has.any() else 1.0
        for j, i in enumerate(np.argsort(loss)):
            y = lam[i] if has[i] else top
            left.plot(loss[i], y, "o" if has[i] else "^", color=fs.PALETTE[0] if has[i] else "0.5",
                      mfc=None if minimum[i] else "none")
            # the classes without a theory share the top edge: their names alternate above and below
            below = not has[i] and j % 2 == 1
            left.annotate(labels[i], (loss[i], y), xytext=(0, -9 if below else 4), textcoords="offset points",
                          ha="center", fontsize=6)
        if not has.all():
            left.axhline(top - 0.5, lw=0.5, ls=":", color="0.6")
            left.annotate("no theory", (0, top), xycoords=("axes fraction", "data"), xytext=(3, 0),
                          textcoords="offset points", ha="left", va="center", fontsize=6, color="0.4")
        left.set_xlabel("population loss L")
        left.set_ylabel("$\\lambda$ = curved directions / 2")
        left.set_title("filled: minimum; open: saddle", fontsize=7)
        n = np.geomspace(*N_RANGE, 400)
        best = lowest_loss_with_theory(ds)
        lowest = 0.0
        for colour, i in zip(fs.PALETTE, np.flatnonzero(has)):  # none without a lambda anywhere
            if i == best:
                continue
            difference = leading_free_energy(loss[i], lam[i], n) - leading_free_energy(loss[best], lam[best], n)
            lowest = min(lowest, float(difference.min()))
            right.plot(n, difference, color=colour, label=f"{labels[i]} $-$ {labels[best]}")
            n_cross = crossing(loss[i], lam[i], loss[best], lam[best])
            if np.isfinite(n_cross):
                right.axvline(n_cross, lw=0.6, ls=":", color=colour)
                right.annotate(f"n = {n_cross:.0f}", (n_cross, 0), xytext=(3, 3), textcoords="offset points",
                               fontsize=6, color=colour)
        right.axhline(0, lw=0.6, color=fs.REFERENCE)
        right.set_xscale("log")
        right.set_ylim(1.3 * lowest - 1, max(4 * abs(lowest), 5.0))  # the crossing in view; the lines leave at the top
        right.set_xlabel("sample count n")
        right.set_ylabel("difference of n L + $\\lambda$ log n")
        right.set_title("below 0: that class preferred (dotted: the crossing)", fontsize=7)
        if right.lines[1:]:  # a difference drawn beside the zero line
            right.legend(fontsize=6, loc="upper left")
    return fig


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
            f"classes with a theory, {theory}; the others say why below the table." + crossings_sentence(ds))


def crossings_sentence(ds: xr.Dataset) -> str:
    """' The leading free energy n L + lambda log n of the 5-gon is below the 6-gon's up to n = 445 ...'
    for each class with a theory that crosses the lowest-loss one ('' where none does)."""
    loss, lam, labels = ds["population_loss"].values, ds["llc"].values, ds["class"].values
    best = lowest_loss_with_theory(ds)
    if best is None:
        return ""
    crossings = {i: crossing(loss[i], lam[i], loss[best], lam[best]) for i in np.flatnonzero(np.isfinite(lam))}
    parts = [f"the {labels[i]}'s is below the {labels[best]}'s up to n = {n:.0f}"
             for i, n in crossings.items() if np.isfinite(n)]
    return (" Of the leading free energy n L + lambda log n (the figure), " + "; ".join(parts) + ", above it the "
            f"{labels[best]}'s is lower.") if parts else ""

