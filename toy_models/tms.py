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

from slt_superposition.errors import require
from slt_superposition.small_dots import SMALL

MODELS = ("tms", "tms_relu_hidden")
LAYOUTS = ("auto", "rows", "features")


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


def tms_loss(params, x, importance=1.0, *, relu_hidden: bool = False, layout: str = "auto") -> jax.Array:
    """Importance-weighted MSE: mean over the batch of sum_i I_i (x_i - x'_i)^2 (a scalar).

    `x`: `(batch, n_features)`; `importance` a scalar, `(n_features,)` or shaped like `x`.
    `layout` says how the arithmetic is arranged, not what is computed (the layouts agree to
    float32 rounding): "rows" as `tms_forward`, each row's features innermost; "features" on the
    transposed batch `(n_features, batch)`, the rows innermost, so every elementwise pass and the
    sum over features vectorise across rows; "auto" (`loss_layout`) takes "features" where that
    is the faster form. Training keeps "rows" (`toy_models.train`).
    """
    require(layout in LAYOUTS, f"layout must be one of {LAYOUTS}, got {layout!r}")
    W, b = params["W"], params["b"]
    if layout == "auto":
        layout = loss_layout(W, x)
    if layout == "features":
        xt = jnp.swapaxes(x, -1, -2)
        h = W @ xt
        h = jax.nn.relu(h) if relu_hidden else h
        error = xt - jax.nn.relu(jnp.swapaxes(W, -1, -2) @ h + b[..., None])
        weight = jnp.swapaxes(jnp.broadcast_to(importance, x.shape), -1, -2)
        return jnp.mean(jnp.sum(weight * error**2, axis=-2))
    error = x - tms_forward(params, x, relu_hidden=relu_hidden)
    return jnp.mean(jnp.sum(importance * error**2, axis=-1))


def loss_layout(W, x) -> str:
    """`tms_loss`'s "auto": "features" on a CPU when `x` is one batch `(batch, n_features)` and the
    model's products are small enough that the SGLD chains write them elementwise
    (n_hidden x n_features at most `small_dots.SMALL`: TMS 6x2, 5x2, 8x2), else "rows". On those
    models the feature layout runs the SGLD chains faster on a CPU; from 10x3 on, whose products
    stay library GEMMs, slower (docs/benchmarks.md, "The TMS loss with the rows innermost")."""
    small = jnp.ndim(W) == 2 and jnp.shape(W)[0] * jnp.shape(W)[1] <= SMALL
    return "features" if small and jnp.ndim(x) == 2 and jax.default_backend() == "cpu" else "rows"


# One compiled program for "the loss of one model on one batch": training-grid evaluation
# and `TMS.loss` both go through it, so a rebuilt model reproduces a stored loss bit for bit.
tms_loss_jit = jax.jit(tms_loss, static_argnames=("relu_hidden", "layout"))


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
