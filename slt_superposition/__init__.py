"""slt-superposition: the local learning coefficient and superposition on the same models.

Public API (see docs/architecture.md):
    estimate_llc, estimate_llc_batched, calibrate, SGLDConfig, open_result, save_dataset
"""

from slt_superposition.errors import InputError
from slt_superposition.calibration import calibrate
from slt_superposition.io import open_result, save_dataset
from slt_superposition.llc import SGLDConfig, estimate_llc, estimate_llc_batched

__all__ = ["InputError", "SGLDConfig", "calibrate", "estimate_llc", "estimate_llc_batched", "open_result", "save_dataset"]
__version__ = "0.1.0"
