"""slt-superposition: the local learning coefficient and superposition on the same models.

Public API (see docs/architecture.md):
    estimate_llc, estimate_llc_batched, estimate_refined_llc, estimate_refined_llc_batched,
    estimate_susceptibilities, calibrate, calibrate_batched, SGLDConfig, open_result, save_dataset
"""

from slt_superposition import precision  # noqa: F401  (float32 matmuls unless the user chose otherwise)
from slt_superposition.errors import InputError
from slt_superposition.calibration import calibrate, calibrate_batched
from slt_superposition.io import open_result, save_dataset
from slt_superposition.llc import SGLDConfig, estimate_llc, estimate_llc_batched
from slt_superposition.refined import estimate_refined_llc, estimate_refined_llc_batched
from slt_superposition.susceptibility import estimate_susceptibilities

__all__ = ["InputError", "SGLDConfig", "calibrate", "calibrate_batched", "estimate_llc", "estimate_llc_batched",
           "estimate_refined_llc", "estimate_refined_llc_batched", "estimate_susceptibilities", "open_result",
           "save_dataset"]
__version__ = "0.1.0"
