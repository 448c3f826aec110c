"""Analyses of trained models: weight basis, activation basis, their comparison."""

import slt_superposition.precision  # noqa: E402,F401  (float32 matmuls on GPUs too: slt_superposition/precision.py)
