"""Benchmark inputs, generated once into ``benchmarks/data/`` (git-ignored).

Float32 data of 16 channels, each with its own offset and scale, as NPY and
as Parquet (pyarrow's default writer settings: snappy, row groups of 1Mi
rows). A file is rebuilt only when missing or of the wrong size, and written
under a temporary name first, so an interrupted run never leaves a short one.
"""

from __future__ import annotations

import os
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
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".npy.tmp")
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.float32, shape=(rows, CHANNELS)
    )
    row = 0
    for piece in _pieces(rows):
        out[row : row + len(piece)] = piece
        row += len(piece)
    out.flush()
    del out
    os.replace(tmp, path)
    return path


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


def small_npy_path() -> Path:
    """A small NPY file (4096 samples) for whole-process start-up timings."""
    return npy_path(1 << 12)
