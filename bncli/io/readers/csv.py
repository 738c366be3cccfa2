"""CSV files, plain or compressed, read by pyarrow's streaming reader in 8 MiB blocks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from bncli.io.locations import is_url, open_stream
from bncli.io.sources import TableSource

__all__ = ["CsvSource"]


class CsvSource(TableSource):
    """A CSV file with a header row; its rows are counted only by reading it."""

    format = "csv"

    def __init__(self, path: str, name: str | None = None) -> None:
        import pyarrow as pa

        self.path = path if name is None else name
        self.location = path
        self.num_rows = None
        try:
            self._schema = self._open().schema
            # Bytes that are not UTF-8 (a binary file named .csv) fail here.
            self._schema.names  # noqa: B018
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self.opening(e) from e

    def _open(self) -> Any:
        import pyarrow as pa
        import pyarrow.csv as csv

        # Only empty cells are nulls: NaN, nan and inf are numbers (then
        # --nan-policy decides), where pyarrow's defaults take "NaN" for null.
        convert = csv.ConvertOptions(null_values=[""], strings_can_be_null=True)
        if is_url(self.location):
            source = open_stream(self.location, compression="detect")
        else:
            source = pa.input_stream(self.location, compression="detect")
        return csv.open_csv(
            source,
            read_options=csv.ReadOptions(block_size=8 << 20),
            convert_options=convert,
        )

    def record_batches(
        self, start: int, rows: int, columns: Sequence[str] | None
    ) -> Iterator[Any]:
        yield from self.cut(iter(self._open()), start, rows, columns)
