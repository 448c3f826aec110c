"""Refining trained weights to a critical point of L_n (analysis.refine)."""

import jax
import numpy as np

from analysis.refine import refine, refine_batched
from toy_models.train import TrainConfig, llc_inputs, train_grid


def test_refinement_reaches_a_critical_point_of_the_empirical_loss_for_every_instance():
    train = train_grid(TrainConfig(n_features=5, n_hidden=2, feature_probabilities=(0.1, 1.0), seeds=(0,),
                                   steps=400, batch_size=256), progress=False)
    loss_fn, params, data = llc_inputs(train, n_samples=1024, key=jax.random.key(0))
    refined, before, after = refine_batched(loss_fn, params, data, steps=200)
    before, after = np.asarray(before), np.asarray(after)
    assert (after < 1e-4 * before).all(), (before, after)  # trained on fresh samples: far from critical on L_n
    for i in range(len(before)):
        one = lambda tree: jax.tree_util.tree_map(lambda x: x[i], tree)
        assert float(loss_fn(one(refined), one(data))) <= float(loss_fn(one(params), one(data)))
        single, b, a = refine(loss_fn, one(params), one(data), steps=200)
        np.testing.assert_allclose(np.asarray(single["W"]), np.asarray(refined["W"][i]), rtol=1e-4, atol=1e-5)
        assert float(a) < 1e-4 * float(b)
