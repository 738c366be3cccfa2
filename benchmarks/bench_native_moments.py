"""The unmasked batch moments: the C kernel against NumPy and the memory's pace.

Each case is a float32 ``.npy`` file of 768 MiB (generated once into
``--dir``), memory-mapped with a warm page cache, viewed as batches of 32
rows; the best of ``--repeat`` runs, as GB/s of input read:

- ``flat sum``: ``x.reshape(-1).sum()`` over the mapping (NumPy's fastest
  pass over the bytes; channels-first data is summed in its file order);
- ``add.reduce``: ``np.add.reduce(x, axis=0)`` over the ``(N, C)`` rows;
- ``numpy``: :func:`bncli.kernels.numpy_moments` (the reference);
- ``C``: :func:`bncli.fast_moments.native_moments`.

Layouts: ``(N, 16)`` rows, ``(16, N)`` channels-first (the ``(N, 16)`` view
is its transpose), and the same two with 1,024 channels.

Usage: ``python benchmarks/bench_native_moments.py [--dir D] [--repeat 5]
[--threads] [--sweep]`` (``--threads`` adds the C kernel on two threads, each
taking half of the batches; ``--sweep`` instead times the C kernel alone on an
in-memory float32 ``(N, C)`` array of 256 MiB for C = 1..1,024, batches of 32
rows, with no files).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bncli import fast_moments, kernels

SIZE = 768 << 20  # bytes per file
ROWS = 32  # rows per batch


def _file(directory: Path, name: str, shape: tuple[int, int]) -> Path:
    path = directory / f"{name}.npy"
    if not path.exists():
        out = np.lib.format.open_memmap(path, "w+", np.float32, shape)
        rng = np.random.default_rng(0)
        flat = out.reshape(-1)
        step = 1 << 24
        for lo in range(0, flat.size, step):
            n = min(step, flat.size - lo)
            flat[lo : lo + n] = 3.0 + rng.standard_normal(n, dtype=np.float32)
        out.flush()
        del out
    return path


def _best(fn, repeat: int) -> float:
    fn()  # warm the page cache and the code
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


SWEEP = (1, 2, 3, 4, 5, 6, 7, 8, 12, 15, 16, 17, 24, 32, 64, 100, 256, 1024)


def sweep(repeat: int) -> None:
    """GB/s of the C kernel per channel count, in memory (no page cache)."""
    flat = np.random.default_rng(0).standard_normal(64 << 20, dtype=np.float32)
    print(f"{'channels':>9}{'GB/s':>8}")
    for channels in SWEEP:
        x = flat[: flat.size // (ROWS * channels) * ROWS * channels]
        x = x.reshape(-1, ROWS, channels)
        mean = np.empty((x.shape[0], channels))
        m2 = np.empty_like(mean)
        seconds = _best(
            lambda x=x, mean=mean, m2=m2: fast_moments.native_moments(
                x, mean, m2, force=True
            ),
            repeat,
        )
        print(f"{channels:>9}{x.nbytes / 1e9 / seconds:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path("benchmarks/data"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    if not fast_moments.AVAILABLE:
        raise SystemExit("the C kernel is not built (pip install -e .)")
    if args.sweep:
        sweep(args.repeat)
        return
    args.dir.mkdir(parents=True, exist_ok=True)

    print(f"{'case':<28}{'flat sum':>10}{'add.reduce':>12}{'numpy':>8}{'C':>8}", end="")
    print(f"{'C x2 thr':>10}" if args.threads else "")
    for channels in (16, 1024):
        n = SIZE // 4 // channels
        for first in (False, True):
            shape = (channels, n) if first else (n, channels)
            name = f"{'cf' if first else 'rows'}_{channels}"
            data = np.load(_file(args.dir, name, shape), mmap_mode="r")
            rows = data.T if first else data  # (N, C)
            x = rows.reshape(-1, ROWS, channels)  # a view in both layouts
            assert np.shares_memory(x, data)
            gb = data.nbytes / 1e9

            def native(part=x):
                assert fast_moments.native_moments(part, force=True) is not None

            def two_threads(x=x):
                half = x.shape[0] // 2
                with ThreadPoolExecutor(2) as pool:
                    list(pool.map(native, [x[:half], x[half:]]))

            cases = [
                lambda data=data: data.reshape(-1).sum(),
                lambda rows=rows: np.add.reduce(rows, axis=0),
                lambda x=x: kernels.numpy_moments(x),
                native,
            ]
            if args.threads:
                cases.append(two_threads)
            rates = [gb / _best(fn, args.repeat) for fn in cases]
            label = f"{'(C, N)' if first else '(N, C)'} C={channels} K={x.shape[0]}"
            print(f"{label:<28}" + "".join(f"{r:>10.2f}" for r in rates))


if __name__ == "__main__":
    main()
