"""One contract for every input format, subclassed once per format.

Each subclass writes the same table (a few numeric channels of mixed dtypes,
a string column, null cells) in its format; the contract checks what every
reader must do: the channels chosen, the values and nulls read, chunks that
join to the whole, reading from an offset, and the sinks' round trip.
"""

from __future__ import annotations

import io
import mmap
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from bncli.errors import (
    ChannelMismatchError,
    DataError,
    InputNotFoundError,
    UsageError,
)
from bncli.io.dataset import expand_inputs, open_dataset
from bncli.io.detect import sniff_format

N = 37


def make_table() -> pa.Table:
    rng = np.random.default_rng(0)
    a = rng.normal(size=N)
    b = rng.normal(size=N).astype(np.float32)
    c = rng.integers(0, 100, size=N).astype(np.int32)
    nulls = np.zeros(N, dtype=bool)
    nulls[[2, 30]] = True
    return pa.table(
        {
            "id": pa.array(np.arange(N, dtype=np.int64)),
            "a": pa.array(a, mask=nulls),
            "name": pa.array([f"r{i}" for i in range(N)]),
            "b": pa.array(b),
            "c": pa.array(c),
        }
    )


def read_all(dataset, rows=8, start=0):
    chunks = list(dataset.chunks(start, rows))
    data = np.concatenate([c.data for c in chunks])
    masks = [
        np.ones((len(c), 1, len(dataset.features)), bool) if c.mask is None else c.mask
        for c in chunks
    ]
    return chunks, data, np.concatenate(masks)


class TableContract:
    """What every table reader does; subclasses write the file."""

    suffix = ""

    def write(self, table: pa.Table, path) -> None:
        raise NotImplementedError

    @pytest.fixture
    def path(self, tmp_path):
        path = tmp_path / f"data{self.suffix}"
        self.write(make_table(), path)
        return path

    def test_default_channels_are_numeric_columns_in_file_order(self, path):
        dataset = open_dataset([path])
        assert dataset.features == ["id", "a", "b", "c"]
        assert dataset.kind == "table"

    def test_exclude_and_columns(self, path):
        assert open_dataset([path], exclude=["id"]).features == ["a", "b", "c"]
        assert open_dataset([path], columns=["c", "a"]).features == ["c", "a"]

    def test_values_nulls_and_chunks(self, path):
        table = make_table()
        dataset = open_dataset([path], columns=["a", "b", "c"])
        chunks, data, mask = read_all(dataset)
        assert sum(len(c) for c in chunks) == N
        expected_a = table["a"].to_numpy(zero_copy_only=False)
        valid = ~np.isnan(expected_a)
        np.testing.assert_allclose(data[valid, 0], expected_a[valid])
        np.testing.assert_allclose(data[:, 1], table["b"].to_numpy(), rtol=1e-6)
        np.testing.assert_array_equal(data[:, 2], table["c"].to_numpy())
        np.testing.assert_array_equal(mask[:, 0, 0], valid)
        assert mask[:, 0, 1:].all()

    def test_start_offset(self, path):
        dataset = open_dataset([path], columns=["c"])
        _, whole, _ = read_all(dataset)
        _, tail, _ = read_all(dataset, start=11)
        np.testing.assert_array_equal(tail, whole[11:])

    def test_segments_name_file_and_rows(self, path):
        dataset = open_dataset([path], columns=["c"])
        offset = 0
        for chunk in dataset.chunks(0, 8):
            if offset <= 11 < offset + len(chunk):
                assert chunk.locate(11 - offset) == (str(path), 11)
                return
            offset += len(chunk)
        raise AssertionError("row 11 not found")

    def test_non_numeric_column_selected(self, path):
        with pytest.raises(DataError, match=r"column 'name'.*not numeric"):
            open_dataset([path], columns=["name"])

    def test_missing_column(self, path):
        with pytest.raises(DataError, match="'zzz' not found"):
            open_dataset([path], columns=["zzz"])

    def test_state_features_by_name(self, path):
        assert open_dataset([path], features=["b", "a"]).features == ["b", "a"]
        with pytest.raises(ChannelMismatchError, match="'q' of the state is missing"):
            open_dataset([path], features=["q"])

    def test_mask_column(self, tmp_path):
        table = make_table().append_column(
            "keep", pa.array([i % 3 != 0 for i in range(N)])
        )
        path = tmp_path / f"masked{self.suffix}"
        self.write(table, path)
        dataset = open_dataset([path], columns=["b"], mask_column="keep")
        _, _, mask = read_all(dataset)
        np.testing.assert_array_equal(mask[:, 0, 0], [i % 3 != 0 for i in range(N)])

    def test_nan_policy_mask(self, tmp_path):
        b = np.arange(N, dtype=np.float64)
        b[5] = np.nan
        b[9] = np.inf
        path = tmp_path / f"nan{self.suffix}"
        self.write(pa.table({"b": b}), path)
        _, _, mask = read_all(open_dataset([path], nan_policy="mask"))
        assert not mask[5, 0, 0] and not mask[9, 0, 0]
        assert mask.sum() == N - 2

    def test_several_files_are_one_stream(self, tmp_path):
        table = make_table()
        paths = []
        for i, (lo, hi) in enumerate([(0, 10), (10, 11), (11, N)]):
            path = tmp_path / f"part{i}{self.suffix}"
            self.write(table.slice(lo, hi - lo), path)
            paths.append(path)
        dataset = open_dataset(paths, columns=["c"])
        _, data, _ = read_all(dataset, rows=4)
        np.testing.assert_array_equal(data[:, 0], table["c"].to_numpy())


class TestParquet(TableContract):
    suffix = ".parquet"

    def write(self, table, path):
        pq.write_table(table, path, row_group_size=10)

    def test_folder_expands_sorted(self, tmp_path):
        folder = tmp_path / "dir"
        folder.mkdir()
        table = make_table()
        self.write(table.slice(20), folder / "b.parquet")
        self.write(table.slice(0, 20), folder / "a.parquet")
        _, data, _ = read_all(open_dataset([folder], columns=["c"]))
        np.testing.assert_array_equal(data[:, 0], table["c"].to_numpy())

    def test_partitioned_folder_reads_subfolders_in_path_order(self, tmp_path):
        """Hive-style partitions, and the debris of Spark/Dask writers, skipped."""
        folder = tmp_path / "dataset"
        table = make_table()
        pieces = {
            "k=1/b.parquet": (0, 10),
            "k=1/c.parquet": (10, 15),
            "k=2/a.parquet": (25, 12),
        }
        for name, (start, n) in pieces.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            self.write(table.slice(start, n), folder / name)
        for debris in (
            "_temporary/0/x.parquet",
            ".hidden/x.parquet",
            "_SUCCESS",
            "k=1/.b.crc",
            "notes.txt",
        ):
            (folder / debris).parent.mkdir(parents=True, exist_ok=True)
            self.write(table.slice(0, 5), folder / debris)
        assert expand_inputs([folder]) == [str(folder / name) for name in pieces]
        _, data, _ = read_all(open_dataset([folder], columns=["c"]))
        np.testing.assert_array_equal(data[:, 0], table["c"].to_numpy())  # in order


class TestArrowFile(TableContract):
    suffix = ".arrow"

    def write(self, table, path):
        with pa.ipc.new_file(str(path), table.schema) as writer:
            for batch in table.to_batches(max_chunksize=9):
                writer.write_batch(batch)


class TestFeather(TestArrowFile):
    suffix = ".feather"


class TestCsv(TableContract):
    suffix = ".csv"

    def write(self, table, path):
        pacsv.write_csv(table, path)


class TestArrowStdin(TableContract):
    """``-`` reads an Arrow IPC stream from stdin."""

    suffix = ".arrows"

    def write(self, table, path):
        with pa.ipc.new_stream(str(path), table.schema) as writer:
            writer.write_table(table)

    @pytest.fixture
    def stdin_path(self, path, monkeypatch):
        data = path.read_bytes()
        monkeypatch.setattr(
            sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(data)))
        )
        return "-"

    def test_stdin_stream(self, stdin_path):
        dataset = open_dataset([stdin_path], columns=["c"])
        assert not dataset.replayable
        _, data, _ = read_all(dataset)
        np.testing.assert_array_equal(data[:, 0], make_table()["c"].to_numpy())


# ------------------------------------------------------------------ arrays


def test_npy_is_memory_mapped_and_sliced(tmp_path):
    x = np.random.default_rng(1).normal(size=(21, 4, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    dataset = open_dataset([tmp_path / "x.npy"], axis=-1)
    assert dataset.features == ["0", "1", "2"] and dataset.sample_shape == (4, 3)
    chunks, data, _ = read_all(dataset, rows=5)
    base = chunks[0].data
    while isinstance(base, np.ndarray):  # a view of the file's mapped pages
        base = base.base
    assert isinstance(base.mapped, mmap.mmap)  # the file's mapping, no copy
    np.testing.assert_array_equal(data, x)
    assert open_dataset([tmp_path / "x.npy"], axis=1).features == ["0", "1", "2", "3"]


def test_npy_masks_per_input_and_whole_stream(tmp_path):
    x = np.zeros((6, 2, 3))
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x[:4])
    m_a = np.arange(12).reshape(6, 2) % 2 == 0
    m_b = np.ones((4, 2), bool)
    np.save(tmp_path / "ma.npy", m_a)
    np.save(tmp_path / "mb.npy", m_b)
    np.save(tmp_path / "mall.npy", np.concatenate([m_a, m_b]))
    inputs = [tmp_path / "a.npy", tmp_path / "b.npy"]
    per = read_all(
        open_dataset(inputs, masks=[tmp_path / "ma.npy", tmp_path / "mb.npy"]), rows=4
    )[2]
    whole = read_all(open_dataset(inputs, masks=[tmp_path / "mall.npy"]), rows=4)[2]
    np.testing.assert_array_equal(per, whole)
    np.testing.assert_array_equal(per[:6, :, 0], m_a)
    with pytest.raises(DataError, match="expected \\(6, 2\\)"):
        open_dataset(inputs, masks=[tmp_path / "mb.npy", tmp_path / "mb.npy"])


def test_npy_stdin(tmp_path, monkeypatch):
    x = np.arange(24, dtype=np.float64).reshape(8, 3)
    buf = io.BytesIO()
    np.save(buf, x)
    monkeypatch.setattr(
        sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.BytesIO(buf.getvalue())))
    )
    _, data, _ = read_all(open_dataset(["-"]), rows=3, start=3)
    np.testing.assert_array_equal(data, x[3:])


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"", "empty.parquet", "empty file"),
        (b"not parquet at all", "x.parquet", "not a valid parquet file"),
        (b"\x00\x01\x02", "x.bin", "unrecognized format"),
        (b"PAR1garbage", "y.parquet", "cannot read as parquet"),
    ],
)
def test_bad_files(tmp_path, content, name, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        open_dataset([path])


def test_magic_bytes_beat_the_extension(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    (tmp_path / "x.npy").rename(tmp_path / "really_npy.parquet")
    assert sniff_format(tmp_path / "really_npy.parquet") == "npy"


def test_missing_input_and_usage_errors(tmp_path):
    with pytest.raises(InputNotFoundError):
        open_dataset([tmp_path / "nope.parquet"])
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    with pytest.raises(UsageError, match="axis 0"):
        open_dataset([tmp_path / "x.npy"], axis=0)
    with pytest.raises(UsageError, match="out of bounds"):
        open_dataset([tmp_path / "x.npy"], axis=3)
    with pytest.raises(UsageError, match="for tables"):
        open_dataset([tmp_path / "x.npy"], columns=["a"])


def test_object_and_one_dimensional_arrays_refused(tmp_path):
    np.save(
        tmp_path / "obj.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True
    )
    with pytest.raises(DataError, match="pickle"):
        open_dataset([tmp_path / "obj.npy"])
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(DataError, match="1-D array"):
        open_dataset([tmp_path / "flat.npy"])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's /proc/self/status")
def test_a_fit_holds_the_chunks_in_flight_not_the_file(tmp_path):
    """Resident memory of a fit of a 256 MiB NPY: within 96 MiB of a tiny fit's.

    The file is mapped once; each window's pages leave the resident set when
    the window's last view is dropped (a window released too early, or
    never, shows here as the whole file resident).
    """
    import subprocess

    rng = np.random.default_rng(0)
    big = np.lib.format.open_memmap(
        tmp_path / "big.npy", "w+", np.float32, (1 << 22, 16)
    )
    for lo in range(0, big.shape[0], 1 << 20):
        big[lo : lo + (1 << 20)] = rng.standard_normal((1 << 20, 16), dtype=np.float32)
    big.flush()
    del big
    np.save(tmp_path / "tiny.npy", np.ones((64, 16), np.float32))

    def peak_mib(name):
        # VmHWM: this process's own peak (getrusage's carries over the peak
        # of the forked test process).
        code = (
            "import bncli, pathlib; "
            f"bncli.BatchNormalization().fit({str(tmp_path / name)!r}, workers=2); "
            "print([l for l in pathlib.Path('/proc/self/status').read_text()"
            ".splitlines() if l.startswith('VmHWM')][0].split()[1])"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return int(done.stdout) / 1024

    tiny, large = peak_mib("tiny.npy"), peak_mib("big.npy")
    assert large - tiny < 96, (tiny, large)


def test_a_wide_parquet_is_decoded_a_bounded_batch_at_a_time(tmp_path):
    """65,536 rows at a time of 1,024 columns held 256 MiB decoded: a wide
    table's batches hold TABLE_BATCH_BYTES (8 bytes a cell) at most, and
    the chunks read join to the whole all the same."""
    from bncli.io.readers.parquet import ParquetSource
    from bncli.io.sources import TABLE_BATCH_BYTES, table_batch_rows

    rng = np.random.default_rng(2)
    x = rng.normal(size=(5000, 1024)).astype(np.float32)
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"c{j}": x[:, j] for j in range(1024)}), path)
    source = ParquetSource(str(path))
    source.cut = lambda batches, *_: batches  # the batches as decoded
    sizes = [b.num_rows for b in source.record_batches(0, 100, None)]
    assert max(sizes) == table_batch_rows(1024) == TABLE_BATCH_BYTES // (8 * 1024)
    assert sum(sizes) == 5000
    assert max(b.num_rows for b in source.record_batches(0, 100, ["c0", "c1"])) == 5000
    dataset = open_dataset([path])
    got = np.concatenate([c.data for c in dataset.chunks(0, 300)])
    np.testing.assert_array_equal(got, x)
