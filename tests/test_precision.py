"""Importing the package makes float32 matrix products true float32, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = "import toy_models.tms, jax; print(jax.config.jax_default_matmul_precision)"


def _precision_after_import(env_value: str | None, script: str = SCRIPT) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_DEFAULT_MATMUL_PRECISION"}
    if env_value is not None:
        env["JAX_DEFAULT_MATMUL_PRECISION"] = env_value
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def test_import_sets_float32_matmuls_when_unset():
    assert _precision_after_import(None) == "highest"


def test_import_keeps_the_users_choice():
    assert _precision_after_import("tensorfloat32") == "tensorfloat32"


def test_importing_the_package_before_jax_sets_it_too():
    # the package no longer imports JAX itself: the setting waits in the environment for JAX's start
    script = "import slt_superposition, sys; before = 'jax' in sys.modules; import jax; " \
             "print(before, jax.config.jax_default_matmul_precision)"
    assert _precision_after_import(None, script) == "False highest"
    assert _precision_after_import("tensorfloat32", script) == "False tensorfloat32"


def test_a_choice_made_in_jax_before_the_import_is_kept():
    script = "import jax; jax.config.update('jax_default_matmul_precision', 'bfloat16'); " \
             "import slt_superposition; print(jax.config.jax_default_matmul_precision)"
    assert _precision_after_import(None, script) == "bfloat16"


def test_datasets_record_the_precision():
    from slt_superposition.provenance import provenance_attrs

    assert "matmul-precision highest" in provenance_attrs("train", {})["platform"]
