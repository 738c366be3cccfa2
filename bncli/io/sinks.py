"""Writers of transform outputs: one per format, all atomic.

A file output is written under a temporary name beside the target and
renamed on success only (:func:`bncli.io.atomic.atomic_path`); an error
leaves nothing behind. ``-`` writes an Arrow IPC stream (tables) or an NPY
array (arrays) to stdout; a FIFO or a device is written into as a stream.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from bncli.errors import UsageError
from bncli.io.chunks import Chunk
from bncli.io.dataset import Dataset
from bncli.io.outputs import OutputTarget, writing
from bncli.io.tables import arrow_values

__all__ = [
    "check_writable",
    "open_sink",
    "sink_format",
]

_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow-stream",
    ".csv": "csv",
    ".npy": "npy",
}


def sink_format(output: str, kind: str) -> str:
    """The output format its extension names (``-``: by the input kind)."""
    if output == "-":
        return "arrow-stream" if kind == "table" else "npy-stream"
    fmt = _FORMATS.get(Path(output).suffix.lower())
    if fmt is None and csv_compression(output) is not None:
        fmt = "csv"
    if fmt is None:
        raise UsageError(
            f"{output}: unknown output extension; use .parquet, .arrow, .feather, "
            ".ipc, .arrows, .csv (or .csv.gz, .csv.bz2, .csv.zst, .csv.lz4), .npy or - (stdout)"
        )
    return fmt


def csv_compression(output: str) -> str | None:
    """The compression a CSV output's name asks for (``out.csv.gz``: gzip), or None."""
    from bncli.io.detect import CSV_COMPRESSIONS

    name = Path(output).name.lower()
    for suffix, codec in CSV_COMPRESSIONS.items():
        if name.endswith(".csv" + suffix):
            return codec
    return None


def check_writable(output: str, dataset: Dataset) -> None:
    """Refuse an output format that cannot hold the data, before anything is written.

    Raises:
        UsageError: arrays of more than one dimension per sample to a table
            format, or a CSV output for a pass-through column CSV cannot
            hold (lists, structs, maps).
    """
    fmt = sink_format(output, dataset.kind)
    shape = dataset.sample_shape
    if fmt not in ("npy", "npy-stream") and dataset.kind == "array" and len(shape) != 1:
        raise UsageError(
            f"{output}: arrays of sample shape {shape} can only be written as .npy"
        )
    if fmt == "csv" and dataset.kind == "table":
        import io

        import pyarrow as pa
        import pyarrow.csv as csv

        schema = dataset.sources[0].schema
        for field in schema:
            if field.name in dataset.features:
                continue
            try:  # the writer's own verdict, on no rows
                csv.write_csv(pa.table({"c": pa.nulls(0, field.type)}), io.BytesIO())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise UsageError(
                    f"{output}: CSV cannot hold column {field.name!r} of type "
                    f"{field.type}; write .parquet or .arrow instead"
                ) from e


@contextlib.contextmanager
def open_sink(
    output: str | os.PathLike[str] | OutputTarget,
    dataset: Dataset,
    dtype: np.dtype[Any],
) -> Iterator[Sink]:
    """A sink for ``output``, renamed into place when the block exits cleanly.

    ``output`` is an :class:`OutputTarget` that :func:`check_output` has
    accepted (a stream is written in place), or a new file's path. The
    engines have checked that the format can hold the data
    (:func:`check_writable`, from ``open_transform_dataset``).
    """
    if not isinstance(output, OutputTarget):
        given = os.fspath(output)
        stdout = given == "-"
        output = OutputTarget(given, None if stdout else Path(given), stdout)
    fmt = sink_format(output.given, dataset.kind)
    if fmt in ("npy", "npy-stream") and dataset.kind == "table":
        shape: tuple[int, ...] = (len(dataset.features),)
    else:
        shape = dataset.sample_shape
    compression = csv_compression(output.given) if fmt == "csv" else None
    with writing(output) as place:
        sink = _make_sink(fmt, place, dataset, dtype, shape, compression)
        try:
            yield sink
        finally:
            sink.close()


def _make_sink(
    fmt: str,
    target: Any,
    dataset: Dataset,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    compression: str | None = None,
) -> Sink:
    if fmt in ("npy", "npy-stream"):
        return NpySink(target, dtype, shape, dataset.num_samples)
    return TableSink(fmt, target, dataset, dtype, compression)


class Sink:
    """Receives the normalized chunks, in order."""

    #: Whether ``write`` may keep a reference to the outputs it is given
    #: after it returns (they are then not handed out again for others).
    keeps_outputs = False

    def write(self, chunk: Chunk, y: npt.NDArray[Any]) -> None:
        """Write the outputs ``y`` of ``chunk``."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish the file."""


class NpySink(Sink):
    """An NPY array; the header is rewritten at the end with the real length."""

    _HEADER_BYTES = 256

    def __init__(
        self,
        target: Path | BinaryIO,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        num_samples: int | None,
    ) -> None:
        # NPY has no bfloat16 that plain NumPy reads back: write float32.
        self.dtype = np.dtype(np.float32) if dtype.name == "bfloat16" else dtype
        self.shape = shape
        self.samples = 0
        self.expected = num_samples
        self._own = isinstance(target, Path)
        self.file: BinaryIO = open(target, "wb") if isinstance(target, Path) else target
        if not self._own and num_samples is None:
            raise UsageError("cannot stream an NPY array of unknown length to stdout")
        self.file.write(self._header(num_samples or 0))

    def _header(self, samples: int) -> bytes:
        from numpy.lib import format as npy

        descr = npy.dtype_to_descr(self.dtype)
        text = repr(
            {"descr": descr, "fortran_order": False, "shape": (samples, *self.shape)}
        )
        body = text.encode("latin1")
        total = self._HEADER_BYTES
        pad = total - 10 - len(body) - 1
        return (
            b"\x93NUMPY\x01\x00"
            + (total - 10).to_bytes(2, "little")
            + body
            + b" " * pad
            + b"\n"
        )

    def write(self, chunk: Chunk, y: npt.NDArray[Any]) -> None:
        if y.ndim == 3:  # a table's rows layout (n, 1, C)
            y = y.reshape(len(y), -1)
        if chunk.nulls is not None and chunk.nulls.any():
            # NPY has no nulls: a table's null cells become NaN, never the
            # normalized fill value the statistics skipped.
            y = np.array(y, dtype=self.dtype)
            y[chunk.nulls] = np.nan
        # The array's own buffer, not a bytes copy of it.
        self.file.write(np.ascontiguousarray(y, dtype=self.dtype).data)
        self.samples += len(y)

    def close(self) -> None:
        if self._own:
            if self.samples != (self.expected or 0):
                self.file.seek(0)
                self.file.write(self._header(self.samples))
            self.file.close()


class TableSink(Sink):
    """Parquet, Arrow IPC (file or stream) or CSV, keeping the other columns.

    Parquet row groups gather chunks up to :data:`ROW_GROUP_BYTES` (or
    :data:`ROW_GROUP_ROWS`): a row group per chunk would make a file of
    thousands of small row groups, slow to read and with a footer of tens
    of MiB (16 float32 columns, 1 GiB: 1,024 groups of 16Ki rows, a 22 MiB
    footer built in memory at the end).
    """

    #: Bytes a Parquet row group of the output holds (Arrow's measure of its
    #: record batches), or rows (pyarrow's default largest row group).
    ROW_GROUP_BYTES = 8 << 20
    ROW_GROUP_ROWS = 1 << 20

    def __init__(
        self,
        fmt: str,
        target: Any,
        dataset: Dataset,
        dtype: np.dtype[Any],
        compression: str | None = None,
    ) -> None:
        import pyarrow as pa

        self.format = fmt
        self.keeps_outputs = fmt == "parquet"
        self._pending: list[Any] = []
        self._pending_bytes = self._pending_rows = 0
        self._compressed: Any = None
        self.features = dataset.features
        if dtype.name == "bfloat16" or (fmt == "csv" and dtype.itemsize < 4):
            dtype = np.dtype(np.float32)  # no bfloat16 in Arrow; no float16 in CSV
        self.dtype = dtype
        self.arrow_type = pa.from_numpy_dtype(dtype)
        if dataset.kind == "table":
            source = dataset.sources[0]
            schema = source.schema
        else:
            schema = pa.schema([(name, self.arrow_type) for name in self.features])
        self.index = {name: j for j, name in enumerate(self.features)}
        fields = [
            pa.field(f.name, self.arrow_type, nullable=True)
            if f.name in self.index
            else f
            for f in schema
        ]
        self.schema = pa.schema(
            fields, metadata=_pandas_metadata_for(schema.metadata, self.index, dtype)
        )
        sink_target = str(target) if isinstance(target, Path) else target
        if fmt == "parquet":
            import pyarrow.parquet as pq

            # No dictionary encoding for the normalized channels: their values
            # are nearly all distinct, so the writer would build a dictionary
            # for each row group only to drop it (writing 3-6x slower).
            # Pass-through columns keep pyarrow's default.
            passthrough = [f.name for f in self.schema if f.name not in self.index]
            self.writer: Any = pq.ParquetWriter(
                sink_target, self.schema, use_dictionary=passthrough or False
            )
        elif fmt == "arrow":
            self.writer = pa.ipc.new_file(sink_target, self.schema)
        elif fmt == "arrow-stream":
            self.writer = pa.ipc.new_stream(sink_target, self.schema)
        else:
            import pyarrow.csv as csv

            if compression is not None:
                self._compressed = pa.CompressedOutputStream(sink_target, compression)
                sink_target = self._compressed
            self.writer = csv.CSVWriter(
                sink_target,
                self.schema,
                write_options=csv.WriteOptions(delimiter=dataset.read.delimiter),
            )

    def write(self, chunk: Chunk, y: npt.NDArray[Any]) -> None:
        import pyarrow as pa

        y2 = y.reshape(len(y), -1)
        columns = []
        for field in self.schema:
            j = self.index.get(field.name)
            if j is None:
                columns.append(
                    chunk.table.column(chunk.table.schema.get_field_index(field.name))
                )
                continue
            nulls = None if chunk.nulls is None else chunk.nulls[:, j]
            columns.append(arrow_values(y2[:, j], self.dtype, nulls))
        batch = pa.RecordBatch.from_arrays(columns, schema=self.schema)
        if self.format != "parquet":
            self.writer.write_batch(batch)
            return
        self._pending.append(batch)
        self._pending_bytes += batch.nbytes
        self._pending_rows += batch.num_rows
        full = self._pending_bytes >= self.ROW_GROUP_BYTES
        if full or self._pending_rows >= self.ROW_GROUP_ROWS:
            self._write_row_group()

    def _write_row_group(self) -> None:
        import pyarrow as pa

        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._pending, self._pending_bytes, self._pending_rows = [], 0, 0
        self.writer.write_table(table, row_group_size=max(table.num_rows, 1))

    def close(self) -> None:
        if self._pending:
            self._write_row_group()
        self.writer.close()
        if self._compressed is not None:
            self._compressed.close()  # the compressed stream's last frame


def _pandas_metadata_for(
    metadata: dict[bytes, bytes] | None, channels: dict[str, int], dtype: np.dtype[Any]
) -> dict[bytes, bytes] | None:
    """The schema metadata, with pandas's description of each channel made true.

    pandas reads a file's ``pandas`` metadata to rebuild the frame: a channel
    that was ``Int64`` or ``int32`` there is now floats, and left as it was
    ``read_parquet`` would fail to cast it back.
    """
    import json

    if not metadata or b"pandas" not in metadata:
        return metadata
    try:
        about = json.loads(metadata[b"pandas"])
        for column in about.get("columns", []):
            name = column.get("field_name", column.get("name"))
            if name in channels:
                column["pandas_type"] = dtype.name
                column["numpy_type"] = dtype.name
                column["metadata"] = None
    except (ValueError, AttributeError, TypeError):
        return {k: v for k, v in metadata.items() if k != b"pandas"}  # not pandas's
    return {**metadata, b"pandas": json.dumps(about).encode()}
