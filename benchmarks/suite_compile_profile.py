"""Where the test suite's time goes: tracing, lowering and XLA compiling, test by test.

    PYTHONPATH=benchmarks python -m pytest -n 2 --dist loadgroup -q -p no:cacheprovider \\
        -p suite_compile_profile tests                       # writes suite_compile_profile.jsonl
    python benchmarks/suite_compile_profile.py suite_compile_profile.jsonl   # the summary

As a pytest plugin (`-p suite_compile_profile`, with `benchmarks/` on the path) it listens to JAX's
compile events (`jax.monitoring`) in every pytest process (both xdist workers) and appends one
JSON line per test to `$SUITE_COMPILE_PROFILE` (default `suite_compile_profile.jsonl`): the test's
wall time, the seconds of each JAX event (tracing, lowering to MLIR, XLA's backend compile,
the persistent cache's loads) and, per compiled program name, its compiles and seconds. Only the
pytest processes are seen: a test that starts its own processes (the CLI, `launch`, the 4-device
sub-suite) counts as wall time with no compiling.

As a script it sums such a file: the events over the whole run, the programs that took the most
compile time, and the slowest tests with their compile and trace-and-lower seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time

BACKEND = "/jax/core/compile/backend_compile_duration"
TRACE = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")

_events: collections.Counter = collections.Counter()
_program_seconds: collections.Counter = collections.Counter()
_program_counts: collections.Counter = collections.Counter()


def _listen(event: str, duration: float, **kwargs) -> None:
    _events[event] += duration
    if event == BACKEND:
        name = kwargs.get("fun_name", "?")
        _program_seconds[name] += duration
        _program_counts[name] += 1


def pytest_configure(config):
    import jax.monitoring

    jax.monitoring.register_event_duration_secs_listener(_listen)


def _hookwrapper(function):
    import pytest

    return pytest.hookimpl(hookwrapper=True)(function)


@_hookwrapper
def pytest_runtest_protocol(item, nextitem):
    events, seconds, counts = dict(_events), dict(_program_seconds), dict(_program_counts)
    start = time.perf_counter()
    yield
    row = {"test": item.nodeid, "wall": time.perf_counter() - start}
    row.update({k: v - events.get(k, 0.0) for k, v in _events.items() if v > events.get(k, 0.0)})
    row["programs"] = {name: [_program_counts[name] - counts.get(name, 0), s - seconds.get(name, 0.0)]
                       for name, s in _program_seconds.items() if _program_counts[name] > counts.get(name, 0)}
    with open(os.environ.get("SUITE_COMPILE_PROFILE", "suite_compile_profile.jsonl"), "a") as out:
        out.write(json.dumps(row) + "\n")


def summarize(path: str, top: int) -> None:
    """Print the run's totals, the `top` programs by compile seconds and the `top` slowest tests."""
    rows = [json.loads(line) for line in open(path)]
    events, seconds, counts = collections.Counter(), collections.Counter(), collections.Counter()
    for row in rows:
        for key, value in row.items():
            if key.startswith("/jax/"):
                events[key] += value
        for name, (count, s) in row["programs"].items():
            seconds[name] += s
            counts[name] += count
    wall = sum(row["wall"] for row in rows)
    print(f"{len(rows)} tests, {wall:.0f} s of test wall time summed over the pytest processes")
    for key, value in events.most_common():
        print(f"  {value:8.1f} s  {value / wall:5.1%}  {key}")
    print(f"programs by compile time (top {top}): seconds, compiles, name")
    for name, s in seconds.most_common(top):
        print(f"  {s:8.1f} {counts[name]:5d}  {name}")
    print(f"slowest tests (top {top}): wall, backend compile, trace + lower, test")
    for row in sorted(rows, key=lambda r: -r["wall"])[:top]:
        traced = sum(row.get(k, 0.0) for k in TRACE)
        print(f"  {row['wall']:7.1f} {row.get(BACKEND, 0.0):7.1f} {traced:6.1f}  {row['test']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="the JSON-lines file the plugin wrote")
    parser.add_argument("--top", type=int, default=20, help="programs and tests to list")
    args = parser.parse_args()
    summarize(args.profile, args.top)


if __name__ == "__main__":
    main()
