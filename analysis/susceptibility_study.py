"""Study: the susceptibility from chain covariances against finite differences, by sampler time.

    python -m analysis.susceptibility_study

The TMS of `tests/test_susceptibility.py` (n = 5 features, m = 2, p = 0.2, 500 samples, the
5-gon refined by gradient descent), perturbation: feature 0's importance raised by 0.5. For each
SGLD setting (step size, localization, steps), chi of three observables three ways: the
covariance about each chain's own mean (averaged over chains), the covariance about the pooled
mean (`susceptibility.pooled_susceptibility`, what `estimate_susceptibilities` reports), and
finite differences of E_h[phi] from paired chains at h = +-0.02. Prints a markdown table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from analysis.tms_susceptibility import feature_loss, feature_norm, importance_delta, paired_data, tms_data_loss
from slt_superposition import markdown
from slt_superposition.diagnostics import mean_and_se
from slt_superposition.llc import SGLDConfig
from slt_superposition.susceptibility import estimate_susceptibilities, finite_difference
from slt_superposition.theory import kgon_params

SETTINGS = [(1e-4, 1.0, 4000), (3e-4, 1.0, 4000), (3e-4, 10.0, 8000), (3e-4, 1.0, 16000)]
OBSERVABLES = {"loss_0": feature_loss(0), "norm_0": feature_norm(0), "loss_1": feature_loss(1)}


def model():
    data = paired_data(jax.random.key(2), 500, 5, 0.2, probability_features=(0,))
    params = {k: jnp.asarray(v) for k, v in kgon_params(5, 1.1, -0.2, n_features=5).items()}
    grad = jax.jit(jax.grad(tms_data_loss))

    def descend(p, _):
        return jax.tree_util.tree_map(lambda a, g: a - 0.05 * g, p, grad(p, data)), None

    params, _ = jax.lax.scan(descend, params, None, length=2000)
    return params, data


def per_chain_own_mean(ds) -> tuple[np.ndarray, np.ndarray]:
    """chi from each chain's covariance about its own means, mean and SE over chains `(observable,)`."""
    a = ds["observable_mean_per_chain"].values - ds["observable_at_init"].values
    c = ds["delta_loss_mean_per_chain"].values[:, 0] - ds["delta_loss_at_init"].values[0]
    cov = ds["moment_per_chain"].values[:, :, 0] - a * c[:, None]
    chi = -float(ds["nbeta"]) * cov
    return mean_and_se(chi, axis=0)


def main() -> None:
    params, data = model()
    delta = importance_delta(0, 0.5)
    rows = []
    for eps, gamma, steps in SETTINGS:
        config = SGLDConfig(step_size=eps, localization=gamma, num_chains=16, num_steps=steps, num_burnin=steps // 4)
        ds = estimate_susceptibilities(tms_data_loss, params, data, delta_loss_fns={"importance_0": delta},
                                       observables=OBSERVABLES, config=config, key=jax.random.key(4))
        fd = finite_difference(tms_data_loss, params, data, delta_loss_fn=delta, observables=OBSERVABLES, delta=0.02,
                               config=config, key=jax.random.key(4))
        own, own_se = per_chain_own_mean(ds)
        pooled, pooled_se = ds["susceptibility"].values[0], ds["susceptibility_se"].values[0]
        diff, diff_se = fd["finite_difference"].values, fd["finite_difference_se"].values
        for k, name in enumerate(OBSERVABLES):
            rows.append((f"{eps:g}", f"{gamma:g}", steps, f"{eps * steps:.1f}", name, f"{own[k]:.4f} ± {own_se[k]:.4f}",
                         f"{pooled[k]:.4f} ± {pooled_se[k]:.4f}", f"{diff[k]:.4f} ± {diff_se[k]:.4f}",
                         f"{(pooled[k] - diff[k]) / np.hypot(pooled_se[k], diff_se[k]):+.1f}"))
        print(f"done eps {eps:g}, localization {gamma:g}, {steps} steps", flush=True)
    print(markdown.table(("step size", "localization", "steps", "sampler time", "observable", "chi, per-chain means",
                          "chi, pooled means", "finite difference", "(pooled - fd) / SE"), rows))


if __name__ == "__main__":
    main()
