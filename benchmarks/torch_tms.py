"""The TMS as a torch module, for devinterp's side of benchmarks/llc_throughput.py.

In a module of its own (not the script) so that devinterp's worker processes (`cores` > 1,
started by spawning) can import it when they unpickle the model."""

from __future__ import annotations

import numpy as np
import torch


class TorchTMS(torch.nn.Module):
    """x -> ReLU(W^T W x + b), with W `(hidden, features)` and b `(features,)` from numpy arrays."""

    def __init__(self, W, b):
        super().__init__()
        self.W = torch.nn.Parameter(torch.tensor(np.asarray(W)))
        self.b = torch.nn.Parameter(torch.tensor(np.asarray(b)))

    def forward(self, inputs):
        return torch.relu(inputs @ self.W.T @ self.W + self.b)


def evaluate(model, batch):
    """The mean over the batch's rows of the squared reconstruction error (tms_loss's)."""
    inputs = batch[0]
    return ((inputs - model(inputs)) ** 2).sum(dim=-1).mean()
