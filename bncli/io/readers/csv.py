"""CSV files, plain or compressed, read by pyarrow's streaming reader in 8 MiB blocks.

pyarrow infers each column's type from the first block. A value that is not
a number in a column of numbers is an error naming its row, wherever it is:
in the first block (where it would make the column text, silently no
channel) or later (where pyarrow's conversion fails with no row).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from bncli.errors import DataError
from bncli.io.locations import is_url, open_stream
from bncli.io.sources import TableSource

__all__ = ["NUMBER", "CsvSource"]

#: A cell pyarrow reads as a number (``NaN``, ``nan`` and ``inf`` included).
NUMBER = r"^\s*[+-]?(((\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)|nan|inf|infinity)\s*$"

#: Bytes of each block pyarrow parses (and infers the types from, the first).
_BLOCK_BYTES = 8 << 20

_COLUMN = re.compile(r"In CSV column #(\d+)")


class CsvSource(TableSource):
    """A CSV file with a header row; its rows are counted only by reading it."""

    format = "csv"

    def __init__(
        self, path: str, name: str | None = None, delimiter: str = ","
    ) -> None:
        import pyarrow as pa

        self.path = path if name is None else name
        self.location = path
        self.delimiter = delimiter
        self.num_rows = None
        self._first: Any = None
        try:
            self._schema = self._open().schema
            # Bytes that are not UTF-8 (a binary file named .csv) fail here.
            self._schema.names  # noqa: B018
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self._with_hint(self.opening(e)) from e
        if len(self._schema.names) == 1:
            hint = self._delimiter_hint()
            if hint:  # one column named "a;b;c": another delimiter
                raise DataError(
                    f"one column only, named {self._schema.names[0]!r}",
                    path=self.path,
                    hint=hint,
                )

    def _open(
        self, column: str | None = None, columns: Sequence[str] | None = None
    ) -> Any:
        import pyarrow as pa
        import pyarrow.csv as csv

        # Only empty cells are nulls: NaN, nan and inf are numbers (then
        # --nan-policy decides), where pyarrow's defaults take "NaN" for null.
        convert = csv.ConvertOptions(null_values=[""], strings_can_be_null=True)
        if column is not None:  # one column, as the text it is
            convert.column_types = {column: pa.string()}
            convert.include_columns = [column]
        elif columns is not None:  # the others are never parsed
            convert.include_columns = list(columns)
        return csv.open_csv(
            self._text(),
            read_options=csv.ReadOptions(block_size=_BLOCK_BYTES),
            parse_options=csv.ParseOptions(delimiter=self.delimiter),
            convert_options=convert,
        )

    def _text(self) -> Any:
        """The file's bytes as a stream, decompressed by its extension."""
        import pyarrow as pa

        if is_url(self.location):
            return open_stream(self.location, compression="detect")
        return pa.input_stream(self.location, compression="detect")

    def record_batches(
        self, start: int, rows: int, columns: Sequence[str] | None
    ) -> Iterator[Any]:
        import pyarrow as pa

        try:
            yield from self.cut(iter(self._open(columns=columns)), start, rows, columns)
        except pa.ArrowInvalid as e:
            found = _COLUMN.search(str(e))
            if found is None or "conversion error" not in str(e):
                raise self._with_hint(self.opening(e)) from e
            self._refuse_bad_value(self._schema.names[int(found.group(1))])
            raise  # not found again: pyarrow's own message

    def _with_hint(self, error: DataError) -> DataError:
        if "CSV parse error" in error.message and error.hint is None:
            error.hint = self._delimiter_hint()
            error.args = (error.line(),)
        return error

    def _delimiter_hint(self) -> str | None:
        """``give --delimiter ';'`` when the header holds another separator more."""
        import pyarrow as pa

        try:
            with self._text() as stream:
                head = (
                    stream.read(1 << 16).split(b"\n", 1)[0].decode("utf-8", "replace")
                )
        except (OSError, pa.ArrowException):
            return None
        counts = {c: head.count(c) for c in ",;\t|" if c != self.delimiter}
        best = max(counts, key=lambda c: counts[c])
        if counts[best] <= head.count(self.delimiter):
            return None
        shown = "tab" if best == "\t" else best
        return f"its header is split by {shown!r}: give --delimiter {shown!r}"

    def bad_number(self, column: str) -> tuple[int, str] | None:
        """The first cell that is not a number in a text column of numbers.

        A column pyarrow read as text is one of numbers when most of its
        cells in the first block are numbers; then its first other cell is
        returned as ``(row, text)``. None for a column of text.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        if not pa.types.is_string(self._schema.field(column).type):
            return None
        if self._first is None:
            self._first = next(iter(self._open()), None)
        if self._first is None:
            return None
        cells = self._first.column(column)
        numbers = pc.match_substring_regex(cells, NUMBER, ignore_case=True)
        filled = len(cells) - cells.null_count
        found = pc.sum(numbers).as_py() or 0
        if not filled or 2 * found < filled or found == filled:
            return None
        row = pc.index(pc.fill_null(numbers, True), False).as_py()
        return row, cells[row].as_py()

    def _refuse_bad_value(self, column: str) -> None:
        """Find the cell of ``column`` pyarrow could not convert; raise naming its row."""
        import pyarrow as pa
        import pyarrow.compute as pc

        want = self._schema.field(column).type
        pattern = NUMBER if pa.types.is_floating(want) else r"^\s*[+-]?\d+\s*$"
        row = 0
        for batch in self._open(column):
            cells = batch.column(0)
            fits = pc.fill_null(
                pc.match_substring_regex(cells, pattern, ignore_case=True), True
            )
            if not pc.all(fits).as_py():
                at = pc.index(fits, False).as_py()
                value = cells[at].as_py()
                what = (
                    "a number"
                    if pattern is NUMBER
                    else f"an integer (the column is {want}, as its first 8 MiB said)"
                )
                raise DataError(
                    f"{value!r} is not {what}",
                    path=self.path,
                    column=column,
                    row=row + at,
                )
            row += batch.num_rows
