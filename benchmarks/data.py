"""Benchmark inputs, generated once into ``benchmarks/data/`` (git-ignored).

Float32 data of 16 channels, each with its own offset and scale, as NPY and
as Parquet (pyarrow's default writer settings: snappy, row groups of 1Mi
rows). A file is rebuilt only when missing or of the wrong size, and written
under a temporary name first, so an interrupted run never leaves a short one.

Every file is written in order by ``write()`` calls, as ``np.save`` writes,
and :func:`warm` brings each one into the page cache the same way before it
is timed: how a file lies in the page cache sets the cost of mapping it. A
file written or read in one pass lies mostly in 2 MiB folios, which Linux
maps with one entry each; one written through a memory map lies in 4 KiB
pages, each mapped by a fault, and a fit of it took about 1.7x the time
(1 GiB NPY, one worker: 222 ms against 125 ms, the same bytes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
CHANNELS = 16
#: Samples of the full data: 2**24 rows x 16 float32 channels = 1 GiB decoded.
FULL_ROWS = 1 << 24
#: Samples of the ``--quick`` data (32 MiB).
QUICK_ROWS = 1 << 19
_PIECE = 1 << 20


def _pieces(rows: int, seed: int = 0):
    """The data in pieces of 1Mi rows: channel ``c`` ~ N(10 c, (1 + c)^2)."""
    rng = np.random.default_rng(seed)
    offset = (10.0 * np.arange(CHANNELS)).astype(np.float32)
    scale = (1.0 + np.arange(CHANNELS)).astype(np.float32)
    for start in range(0, rows, _PIECE):
        n = min(_PIECE, rows - start)
        x = rng.standard_normal((n, CHANNELS), dtype=np.float32)
        x *= scale
        x += offset
        yield x


def npy_path(rows: int) -> Path:
    """An NPY file ``(rows, 16)`` float32, generated if missing."""
    path = DATA / f"data-{rows}.npy"
    expected = rows * CHANNELS * 4
    if path.exists() and path.stat().st_size >= expected:
        return path
    write_npy(path, (rows, CHANNELS), _pieces(rows))
    return path


def write_npy(path: Path, shape: tuple[int, ...], pieces: Iterable[np.ndarray]) -> None:
    """A float32 NPY of ``shape`` from C-order ``pieces``, written in order
    under a temporary name, then renamed."""
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for piece in pieces:
            f.write(np.ascontiguousarray(piece, dtype="<f4").data)
    os.replace(tmp, path)


def warm(paths: Iterable[Path]) -> None:
    """Drop each file from the page cache, then read it once in order: every
    input lies there as a file written or copied in one pass does."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while os.read(fd, 8 << 20):
                pass
        finally:
            os.close(fd)


def parquet_path(rows: int) -> Path:
    """A Parquet file of columns ``c0``..``c15`` (float32), generated if missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = DATA / f"data-{rows}.parquet"
    if path.exists():
        meta = pq.ParquetFile(path).metadata
        if meta.num_rows == rows:
            return path
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    names = [f"c{j}" for j in range(CHANNELS)]
    schema = pa.schema([(name, pa.float32()) for name in names])
    with pq.ParquetWriter(tmp, schema) as writer:
        for piece in _pieces(rows):
            columns = [pa.array(piece[:, j]) for j in range(CHANNELS)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    os.replace(tmp, path)
    return path


def wide_parquet_path(rows: int, columns: int = 1024) -> Path:
    """A Parquet file of ``columns`` float32 columns, generated if missing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = DATA / f"wide-{rows}x{columns}.parquet"
    if path.exists():
        return path
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    names = [f"w{j}" for j in range(columns)]
    schema = pa.schema([(name, pa.float32()) for name in names])
    rng = np.random.default_rng(5)
    step = max(1, (16 << 20) // (4 * columns))
    with pq.ParquetWriter(tmp, schema) as writer:
        for start in range(0, rows, step):
            x = rng.standard_normal(
                (min(step, rows - start), columns), dtype=np.float32
            )
            table = pa.Table.from_arrays(
                [pa.array(x[:, j]) for j in range(columns)], schema=schema
            )
            writer.write_table(table)
    os.replace(tmp, path)
    return path


def small_npy_path() -> Path:
    """A small NPY file (4096 samples) for whole-process start-up timings."""
    return npy_path(1 << 12)
