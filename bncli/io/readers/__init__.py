"""One reader per format, each a :class:`bncli.io.sources.Source`.

:func:`open_source` picks the reader by the file's magic bytes
(:mod:`bncli.io.detect`); stdin is an NPY array or an Arrow IPC stream.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from bncli.errors import DataError
from bncli.io.detect import NPY_MAGIC, sniff_format
from bncli.io.readers.arrow import ArrowFileSource, ArrowStreamSource
from bncli.io.readers.csv import CsvSource
from bncli.io.readers.npy import NpySource
from bncli.io.readers.parquet import ParquetSource
from bncli.io.sources import Source

__all__ = [
    "READERS",
    "ArrowFileSource",
    "ArrowStreamSource",
    "CsvSource",
    "NpySource",
    "ParquetSource",
    "open_source",
]

#: The reader of each file format.
READERS: dict[str, Callable[[str], Source]] = {
    "npy": NpySource,
    "parquet": ParquetSource,
    "arrow": ArrowFileSource,
    "arrow-stream": ArrowStreamSource,
    "csv": CsvSource,
}


def open_source(path: str) -> Source:
    """The reader for ``path`` (``"-"``: stdin), chosen by content.

    Raises:
        InputNotFoundError: no such file.
        DataError: an unrecognized or damaged file, or nothing on stdin.
    """
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
        if head.startswith(NPY_MAGIC):
            return NpySource("-", stream)
        return ArrowStreamSource("-", stream)
    return READERS[sniff_format(path)](path)
