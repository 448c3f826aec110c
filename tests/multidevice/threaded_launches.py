"""Threads launching two-device programs while another queues one-device work: the case that
stopped a quick flagship run for good when every CPU core was a device (slt_superposition/
cpu_devices.py's module doc). Run as a script by tests/test_cpu_devices.py:

    python tests/multidevice/threaded_launches.py SECONDS

It splits the CPU into 2 devices as the console script does (`split_cpu_into_cores`, which
dispatches inline), then runs for SECONDS: two threads call `sharding.run_sharded` on a grid of
two blocks (so both devices), a third queues 64 chained one-device computations and waits for
them, over and over. Prints "rounds a b c" and exits 0 when every thread kept finishing rounds;
prints "STALL ..." and exits 3 when no thread finished one for STALL_S seconds. With JAX's
asynchronous dispatch left on, it stalled within 2 seconds in each of six runs (2-core CPU).
"""

from __future__ import annotations

import os
import sys
import threading
import time

STALL_S = 15.0


def main(seconds: float) -> None:
    """Run the case for `seconds` and exit the process with its status (stuck threads cannot be joined)."""
    from slt_superposition.cpu_devices import split_cpu_into_cores

    split_cpu_into_cores(2)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from slt_superposition import sharding

    def slow(x, scale):
        def step(c, _):
            return jnp.tanh(c @ c.T @ c * scale), None
        return jax.lax.scan(step, x, None, length=200)[0]

    grid = jax.vmap(slow, in_axes=(0, None))
    x = np.random.default_rng(0).normal(size=(32, 48, 48)).astype(np.float32) * 0.1  # 2 blocks of 16
    small = jax.jit(lambda a: jnp.tanh(a @ a) * 0.5)
    start = jnp.full((128, 128), 0.01, jnp.float32)
    sharding.run_sharded(grid, x, np.float32(0.5))  # compile both before the clock starts
    small(start).block_until_ready()

    rounds, stop = [0, 0, 0], threading.Event()

    def launcher(i):
        while not stop.is_set():
            sharding.run_sharded(grid, x, np.float32(0.5))
            rounds[i] += 1

    def queuer():
        while not stop.is_set():
            a = start
            for _ in range(64):
                a = small(a)
            a.block_until_ready()
            rounds[2] += 1

    threads = [threading.Thread(target=launcher, args=(0,), daemon=True),
               threading.Thread(target=launcher, args=(1,), daemon=True),
               threading.Thread(target=queuer, daemon=True)]
    for t in threads:
        t.start()
    began = last_change = time.monotonic()
    seen = tuple(rounds)
    while time.monotonic() - began < seconds:
        time.sleep(0.5)
        now = tuple(rounds)
        if now != seen:
            seen, last_change = now, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            print(f"STALL: no round finished for {STALL_S:.0f} s after {time.monotonic() - began:.0f} s; rounds {now}",
                  flush=True)
            os._exit(3)  # the stuck threads cannot be joined
    stop.set()
    for t in threads:
        t.join(timeout=120)
    print(f"devices {jax.device_count()} rounds {rounds[0]} {rounds[1]} {rounds[2]}", flush=True)
    os._exit(0 if min(rounds) > 0 and not any(t.is_alive() for t in threads) else 4)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
