"""The Dask engine's scaling: ``fit`` on a local cluster of 2 workers vs 1.

:func:`measure_dask_speedup` is called by ``benchmarks/run.py``; run alone,
``python benchmarks/bench_dask.py FILE.npy`` prints its result as JSON.

Each cluster (the local one ``--engine dask`` starts without
``--scheduler``: single-threaded worker processes on 127.0.0.1) is started
before the clock starts, warmed up with one fit (worker imports, the page
cache), then timed over a few fits of the whole file with the default task
plan; the fastest is kept (as in ``run.py``). Cluster start-up is left out:
it is paid once per command, not per gigabyte.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def _time_fits(
    npy_path: Path, workers: int, repeat: int, batch_size: int
) -> list[float]:
    import bncli
    from bncli.engines.base import FitOptions
    from bncli.engines.dask_cluster import connect, import_distributed
    from bncli.engines.dask_engine import fit_layer

    # The local cluster bncli starts itself, which also leaves this process's
    # environment as it was (its nannies would leave OMP_NUM_THREADS=1,
    # MALLOC_TRIM_THRESHOLD_ and more, under which every later row's
    # subprocesses would run).
    with connect(import_distributed(), None, workers) as (client, _):
        seconds = []
        for run in range(repeat + 1):  # the first run warms up
            layer = bncli.BatchNormalization()
            started = time.perf_counter()
            fit_layer(
                layer,
                [npy_path],
                FitOptions(batch_size=batch_size),
                scheduler=client.scheduler.address,
            )
            if run:
                seconds.append(time.perf_counter() - started)
        return seconds


def measure_dask_speedup(
    npy_path: str | Path, repeat: int = 3, batch_size: int = 32
) -> dict[str, Any]:
    """Time ``fit --engine dask`` on ``npy_path`` with 1 worker, then with 2.

    Args:
        npy_path: an NPY file ``(N, ...)``.
        repeat: timed fits per cluster (after one warm-up fit).
        batch_size: samples per batch.

    Returns:
        ``{"ratio": seconds with 1 worker / seconds with 2, "seconds_1":
        fastest seconds with 1 worker, "seconds_2": with 2, "samples": N,
        "repeat": repeat}``; a ratio near 2 is linear scaling.
    """
    import numpy as np

    npy_path = Path(npy_path).resolve()
    samples = int(np.load(npy_path, mmap_mode="r").shape[0])
    one = min(_time_fits(npy_path, 1, repeat, batch_size))
    two = min(_time_fits(npy_path, 2, repeat, batch_size))
    return {
        "ratio": one / two,
        "seconds_1": one,
        "seconds_2": two,
        "samples": samples,
        "repeat": repeat,
    }


if __name__ == "__main__":
    print(json.dumps(measure_dask_speedup(sys.argv[1]), indent=2))
