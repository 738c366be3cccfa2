"""How ``make bench`` measures: the rows of its table, turns and processes.

- :func:`side_by_side` and :func:`best_time`: the fastest wall time of each
  side over several turns, after a warm-up (other tenants of a shared
  machine only ever add time: the minimum is the estimate they move least);
- :func:`child_cpu`: the least CPU time of the processes a callable runs;
- :func:`peak_rss`: the peak resident set and wall time of a subprocess;
- :class:`Row` and :func:`throughput_row`: a line of the table.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


@dataclasses.dataclass
class Row:
    """One line of the table."""

    name: str
    bncli: str
    baseline: str
    ratio: float | None
    target: str
    ok: bool | None  # None: reported, not judged

    @property
    def result(self) -> str:
        return {True: "pass", False: "FAIL", None: "-"}[self.ok]


def best_time(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Fastest wall time of ``fn`` over ``repeat`` runs, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def side_by_side(
    a: Callable[[], object], b: Callable[[], object], repeat: int, warmup: bool = True
) -> tuple[float, float]:
    """Fastest wall times of ``a`` and ``b``, run in turns (after one warm-up each)."""
    if warmup:
        a()
        b()
    times_a, times_b = [], []
    for _ in range(repeat):
        for fn, times in ((a, times_a), (b, times_b)):
            gc.collect()
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return min(times_a), min(times_b)


def child_cpu(fn: Callable[[], object], repeat: int) -> float:
    """Least CPU time (user + system) of the processes ``fn`` runs, over ``repeat`` runs."""
    import resource

    fn()
    least = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        fn()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        least = min(least, used)
    return least


def run(argv: list[str]) -> Callable[[], None]:
    """A whole process, its output thrown away, as a callable to time."""
    return lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def rate(samples: int, seconds: float) -> str:
    return f"{samples / seconds / 1e6:.2f} M/s"


def throughput_row(
    name: str,
    samples_a: int,
    seconds_a: float,
    samples_b: int,
    seconds_b: float,
    minimum: float,
) -> Row:
    """bncli (a) against a baseline (b): ratio of samples per second."""
    ratio = (samples_a / seconds_a) / (samples_b / seconds_b)
    target = f">= {minimum:g}x" if minimum >= 1 else f">= {minimum:.0%}"
    return Row(
        name,
        rate(samples_a, seconds_a),
        rate(samples_b, seconds_b),
        ratio,
        target,
        ratio >= minimum,
    )


def bncli_command() -> list[str]:
    script = Path(sys.executable).with_name("bncli")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bncli"]


def peak_rss(command: list[str]) -> tuple[float, float]:
    """``(peak resident MiB, wall seconds)`` of ``command`` as a subprocess.

    Measured in a fresh helper process, so that ``RUSAGE_CHILDREN`` (the
    largest of the children waited for) is this command's alone.
    """
    helper = (
        "import json, resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "wall = time.perf_counter() - start\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps([peak / 1024, wall]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", helper, *command],
        check=True,
        capture_output=True,
        text=True,
    )
    peak, wall = json.loads(done.stdout)
    return float(peak), float(wall)
