# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial: weights and activations of toy models, side by side
#
# This notebook walks through the package in three steps, in under five minutes on a laptop
# CPU:
#
# 1. **Train** a grid of toy models of superposition (Elhage et al. 2022): 5 features in 2
#    hidden dimensions, at three feature probabilities, two seeds each, in one compiled program.
# 2. **Estimate the local learning coefficient** (LLC, lambda) of every trained model by SGLD,
#    with a step size calibrated for each, and read the diagnostics that say whether to trust it.
# 3. **Compare** the weight basis (2 lambda / d, the effective fraction of the d weights) with
#    the activation basis (k / m, represented features per neuron).
#
# It is a [jupytext](https://jupytext.readthedocs.io) notebook: open it in Jupyter with
# jupytext installed, or run it as a script (`python docs/tutorial.py`). The test suite runs it
# with `SLT_TUTORIAL_SMALL=1`, which shrinks every setting below so that it takes seconds.

# %%
import os

import jax

SMALL = os.environ.get("SLT_TUTORIAL_SMALL") == "1"  # the test suite's setting: plumbing, not science
TRAIN_STEPS = 300 if SMALL else 5000
N_SAMPLES = 512 if SMALL else 4096
CALIBRATION = (dict(step_sizes=(1e-5, 1e-4), sweep_steps=100, min_steps=100, max_steps=400) if SMALL
               else dict(min_steps=4000, max_steps=32_000))

# %% [markdown]
# ## 1. Train a grid
#
# `train_grid` trains every instance (feature probability x importance decay x seed) in one
# jitted program and returns an `xarray.Dataset`: the weights `W(..., hidden, feature)` and
# biases `b(..., feature)` with the grid as named dimensions, the loss curves, and the full
# configuration in its attrs. `columns_figure` draws each feature's column W_i in the hidden
# plane; open circles are features the model does not represent (||W_i|| < 0.5).

# %%
from analysis.plots import columns_figure, loss_curves_figure
from toy_models.train import TrainConfig, train_grid

config = TrainConfig(n_features=5, n_hidden=2, feature_probabilities=(1.0, 0.1, 0.03), seeds=2,
                     steps=TRAIN_STEPS, batch_size=1024, learning_rate=3e-3)
grid = train_grid(config, progress=not SMALL)
print(grid["loss"].squeeze("importance_decay", drop=True).round(4).to_pandas())
columns_figure(grid)

# %% [markdown]
# Dense data (p = 1) keeps about as many features as neurons; sparser data packs more of the
# five into the plane (a regular pentagon when all five fit): the activations become
# **overcomplete**.

# %%
loss_curves_figure(grid)

# %% [markdown]
# ## 2. The LLC of every model, with its diagnostics
#
# `llc_inputs` draws each instance's data set (n samples) and returns a pure loss function.
# The LLC is defined at a critical point of that loss L_n, and training on fresh batches stops
# near one, not at it: from the trained weights the chains would slide downhill and read low. So
# `refine_batched` first moves every instance to a critical point of L_n (full-batch L-BFGS), as
# the flagship experiment does, and the grid takes the refined weights, so that both bases below
# describe the same point. `calibrate_batched` picks the SGLD step size and chain length of every instance at once
# (`calibrate` is its one-instance case): for each it sweeps step sizes, keeps the largest whose
# chains are healthy (no divergence, MALA acceptance above a threshold) and whose
# discretisation bias is small, then doubles the chain length until the estimate stops moving.
# The localization gamma (the pull back towards the trained weights) is part of what is
# measured, so it is always stated. The figure shows what it chose per instance.

# %%
from slt_superposition import calibrate_batched, estimate_llc_batched
from slt_superposition.plots import calibration_grid_figure, llc_estimates_figure, llc_traces_figure
from analysis.refine import refine_batched
from slt_superposition.grid import unflatten
from toy_models.train import GRID_DIMS, llc_inputs

loss_fn, trained, data = llc_inputs(grid, n_samples=N_SAMPLES, key=jax.random.key(0))
params, grad_before, grad_after = refine_batched(loss_fn, trained, data)
print(f"||grad L_n|| at the trained weights {float(grad_before.min()):.1e} to {float(grad_before.max()):.1e}; "
      f"refined: at most {float(grad_after.max()):.1e}")
grid = grid.assign(W=unflatten(params["W"], grid, ["hidden", "feature"]), b=unflatten(params["b"], grid, ["feature"]))
dims = {d: grid[d].values for d in GRID_DIMS}
sgld, calibration = calibrate_batched(loss_fn, params, data, key=jax.random.key(1), instance_dims=dims,
                                      localization=1.0, num_chains=4, **CALIBRATION)
print(calibration["verdict"].values.ravel()[0])  # why the first instance's settings were chosen
calibration_grid_figure(calibration)

# %% [markdown]
# Every instance with its own settings, in one compiled program (instances and chains are
# vectorised). Each trace panel shows the excess loss L_B(w_t) - L_B(w*) along the chains: it
# should rise during burn-in (shaded) and then fluctuate around a level, lambda / (n beta).
# A trace still drifting at the end means the chains were too short; a MALA acceptance far
# below the calibration's threshold means the step size is too large for that instance.

# %%
llc = estimate_llc_batched(loss_fn, params, data, config=sgld, key=jax.random.key(2), instance_dims=dims)
diagnostics = llc[["llc_mean", "llc_se", "rhat"]].squeeze("importance_decay", drop=True)
diagnostics["mala"] = llc["mala_acceptance"].mean("chain").squeeze("importance_decay", drop=True)
print(diagnostics.to_dataframe().round(3))
llc_traces_figure(llc)

# %%
llc_estimates_figure(llc)

# %% [markdown]
# R-hat near 1 says the chains agree with each other; the standard error `llc_se` is over
# chains. Treat an estimate as provisional where R-hat exceeds about 1.1, where its trace still
# drifts, or where the calibration's verdict says NOT converged: this notebook keeps chains
# short (`max_steps` above) to stay within five minutes, and singular models need long chains
# (the flagship experiment calibrates with longer ones and reports where they still move).
#
# ## 3. Weights against activations
#
# `compare` joins both bases on the grid: `overcompleteness` k / m from the weights' columns
# and `d_eff_fraction` 2 lambda / d from the LLC (d = 15 parameters here), with their
# relations. Points right of k / m = 1 have overcomplete activations; points below
# 2 lambda / d = 1 use fewer effective weight directions than they have parameters.

# %%
from analysis.compare import compare
from analysis.compare_plots import scatter_figure

both = compare(grid, llc)
table = both[["overcompleteness", "d_eff_fraction"]].squeeze("importance_decay", drop=True).to_dataframe()
print(table.round(2))
scatter_figure(both)

# %% [markdown]
# Where next: `slt-superposition reproduce weights-vs-activations --quick` runs the same
# comparison on three model sizes with Hessian ranks, sparse autoencoders and a fragility
# analysis, and writes a report (docs/experiments/weights_vs_activations.md explains it).
