"""How much a fit or a transform reads at once (engines.inputs.chunk_bytes).

An NPY fit whose kernel reads each window in place takes large windows (few
hand-offs between threads); a fit that makes more than the batches' moments
of a chunk (masks and the NaN mask: float64 copies; unsynchronized replicas:
moments per shard) and every transform keep smaller ones, so that the peak
memory stays bounded by the chunks in flight.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bncli.engines.base import FitParams
from bncli.engines.inputs import chunk_bytes
from bncli.io.dataset import open_dataset

MiB = 1 << 20


def params(**changes):
    base = {
        "batch_size": 32,
        "momentum": 0.99,
        "replicas": 1,
        "synchronized": False,
        "channels": 4,
    }
    return FitParams(**{**base, **changes})


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((64, 4), np.float32))
    mask = tmp_path / "m.npy"
    np.save(mask, np.ones(64, bool))
    return path, mask


def test_an_npy_fit_read_in_place_takes_64_mib(npy):
    path, _ = npy
    dataset = open_dataset([path])
    assert chunk_bytes(dataset, params=params()) == (4 * 8, 64 * MiB)
    synchronized = params(replicas=4, synchronized=True)
    assert chunk_bytes(dataset, params=synchronized)[1] == 64 * MiB
    exact = params(replicas=4, statistics="exact")
    assert chunk_bytes(dataset, params=exact)[1] == 64 * MiB


@pytest.mark.parametrize(
    ("options", "changes"),
    [
        ({"masks": ["MASK"]}, {}),
        ({"nan_policy": "mask"}, {}),
        ({}, {"replicas": 4}),  # moments per shard, replicas times over
    ],
    ids=["masks", "nan-mask", "unsynchronized-replicas"],
)
def test_a_fit_that_copies_its_chunks_takes_16_mib(npy, options, changes):
    path, mask = npy
    options = {k: [mask] if v == ["MASK"] else v for k, v in options.items()}
    dataset = open_dataset([path], **options)
    assert chunk_bytes(dataset, params=params(**changes))[1] == 16 * MiB


def test_without_fit_params_arrays_take_16_mib_and_tables_less(npy, tmp_path):
    path, _ = npy
    assert chunk_bytes(open_dataset([path]))[1] == 16 * MiB
    assert chunk_bytes(open_dataset([path]), outputs=True)[1] == 16 * MiB
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]}), table)
    dataset = open_dataset([table])
    assert chunk_bytes(dataset, params=params(channels=2)) == (2 * 8, 4 * MiB)
    assert chunk_bytes(dataset, outputs=True)[1] == 2 * MiB
