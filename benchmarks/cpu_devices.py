"""Every CPU core a JAX device against one device: the same grid work, side by side in one run.

    python benchmarks/cpu_devices.py [--rounds 2] [--devices N]

The console script splits the CPU into one JAX device per core (`slt_superposition.cpu_devices`),
and the grid programs run their blocks of instances on every device with the same bits. The
device count is fixed when JAX starts, so each side runs in a process of its own
(`split_cpu_into_cores(1)` against `(N)`, default one per core, as the console script splits:
with N > 1 computations are dispatched inline, docs/scaling.md), alternating for `--rounds`
rounds; each process compiles first (untimed) and then times:

- training: the training benchmark's grid (TMS 20x5, 20 instances = 2 blocks of 10, batch 1024,
  AdamW, 1000 steps; benchmarks/train_throughput.py);
- LLC: 64 instances of the LLC benchmark's 6-gon x 8 chains x 1000 steps in one
  `estimate_llc_batched` call (benchmarks/llc_throughput.py; on a CPU one instance per block);
- calibration: `calibrate_batched` on 16 trained TMS 6x2 instances, the calibration
  benchmark's budget (benchmarks/calibrate_batched.py).

Prints each side's best wall time, the ratio, and whether the two sides' results (trained W,
every chain's LLC, the chosen step sizes) are the same bits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent


def digest(*arrays) -> str:
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return h.hexdigest()[:16]


def best_of(run, repeats: int = 2):
    run()  # compiles
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return min(times), out


def worker() -> None:
    """In a process whose JAX device count the environment set: time the three workloads."""
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(HERE))
    import jax

    from slt_superposition.cpu_devices import split_cpu_into_cores

    split_cpu_into_cores(int(os.environ["SLT_BENCHMARK_DEVICES"]))  # as the console script does

    from slt_superposition import SGLDConfig, estimate_llc_batched
    from slt_superposition.calibration import calibrate_batched
    from toy_models.train import train_grid
    import calibrate_batched as calibration_benchmark
    import llc_throughput as llc_benchmark
    from tms_grid import trained_6x2_grid
    import train_throughput as train_benchmark

    results = {"devices": jax.local_device_count()}
    config = train_benchmark.grid_config(1000)
    seconds, ds = best_of(lambda: train_grid(config, progress=False))
    results["train"] = (seconds, digest(ds["W"].values, ds["b"].values))

    grid, data = llc_benchmark.perturbed_grid(llc_benchmark.six_gon(), 64)
    sgld = SGLDConfig(step_size=llc_benchmark.EPS, localization=llc_benchmark.GAMMA, num_chains=llc_benchmark.CHAINS,
                      num_steps=llc_benchmark.STEPS, num_burnin=llc_benchmark.BURNIN, batch_size=llc_benchmark.BATCH)
    seconds, ds = best_of(lambda: estimate_llc_batched(llc_benchmark.loss_fn, grid, data, config=sgld,
                                                       key=jax.random.key(1), checks=False))
    results["llc"] = (seconds, digest(ds["llc_per_chain"].values))

    loss_fn, tms, tms_data, _ = trained_6x2_grid(16, 4096)
    seconds, (cal, _) = best_of(lambda: calibrate_batched(loss_fn, tms, tms_data, key=jax.random.key(1),
                                                          **calibration_benchmark.OPTIONS), repeats=1)
    results["calibrate"] = (seconds, digest(cal.step_size, cal.num_steps))
    print(json.dumps(results))


def run_side(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["SLT_BENCHMARK_DEVICES"] = str(devices)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker"], capture_output=True, text=True,
                          env=env, cwd=HERE.parent)
    if proc.returncode != 0:
        raise SystemExit(f"the {devices}-device side failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each side reports its best")
    parser.add_argument("--devices", type=int, default=None, help="the split side's device count (default: cores)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    sys.path.insert(0, str(HERE))
    import machine
    from slt_superposition.cpu_devices import core_count

    split = args.devices or core_count()
    print(f"machine: {machine.cpu_model()}, {core_count()} cores; 1 device against {split}, "
          f"best of {args.rounds} alternating rounds (a process per side and round)")
    best: dict[int, dict] = {}
    for _ in range(args.rounds):
        for devices in (1, split):
            out = run_side(devices)
            if out["devices"] != devices:
                raise SystemExit(f"asked for {devices} devices, JAX made {out['devices']}")
            for name in ("train", "llc", "calibrate"):
                seconds, bits = out[name]
                old = best.setdefault(devices, {}).get(name)
                if old is not None and old[1] != bits:
                    raise SystemExit(f"{name}: two runs on {devices} device(s) gave different bits")
                best[devices][name] = (min(seconds, old[0]) if old else seconds, bits)
    labels = {"train": "train_grid, TMS 20x5, 20 instances x 1000 steps",
              "llc": "estimate_llc_batched, 64 instances x 8 chains x 1000 steps",
              "calibrate": "calibrate_batched, 16 TMS 6x2 instances"}
    for name, label in labels.items():
        one, many = best[1][name], best[split][name]
        same = "same bits" if one[1] == many[1] else "DIFFERENT BITS"
        print(f"{label}: 1 device {one[0]:.2f} s, {split} devices {many[0]:.2f} s -> {one[0] / many[0]:.2f}x; {same}")


if __name__ == "__main__":
    main()
