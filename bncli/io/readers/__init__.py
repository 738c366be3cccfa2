"""One reader per format, each a :class:`bncli.io.sources.Source`.

:func:`open_source` picks the reader by the file's magic bytes
(:mod:`bncli.io.detect`); stdin is an NPY array or an Arrow IPC stream.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

from bncli.errors import DataError
from bncli.io.detect import NPY_MAGIC, data_format_of, sniff_format
from bncli.io.readers.arrow import ArrowFileSource, ArrowStreamSource
from bncli.io.readers.csv import CsvSource
from bncli.io.readers.npy import NpySource
from bncli.io.readers.npz import NpzSource
from bncli.io.readers.parquet import ParquetSource
from bncli.io.sources import ReadOptions, Source

__all__ = [
    "READERS",
    "ArrowFileSource",
    "ArrowStreamSource",
    "CsvSource",
    "NpySource",
    "NpzSource",
    "ParquetSource",
    "open_source",
]

#: The reader of each file format, given the path and the read options.
READERS: dict[str, Callable[[str, ReadOptions], Source]] = {
    "npy": lambda path, read: NpySource(path),
    "npz": lambda path, read: NpzSource(path, array=read.array),
    "parquet": lambda path, read: ParquetSource(path),
    "arrow": lambda path, read: ArrowFileSource(path),
    "arrow-stream": lambda path, read: ArrowStreamSource(path),
    "csv": lambda path, read: CsvSource(path, delimiter=read.delimiter),
}


def open_source(path: str, read: ReadOptions | None = None) -> Source:
    """The reader for ``path`` (``"-"``: stdin), chosen by content.

    On stdin an NPY array and an Arrow IPC stream are read as they arrive;
    a Parquet file, an Arrow IPC file or CSV text (which need to be read at
    several places) is first copied to a temporary file, removed when the
    source is dropped.

    Raises:
        InputNotFoundError: no such file.
        DataError: an unrecognized or damaged file, or nothing on stdin.
    """
    read = read or ReadOptions()
    if path != "-":
        return READERS[sniff_format(path)](path, read)
    stream: Any = sys.stdin.buffer  # a BufferedReader (peek) in a shell
    if not hasattr(stream, "peek"):  # e.g. an in-memory stream
        stream = io.BufferedReader(_Prepended(stream.read(4096), stream))
    head = stream.peek(4096)[:4096]
    if not head:
        raise DataError(
            "empty input: nothing on stdin",
            path="-",
            hint="pipe an Arrow IPC stream or file, Parquet, NPY or CSV into it",
        )
    if head.startswith(NPY_MAGIC):
        return NpySource("-", stream)
    found = data_format_of(head)
    if found is None and head and _looks_like_text(head):
        found = "csv"
    if found in ("parquet", "arrow", "csv", "npz"):
        return _spooled(stream, found, read)
    if found is None and head:
        raise DataError(
            f"unrecognized data on stdin (first bytes: {head[:8].hex(' ')}); bncli "
            "reads an Arrow IPC stream or file, Parquet, NPY or CSV",
            path="-",
        )
    return ArrowStreamSource("-", stream)


class _Prepended(io.RawIOBase):
    """``head`` then the rest of ``stream``: a stream read once, made peekable."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self._head = memoryview(head)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if len(self._head):
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _looks_like_text(head: bytes) -> bool:
    """UTF-8 text without NUL bytes (the last character may be cut)."""
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # a character cut at the end
    return True


def _spooled(stream: Any, fmt: str, read: ReadOptions) -> Source:
    """Stdin copied to a temporary file, read by ``fmt``'s reader as ``-``."""
    import os
    import shutil
    import tempfile
    import weakref

    handle, name = tempfile.mkstemp(prefix="bncli-stdin-", suffix=f".{fmt}")
    try:
        with os.fdopen(handle, "wb") as copy:
            shutil.copyfileobj(stream, copy, 1 << 20)
        reader: Source
        if fmt == "parquet":
            reader = ParquetSource(name, name="-")
        elif fmt == "arrow":
            reader = ArrowFileSource(name, name="-")
        elif fmt == "npz":
            reader = NpzSource(name, array=read.array, name="-")
        else:
            reader = CsvSource(name, name="-", delimiter=read.delimiter)
    except BaseException:
        os.unlink(name)
        raise
    weakref.finalize(reader, os.unlink, name)
    return reader
