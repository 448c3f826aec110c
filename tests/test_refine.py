"""Refining trained weights to a critical point of L_n (analysis.refine)."""

import jax
import jax.numpy as jnp
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


def test_instances_in_sequence_match_one_instance_calls_bit_for_bit_and_do_not_depend_on_their_batch():
    """On a CPU `refine_batched` runs instances one at a time: each instance's result is what a
    jitted `refine` alone gives, whichever instances share the call."""
    train = train_grid(TrainConfig(n_features=5, n_hidden=2, feature_probabilities=(0.05, 0.3, 1.0), seeds=(0,),
                                   steps=300, batch_size=256), progress=False)
    loss_fn, params, data = llc_inputs(train, n_samples=512, key=jax.random.key(1))
    whole = refine_batched(loss_fn, params, data, steps=60, one_at_a_time=True)
    alone = jax.jit(lambda p, d: refine(loss_fn, p, d, steps=60))
    for i in range(3):
        one = lambda tree: jax.tree_util.tree_map(lambda x: x[i], tree)
        single = alone(one(params), one(data))
        part = refine_batched(loss_fn, jax.tree_util.tree_map(lambda x: x[i:], params),
                              jax.tree_util.tree_map(lambda x: x[i:], data), steps=60, one_at_a_time=True)
        for got in (jax.tree_util.tree_map(lambda x: x[i], whole), jax.tree_util.tree_map(lambda x: x[0], part)):
            for a, b in zip(jax.tree_util.tree_leaves(single), jax.tree_util.tree_leaves(got)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_refinement_stops_once_the_gradient_is_below_its_tolerance():
    train = train_grid(TrainConfig(n_features=5, n_hidden=2, feature_probabilities=(0.3,), seeds=(0,),
                                   steps=300, batch_size=256), progress=False)
    loss_fn, params, data = llc_inputs(train, n_samples=512, key=jax.random.key(2))
    one = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)
    loose, before, after_loose = refine(loss_fn, one(params), one(data), tol=1e-3)
    tight, _, after_tight = refine(loss_fn, one(params), one(data), tol=0.0)
    assert float(after_loose) <= 1e-3 < float(before)
    assert float(after_tight) < 1e-2 * float(after_loose)  # the loose run stopped early, the tight one went on


def test_relative_move_is_the_distance_travelled_over_the_starting_norm_per_instance():
    from analysis.refine import relative_move

    before = {"W": jnp.array([[[3.0, 0.0]], [[1.0, 1.0]]]), "b": jnp.array([[4.0], [1.0]])}  # norms 5, sqrt(3)
    after = {"W": jnp.array([[[3.0, 0.0]], [[1.0, 2.0]]]), "b": jnp.array([[4.0], [2.0]])}
    np.testing.assert_allclose(relative_move(before, after), [0.0, np.sqrt(2.0 / 3.0)], rtol=1e-6)



def test_refinement_of_float64_parameters():
    """With 64-bit types on, the gradient norm is float64: the loop's carry started as float32 and
    `refine` raised a TypeError."""
    loss = lambda p, d: jnp.mean((p["w"][0] * p["w"][1] * d - 1.0) ** 2)
    with jax.enable_x64(True):
        out, before, after = refine(loss, {"w": jnp.array([0.5, 0.7])}, jnp.linspace(0.5, 1.5, 10))
        assert out["w"].dtype == jnp.float64 and float(after) < 1e-6 < float(before)
