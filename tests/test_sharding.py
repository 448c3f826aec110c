"""Sharding helpers, and sharded over 4 (virtual CPU) devices == unsharded on one, bit for bit.

XLA_FLAGS must be set before jax is imported, so the 4-device claims live in an ordinary test
module, tests/multidevice/four_devices.py (one test per claim), that runs in a process of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slt_superposition.errors import InputError


FOUR_DEVICES = Path(__file__).parent / "multidevice" / "four_devices.py"


def test_sharded_equals_single_device_bitwise(tmp_path):
    """tests/multidevice/four_devices.py, one test per claim, in a process that sees 4 CPU
    devices: every one of its tests ran and passed (none skipped)."""
    import ast
    import xml.etree.ElementTree as ET

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    report = tmp_path / "four_devices.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                           str(FOUR_DEVICES)], capture_output=True, text=True, timeout=600, env=env,
                          cwd=FOUR_DEVICES.parents[2])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    suite = ET.parse(report).getroot().find("testsuite")
    defined = sum(isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
                  for node in ast.parse(FOUR_DEVICES.read_text()).body)
    assert int(suite.get("tests")) == defined > 0
    assert suite.get("failures") == suite.get("errors") == suite.get("skipped") == "0", proc.stdout[-2000:]


def test_shard_instances_rejects_mismatched_leading_axes():
    from slt_superposition.sharding import instance_mesh, shard_instances

    with pytest.raises(InputError, match="leading instance axis"):
        shard_instances({"W": np.zeros((3, 2)), "b": np.zeros((4,))}, instance_mesh())


def test_pad_instances_repeats_last_instance():
    from slt_superposition.sharding import pad_instances

    padded, n = pad_instances({"W": np.arange(5.0)}, 4)  # also works on jax arrays
    assert n == 5
    np.testing.assert_array_equal(padded["W"], [0, 1, 2, 3, 4, 4, 4, 4])


def test_maybe_initialize_distributed_is_a_noop_without_env(monkeypatch):
    from slt_superposition.sharding import maybe_initialize_distributed

    for var in ("JAX_COORDINATOR_ADDRESS", "SLT_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    assert maybe_initialize_distributed() is False
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    with pytest.raises(InputError, match="JAX_NUM_PROCESSES"):
        maybe_initialize_distributed()


def test_distributed_flags_are_checked_before_joining(monkeypatch):
    from slt_superposition.sharding import maybe_initialize_distributed

    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLT_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(InputError, match=r"process id must be in \[0, 2\)"):
        maybe_initialize_distributed("localhost:1234", 2, 2)
    with pytest.raises(InputError, match="need --coordinator"):
        maybe_initialize_distributed(None, 2, 0)
    assert maybe_initialize_distributed("localhost:1234", 1, 0) is False  # one process: nothing to join


def test_block_for_grows_blocks_on_an_accelerator_only(monkeypatch):
    """On a CPU the block is `balanced_block`'s whatever the working set; on an accelerator as many
    instances as BLOCK_BYTES holds, never fewer than BLOCK or more than MAX_BLOCK; SLT_BLOCK_BYTES=0
    restores the CPU rule."""
    from slt_superposition import sharding

    monkeypatch.delenv("SLT_BLOCK_BYTES", raising=False)
    assert sharding.block_for(2048, 1) == sharding.balanced_block(2048) == 16
    monkeypatch.setattr(sharding.jax, "default_backend", lambda: "gpu")
    assert sharding.block_for(2048, sharding.BLOCK_BYTES // 1024) == 1024
    assert sharding.block_for(100, sharding.BLOCK_BYTES // 1024) == 100
    assert sharding.block_for(100, sharding.BLOCK_BYTES * 4) == sharding.balanced_block(100) == 15
    assert sharding.block_for(10**5, 1) <= sharding.MAX_BLOCK
    monkeypatch.setenv("SLT_BLOCK_BYTES", "0")
    assert sharding.block_for(2048, 1) == 16
    monkeypatch.setenv("SLT_BLOCK_BYTES", "1GiB")
    with pytest.raises(InputError, match="SLT_BLOCK_BYTES must be a whole number"):
        sharding.block_for(2048, 1)


def test_chain_working_set_counts_chains_rows_and_row_bytes():
    """Minibatch rows when batched, all n rows at full batch; per-instance data skips its instance axis."""
    import jax.numpy as jnp

    from slt_superposition.chain import ChainShape
    from slt_superposition.llc import WORKING_SET_FACTOR, chain_working_set

    shape = ChainShape(num_chains=8, n_blocks=4, batch_size=500, sampling="replacement", n=1000, n_parameters=18)
    shared = jnp.zeros((1000, 6), jnp.float32)
    assert chain_working_set(shape, shared, data_batched=False) == 8 * 500 * 24 * WORKING_SET_FACTOR
    batched = jnp.zeros((3, 1000, 6), jnp.float32)
    full = shape._replace(batch_size=None)
    assert chain_working_set(full, batched, data_batched=True) == 8 * 1000 * 24 * WORKING_SET_FACTOR
