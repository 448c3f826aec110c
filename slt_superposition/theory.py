"""Exact learning coefficients and critical points to validate the LLC estimator against.

Two families (numbers and sources in docs/references.md):

- Deep linear networks: Aoyagi's learning coefficient of a DLN with widths
  H_0 (input) .. H_L (output) and a true end-to-end matrix of rank r
  (`dln_learning_coefficient`).
- The Chen et al. (2023) TMS, c = 6 features, r = 2 hidden, f(x) = ReLU(W^T W x + b), with
  high-sparsity data x = mu e_i (i uniform, mu ~ U[0, 1]) and loss E||x - f(x)||^2 summed
  over features: the exact population loss of any (W, b) (`tms_population_loss`), the
  regular k-gon critical points (`kgon_critical_point`, `kgon_params`), the paper's
  theoretical LLCs (`KGON_THEORETICAL_LLC`), and the critical-point class of any (W, b)
  (`critical_point_class`: k-gon, positive dead biases, the exact population Hessian's
  curved directions and lambda = curved / 2 where that is the theory; docs/experiments/
  tms_critical_points.md lists the classes).

Everything here is float64 (numpy; the population Hessian by jax autodiff in float64): these
are reference values, not sampled functions.
"""

from __future__ import annotations

import functools
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
#: (cited, not derived here; see docs/references.md).
KGON_THEORETICAL_LLC = {5: 7.0, 6: 8.5}


def _segment_integral(c2, c1, c0, p, q, xp=np):
    """int_p^q (c2 mu^2 + c1 mu + c0) dmu, elementwise; zero where q <= p."""
    q = xp.maximum(q, p)
    return c2 * (q**3 - p**3) / 3 + c1 * (q**2 - p**2) / 2 + c0 * (q - p)


def _active_interval(a, b, xp=np):
    """The interval [p, q] of mu in [0, 1] where a mu + b > 0 (p = q when empty)."""
    a, b = xp.broadcast_arrays(xp.asarray(a, float), xp.asarray(b, float))
    nonzero = a != 0
    root = xp.where(nonzero, -b / xp.where(nonzero, a, 1.0), 0.0)
    p = xp.where(a > 0, xp.clip(root, 0, 1), 0.0)
    q = xp.where(a < 0, xp.clip(root, 0, 1), 1.0)
    q = xp.where((a == 0) & (b <= 0), 0.0, q)
    return p, q


def _population_loss(W, b, xp=np):
    """`tms_population_loss` as an array expression in `xp` (numpy, or jax.numpy for derivatives)."""
    c = W.shape[1]
    G = W.T @ W  # G[j, i] = coefficient of mu in output j for input i
    B = xp.broadcast_to(b[:, None], G.shape)  # B[j, i] = b_j
    p, q = _active_interval(G, B, xp)
    # off-diagonal j != i: target 0, output (G mu + b) where active
    off = _segment_integral(G**2, 2 * G * B, B**2, p, q, xp)
    # diagonal j == i: target mu; active: ((1 - G) mu - b)^2, inactive: mu^2
    d, bd = xp.diag(G), b
    pd, qd = xp.diag(p), xp.diag(q)
    diag_active = _segment_integral((1 - d) ** 2, -2 * (1 - d) * bd, bd**2, pd, qd, xp)
    diag_inactive = (_segment_integral(1.0, 0.0, 0.0, 0.0, pd, xp)
                     + _segment_integral(1.0, 0.0, 0.0, qd, xp.ones_like(qd), xp))
    per_input = diag_active + diag_inactive + off.sum(axis=0) - xp.diag(off)
    return per_input.sum() / c


def tms_population_loss(W, b) -> float:
    """Exact E||x - ReLU(W^T W x + b)||^2 under x = mu e_i, i ~ U{0..c-1}, mu ~ U[0, 1].

    `W: (hidden, feature)`, `b: (feature,)`. With G = W^T W, input i gives output
    j = ReLU(mu G_ji + b_j): each term is a quadratic in mu on the interval where the ReLU
    is active and (for j = i) mu^2 elsewhere, so the mu-integral is a sum of polynomial
    integrals over at most two pieces. Averaged over the c features.
    """
    return float(_population_loss(np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)))


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


# ---------------------------------------------------------------------------------------
# Critical-point classes of the Chen et al. TMS
# ---------------------------------------------------------------------------------------

#: A column with norm above this is a live feature (the represented-feature threshold of
#: analysis.measures); below it, a dead one.
LIVE_NORM = 0.5
#: A dead feature's bias above this is positive (it flows to its optimum 1 / (2 c) = 1/12),
#: below minus this negative (exactly flat there), in between zero: the boundary between the
#: two, not a critical point (raising a zero bias lowers the loss at first order).
ZERO_BIAS = 1e-3
#: Live columns form a regular polygon when every angular gap is within this of 2 pi / k
#: (radians) and the longest column is at most this ratio of the shortest.
POLYGON_ANGLE_TOL = 0.2
POLYGON_NORM_RATIO = 1.25
#: The bias at which a class point puts its non-positive dead features (any negative value
#: gives the same loss and Hessian: their ReLUs are off in a neighbourhood).
DEAD_NEGATIVE_BIAS = -0.5
#: Hessian eigenvalues (loss / parameter^2) above this are curved, below minus it negative.
EIGEN_TOL = 1e-6
#: A pre-activation mu G_ji + b_j with |G_ji| and |b_j| both below this makes the loss
#: non-C^2 at the point (its ReLU turns on over the whole interval at once).
KINK_TOL = 1e-9
#: Derived classes: k live features forming the regular k-gon, 0..(6 - k) positive dead biases.
DERIVED_K = (4, 5, 6)


@dataclass(frozen=True)
class TMSClass:
    """The critical-point class of a Chen et al. TMS parameter (c = 6 features, m = 2 hidden).

    A class is (k live features forming a regular k-gon, how many dead features have a
    positive bias). Its properties are those of the class's critical point
    (`class_critical_point`): the k-gon at the population optimum (l*, b*), positive dead
    biases at 1/12, the other dead biases negative.

    - `k`, `positive_dead`, `nonpositive_dead` (of which `zero_dead` within `ZERO_BIAS` of 0):
      counts; `polygon`: the live columns form a regular k-gon (within `POLYGON_ANGLE_TOL`, `POLYGON_NORM_RATIO`).
    - `loss`: exact population loss of the (W, b) given; `critical_loss`: of the class point.
    - `smooth`: the population loss is C^2 at the class point (else its Hessian is not defined).
    - `curved_directions`, `flat_directions`, `negative_directions`: eigenvalue counts of the
      exact population Hessian at the class point (None where not smooth);
      `expected_flat`: the rotation orbit (1) plus 3 per dead feature with negative bias
      (exactly flat there while the live biases are negative; None where not smooth).
    - `minimum`: no direction lowers the loss to second order (Hessian eigenvalues where
      smooth, one-sided second differences along optimised directions where not).
    - `llc`: curved_directions / 2 where the point is a smooth minimum whose flat directions
      are exactly the expected ones; otherwise None, with `reason`.
    """

    k: int
    positive_dead: int
    nonpositive_dead: int
    zero_dead: int
    polygon: bool
    loss: float
    critical_loss: float | None = None
    smooth: bool | None = None
    curved_directions: int | None = None
    flat_directions: int | None = None
    negative_directions: int | None = None
    expected_flat: int | None = None
    minimum: bool | None = None
    llc: float | None = None
    reason: str = ""

    @property
    def label(self) -> str:
        """e.g. '5-gon', '5-gon+1' (one positive dead bias), '3 live (not a polygon)', '0 live'."""
        if not self.polygon:
            return f"{self.k} live" + (" (not a polygon)" if self.k >= 3 else "")
        return f"{self.k}-gon" + (f"+{self.positive_dead}" if self.positive_dead else "")


def _flat_theta(W, b) -> np.ndarray:
    return np.concatenate([np.ravel(W), np.ravel(b)])


def _unflatten(theta, n_hidden: int, n_features: int):
    return theta[: n_hidden * n_features].reshape(n_hidden, n_features), theta[n_hidden * n_features:]


def population_hessian(W, b) -> np.ndarray:
    """Exact Hessian of `tms_population_loss` at (W, b) over theta = (W.ravel(), b): (d, d).

    Autodiff (float64) of the closed-form integral, so it includes the terms from ReLU
    boundaries moving inside mu in [0, 1]. Only meaningful where the loss is C^2
    (`population_loss_is_smooth`); at a kink it is one piece's Hessian.
    """
    import jax
    import jax.numpy as jnp

    W = np.asarray(W, np.float64)
    m, c = W.shape
    theta = _flat_theta(W, np.asarray(b, np.float64))
    with jax.enable_x64(True):
        return np.asarray(_population_hessian_program(m, c)(jnp.asarray(theta)))


@functools.lru_cache(maxsize=8)
def _population_hessian_program(m: int, c: int):
    """The jitted Hessian of the population loss over theta for W of shape (m, c) (op by op it
    took seconds per point)."""
    import jax
    import jax.numpy as jnp

    return jax.jit(jax.hessian(lambda th: _population_loss(*_unflatten(th, m, c), jnp)))


def population_loss_is_smooth(W, b, tol: float = KINK_TOL) -> bool:
    """False where some pre-activation mu G_ji + b_j has G_ji = b_j = 0 (within `tol`): there
    the ReLU switches on over all of mu in [0, 1] at once and the loss is only C^1."""
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    G = W.T @ W
    return not bool(np.any((np.abs(G) <= tol) & (np.abs(b)[:, None] <= tol)))


def second_order_minimum(W, b, *, starts: int = 8, step: float = 1e-5, seed: int = 0) -> float:
    """min over unit directions v of 2 (L(w + t v) - L(w)) / t^2 (t = `step`): the one-sided
    second-order change of the population loss, minimised by L-BFGS from `starts` random
    directions and from the eigenvectors of `population_hessian`. Negative: a saddle."""
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    m, c = W.shape
    theta = _flat_theta(W, b)
    base = tms_population_loss(W, b)

    def q(v):
        v = v / np.linalg.norm(v)
        return 2 * (tms_population_loss(*_unflatten(theta + step * v, m, c)) - base) / step**2

    rng = np.random.default_rng(seed)
    _, vectors = np.linalg.eigh(population_hessian(W, b))
    inits = [rng.normal(size=theta.size) for _ in range(starts)] + list(vectors.T[:3]) + list(-vectors.T[:3])
    return float(min(optimize.minimize(q, v0, method="L-BFGS-B", options={"maxiter": 200}).fun for v0 in inits))


def class_critical_point(k: int, positive_dead: int, *, n_features: int = KGON_N_FEATURES):
    """(W (2, n), b (n,)) float64 of a class: the k-gon at (l*, b*) of `kgon_critical_point`,
    `positive_dead` dead features at the optimal positive bias 1 / (2 n) (each lowers the
    loss by 1 / (4 n^2) = 1/144), the rest at `DEAD_NEGATIVE_BIAS`. A dead output does not
    interact with the live ones at W_dead = 0, so (l*, b*) stays optimal."""
    require(2 <= k <= n_features, f"k must be in [2, {n_features}], got {k}")
    require(0 <= positive_dead <= n_features - k, f"positive_dead must be in [0, {n_features - k}], got {positive_dead}")
    cp = kgon_critical_point(k, n_features=n_features)
    W, b = _kgon_arrays(k, cp.length, cp.bias, n_features, DEAD_NEGATIVE_BIAS)
    b[k:k + positive_dead] = 1 / (2 * n_features)
    return W, b


@functools.lru_cache(maxsize=None)
def _class_analysis(k: int, positive_dead: int) -> dict:
    W, b = class_critical_point(k, positive_dead)
    m = W.shape[0]
    expected = m * (m - 1) // 2 + (m + 1) * (KGON_N_FEATURES - k - positive_dead)
    out = dict(critical_loss=tms_population_loss(W, b), smooth=population_loss_is_smooth(W, b))
    if not out["smooth"]:
        out["minimum"] = second_order_minimum(W, b) > -1e-4
        out["reason"] = ("population loss not C^2 here (a pre-activation mu G_ji + b_j with G_ji = b_j = 0): "
                         "no Hessian, no theory")
        return out
    eig = np.linalg.eigvalsh(population_hessian(W, b))
    curved, negative = int((eig > EIGEN_TOL).sum()), int((eig < -EIGEN_TOL).sum())
    flat = eig.size - curved - negative
    out.update(curved_directions=curved, negative_directions=negative, flat_directions=flat,
               expected_flat=expected, minimum=negative == 0)
    if negative:
        out["reason"] = f"a saddle ({negative} negative Hessian directions)"
    elif flat != expected:
        out["reason"] = f"degenerate ({flat} flat Hessian directions, {expected} from the orbit and dead features)"
    else:
        out["llc"] = curved / 2
    return out


def critical_point_class(W, b) -> TMSClass:
    """The critical-point class of (W (2, 6), b (6,)) in the Chen et al. setting.

    Live features: columns with norm above `LIVE_NORM`; positive dead: the others with bias
    above `ZERO_BIAS`. A dead bias within `ZERO_BIAS` of 0 is not a critical point: no theory. Where the live columns form a regular k-gon with k in
    `DERIVED_K`, the class's critical point gives the loss, Hessian counts and theoretical
    lambda (see `TMSClass`); elsewhere only the counts and the loss of (W, b) are filled in.
    """
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    require(W.shape == (KGON_N_HIDDEN, KGON_N_FEATURES) and b.shape == (KGON_N_FEATURES,),
            f"critical_point_class is for the Chen et al. setting: W (2, 6) and b (6,), got {W.shape} and {b.shape}")
    require(bool(np.all(np.isfinite(W)) and np.all(np.isfinite(b))), "W and b must be finite")
    norms = np.linalg.norm(W, axis=0)
    live = norms > LIVE_NORM
    k = int(live.sum())
    positive = int(np.sum(~live & (b > ZERO_BIAS)))
    zero = int(np.sum(~live & (np.abs(b) <= ZERO_BIAS)))
    polygon = _is_regular_polygon(W[:, live])
    base = dict(k=k, positive_dead=positive, nonpositive_dead=KGON_N_FEATURES - k - positive, zero_dead=zero,
                polygon=polygon, loss=tms_population_loss(W, b))
    if zero:
        return TMSClass(**base, reason=f"{zero} dead feature(s) with bias 0 (within {ZERO_BIAS:g}): raising it lowers "
                                       "the loss, not a critical point: no theory")
    if not polygon:
        return TMSClass(**base, reason=f"{k} live features not forming a regular polygon: no theory")
    if k not in DERIVED_K:
        return TMSClass(**base, reason=f"the {k}-gon classes are not derived here: no theory")
    return TMSClass(**base, **_class_analysis(k, positive))


def _is_regular_polygon(live_columns: np.ndarray) -> bool:
    k = live_columns.shape[1]
    if k < 2:
        return False
    norms = np.linalg.norm(live_columns, axis=0)
    angles = np.sort(np.arctan2(live_columns[1], live_columns[0]))
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * np.pi]))
    return bool(np.max(np.abs(gaps - 2 * np.pi / k)) <= POLYGON_ANGLE_TOL and norms.max() <= POLYGON_NORM_RATIO * norms.min())


def derived_classes() -> list[TMSClass]:
    """Every derived class: k in `DERIVED_K` with 0 .. 6 - k positive dead biases, each at its
    own critical point (so `loss == critical_loss`)."""
    return [critical_point_class(*class_critical_point(k, p)) for k in DERIVED_K for p in range(KGON_N_FEATURES - k + 1)]


def dead_features_active(W, b, dead, xp=np):
    """Which dead features' parameters change the Chen-setting loss at (W, b): one flag per feature.

    Dead feature i (a column that is zero at w*, with bias b_i <= 0 there) is in its flat region
    while resetting (W_i, b_i) to (0, b_i*) leaves every output unchanged for every input
    x = u e_k, u in (0, 1] (x = mu e_i data): its own output ReLU(u G_ik + b_i) stays off for every
    k (G = W^T W), and every other output j on input e_i, ReLU(u G_ji + b_j), equals its value
    ReLU(b_j) with column i removed (for b_j <= 0: G_ji + b_j <= 0; for b_j > 0: G_ji = 0). Outside
    that region the chain is sampling a loss in which feature i takes part, and the estimate
    counts some of its m + 1 parameters (docs/experiments/llc_localization.md).

    W: (..., hidden, feature); b: (..., feature); dead: (feature,) booleans (which features were dead
    at w*). Returns (..., feature) booleans, False where `dead` is False. Traceable with xp=jax.numpy.
    """
    G = xp.swapaxes(W, -1, -2) @ W  # (..., feature j, feature i)
    bj = b[..., :, None]
    pre = G + bj  # [j, i]: output j's pre-activation on input e_i at u = 1
    own = xp.maximum(b, xp.max(pre, axis=-1)) > 0  # feature i's own output turns on for some input
    changed = xp.where(bj <= 0, pre > 0, G != 0)  # output j on input e_i differs from ReLU(b_j)
    n_features = W.shape[-1]
    changed = changed & ~xp.eye(n_features, dtype=bool)
    return (own | xp.any(changed, axis=-2)) & xp.asarray(dead, dtype=bool)


__all__ = [
    "dln_learning_coefficient",
    "dln_parameter_count",
    "tms_population_loss",
    "kgon_params",
    "kgon_population_loss",
    "kgon_critical_point",
    "KGonCriticalPoint",
    "KGON_THEORETICAL_LLC",
    "TMSClass",
    "critical_point_class",
    "class_critical_point",
    "derived_classes",
    "population_hessian",
    "dead_features_active",
    "population_loss_is_smooth",
    "second_order_minimum",
]
