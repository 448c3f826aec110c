"""Exact learning coefficients and critical points to validate the LLC estimator against.

Two families (numbers and sources in ../shared/reference/ANCHORS.md):

- Deep linear networks: Aoyagi's learning coefficient of a DLN with widths
  H_0 (input) .. H_L (output) and a true end-to-end matrix of rank r
  (`dln_learning_coefficient`).
- The Chen et al. (2023) TMS, c = 6 features, r = 2 hidden, f(x) = ReLU(W^T W x + b), with
  high-sparsity data x = mu e_i (i uniform, mu ~ U[0, 1]) and loss E||x - f(x)||^2 summed
  over features: the exact population loss of any (W, b) (`tms_population_loss`), the
  regular k-gon critical points (`kgon_critical_point`, `kgon_params`) and the paper's
  theoretical LLCs (`KGON_THEORETICAL_LLC`).

Everything here is float64 numpy: these are reference values, not sampled functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import optimize

from slt_superposition.errors import require

# ---------------------------------------------------------------------------------------
# Deep linear networks (Aoyagi 2024)
# ---------------------------------------------------------------------------------------


def _aoyagi_subset(M: list[int]) -> tuple[list[int], int]:
    """The subset Sigma (as values) of the l+1 smallest M_j satisfying Aoyagi's conditions,
    and l. Conditions: max_Sigma M < min_rest M, sum_Sigma M >= l max_Sigma M,
    sum_Sigma M < l min_rest M (min over an empty rest is +infinity)."""
    ordered = sorted(M)
    for l in range(len(ordered)):
        sigma, rest = ordered[: l + 1], ordered[l + 1 :]
        min_rest = min(rest) if rest else math.inf
        total = sum(sigma)
        if max(sigma) < min_rest and total >= l * max(sigma) and total < l * min_rest:
            return sigma, l
    raise AssertionError(f"no Aoyagi subset for M = {M}")  # the theorem says one exists


def dln_learning_coefficient(widths, rank: int) -> float:
    """Aoyagi's learning coefficient lambda of a deep linear network.

    `widths`: (H_0, ..., H_L), input first, output last (L >= 1 layers);
    `rank`: r, the rank of the true end-to-end matrix (0 <= r <= min(widths)).
    With M_j = H_j - r and the subset Sigma of the l+1 smallest M_j (see `_aoyagi_subset`),
    S = sum_Sigma M, Mbar = ceil(S / l), a = S - (Mbar - 1) l:

        lambda = (-r^2 + r (H_0 + H_L)) / 2 + a (l - a) / (4 l) - l (l - 1) / 4 (S / l)^2
                 + 1/2 sum_{i<j in Sigma} M_i M_j

    It is the *global* coefficient; the local one at w* equals it where every layer of w*
    has rank r (as singular as the rank allows). Computed exactly in rationals.
    """
    widths = [int(h) for h in widths]
    require(len(widths) >= 2, f"a DLN needs at least 2 widths (input, output), got {widths}")
    require(all(h >= 1 for h in widths), f"widths must be positive, got {widths}")
    require(0 <= rank <= min(widths), f"rank {rank} must be in [0, min(widths) = {min(widths)}]")
    r = int(rank)
    M = [h - r for h in widths]
    sigma, l = _aoyagi_subset(M)
    lam = Fraction(-(r**2) + r * (widths[0] + widths[-1]), 2)
    lam += Fraction(sum(sigma[i] * sigma[j] for i in range(len(sigma)) for j in range(i + 1, len(sigma))), 2)
    if l >= 1:
        S = sum(sigma)
        a = S - (math.ceil(Fraction(S, l)) - 1) * l
        lam += Fraction(a * (l - a), 4 * l) - Fraction(l * (l - 1), 4) * Fraction(S, l) ** 2
    return float(lam)


def dln_parameter_count(widths, bias: bool = False) -> int:
    """d = sum_l H_l H_{l-1} (+ sum_l H_l with biases)."""
    widths = list(widths)
    d = sum(widths[i + 1] * widths[i] for i in range(len(widths) - 1))
    return d + (sum(widths[1:]) if bias else 0)


# ---------------------------------------------------------------------------------------
# TMS k-gons (Chen, Lau, Mendel, Wei, Murfet 2023)
# ---------------------------------------------------------------------------------------

KGON_N_FEATURES = 6
KGON_N_HIDDEN = 2
#: The paper's theoretical LLCs of the regular k-gon critical points for c = 6, r = 2
#: (cited, not derived here; see ANCHORS.md).
KGON_THEORETICAL_LLC = {5: 7.0, 6: 8.5}


def _segment_integral(c2, c1, c0, p, q):
    """int_p^q (c2 mu^2 + c1 mu + c0) dmu, elementwise; zero where q <= p."""
    q = np.maximum(q, p)
    return c2 * (q**3 - p**3) / 3 + c1 * (q**2 - p**2) / 2 + c0 * (q - p)


def _active_interval(a, b):
    """The interval [p, q] of mu in [0, 1] where a mu + b > 0 (p = q when empty)."""
    a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        root = np.where(a != 0, -b / np.where(a != 0, a, 1.0), 0.0)
    p = np.where(a > 0, np.clip(root, 0, 1), 0.0)
    q = np.where(a < 0, np.clip(root, 0, 1), 1.0)
    q = np.where((a == 0) & (b <= 0), 0.0, q)
    return p, q


def tms_population_loss(W, b) -> float:
    """Exact E||x - ReLU(W^T W x + b)||^2 under x = mu e_i, i ~ U{0..c-1}, mu ~ U[0, 1].

    `W: (hidden, feature)`, `b: (feature,)`. With G = W^T W, input i gives output
    j = ReLU(mu G_ji + b_j): each term is a quadratic in mu on the interval where the ReLU
    is active and (for j = i) mu^2 elsewhere, so the mu-integral is a sum of polynomial
    integrals over at most two pieces. Averaged over the c features.
    """
    W = np.asarray(W, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    c = W.shape[1]
    G = W.T @ W  # G[j, i] = coefficient of mu in output j for input i
    B = np.broadcast_to(b[:, None], G.shape)  # B[j, i] = b_j
    p, q = _active_interval(G, B)
    # off-diagonal j != i: target 0, output (G mu + b) where active
    off = _segment_integral(G**2, 2 * G * B, B**2, p, q)
    # diagonal j == i: target mu; active: ((1 - G) mu - b)^2, inactive: mu^2
    d, bd = np.diag(G), b
    pd, qd = np.diag(p), np.diag(q)
    diag_active = _segment_integral((1 - d) ** 2, -2 * (1 - d) * bd, bd**2, pd, qd)
    diag_inactive = _segment_integral(1.0, 0.0, 0.0, 0.0, pd) + _segment_integral(1.0, 0.0, 0.0, qd, 1.0)
    per_input = diag_active + diag_inactive + off.sum(axis=0) - np.diag(off)
    return float(per_input.sum() / c)


def _kgon_arrays(k, length, bias, n_features, spare_bias=0.0):
    angles = 2 * np.pi * np.arange(k) / k
    W = np.zeros((KGON_N_HIDDEN, n_features))
    W[:, :k] = length * np.stack([np.cos(angles), np.sin(angles)])
    b = np.full(n_features, float(spare_bias))
    b[:k] = bias
    return W, b


def kgon_params(k: int, length: float, bias: float, *, n_features: int = KGON_N_FEATURES,
                spare_bias: float = 0.0) -> dict[str, np.ndarray]:
    """The regular k-gon: W[:, i] = length (cos 2 pi i/k, sin 2 pi i/k) for i < k, the other
    columns zero; b_i = bias for i < k, `spare_bias` for the rest.

    Returns {"W": (2, n_features), "b": (n_features,)} float32 (TMS convention, W is
    (hidden, feature)). A spare bias <= 0 leaves the loss unchanged (its ReLU is off).
    """
    require(2 <= k <= n_features, f"k must be in [2, n_features = {n_features}], got {k}")
    W, b = _kgon_arrays(k, length, bias, n_features, spare_bias)
    return {"W": W.astype(np.float32), "b": b.astype(np.float32)}


def kgon_population_loss(k: int, length: float, bias: float, *, n_features: int = KGON_N_FEATURES) -> float:
    """Exact population loss of the regular k-gon with column length `length` and bias `bias`."""
    return tms_population_loss(*_kgon_arrays(k, length, bias, n_features))


@dataclass(frozen=True)
class KGonCriticalPoint:
    """A regular k-gon critical point of the population loss."""

    k: int
    length: float  # l*
    bias: float  # b*
    loss: float  # population loss at (l*, b*)
    theoretical_llc: float | None  # the paper's value, where it gives one


def kgon_critical_point(k: int, *, n_features: int = KGON_N_FEATURES) -> KGonCriticalPoint:
    """Minimise the exact k-gon loss over (length, bias) (Nelder-Mead from (1, 0), then
    polished to 1e-12). k = 5 -> (1.17046, -0.28230, 0.06874); k = 6 -> (1.32053, -0.61814,
    0.04819)."""
    require(2 <= k <= n_features, f"k must be in [2, n_features = {n_features}], got {k}")

    def objective(z):
        return kgon_population_loss(k, z[0], z[1], n_features=n_features)

    res = optimize.minimize(objective, x0=np.array([1.0, 0.0]), method="Nelder-Mead",
                            options={"xatol": 1e-12, "fatol": 1e-15, "maxiter": 20000})
    length, bias = res.x
    return KGonCriticalPoint(k=k, length=float(abs(length)), bias=float(bias), loss=float(res.fun),
                             theoretical_llc=KGON_THEORETICAL_LLC.get(k) if n_features == KGON_N_FEATURES else None)


__all__ = [
    "dln_learning_coefficient",
    "dln_parameter_count",
    "tms_population_loss",
    "kgon_params",
    "kgon_population_loss",
    "kgon_critical_point",
    "KGonCriticalPoint",
    "KGON_THEORETICAL_LLC",
]
