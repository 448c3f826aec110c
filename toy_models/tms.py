"""Toy models of superposition (Elhage et al. 2022), as Flax nnx modules and pure functions.

    h  = W x                       W: (n_hidden, n_features), column W[:, i] = feature i
    x' = ReLU(W^T h + b)           b: (n_features,)
    hidden-ReLU variant: h = ReLU(W x)

The pure functions over the parameter dict `{"W", "b"}` are what gets jitted, vmapped
over instances and sampled by SGLD; the nnx `TMS` module wraps the same parameters for
users who want a module object.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

MODELS = ("tms", "tms_relu_hidden")


def tms_init_params(key, n_features: int, n_hidden: int, *, std: float | None = None) -> dict[str, jax.Array]:
    """Normal W with standard deviation `std` (None: Xavier, as the Anthropic notebook), zero b.

    Returns {"W": (m, n), "b": (n,)}.
    """
    std = jnp.sqrt(2.0 / (n_features + n_hidden)) if std is None else std
    W = std * jax.random.normal(key, (n_hidden, n_features), dtype=jnp.float32)
    return {"W": W, "b": jnp.zeros((n_features,), jnp.float32)}


def tms_hidden(params, x, *, relu_hidden: bool = False) -> jax.Array:
    """Hidden activations h = W x for `x: (batch, n_features)`; returns `(batch, n_hidden)`."""
    h = x @ params["W"].T
    return jax.nn.relu(h) if relu_hidden else h


def tms_forward(params, x, *, relu_hidden: bool = False) -> jax.Array:
    """Reconstruction x' = ReLU(W^T h + b); `x: (batch, n_features)` -> `(batch, n_features)`."""
    h = tms_hidden(params, x, relu_hidden=relu_hidden)
    return jax.nn.relu(h @ params["W"] + params["b"])


def tms_loss(params, x, importance=1.0, *, relu_hidden: bool = False) -> jax.Array:
    """Importance-weighted MSE: mean over the batch of sum_i I_i (x_i - x'_i)^2 (a scalar).

    `importance` is a scalar or `(n_features,)`.
    """
    error = x - tms_forward(params, x, relu_hidden=relu_hidden)
    return jnp.mean(jnp.sum(importance * error**2, axis=-1))


# One compiled program for "the loss of one model on one batch": training-grid evaluation
# and `TMS.loss` both go through it, so a rebuilt model reproduces a stored loss bit for bit.
tms_loss_jit = jax.jit(tms_loss, static_argnames=("relu_hidden",))


class TMS(nnx.Module):
    """The toy model as an nnx module; `params` gives the pure-function parameter dict."""

    def __init__(self, n_features: int, n_hidden: int, *, rngs: nnx.Rngs, relu_hidden: bool = False):
        init = tms_init_params(rngs.params(), n_features, n_hidden)
        self.W = nnx.Param(init["W"])
        self.b = nnx.Param(init["b"])
        self.relu_hidden = relu_hidden

    @classmethod
    def from_params(cls, params, *, relu_hidden: bool = False) -> "TMS":
        """Build a module holding exactly `params` ({"W": (m, n), "b": (n,)})."""
        n_hidden, n_features = params["W"].shape
        model = cls(n_features, n_hidden, rngs=nnx.Rngs(0), relu_hidden=relu_hidden)
        model.W.set_value(jnp.asarray(params["W"]))
        model.b.set_value(jnp.asarray(params["b"]))
        return model

    @property
    def params(self) -> dict[str, jax.Array]:
        return {"W": self.W.get_value(), "b": self.b.get_value()}

    def hidden(self, x: jax.Array) -> jax.Array:
        """`x: (batch, n_features)` -> `h: (batch, n_hidden)`."""
        return tms_hidden(self.params, x, relu_hidden=self.relu_hidden)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`x: (batch, n_features)` -> `x': (batch, n_features)`."""
        return tms_forward(self.params, x, relu_hidden=self.relu_hidden)

    def loss(self, x: jax.Array, importance=1.0) -> jax.Array:
        """Importance-weighted MSE on `x: (batch, n_features)` (scalar; see `tms_loss`)."""
        return tms_loss_jit(self.params, x, importance, relu_hidden=self.relu_hidden)
