"""The reader interface: what every input format's :class:`Source` offers.

A source is one input file (or stdin) streamed as raw pieces of consecutive
samples: NumPy arrays ``(n, *sample_shape)`` for arrays, Arrow record batches
for tables. What it knows before reading (its rows, its units, its schema
or shape) is there for the planning of a fit; :mod:`bncli.io.dataset` joins
sources into one stream of :class:`bncli.io.chunks.Chunk` objects.

The implementations, one per format, are in :mod:`bncli.io.readers`; the
contract every one of them keeps is tested once for all in
``tests/contract/test_reader_contract.py``.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bncli.errors import DataError, UsageError

__all__ = [
    "TABLE_BATCH_BYTES",
    "TABLE_BATCH_ROWS",
    "ArraySource",
    "ReadOptions",
    "Source",
    "TableSource",
    "first_line",
    "table_batch_rows",
]


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """What a file cannot say itself: how to read inputs of some formats.

    Attributes:
        delimiter: the field separator of CSV inputs (and outputs).
        array: the array of an ``.npz`` archive holding several.
    """

    delimiter: str = ","
    array: str | None = None

    def checked(self) -> ReadOptions:
        """These options, with ``delimiter`` one character (``\\t`` or ``tab``: a tab).

        Raises:
            UsageError: a delimiter of several characters, a quote, a line end.
        """
        delimiter = {"\\t": "\t", "tab": "\t"}.get(self.delimiter, self.delimiter)
        if len(delimiter) != 1 or delimiter in '"\r\n':
            raise UsageError(
                f"--delimiter must be one character (not a quote or a line end), "
                f"got {self.delimiter!r}"
            )
        return dataclasses.replace(self, delimiter=delimiter)


#: Rows per record batch asked of table readers.
TABLE_BATCH_ROWS = 65_536

#: Bytes of cells (8 a cell) the Parquet reader decodes at once, at most: all of
#: TABLE_BATCH_ROWS rows of a few columns, fewer rows of many (1,024 float
#: columns decoded 65,536 rows at a time held 256 MiB and more).
TABLE_BATCH_BYTES = 16 << 20


def table_batch_rows(columns: int) -> int:
    """Rows per decoded record batch of a table of ``columns`` columns.

    Example:
        >>> table_batch_rows(16), table_batch_rows(1024)
        (65536, 2048)
    """
    return max(1, min(TABLE_BATCH_ROWS, TABLE_BATCH_BYTES // (8 * max(columns, 1))))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters."""
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


class Source(abc.ABC):
    """One input, streamed from any sample on as raw pieces.

    Attributes:
        path: the path as given (``"-"`` for stdin), for error messages.
        format: ``"npy"``, ``"parquet"``, ``"arrow"``, ``"arrow-stream"`` or ``"csv"``.
        kind: ``"array"`` or ``"table"``.
        num_rows: the samples it holds, when known without reading them all
            (not for CSV, nor Arrow streams).
        columns_alone: whether one column is read alone cheaply (Parquet),
            for a fit that reads a table column by column.
    """

    path: str
    format: str
    kind: str
    num_rows: int | None
    columns_alone: bool = False

    @property
    @abc.abstractmethod
    def value_bytes(self) -> int:
        """Bytes of one stored value (a table's channels are read as float64: 8)."""

    @property
    def schema(self) -> Any:
        """A table's Arrow schema; None for an array."""
        return None

    @property
    def replayable(self) -> bool:
        """Whether it can be read again (stdin cannot)."""
        return self.path != "-"

    def unit_rows(self) -> list[int] | None:
        """Rows of the units a reader can start at cheaply, in order.

        Row groups (Parquet), record batches (Arrow files); ``[]`` where only
        the start is cheap (CSV, Arrow streams); None where any row is (NPY).
        """
        return []

    @abc.abstractmethod
    def chunks(
        self, start: int, rows: int, columns: Sequence[str] | None = None
    ) -> Iterator[Any]:
        """Pieces of at most ``rows`` samples from sample ``start`` on.

        Arrays yield NumPy arrays; tables yield record batches of
        ``columns`` (None: every column).

        Raises:
            DataError: a damaged file, naming its path.
        """


class ArraySource(Source):
    """An array ``(N, *sample_shape)`` of numbers."""

    kind = "array"
    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def value_bytes(self) -> int:
        return int(self.dtype.itemsize)

    def unit_rows(self) -> list[int] | None:
        return None

    def check_dtype(self) -> None:
        """Refuse what is not an array of numbers of at least two dimensions."""
        if self.dtype.kind == "O" or self.dtype.hasobject:
            raise DataError(
                "NPY array of Python objects (would need pickle, which bncli never "
                "loads)",
                path=self.path,
            )
        if self.dtype.kind not in "fiub" or self.dtype.names:
            raise DataError(
                f"NPY array of non-numeric dtype {self.dtype}", path=self.path
            )
        if len(self.shape) < 2:
            raise DataError(
                f"1-D array of shape {self.shape}; bncli needs (samples, ...) with a "
                "channel axis, e.g. reshape to (N, 1)",
                path=self.path,
            )


class TableSource(Source):
    """A table read a record batch at a time through pyarrow."""

    kind = "table"
    _schema: Any
    #: Hive partition keys of the file's folders: text columns after its own.
    keys: tuple[tuple[str, str | None], ...] = ()

    @property
    def value_bytes(self) -> int:
        return 8

    @property
    def schema(self) -> Any:
        if not self.keys:
            return self._schema
        import pyarrow as pa

        schema = self._schema
        for name, _ in self.keys:
            schema = schema.append(pa.field(name, pa.string()))
        return schema

    def add_keys(self, keys: Sequence[tuple[str, str | None]]) -> None:
        """Add the Hive keys of the file's folders as columns (the file's own win)."""
        own = set(self._schema.names)
        self.keys = tuple((name, value) for name, value in keys if name not in own)

    def chunks(
        self, start: int, rows: int, columns: Sequence[str] | None = None
    ) -> Iterator[Any]:
        import pyarrow as pa

        try:
            if not self.keys:
                yield from self.record_batches(start, rows, columns)
                return
            named = {name for name, _ in self.keys}
            own = None if columns is None else [c for c in columns if c not in named]
            for batch in self.record_batches(start, rows, own):
                yield self._with_keys(batch, columns)
        except DataError:
            raise
        except (pa.ArrowException, OSError, ValueError) as e:
            raise DataError(
                f"cannot read as {self.format} ({first_line(e)})", path=self.path
            ) from e

    def _with_keys(self, batch: Any, columns: Sequence[str] | None) -> Any:
        import pyarrow as pa

        from bncli.io.tables import arrow_text  # not pa.scalar: it imports pandas

        arrays = list(batch.columns)
        names = list(batch.schema.names)
        for name, value in self.keys:
            arrays.append(pa.repeat(arrow_text(value), batch.num_rows))
            names.append(name)
        keyed = pa.RecordBatch.from_arrays(arrays, names=names)
        return keyed if columns is None else keyed.select(list(columns))

    @abc.abstractmethod
    def record_batches(
        self, start: int, rows: int, columns: Sequence[str] | None
    ) -> Iterator[Any]:
        """The record batches of :meth:`chunks`; pyarrow's errors pass through."""

    def cut(
        self,
        batches: Iterator[Any],
        skip: int,
        rows: int,
        columns: Sequence[str] | None,
    ) -> Iterator[Any]:
        """``batches`` without their first ``skip`` rows, in pieces of ``rows``."""
        for batch in batches:
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            if skip:
                batch = batch.slice(skip)
                skip = 0
            if columns is not None:
                batch = batch.select(list(columns))
            for lo in range(0, batch.num_rows, rows):
                yield batch.slice(lo, rows)

    def bad_number(self, column: str) -> tuple[int, str] | None:
        """``(row, text)`` of the first cell that is not a number in a text
        column holding numbers (CSV), or None: typed formats have none."""
        return None

    def opening(self, e: Exception) -> DataError:
        """The error for a file pyarrow cannot open as this format."""
        return DataError(
            f"cannot read as {self.format} ({first_line(e)})", path=self.path
        )
