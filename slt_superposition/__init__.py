"""slt-superposition: the local learning coefficient and superposition on the same models.

Public API (see docs/architecture.md):
    estimate_llc, estimate_llc_batched, estimate_refined_llc, estimate_refined_llc_batched,
    estimate_susceptibilities, calibrate, calibrate_batched, SGLDConfig, open_result, save_dataset

The names (and their modules, as attributes of the package) are imported on first use (PEP 562),
so `import slt_superposition` and the command line's `--help` do not load JAX and xarray;
importing the package still makes float32 matrix products true float32 (`precision`).
"""

from slt_superposition import precision  # noqa: F401  (float32 matmuls unless the user chose otherwise)
from slt_superposition.errors import InputError

__all__ = ["InputError", "SGLDConfig", "calibrate", "calibrate_batched", "estimate_llc", "estimate_llc_batched",
           "estimate_refined_llc", "estimate_refined_llc_batched", "estimate_susceptibilities", "open_result",
           "save_dataset"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """A public name (or the module holding it), imported on first use."""
    if name in ("calibrate", "calibrate_batched", "calibration"):
        import slt_superposition.calibration as home
    elif name in ("open_result", "save_dataset", "io"):
        import slt_superposition.io as home
    elif name in ("SGLDConfig", "estimate_llc", "estimate_llc_batched", "llc"):
        import slt_superposition.llc as home
    elif name in ("estimate_refined_llc", "estimate_refined_llc_batched", "refined"):
        import slt_superposition.refined as home
    elif name in ("estimate_susceptibilities", "susceptibility"):
        import slt_superposition.susceptibility as home
    else:
        raise AttributeError(f"module 'slt_superposition' has no attribute {name!r}")
    return home if home.__name__ == f"slt_superposition.{name}" else getattr(home, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
