"""This package's LLC and devinterp 1.3's `estimate_learning_coeff_with_summary` agree.

Same TMS weights (the Chen et al. regular 6-gon, c=6 features, r=2 hidden), same data
(x = mu e_i, n = 1000), same eps, gamma, nbeta, batch size, chains, burn-in and draws.
The two estimates must agree within 3 combined standard errors (std over chains / sqrt(chains)).
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
devinterp_sampler = pytest.importorskip("devinterp.slt.sampler")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from slt_superposition import SGLDConfig, estimate_llc  # noqa: E402
from toy_models.data import high_sparsity_limit  # noqa: E402
from toy_models.tms import tms_loss  # noqa: E402

N_FEATURES, N_HIDDEN, N_SAMPLES, BATCH = 6, 2, 1000, 500
L_STAR, B_STAR = 1.32053, -0.61814  # docs/references.md: the regular 6-gon critical point


def six_gon() -> dict[str, np.ndarray]:
    angles = 2 * np.pi * np.arange(N_FEATURES) / N_FEATURES
    W = L_STAR * np.stack([np.cos(angles), np.sin(angles)]).astype(np.float32)  # (hidden, feature)
    return {"W": W, "b": np.full(N_FEATURES, B_STAR, np.float32)}


class TorchTMS(torch.nn.Module):
    """The same model and loss as `toy_models.tms.tms_loss` with importance 1."""

    def __init__(self, W, b):
        super().__init__()
        self.W = torch.nn.Parameter(torch.tensor(W))
        self.b = torch.nn.Parameter(torch.tensor(b))

    def forward(self, x):
        return torch.relu(x @ self.W.T @ self.W + self.b)


def torch_loss(model, batch):
    x = batch[0]
    return ((x - model(x)) ** 2).sum(dim=-1).mean()


@pytest.mark.slow
@pytest.mark.reference
def test_llc_agrees_with_devinterp():
    params = six_gon()
    x = np.asarray(high_sparsity_limit(jax.random.key(0), N_SAMPLES, N_FEATURES))
    eps, gamma, chains, burnin, draws = 5e-4, 100.0, 16, 100, 300
    nbeta = N_SAMPLES / math.log(N_SAMPLES)

    jax_loss = lambda p, batch: tms_loss(p, batch)
    model = TorchTMS(params["W"], params["b"])
    np.testing.assert_allclose(  # the two losses are the same function
        float(torch_loss(model, [torch.tensor(x)])),
        float(jax_loss({k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x))), rtol=1e-5)

    config = SGLDConfig(step_size=eps, localization=gamma, nbeta=nbeta, num_chains=chains,
                        num_steps=burnin + draws, num_burnin=burnin, batch_size=BATCH,
                        sampling="epoch")  # without replacement per epoch, as the shuffled DataLoader
    ours = estimate_llc(jax_loss, {k: jnp.asarray(v) for k, v in params.items()}, jnp.asarray(x),
                        config=config, key=jax.random.key(1))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 12-parameter model: extra threads only contend (4x slower on 2 cores)
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x)), batch_size=BATCH,
                                         shuffle=True)
    theirs = devinterp_sampler.estimate_learning_coeff_with_summary(
        model, loader, evaluate=torch_loss,
        optimizer_kwargs=dict(lr=eps, localization=gamma, nbeta=nbeta),
        num_chains=chains, num_draws=draws, num_burnin_steps=burnin, seed=0, verbose=False,
    )
    torch.set_num_threads(threads)
    ours_mean, ours_se = float(ours.llc_mean), float(ours.llc_std) / math.sqrt(chains)
    theirs_mean, theirs_se = theirs["llc/mean"], theirs["llc/std"] / math.sqrt(chains)
    combined = math.sqrt(ours_se**2 + theirs_se**2)
    print(f"slt_superposition {ours_mean:.3f} +- {ours_se:.3f}; devinterp {theirs_mean:.3f} +- {theirs_se:.3f}")
    assert int(ours.n_diverged) == 0
    assert abs(ours_mean - theirs_mean) < 3 * combined, (ours_mean, ours_se, theirs_mean, theirs_se)
    # the same loss level along the chains (lambda_hat / nbeta + init loss)
    assert abs(float(ours.loss_trace.sel(step=slice(burnin, None)).mean()) - float(np.mean(theirs["loss/trace"]))) \
        < 3 * combined / nbeta + 1e-6
