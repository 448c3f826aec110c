"""Data generators: shapes, determinism, the distributions they promise."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from slt_superposition.errors import InputError
from toy_models import data
from toy_models.data import GENERATORS, get_generator

KEY = jax.random.key(0)


@pytest.mark.parametrize("name", GENERATORS)
def test_shape_dtype_and_determinism(name):
    gen = get_generator(name)
    x = gen(KEY, 64, 6, 0.3)
    assert x.shape == (64, 6) and x.dtype == np.float32
    np.testing.assert_array_equal(x, gen(KEY, 64, 6, 0.3))
    assert not np.array_equal(x, gen(jax.random.key(1), 64, 6, 0.3))
    assert float(x.min()) >= 0.0 and float(x.max()) < 1.0


@pytest.mark.parametrize("p", [0.05, 0.5, 1.0])
def test_sparse_uniform_distribution(p):
    x = np.asarray(data.sparse_uniform(KEY, 50_000, 5, p))
    present = x > 0
    # 2.5e5 Bernoulli(p) draws: 5 standard errors
    assert abs(present.mean() - p) < 5 * np.sqrt(p * (1 - p) / present.size) + 1e-9
    values = x[present]
    assert abs(values.mean() - 0.5) < 5 * np.sqrt(1 / 12 / values.size)
    assert abs(values.var() - 1 / 12) < 0.01
    # the single-uniform trick must not correlate a value with the feature's presence elsewhere
    assert abs(np.corrcoef(x[:, 0], x[:, 1])[0, 1]) < 0.01


def test_sparse_uniform_per_feature_probabilities():
    p = np.array([0.1, 0.9], np.float32)
    x = np.asarray(data.sparse_uniform(KEY, 100_000, 2, p))
    np.testing.assert_allclose((x > 0).mean(0), p, atol=0.01)


def test_jittable_with_traced_probability():
    f = jax.jit(lambda k, p: data.sparse_uniform(k, 32, 4, p))
    np.testing.assert_array_equal(f(KEY, 0.5), data.sparse_uniform(KEY, 32, 4, 0.5))


def test_high_sparsity_limit_one_feature_per_sample():
    x = np.asarray(data.high_sparsity_limit(KEY, 10_000, 6))
    assert ((x > 0).sum(1) == 1).all()
    np.testing.assert_allclose((x > 0).mean(0), 1 / 6, atol=0.02)


def test_pairs():
    x = np.asarray(data.correlated_pairs(KEY, 20_000, 4, 0.3)) > 0
    np.testing.assert_array_equal(x[:, 0], x[:, 1])
    assert abs(x[:, 0].mean() - 0.3) < 0.02
    y = np.asarray(data.anticorrelated_pairs(KEY, 20_000, 4, 0.3)) > 0
    assert not (y[:, 0] & y[:, 1]).any()
    assert abs((y[:, 0] | y[:, 1]).mean() - 0.3) < 0.02


def test_unknown_generator():
    with pytest.raises(InputError, match="unknown data generator"):
        get_generator("gaussian")
