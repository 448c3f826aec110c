"""Toy models: TMS, deep linear networks, their data and training."""

import slt_superposition.precision  # noqa: E402,F401  (float32 matmuls on GPUs too: slt_superposition/precision.py)
