"""Arrow IPC: files (Feather v2), memory-mapped, and streams, from a file or stdin.

IPC buffers are used as they lie in the file (zero-copy), so every record
batch is validated in full before it is used: a damaged one would be read
out of bounds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from bncli.io.locations import is_url, open_random_access, open_stream
from bncli.io.sources import TableSource

__all__ = ["ArrowFileSource", "ArrowStreamSource"]


def _stream_of(path: str) -> Any:
    return open_stream(path) if is_url(path) else path


def _validated(batches: Iterator[Any]) -> Iterator[Any]:
    for batch in batches:
        batch.validate(full=True)
        yield batch


class ArrowFileSource(TableSource):
    """An Arrow IPC file; its footer gives its record batches up front."""

    format = "arrow"

    def __init__(self, path: str, name: str | None = None) -> None:
        import pyarrow as pa

        self.path = path if name is None else name
        try:
            source = (
                open_random_access(path) if is_url(path) else pa.memory_map(path, "r")
            )
            self._file: Any = pa.ipc.open_file(source)
            self._schema = self._file.schema
            if hasattr(self._file, "count_rows"):  # reads batch headers only
                self.num_rows = self._file.count_rows()
            else:  # decodes (decompresses) every batch once
                self.num_rows = sum(self.unit_rows())
            self._schema.names  # noqa: B018 - names are decoded lazily
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self.opening(e) from e

    def unit_rows(self) -> list[int]:
        return [
            self._file.get_batch(i).num_rows
            for i in range(self._file.num_record_batches)
        ]

    def record_batches(
        self, start: int, rows: int, columns: Sequence[str] | None
    ) -> Iterator[Any]:
        batches = (
            self._file.get_batch(i) for i in range(self._file.num_record_batches)
        )
        yield from self.cut(_validated(batches), start, rows, columns)


class ArrowStreamSource(TableSource):
    """An Arrow IPC stream: no row count up front; stdin is read once."""

    format = "arrow-stream"

    def __init__(self, path: str, stream: BinaryIO | None = None) -> None:
        import pyarrow as pa

        self.path = path
        self.num_rows = None
        self._stream = stream
        try:
            self._reader: Any = pa.ipc.open_stream(
                stream if stream is not None else _stream_of(path)
            )
            self._schema = self._reader.schema
            self._schema.names  # noqa: B018 - names are decoded lazily
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self.opening(e) from e

    def record_batches(
        self, start: int, rows: int, columns: Sequence[str] | None
    ) -> Iterator[Any]:
        import pyarrow as pa

        # A stream file can be opened again; stdin only read once.
        reader = (
            self._reader
            if self._stream is not None
            else pa.ipc.open_stream(_stream_of(self.path))
        )
        yield from self.cut(_validated(iter(reader)), start, rows, columns)
