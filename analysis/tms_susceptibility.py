"""TMS inputs for `slt_superposition.estimate_susceptibilities`: paired perturbed data, the loss
differences they define, and per-feature observables of the sampled weights.

Data layout: a dict {"x": (n, feature), and one paired array per perturbation}. Paired samples
share their randomness: `probability_shift` draws one uniform u per entry and reads it under both
feature probabilities (present iff u < p, value u / p: the generator of `toy_models.data.sparse_uniform`),
so x and x' differ only where the perturbation acts and Delta L has small variance.

Perturbations (Delta L = L_{q'} - L_q, each a function `(params, data) -> scalar`):
- probability of feature i raised by a factor (paired data `x_p{i}`);
- importance of feature i changed by `delta_importance` (no new data: Delta L is
  delta_importance times feature i's reconstruction loss);
- a correlation between features i and j (paired data `x_c{i}{j}`: where exactly one of the two
  is present, the other is switched on with probability `strength`, same value u / p).

Observables (functions `(params, data) -> scalar`): feature i's reconstruction loss on x,
||W_i||, and its dimensionality D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from analysis.measures import feature_dimensionality_array, feature_norms_array
from slt_superposition.errors import InputError
from toy_models.tms import tms_forward, tms_loss


def check_features(features, n_features: int) -> tuple[int, ...]:
    """`features` as a tuple of ints, each a feature index in [0, n_features); `InputError` (one
    line) otherwise: jax clamps an out-of-range read and drops an out-of-range write, so a bad
    index would read another feature's response, or a response of 0, and a negative one the last
    features'."""
    picked = tuple(int(j) for j in features)
    bad = [j for j in picked if not 0 <= j < n_features]
    if bad:
        raise InputError(f"feature index {bad[0]} is out of range: the model has {n_features} features (0 .. "
                         f"{n_features - 1})")
    return picked


def require_sparse_uniform(config, what: str, *, plain_model: bool = False) -> None:
    """`InputError` (one line) unless the training grid `config` (`toy_models.train.TrainConfig`)
    drew `sparse_uniform` data, and with `plain_model` also trained the plain TMS at uniform
    importance: the paired perturbations here raise one entry of `sparse_uniform`'s feature
    probabilities, which the other generators do not read the same way (`high_sparsity_limit`
    ignores them), and `tms_data_loss` is the plain, uniform-importance loss. `what` names the
    measurement in the message."""
    if config.data != "sparse_uniform":
        raise InputError(f"{what} perturbs the feature probabilities of 'sparse_uniform' data; this grid was trained "
                         f"on '{config.data}' data")
    if plain_model and (config.model != "tms" or any(float(r) != 1.0 for r in config.importance_decays)):
        raise InputError(f"{what} samples the plain TMS loss at uniform importance; this grid was trained with model "
                         f"'{config.model}' and importance decays {list(config.importance_decays)}")


def _read(u, p):
    return jnp.where(u < p, u / p, 0.0)


def paired_data(key, n_samples: int, n_features: int, feature_probability, *, probability_features=(),
                factor: float = 1.5, correlated_pairs=(), strength: float = 0.5) -> dict:
    """x under q, and one paired array per perturbation (see the module doc). `feature_probability`
    scalar or `(n_features,)`. Returns {"x": (n, feature), "x_p{i}": ..., "x_c{i}_{j}": ...}."""
    u_key, c_key = jax.random.split(key)
    p = jnp.broadcast_to(jnp.asarray(feature_probability, jnp.float32), (n_features,))
    u = jax.random.uniform(u_key, (n_samples, n_features))
    x = _read(u, p)
    out = {"x": x}
    for i in probability_features:
        out[f"x_p{i}"] = _read(u, p.at[i].set(jnp.minimum(1.0, p[i] * factor)))
    coin = jax.random.uniform(c_key, (n_samples,))
    for i, j in correlated_pairs:
        on_i, on_j = x[:, i] > 0, x[:, j] > 0
        switch = coin < strength
        xc = x.at[:, j].set(jnp.where(on_i & ~on_j & switch, x[:, i], x[:, j]))
        xc = xc.at[:, i].set(jnp.where(on_j & ~on_i & switch, x[:, j], xc[:, i]))
        out[f"x_c{i}_{j}"] = xc
    return out


def tms_data_loss(params, data, importance=1.0):
    """The TMS loss on data["x"] (`toy_models.tms.tms_loss`)."""
    return tms_loss(params, data["x"], importance)


def probability_delta(i: int, importance=1.0):
    """Delta L of raising feature i's probability: L(x_p{i}) - L(x)."""
    return lambda params, data: tms_loss(params, data[f"x_p{i}"], importance) - tms_loss(params, data["x"], importance)


def correlation_delta(i: int, j: int, importance=1.0):
    """Delta L of correlating features i and j: L(x_c{i}_{j}) - L(x)."""
    return lambda params, data: (tms_loss(params, data[f"x_c{i}_{j}"], importance)
                                 - tms_loss(params, data["x"], importance))


def feature_loss(i: int):
    """Feature i's reconstruction loss on x: mean over samples of (x_i - x'_i)^2 (unweighted)."""
    return lambda params, data: jnp.mean((data["x"][:, i] - tms_forward(params, data["x"])[:, i]) ** 2)


def importance_delta(i: int, delta_importance: float = 0.5, importance=1.0):
    """Delta L of changing feature i's importance by `delta_importance`."""
    loss_i = feature_loss(i)
    return lambda params, data: delta_importance * loss_i(params, data)


def feature_norm(i: int):
    """||W_i||, the length of feature i's column (`analysis.measures.feature_norms_array`)."""
    return lambda params, data: feature_norms_array(params["W"])[i]


def feature_dimensionality(i: int):
    """D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2 (`analysis.measures.feature_dimensionality_array`)."""
    return lambda params, data: feature_dimensionality_array(params["W"])[i]
