"""Readers: one per format, each streaming its file as :class:`Chunk` objects.

Formats are recognized by their magic bytes first and their extension
second (xarray's ``guess_can_open``): Parquet (``PAR1``), Arrow IPC files
(``ARROW1``), Arrow IPC streams, NPY (``\\x93NUMPY``), and CSV (by extension,
as text has no magic). NPY files are memory-mapped and never unpickled;
tables are read a record batch at a time, never whole.

A :class:`Dataset` is the inputs opened together: one stream of samples, in
the order given, whose channels (``features``) all files agree on.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import tokenize
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import numpy.typing as npt

from bncli.errors import DataError, InputNotFoundError, UsageError

__all__ = [
    "ChannelMismatchError",
    "Chunk",
    "Dataset",
    "Segment",
    "open_dataset",
    "sniff_format",
]

TABLE_FORMATS = ("parquet", "arrow", "arrow-stream", "csv")
_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow-stream",
    ".csv": "csv",
    ".npy": "npy",
}
#: What NumPy raises on a damaged NPY header: besides ValueError, its header
#: parser lets the tokenizer's and the literal parser's errors through.
_BAD_NPY = (ValueError, SyntaxError, tokenize.TokenError)
#: Rows per record batch asked of table readers.
TABLE_BATCH_ROWS = 65_536


class ChannelMismatchError(DataError):
    """Data whose channels differ from those expected (a state's, the first file's)."""


@dataclasses.dataclass(frozen=True)
class Segment:
    """Rows ``[row, row + rows)`` of file ``path``, 0-based within the file."""

    path: str
    row: int
    rows: int


@dataclasses.dataclass
class Chunk:
    """Consecutive samples of the stream.

    Attributes:
        data: ``(n, *sample_shape)`` channel data as read (tables: ``(n, C)``).
        mask: ``None`` or booleans in rows layout, ``(n, P, 1)`` or
            ``(n, P, C)``; False excludes an element from the statistics.
        nulls: tables only: ``(n, C)`` null cells (kept null in outputs).
        table: tables only: the whole record batch, for the pass-through columns.
        segments: where the rows come from, for error messages.
        features: the channel names, for error messages.
        axis: the channel axis of ``data``.
    """

    data: npt.NDArray[Any]
    mask: npt.NDArray[np.bool_] | None
    nulls: npt.NDArray[np.bool_] | None
    table: Any
    segments: tuple[Segment, ...]
    features: Sequence[str]
    axis: int

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def slice(self, start: int, stop: int) -> Chunk:
        """Samples ``[start, stop)`` of this chunk (views where possible)."""
        segments = []
        offset = 0
        for seg in self.segments:
            lo, hi = max(start, offset), min(stop, offset + seg.rows)
            if lo < hi:
                segments.append(Segment(seg.path, seg.row + lo - offset, hi - lo))
            offset += seg.rows
        return Chunk(
            data=self.data[start:stop],
            mask=None if self.mask is None else self.mask[start:stop],
            nulls=None if self.nulls is None else self.nulls[start:stop],
            table=None if self.table is None else self.table.slice(start, stop - start),
            segments=tuple(segments),
            features=self.features,
            axis=self.axis,
        )

    def locate(self, index: int) -> tuple[str, int]:
        """The file and the row in it of sample ``index`` of this chunk."""
        offset = 0
        for seg in self.segments:
            if index < offset + seg.rows:
                return seg.path, seg.row + index - offset
            offset += seg.rows
        raise IndexError(index)  # pragma: no cover - callers pass valid indexes

    def raise_nonfinite(self, hint: str | None = None) -> None:
        """Raise a DataError naming the first NaN or infinity not masked out."""
        from bncli.kernels import to_rows

        rows = to_rows(np.asarray(self.data), self.axis)
        bad = ~np.isfinite(rows)
        if self.mask is not None:
            bad &= self.mask
        hits = np.argwhere(bad)
        if not len(hits):
            raise DataError(
                "values too large: their sum overflows float64",
                path=self.segments[0].path if self.segments else None,
            )
        sample, _, channel = (int(v) for v in hits[0])
        path, row = self.locate(sample)
        value = rows[sample].reshape(-1, rows.shape[-1])[:, channel]
        kind = "NaN" if np.isnan(value).any() else "infinity"
        raise DataError(
            f"{kind} in a channel",
            path=path,
            column=str(self.features[channel]),
            row=row,
            hint=hint or "use --nan-policy mask to skip such values",
        )


def concat_chunks(chunks: Sequence[Chunk]) -> Chunk:
    """Join consecutive chunks into one (copies)."""
    if len(chunks) == 1:
        return chunks[0]
    masks = [c.mask for c in chunks]
    mask = None
    if any(m is not None for m in masks):
        width = max(m.shape[-1] for m in masks if m is not None)
        parts = []
        for c in chunks:
            if c.mask is None:
                per = int(np.prod(c.data.shape[1:])) // max(c.data.shape[c.axis], 1)
                parts.append(np.ones((len(c), per, width), dtype=bool))
            else:
                parts.append(np.broadcast_to(c.mask, (*c.mask.shape[:2], width)))
        mask = np.concatenate(parts)
    nulls = None
    if any(c.nulls is not None for c in chunks):
        # A chunk without null cells has no array: stand in all False for it.
        width = len(chunks[0].features)
        nulls = np.concatenate(
            [
                np.zeros((len(c), width), bool) if c.nulls is None else c.nulls
                for c in chunks
            ]
        )
    table = None
    if chunks[0].table is not None:
        import pyarrow as pa

        # Files may store a channel as float32 in one and float64 in another:
        # promote, as the channels' data are (the other columns are the same).
        table = pa.concat_tables(
            [
                pa.Table.from_batches(_as_batches(c.table), c.table.schema)
                for c in chunks
            ],
            promote_options="permissive",
        ).combine_chunks()
        table = table.to_batches()[0] if table.num_rows else table
    return Chunk(
        data=np.concatenate([c.data for c in chunks]),
        mask=mask,
        nulls=nulls,
        table=table,
        segments=tuple(s for c in chunks for s in c.segments),
        features=chunks[0].features,
        axis=chunks[0].axis,
    )


def _as_batches(table: Any) -> list[Any]:
    return list(table.to_batches()) if hasattr(table, "to_batches") else [table]


# ---------------------------------------------------------------- recognizing


def sniff_format(path: str | os.PathLike[str]) -> str:
    """The format of a file: by magic bytes, then by extension.

    Raises:
        InputNotFoundError: no such file.
        DataError: a format bncli does not read, or contents that contradict
            the extension.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError as e:
        raise InputNotFoundError("no such file", path=path) from e
    except IsADirectoryError as e:  # pragma: no cover - directories expand earlier
        raise DataError("is a folder", path=path) from e
    except PermissionError as e:
        raise DataError("cannot read the file (permission denied)", path=path) from e
    by_extension = _EXTENSIONS.get(path.suffix.lower())
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1"):
        return "arrow"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\xff\xff\xff\xff"):
        return "arrow-stream"
    if not head:
        raise DataError("empty file", path=path)
    if by_extension == "csv":
        return "csv"
    if by_extension is not None:
        raise DataError(
            f"not a valid {by_extension} file (its first bytes are not a "
            f"{by_extension} header)",
            path=path,
        )
    raise DataError(
        "unrecognized format; bncli reads .parquet, .arrow/.feather/.ipc, "
        ".csv and .npy files",
        path=path,
    )


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Inputs with folders expanded to their data files, sorted by path.

    Subfolders are read too (partitioned datasets: ``year=2024/part-0.parquet``);
    files and folders whose names start with ``.`` or ``_`` (``_SUCCESS``,
    ``.crc`` files, ``_temporary``) are skipped, and so are files of other
    extensions.
    """
    paths: list[str] = []
    for item in inputs:
        text = os.fspath(item)
        if text == "-":
            paths.append(text)
            continue
        path = Path(text)
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(
                    part.startswith((".", "_")) for part in p.relative_to(path).parts
                )
                and p.suffix.lower() in _EXTENSIONS
            )
            if not files:
                raise DataError("folder holds no data files", path=path)
            paths.extend(str(p) for p in files)
        elif not path.exists():
            raise InputNotFoundError("no such file", path=path)
        elif not path.is_file():
            # A pipe (a FIFO, process substitution's /dev/fd/N) cannot be
            # read twice, and its format is told by reading its first bytes.
            raise UsageError(
                f"{text}: not a regular file (a pipe or a device) cannot be read "
                f"as a named input; give it as stdin: - < {text}"
            )
        else:
            paths.append(text)
    if not paths:
        raise UsageError("no input given")
    return paths


# ---------------------------------------------------------------- the sources


class Source:
    """One input file, streamed as chunks of consecutive samples."""

    path: str
    kind: str  # "table" or "array"
    num_rows: int | None

    def chunks(self, start: int, rows: int) -> Iterator[Any]:
        """Yield raw pieces from sample ``start`` on, about ``rows`` at a time."""
        raise NotImplementedError


class ArraySource(Source):
    """An NPY array ``(N, ...)``: memory-mapped from a file, or streamed from a pipe."""

    kind = "array"

    def __init__(self, path: str, stream: BinaryIO | None = None) -> None:
        self.path = path
        self._stream = stream
        self._file: BinaryIO | None = None
        if stream is None:
            _check_npy_length(path)
            try:
                self.array: Any = np.load(path, mmap_mode="r", allow_pickle=False)
            except _BAD_NPY as e:
                if "object" in str(e).lower():
                    raise DataError(
                        "NPY array of Python objects (would need pickle, which bncli "
                        "never loads)",
                        path=path,
                    ) from e
                raise DataError(
                    f"cannot read the NPY array ({_first_line(e)})", path=path
                ) from e
            except OSError as e:
                raise DataError(
                    f"corrupt NPY file ({_first_line(e)})", path=path
                ) from e
            self.shape = tuple(self.array.shape)
            self.dtype = self.array.dtype
        else:
            self.shape, self.dtype = _read_npy_header(stream, path)
        if self.dtype.kind == "O" or self.dtype.hasobject:
            raise DataError(
                "NPY array of Python objects (would need pickle, which bncli never "
                "loads)",
                path=path,
            )
        if self.dtype.kind not in "fiub" or self.dtype.names:
            raise DataError(f"NPY array of non-numeric dtype {self.dtype}", path=path)
        if len(self.shape) < 2:
            raise DataError(
                f"1-D array of shape {self.shape}; bncli needs (samples, ...) with a "
                "channel axis, e.g. reshape to (N, 1)",
                path=path,
            )
        self.num_rows = self.shape[0]

    def chunks(self, start: int, rows: int) -> Iterator[npt.NDArray[Any]]:
        if self._stream is None:
            for lo in range(start, self.shape[0], rows):
                yield self._window(lo, min(lo + rows, self.shape[0]))
            return
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        skipped = 0
        while skipped < start:
            take = min(rows, start - skipped)
            self._stream.read(take * row_bytes)
            skipped += take
        remaining = self.shape[0] - start
        while remaining > 0:
            take = min(rows, remaining)
            buf = _read_exactly(self._stream, take * row_bytes, self.path)
            yield np.frombuffer(buf, dtype=self.dtype).reshape((take, *self.shape[1:]))
            remaining -= take

    def _window(self, lo: int, hi: int) -> npt.NDArray[Any]:
        """Samples ``[lo, hi)``, memory-mapped on their own.

        Each chunk maps just its own pages, and they are unmapped when the
        chunk is dropped: the process's resident memory follows the chunks
        in flight, not the part of the file read so far (pages of one map of
        the whole file would stay resident to the end). The page cache is
        shared either way, so a warm file is read at memory speed.
        """
        offset = getattr(self.array, "offset", None)
        if offset is None or not self.array.flags.c_contiguous or hi <= lo:
            piece: npt.NDArray[Any] = self.array[lo:hi]  # Fortran order: rows
            return piece  # are not contiguous
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)
            weakref.finalize(self, self._file.close)
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        window: npt.NDArray[Any] = np.memmap(
            self._file,
            dtype=self.dtype,
            mode="r",
            offset=offset + lo * row_bytes,
            shape=(hi - lo, *self.shape[1:]),
        )
        return window


def _check_npy_length(path: str) -> None:
    """Refuse an NPY file whose header claims more data than the file holds.

    The header is a few bytes anyone can write: ``(4, 2**40)`` must be an
    error that names the file, not an attempt to map or allocate it.
    """
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as f:
            shape, _, dtype = _npy_header(f, npy)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except (*_BAD_NPY, OSError):
        return  # a damaged header: np.load reports it, below
    if any(d < 0 for d in shape):
        raise DataError(f"corrupt NPY header (shape {shape})", path=path)
    claimed = math.prod(shape) * np.dtype(dtype).itemsize
    if size - offset < claimed:
        raise DataError(
            f"truncated NPY file: its header claims {claimed:,} bytes of data "
            f"(shape {tuple(shape)}, {np.dtype(dtype)}), the file holds "
            f"{max(size - offset, 0):,}",
            path=path,
        )


def _npy_header(stream: BinaryIO, npy: Any) -> tuple[Any, bool, Any]:
    version = npy.read_magic(stream)
    if version == (1, 0):
        return npy.read_array_header_1_0(stream)  # type: ignore[no-any-return]
    return npy.read_array_header_2_0(stream)  # type: ignore[no-any-return]


def check_channels(channels: int, path: str, where: str) -> None:
    """Refuse no channel at all, or more than :data:`bncli.limits.MAX_CHANNELS`."""
    from bncli.limits import MAX_CHANNELS

    if channels < 1:
        raise DataError(f"no channel: {where} is empty", path=path)
    if channels > MAX_CHANNELS:
        raise DataError(
            f"{channels:,} channels ({where}); bncli takes at most {MAX_CHANNELS:,}",
            path=path,
        )


def _read_exactly(stream: BinaryIO, size: int, path: str) -> bytes:
    parts = []
    got = 0
    while got < size:
        part = stream.read(size - got)
        if not part:
            raise DataError("truncated NPY data", path=path)
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_npy_header(
    stream: BinaryIO, path: str
) -> tuple[tuple[int, ...], np.dtype[Any]]:
    from numpy.lib import format as npy

    try:
        shape, fortran, dtype = _npy_header(stream, npy)
    except _BAD_NPY as e:
        raise DataError(f"corrupt NPY header ({_first_line(e)})", path=path) from e
    if fortran:
        raise DataError("Fortran-ordered NPY cannot be streamed", path=path)
    return tuple(shape), np.dtype(dtype)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


class TableSource(Source):
    """A table read a record batch at a time through pyarrow."""

    kind = "table"

    def __init__(self, path: str, fmt: str, stream: BinaryIO | None = None) -> None:
        import pyarrow as pa

        self.path = path
        self.format = fmt
        self._stream = stream
        self.num_rows = None
        try:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                # Not memory-mapped: the pages of a mapped file stay in the
                # process's resident set to the end. With a read buffer, each
                # column chunk is streamed a page at a time rather than read
                # whole (a row group can be hundreds of MB): about 16 MiB of
                # buffers in all, whatever the size of the row groups.
                metadata = pq.read_metadata(path)
                columns = max(metadata.num_columns, 1)
                buffer_size = min(max((16 << 20) // columns, 64 << 10), 1 << 20)
                self._file: Any = pq.ParquetFile(
                    path,
                    metadata=metadata,
                    memory_map=False,
                    buffer_size=buffer_size,
                    pre_buffer=False,
                )
                self.schema = self._file.schema_arrow
                self.num_rows = self._file.metadata.num_rows
            elif fmt == "arrow":
                self._file = pa.ipc.open_file(pa.memory_map(path, "r"))
                self.schema = self._file.schema
                if hasattr(self._file, "count_rows"):  # reads batch headers only
                    self.num_rows = self._file.count_rows()
                else:  # decodes (decompresses) every batch once
                    self.num_rows = sum(
                        self._file.get_batch(i).num_rows
                        for i in range(self._file.num_record_batches)
                    )
            elif fmt == "arrow-stream":
                self._file = pa.ipc.open_stream(stream if stream is not None else path)
                self.schema = self._file.schema
            elif fmt == "csv":
                self._file = None
                self.schema = self._open_csv().schema
            else:  # pragma: no cover - guarded by sniff_format
                raise DataError(f"unknown table format {fmt}", path=path)
            # Column names are decoded lazily: bytes that are not UTF-8 (a
            # binary file named .csv) fail here, as a UnicodeDecodeError.
            self.schema.names  # noqa: B018
        except DataError:
            raise
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(
                f"cannot read as {fmt} ({_first_line(e)})", path=path
            ) from e

    def _open_csv(self) -> Any:
        import pyarrow.csv as csv

        return csv.open_csv(self.path, read_options=csv.ReadOptions(block_size=8 << 20))

    def chunks(
        self, start: int, rows: int, columns: list[str] | None = None
    ) -> Iterator[Any]:
        import pyarrow as pa

        try:
            yield from self._batches(start, rows, columns)
        except DataError:
            raise
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(
                f"cannot read as {self.format} ({_first_line(e)})", path=self.path
            ) from e

    def _batches(
        self, start: int, rows: int, columns: list[str] | None
    ) -> Iterator[Any]:
        if self.format == "parquet":
            metadata = self._file.metadata
            groups: list[int] = []
            offset = 0
            for i in range(metadata.num_row_groups):
                n = metadata.row_group(i).num_rows
                if groups or offset + n > start:
                    groups.append(i)
                else:
                    offset += n
            skip = start - offset
            if not groups:
                return
            # Decoded in batches of at least TABLE_BATCH_ROWS, cut into chunks
            # of ``rows`` below: pyarrow decodes the columns of a batch in
            # parallel, which pays only on batches that large (about 1.6x
            # the throughput of 16Ki-row batches on 16 float32 columns).
            batches = self._file.iter_batches(
                batch_size=max(rows, TABLE_BATCH_ROWS),
                row_groups=groups,
                columns=columns,
                use_threads=True,
            )
        elif self.format == "arrow":
            batches = (
                self._file.get_batch(i) for i in range(self._file.num_record_batches)
            )
            skip = start
        elif self.format == "arrow-stream":
            import pyarrow as pa

            # A stream file can be opened again; stdin only read once.
            reader = (
                self._file
                if self._stream is not None
                else pa.ipc.open_stream(self.path)
            )
            batches = iter(reader)
            skip = start
        else:
            batches = iter(self._open_csv())
            skip = start
        for batch in batches:
            if self.format in ("arrow", "arrow-stream"):
                # IPC buffers are used as they lie in the file (memory-mapped,
                # zero-copy): a damaged one would be read out of bounds.
                batch.validate(full=True)
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            if skip:
                batch = batch.slice(skip)
                skip = 0
            if columns is not None and self.format != "parquet":
                batch = batch.select(columns)
            for lo in range(0, batch.num_rows, rows):
                yield batch.slice(lo, rows)


# ---------------------------------------------------------------- the dataset


def _is_numeric(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type))


@dataclasses.dataclass
class Dataset:
    """Inputs opened as one stream of samples."""

    sources: list[Source]
    kind: str
    features: list[str]
    sample_shape: tuple[int, ...]
    axis: int
    mask_column: str | None = None
    masks: list[Any] | None = None
    nan_policy: str = "error"

    @property
    def num_samples(self) -> int | None:
        """Samples in the stream, when every source knows its size."""
        sizes = [s.num_rows for s in self.sources]
        return None if any(n is None for n in sizes) else sum(n for n in sizes if n)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample's channels as stored (tables: 8 per channel)."""
        first = self.sources[0]
        itemsize = first.dtype.itemsize if isinstance(first, ArraySource) else 8
        return int(np.prod(self.sample_shape)) * itemsize

    def check_same_columns(self) -> None:
        """Refuse tables whose other columns differ from the first input's.

        Outputs keep every column, so each input must have the same ones, of
        the same types (the channels may differ in numeric type).

        Raises:
            DataError: naming the first input that differs.
        """
        first = self.sources[0].schema  # type: ignore[attr-defined]
        first_names = set(first.names)
        channels = set(self.features)
        for source in self.sources[1:]:
            schema = source.schema  # type: ignore[attr-defined]
            if set(schema.names) != first_names or any(
                schema.field(name).type != first.field(name).type
                for name in first.names
                if name not in channels
            ):
                raise DataError(
                    f"columns differ from the first input's ({', '.join(first.names)});"
                    " the output keeps every column, so give inputs with the same ones",
                    path=source.path,
                )

    @property
    def replayable(self) -> bool:
        """Whether the stream can be read again (not stdin)."""
        return all(s.path != "-" for s in self.sources)

    def chunks(
        self, start: int = 0, rows: int = TABLE_BATCH_ROWS, all_columns: bool = False
    ) -> Iterator[Chunk]:
        """Yield the stream from sample ``start`` as chunks of at most ``rows``."""
        skipped = 0
        mask_offset = 0
        for index, source in enumerate(self.sources):
            size = source.num_rows
            local = max(start - skipped, 0)
            if size is not None and local >= size:
                skipped += size
                mask_offset += size
                continue
            row = local
            if source.kind == "array":
                for piece in source.chunks(local, rows):
                    yield self._array_chunk(
                        source, index, piece, row, mask_offset + row
                    )
                    row += len(piece)
            else:
                assert isinstance(source, TableSource)
                for batch in source.chunks(local, rows, self._columns(all_columns)):
                    yield self._table_chunk(source, batch, row, all_columns)
                    row += batch.num_rows
            skipped += row if size is None else size
            mask_offset += row if size is None else size

    def _columns(self, all_columns: bool) -> list[str] | None:
        if all_columns:
            return None
        return self.features + ([self.mask_column] if self.mask_column else [])

    def _array_chunk(
        self, source: Source, index: int, data: Any, row: int, stream_row: int
    ) -> Chunk:
        n = len(data)
        mask = None
        if self.masks is not None:
            if len(self.masks) == 1 and len(self.sources) > 1:
                piece = self.masks[0][stream_row : stream_row + n]
            else:
                piece = self.masks[index][row : row + n]
            mask = np.asarray(piece).astype(bool, copy=False).reshape(n, -1, 1)
        chunk = Chunk(
            data=data,
            mask=mask,
            nulls=None,
            table=None,
            segments=(Segment(source.path, row, n),),
            features=self.features,
            axis=self.axis,
        )
        if self.nan_policy == "mask":
            _mask_nonfinite(chunk)
        return chunk

    def _table_chunk(
        self, source: TableSource, batch: Any, row: int, keep_table: bool = True
    ) -> Chunk:
        import pyarrow as pa
        import pyarrow.compute as pc

        n = batch.num_rows
        schema = batch.schema
        data = _channel_major(batch, self.features)
        columns = []
        nulls = None
        for j, name in enumerate([] if data is not None else self.features):
            column = batch.column(schema.get_field_index(name))
            if column.null_count:
                if nulls is None:
                    nulls = np.zeros((n, len(self.features)), dtype=bool)
                nulls[:, j] = column.is_null().to_numpy(zero_copy_only=False)
                column = pc.fill_null(column, 0)
            columns.append(column.to_numpy(zero_copy_only=False))
        if data is None:
            dtype = np.result_type(*[c.dtype for c in columns])
            if dtype.kind != "f":
                dtype = np.dtype(np.float64)
            # Channel-major, as _channel_major makes it.
            by_column = np.empty((len(columns), n), dtype=dtype)
            for j, column in enumerate(columns):
                by_column[j] = column
            data = by_column.T
        mask = None if nulls is None else ~nulls
        if self.mask_column is not None:
            keep = batch.column(schema.get_field_index(self.mask_column))
            keep_np = pc.fill_null(keep.cast(pa.bool_()), False).to_numpy(
                zero_copy_only=False
            )
            mask = keep_np[:, None] if mask is None else mask & keep_np[:, None]
        chunk = Chunk(
            data=data,
            mask=None if mask is None else mask.reshape(n, 1, -1),
            nulls=nulls,
            # Only outputs need the other columns; without them, a batch that
            # spans files whose channel types differ (float32, float64) joins.
            table=batch if keep_table else None,
            segments=(Segment(source.path, row, n),),
            features=self.features,
            axis=1,
        )
        if self.nan_policy == "mask":
            _mask_nonfinite(chunk)
        return chunk


def _channel_major(batch: Any, features: Sequence[str]) -> npt.NDArray[Any] | None:
    """The channel columns as an ``(n, C)`` channel-major array, in one copy.

    Channel-major (each column contiguous, the array the transpose of a
    ``(C, n)`` one): a column is one contiguous copy, where filling an
    ``(n, C)`` row-major array column by column is a strided write several
    times slower, and the outputs, laid out alike, go back to Arrow without a
    copy. Arrow makes it (``to_tensor``) in memory from its own pool, which
    reuses freed memory instead of touching fresh pages for every chunk.

    Returns ``None`` where that does not apply, for the caller to build the
    array column by column: a null in a channel, channels of different
    types, or integer channels (they become float64).
    """
    import pyarrow as pa

    if not isinstance(batch, pa.RecordBatch) or not batch.num_rows or not features:
        return None
    columns = [batch.column(batch.schema.get_field_index(name)) for name in features]
    types = {column.type for column in columns}
    if len(types) != 1 or any(column.null_count for column in columns):
        return None
    (kind,) = types
    if not pa.types.is_floating(kind) or pa.types.is_float16(kind):
        return None
    selected = pa.RecordBatch.from_arrays(columns, names=list(features))
    if not hasattr(selected, "to_tensor"):  # pyarrow before 16
        return None
    data: npt.NDArray[Any] = selected.to_tensor(row_major=False).to_numpy()
    return data


def _mask_nonfinite(chunk: Chunk) -> None:
    """``--nan-policy mask``: NaN and infinite elements count as masked out."""
    from bncli.kernels import to_rows

    finite = np.isfinite(to_rows(np.asarray(chunk.data), chunk.axis))
    if finite.all():
        return
    chunk.mask = finite if chunk.mask is None else chunk.mask & finite


def _open_source(path: str) -> Source:
    if path == "-":
        stream: Any = sys.stdin.buffer  # a BufferedReader (peek) in a shell
        peekable = hasattr(stream, "peek")
        head = stream.peek(8)[:8] if peekable else b""
        if peekable and not head:
            raise DataError(
                "empty input: nothing on stdin",
                path="-",
                hint="pipe an Arrow IPC stream or an NPY array into it",
            )
        if head.startswith(b"\x93NUMPY"):
            return ArraySource("-", stream)
        return TableSource("-", "arrow-stream", stream)
    fmt = sniff_format(path)
    if fmt == "npy":
        return ArraySource(path)
    return TableSource(path, fmt)


def open_dataset(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    axis: int = -1,
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    sample_shape: Sequence[int] | None = None,
    mask_column: str | None = None,
    masks: Sequence[str | os.PathLike[str]] | None = None,
    nan_policy: str = "error",
) -> Dataset:
    """Open the inputs as one stream and settle its channels.

    Args:
        inputs: files, folders (their files sorted by name) or ``-`` (stdin).
        axis: the channel axis of array inputs.
        columns, exclude: the channel columns of tables (default: every
            integer and floating column, in file order).
        features: the channel names a state remembers: tables select those
            columns by name, arrays must have as many channels.
        sample_shape: the per-sample shape a state remembers (arrays).
        mask_column: a boolean or 0/1 column; false rows count in no statistic.
        masks: NPY masks, one per NPY input or one for the whole stream.
        nan_policy: ``"error"`` or ``"mask"``.

    Raises:
        DataError: unreadable inputs, or inputs that disagree.
        ChannelMismatchError: channels that differ from ``features``.
    """
    if nan_policy not in ("error", "mask"):
        raise UsageError(f"nan policy must be 'error' or 'mask', got {nan_policy!r}")
    paths = expand_inputs(inputs)
    if paths.count("-") and len(paths) > 1:
        raise UsageError("'-' (stdin) must be the only input")
    sources = [_open_source(p) for p in paths]
    kinds = {s.kind for s in sources}
    if len(kinds) > 1:
        raise DataError("inputs mix tables and NPY arrays", path=sources[-1].path)
    if sources[0].kind == "table":
        if masks:
            raise UsageError("--mask is for NPY inputs; use --mask-column for tables")
        return _open_tables(
            cast("list[TableSource]", sources),
            columns,
            exclude,
            features,
            mask_column,
            nan_policy,
        )
    if mask_column is not None:
        raise UsageError("--mask-column is for tables; use --mask FILE.npy for arrays")
    if columns or exclude:
        raise UsageError("--columns and --exclude are for tables, not NPY arrays")
    return _open_arrays(sources, axis, features, sample_shape, masks, nan_policy)  # type: ignore[arg-type]


def _open_tables(
    sources: list[TableSource],
    columns: Sequence[str] | None,
    exclude: Sequence[str] | None,
    features: Sequence[str] | None,
    mask_column: str | None,
    nan_policy: str,
) -> Dataset:
    first = sources[0]
    names = first.schema.names
    present = set(names)  # membership tests stay O(1): tables may be 10^5 columns wide
    if columns and exclude:
        raise UsageError("--columns and --exclude cannot be used together")
    if mask_column is not None and mask_column not in present:
        raise DataError(
            f"mask column {mask_column!r} not found (columns: {', '.join(names)})",
            path=first.path,
        )
    if features is not None:
        chosen = list(features)
        missing = [c for c in chosen if c not in present]
        if missing:
            raise ChannelMismatchError(
                f"column {missing[0]!r} of the state is missing "
                f"(data columns: {', '.join(names)})",
                path=first.path,
            )
    elif columns:
        chosen = list(columns)
        for name in chosen:
            if name not in present:
                raise DataError(
                    f"column {name!r} not found (columns: {', '.join(names)})",
                    path=first.path,
                )
        if len(set(chosen)) != len(chosen):
            raise UsageError("--columns names a column twice")
    else:
        excluded = set(exclude or ())
        unknown = sorted(excluded - present)
        if unknown:
            raise DataError(
                f"--exclude names column {unknown[0]!r}, which is not in the data "
                f"(columns: {', '.join(names)})",
                path=first.path,
            )
        chosen = [
            f.name
            for f in first.schema
            if _is_numeric(f.type) and f.name not in excluded and f.name != mask_column
        ]
        if not chosen:
            raise DataError("no numeric column to use as a channel", path=first.path)
    if mask_column is not None and mask_column in set(chosen):
        raise UsageError(f"the mask column {mask_column!r} cannot also be a channel")
    check_channels(len(chosen), first.path, "the selected columns")
    for source in sources:
        schema = source.schema
        in_schema = present if source is first else set(schema.names)
        for name in chosen:
            if name not in in_schema:
                raise ChannelMismatchError(
                    f"column {name!r} is missing (the first input has it)",
                    path=source.path,
                )
            field = schema.field(name)
            if not _is_numeric(field.type):
                raise DataError(
                    f"column is not numeric (type {field.type}); choose channels "
                    "with --columns or --exclude",
                    path=source.path,
                    column=name,
                )
        if mask_column is not None:
            if mask_column not in in_schema:
                raise DataError(
                    f"mask column {mask_column!r} not found", path=source.path
                )
            mask_type = schema.field(mask_column).type
            import pyarrow as pa

            if not (pa.types.is_boolean(mask_type) or pa.types.is_integer(mask_type)):
                raise DataError(
                    f"mask column must be boolean or 0/1, not {mask_type}",
                    path=source.path,
                    column=mask_column,
                )
    return Dataset(
        sources=list(sources),
        kind="table",
        features=chosen,
        sample_shape=(len(chosen),),
        axis=1,
        mask_column=mask_column,
        nan_policy=nan_policy,
    )


def _open_arrays(
    sources: list[ArraySource],
    axis: int,
    features: Sequence[str] | None,
    sample_shape: Sequence[int] | None,
    masks: Sequence[str | os.PathLike[str]] | None,
    nan_policy: str,
) -> Dataset:
    first = sources[0]
    shape = first.shape[1:]
    for source in sources[1:]:
        if source.shape[1:] != shape:
            raise ChannelMismatchError(
                f"sample shape {source.shape[1:]} differs from the first input's "
                f"{shape}",
                path=source.path,
            )
    ndim = len(shape) + 1
    normalized = axis + ndim if axis < 0 else axis
    if not 0 <= normalized < ndim:
        raise UsageError(
            f"axis {axis} is out of bounds for arrays of shape {first.shape}",
            path=first.path,
        )
    if normalized == 0:
        raise UsageError(
            "axis 0 is the sample axis and cannot be the channel axis",
            path=first.path,
        )
    if sample_shape is not None and (
        len(sample_shape) != len(shape)
        or any(d not in (-1, e) for d, e in zip(sample_shape, shape, strict=True))
    ):
        raise ChannelMismatchError(
            f"sample shape {tuple(shape)} differs from the state's "
            f"{tuple(sample_shape)}",
            path=first.path,
        )
    channels = shape[normalized - 1]
    check_channels(channels, first.path, f"axis {axis} of shape {first.shape}")
    names = [str(i) for i in range(channels)] if features is None else list(features)
    if len(names) != channels:
        raise ChannelMismatchError(
            f"{channels} channels on axis {axis}, the state has {len(names)}",
            path=first.path,
        )
    mask_arrays = None
    if masks:
        mask_arrays = _open_masks(sources, masks, normalized)
    return Dataset(
        sources=list(sources),
        kind="array",
        features=names,
        sample_shape=tuple(shape),
        axis=normalized,
        masks=mask_arrays,
        nan_policy=nan_policy,
    )


def _open_masks(
    sources: list[ArraySource], masks: Sequence[str | os.PathLike[str]], axis: int
) -> list[Any]:
    if len(masks) not in (1, len(sources)):
        raise UsageError(
            f"give --mask once per NPY input ({len(sources)}) or once for the "
            f"whole stream, not {len(masks)} times"
        )
    arrays = []
    for mask_path in masks:
        mask_path = os.fspath(mask_path)
        if sniff_format(mask_path) != "npy":
            raise DataError("a mask must be an NPY file", path=mask_path)
        try:
            arrays.append(np.load(mask_path, mmap_mode="r", allow_pickle=False))
        except (*_BAD_NPY, OSError) as e:
            raise DataError(
                f"cannot read the mask ({_first_line(e)})", path=mask_path
            ) from e
    total = sum(s.shape[0] for s in sources)
    for i, (mask_path, array) in enumerate(zip(masks, arrays, strict=True)):
        data_shape = sources[0].shape if len(arrays) == 1 else sources[i].shape
        expected = list(data_shape[:axis] + data_shape[axis + 1 :])
        if len(arrays) == 1:
            expected[0] = total
        if array.dtype.kind not in "biu":
            raise DataError(
                f"mask of dtype {array.dtype}; expected booleans or 0/1 integers",
                path=mask_path,
            )
        if list(array.shape) != expected:
            raise DataError(
                f"mask of shape {tuple(array.shape)}; expected {tuple(expected)} "
                "(the data's shape without the channel axis)",
                path=mask_path,
            )
    return arrays
