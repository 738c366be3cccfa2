"""The reader contract: what every input format's reader must do, run per format.

As xarray's ``DatasetIOBase`` and zarr's ``StoreTests``: :class:`ReaderContract`
holds the tests; each format's class only says how to write (and damage) a
file of its format. The expected values are the NumPy arrays the test wrote,
never what a reader returns: the same values come back whatever the start
row and chunk size, re-reading gives the same chunks, rows and units are
reported as the format knows them, and damaged or empty files raise a
``DataError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bncli.errors import DataError, InputNotFoundError
from bncli.io.dataset import open_dataset
from bncli.io.readers import open_source
from bncli.io.sources import ReadOptions

N, C = 53, 3
NAMES = ["a", "b", "c"]


def _values(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 10.0, (N, C))


class ReaderContract:
    """The tests every reader passes; subclasses say how to write their format."""

    format = ""
    kind = "table"
    suffix = ""
    #: Whether the reader knows its rows without reading them all.
    knows_rows = True
    #: What a file without a channel is told.
    no_channel = "no numeric column to use as a channel"
    #: What the file cannot say itself (CSV's delimiter, an NPZ's array).
    read = ReadOptions()

    def write(self, path: Path, values: np.ndarray) -> None:
        """The values as this format's file (tables: three channels and two others)."""
        self.write_table(path, _table(values))

    def damage(self, path: Path) -> None:
        """Make the file unreadable as its format (by default: cut it in half)."""
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    @pytest.fixture
    def written(self, tmp_path: Path) -> tuple[Path, np.ndarray]:
        values = _values()
        path = tmp_path / f"data{self.suffix}"
        self.write(path, values)
        return path, values

    def open(self, path: Path, **options: Any):
        if self.kind == "table":
            options.setdefault("columns", NAMES)
        return open_dataset([path], read=self.read, **options)

    # ---------------------------------------------------------- what it knows

    def test_it_is_told_by_its_content(self, written):
        path, _ = written
        renamed = path.with_name("data.bin")
        path.rename(renamed)
        if self.format == "csv":  # text has no magic number: by extension only
            with pytest.raises(DataError, match="unrecognized format"):
                open_source(str(renamed), self.read)
            return
        source = open_source(str(renamed), self.read)
        assert (source.format, source.kind) == (self.format, self.kind)

    def test_rows_and_units(self, written):
        path, _ = written
        source = open_source(str(path), self.read)
        assert source.num_rows == (N if self.knows_rows else None)
        units = source.unit_rows()
        if units is None:
            assert self.kind == "array"  # any row is a place to start
        elif units:
            assert sum(units) == N and all(u > 0 for u in units)

    def test_the_dataset_reports_channels_and_samples(self, written):
        path, _ = written
        dataset = self.open(path)
        assert dataset.kind == self.kind
        assert len(dataset.features) == C
        assert dataset.num_samples == (N if self.knows_rows else None)
        assert dataset.replayable

    # ------------------------------------------------------------ the values

    @settings(
        max_examples=25,
        deadline=None,
        # One test, run by each format's class: the executors differ on
        # purpose, and each runs the same deterministic property.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(start=st.integers(0, N), rows=st.integers(1, N + 5))
    def test_any_start_and_chunk_size_give_the_same_values(self, written, start, rows):
        path, values = written
        chunks = list(self.open(path).chunks(start, rows))
        assert all(0 < len(c) <= rows for c in chunks)
        got = (
            np.concatenate([np.asarray(c.data, dtype=np.float64) for c in chunks])
            if chunks
            else np.empty((0, C))
        )
        np.testing.assert_array_equal(got.reshape(-1, C), values[start:])
        rows_named = [
            row
            for c in chunks
            for s in c.segments
            for row in range(s.row, s.row + s.rows)
        ]
        assert rows_named == list(range(start, N))

    def test_reading_again_gives_identical_chunks(self, written):
        path, _ = written
        dataset = self.open(path)
        first = [np.array(c.data) for c in dataset.chunks(5, 8)]
        again = [np.array(c.data) for c in dataset.chunks(5, 8)]
        assert len(first) == len(again)
        for a, b in zip(first, again, strict=True):
            np.testing.assert_array_equal(a, b)

    def test_nan_comes_through_as_the_format_holds_it(self, tmp_path):
        values = _values(1)
        values[4, 1] = np.nan
        path = tmp_path / f"nan{self.suffix}"
        self.write(path, values)
        # Under --nan-policy mask, the NaN is masked out.
        (masked,) = [c for c in self.open(path, nan_policy="mask").chunks(0, 6)][:1]
        assert masked.mask is not None
        assert not masked.mask.reshape(len(masked), C)[4, 1]
        assert masked.mask.reshape(len(masked), C).sum() == len(masked) * C - 1
        (strict,) = [c for c in self.open(path).chunks(0, 6)][:1]
        # A NaN is a number in every format (CSV's "nan" too): not a null.
        assert strict.nulls is None or not strict.nulls[4, 1]
        assert np.isnan(np.asarray(strict.data, dtype=np.float64)[4, 1])

    # ---------------------------------------------------------------- errors

    def test_a_damaged_file_is_a_data_error_naming_it(self, written):
        path, _ = written
        self.damage(path)
        with pytest.raises(DataError) as caught:
            dataset = self.open(path)
            for _ in dataset.chunks(0, 7):
                pass
        assert caught.value.path == str(path)
        assert type(caught.value).__module__ == "bncli.errors"

    def test_an_empty_file_is_a_data_error_naming_it(self, tmp_path):
        path = tmp_path / f"empty{self.suffix}"
        path.write_bytes(b"")
        with pytest.raises(DataError, match="empty file") as caught:
            self.open(path)
        assert caught.value.path == str(path)

    def test_a_missing_file_is_named(self, tmp_path):
        with pytest.raises(InputNotFoundError, match="no such file"):
            self.open(tmp_path / f"missing{self.suffix}")

    def test_no_channel_is_refused(self, tmp_path):
        path = tmp_path / f"none{self.suffix}"
        self.write_without_channels(path)
        with pytest.raises(DataError, match=self.no_channel) as caught:
            open_dataset([path], read=self.read)
        assert caught.value.path == str(path)

    def write_without_channels(self, path: Path) -> None:
        table = pa.table({"name": pa.array([f"r{i}" for i in range(N)])})
        self.write_table(path, table)

    def write_table(self, path: Path, table: pa.Table) -> None:
        raise NotImplementedError


def _table(values: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(np.arange(len(values))),
            **{name: values[:, j] for j, name in enumerate(NAMES)},
            "note": pa.array([f"row {i}" for i in range(len(values))]),
        }
    )


class TestNpy(ReaderContract):
    format = "npy"
    kind = "array"
    suffix = ".npy"
    no_channel = "no channel: axis -1 of shape"

    def write(self, path, values):
        np.save(path, values)

    def write_without_channels(self, path):
        np.save(path, np.zeros((N, 0)))


class TestParquet(ReaderContract):
    format = "parquet"
    suffix = ".parquet"

    def write_table(self, path, table):
        pq.write_table(table, path, row_group_size=7)


class TestArrowFile(ReaderContract):
    format = "arrow"
    suffix = ".arrow"

    def write_table(self, path, table):
        with pa.ipc.new_file(str(path), table.schema) as writer:
            for batch in table.to_batches(max_chunksize=5):
                writer.write_batch(batch)


class TestArrowStream(ReaderContract):
    format = "arrow-stream"
    suffix = ".arrows"
    knows_rows = False

    def write_table(self, path, table):
        with pa.ipc.new_stream(str(path), table.schema) as writer:
            for batch in table.to_batches(max_chunksize=5):
                writer.write_batch(batch)


class TestCsv(ReaderContract):
    format = "csv"
    suffix = ".csv"
    knows_rows = False

    def write_table(self, path, table):
        pacsv.write_csv(table, path)

    def damage(self, path):
        path.write_bytes(b"a,b\n\xf5\xff\xfe,1\n")  # not UTF-8 text


class TestNpz(ReaderContract):
    """An archive of ``np.savez``: stored members, memory-mapped in place."""

    format = "npz"
    kind = "array"
    suffix = ".npz"
    no_channel = "no channel: axis -1 of shape"
    read = ReadOptions(array="x")

    def write(self, path, values):
        with open(path, "wb") as f:  # np.savez would add .npz to another name
            np.savez(f, x=values, labels=np.arange(len(values)))

    def write_without_channels(self, path):
        with open(path, "wb") as f:
            np.savez(f, x=np.zeros((N, 0)))


class TestNpzCompressed(TestNpz):
    """``np.savez_compressed``: deflated members, decompressed as streams."""

    def write(self, path, values):
        with open(path, "wb") as f:
            np.savez_compressed(f, x=values, labels=np.arange(len(values)))

    def damage(self, path):
        data = bytearray(path.read_bytes())
        data[200:260] = b"\0" * 60  # inside the first member's deflate stream
        path.write_bytes(bytes(data))


class TestNpzFortranOrder(TestNpz):
    """A stored Fortran-ordered member: read in place, rows gathered."""

    def write(self, path, values):
        with open(path, "wb") as f:
            np.savez(f, x=np.asfortranarray(values), labels=np.arange(len(values)))


class TestCsvSemicolons(TestCsv):
    """CSV with another delimiter (``--delimiter ';'``), as European locales write it."""

    read = ReadOptions(delimiter=";")

    def write_table(self, path, table):
        pacsv.write_csv(table, path, pacsv.WriteOptions(delimiter=";"))
