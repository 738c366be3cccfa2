"""Parquet files, read a row group's batches at a time with bounded buffers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from bncli.io.locations import is_url, open_random_access
from bncli.io.sources import TableSource, table_batch_rows

__all__ = ["ParquetSource"]


class ParquetSource(TableSource):
    """A Parquet file; its metadata gives its rows and row groups up front."""

    format = "parquet"

    def __init__(self, path: str, name: str | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path if name is None else name
        try:
            # Not memory-mapped: the pages of a mapped file stay in the
            # process's resident set to the end. With a read buffer, each
            # column chunk is streamed a page at a time rather than read
            # whole (a row group can be hundreds of MB): about 4 MiB of
            # buffers in all, whatever the size of the row groups (16 MiB
            # read no faster, and cost a transform 12 MiB more).
            self._remote = is_url(path)
            # One handle on the file, opened once: every reader reads it (at
            # offsets: threads may share it), so a file replaced meanwhile
            # is never half read.
            self._handle: Any = (
                open_random_access(path) if self._remote else pa.OSFile(path)
            )
            self._metadata = pq.read_metadata(self._handle)
            columns = max(self._metadata.num_columns, 1)
            self._buffer_size = min(max((4 << 20) // columns, 64 << 10), 1 << 20)
            self._schema = self._reader().schema_arrow
            self.num_rows = self._metadata.num_rows
            # Column names are decoded lazily: bytes that are not UTF-8 fail
            # here, as a UnicodeDecodeError (a ValueError).
            self._schema.names  # noqa: B018
        except (pa.ArrowException, OSError, ValueError) as e:
            raise self.opening(e) from e

    #: A column is read alone cheaply, from a file (a column chunk is one
    #: run of bytes) and from an object store (one request per row group's
    #: column chunk, several MiB).
    columns_alone = True

    def _reader(self) -> Any:
        """A reader of the file of its own: pyarrow's readers of one
        ``ParquetFile`` used by two threads at once deadlock."""
        import pyarrow.parquet as pq

        return pq.ParquetFile(
            self._handle,
            metadata=self._metadata,
            memory_map=False,
            buffer_size=0 if self._remote else self._buffer_size,
            # An object store answers few large requests fast and many
            # small ones slowly: a row group's column chunks are fetched
            # at once, coalesced (one row group in memory at a time).
            pre_buffer=self._remote,
        )

    def unit_rows(self) -> list[int]:
        metadata = self._metadata
        return [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]

    def record_batches(
        self, start: int, rows: int, columns: Sequence[str] | None
    ) -> Iterator[Any]:
        groups: list[int] = []
        offset = 0
        for i, n in enumerate(self.unit_rows()):
            if groups or offset + n > start:
                groups.append(i)
            else:
                offset += n
        if not groups:
            return
        # Decoded in batches of TABLE_BATCH_ROWS (fewer rows of a wide table),
        # cut into chunks of ``rows`` below: pyarrow decodes the columns of a
        # batch in parallel, which pays only on batches that large (about
        # 1.6x the throughput of 16Ki-row batches on 16 float32 columns).
        chosen = None if columns is None else list(columns)
        width = self._metadata.num_columns if chosen is None else len(chosen)
        size = max(rows, table_batch_rows(width))
        reader = self._reader()
        if self._remote:  # a row group at a time: its buffers go with it
            batches: Iterator[Any] = _rebatched(
                (
                    batch
                    for group in groups
                    for batch in reader.iter_batches(
                        batch_size=size,
                        row_groups=[group],
                        columns=chosen,
                        use_threads=True,
                    )
                ),
                size,
            )
        else:
            batches = reader.iter_batches(
                batch_size=size, row_groups=groups, columns=chosen, use_threads=True
            )
        yield from self.cut(batches, start - offset, rows, None)


def _rebatched(batches: Iterator[Any], size: int) -> Iterator[Any]:
    """``batches`` as batches of exactly ``size`` rows (the last: the rest).

    As pyarrow batches a file's row groups read together, so that a remote
    file, read a row group at a time, gives the same chunks, and the same
    bits, as the local one.
    """
    import pyarrow as pa

    pending: list[Any] = []
    held = 0
    for batch in batches:
        while batch.num_rows:
            take = min(size - held, batch.num_rows)
            pending.append(batch.slice(0, take))
            held += take
            batch = batch.slice(take)
            if held == size:
                yield _joined(pa, pending)
                pending, held = [], 0
    if held:
        yield _joined(pa, pending)


def _joined(pa: Any, pieces: list[Any]) -> Any:
    if len(pieces) == 1:
        return pieces[0]
    return pa.Table.from_batches(pieces).combine_chunks().to_batches()[0]
