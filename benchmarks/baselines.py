"""The baselines ``make bench`` times bncli against: the same work done plainly.

Per-batch loops (Keras, PyTorch, NumPy), scikit-learn's ``partial_fit``, one
NumPy reduction over the mapped file, pyarrow's ``read_table``, and a
normalization written with NumPy or pyarrow alone. Each is its library at
its best for the job (see each docstring); :mod:`run` puts them side by side
with bncli.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Batch size of the per-batch baselines, and of the fits timed against them.
BATCH = 32
#: Rows per ``StandardScaler.partial_fit`` call.
SKLEARN_CHUNK = 65_536


def reduce_pass(path: Path) -> None:
    """One ``np.add.reduce`` over the memory-mapped array: the floor of a pass."""
    np.add.reduce(np.load(path, mmap_mode="r"), axis=0)


def keras_per_batch(x: np.ndarray) -> None:
    import keras

    layer = keras.layers.BatchNormalization()
    for lo in range(0, len(x), BATCH):
        layer(x[lo : lo + BATCH], training=True)


def torch_per_batch(x: np.ndarray) -> None:
    """``BatchNorm1d`` in train mode, one thread.

    A 32 x 16 batch gains nothing from more threads, and on a shared
    machine OpenMP's spinning threads make PyTorch far slower: one thread
    is the baseline at its best.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layer = torch.nn.BatchNorm1d(x.shape[1])
        layer.train()
        tensor = torch.from_numpy(x)
        with torch.no_grad():
            for lo in range(0, len(x), BATCH):
                layer(tensor[lo : lo + BATCH])
    finally:
        torch.set_num_threads(threads)


def numpy_per_batch(x: np.ndarray, momentum: float = 0.99) -> None:
    """The plain loop: each batch's moments, then the moving-average update."""
    moving_mean = np.zeros(x.shape[1])
    moving_variance = np.ones(x.shape[1])
    for lo in range(0, len(x), BATCH):
        batch = x[lo : lo + BATCH]
        mean = batch.mean(axis=0, dtype=np.float64)
        variance = batch.var(axis=0, dtype=np.float64)
        moving_mean = moving_mean * momentum + mean * (1 - momentum)
        moving_variance = moving_variance * momentum + variance * (1 - momentum)


def sklearn_partial_fit(x: np.ndarray) -> None:
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    for lo in range(0, len(x), SKLEARN_CHUNK):
        scaler.partial_fit(x[lo : lo + SKLEARN_CHUNK])


def read_table(path: Path, columns: list[str] | None) -> None:
    import pyarrow.parquet as pq

    pq.read_table(path, columns=columns)


def numpy_transform(
    path: Path, output: Path, mean: np.ndarray, inv: np.ndarray
) -> None:
    """Plain NumPy: read the whole array, normalize it, write it."""
    x = np.load(path)
    y = (x - mean.astype(np.float32)) * inv.astype(np.float32)
    np.save(output, y)


def pyarrow_transform(
    path: Path, output: Path, mean: np.ndarray, inv: np.ndarray
) -> None:
    """Plain pyarrow: read the table, normalize each column in NumPy, write it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = [
        pa.array(
            (table.column(j).to_numpy() - np.float32(mean[j])) * np.float32(inv[j])
        )
        for j in range(table.num_columns)
    ]
    pq.write_table(pa.table(columns, names=table.column_names), output)
