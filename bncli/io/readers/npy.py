"""NPY arrays: memory-mapped from a file a window at a time, or streamed from a pipe.

Never unpickled (``allow_pickle=False``), and the header is checked against
the file's length before anything is mapped: ``(4, 2**40)`` is an error that
names the file, not an attempt to map or allocate it.
"""

from __future__ import annotations

import math
import mmap
import os
import tokenize
import weakref
from collections.abc import Iterator, Sequence
from typing import IO, Any, BinaryIO

import numpy as np
import numpy.typing as npt

from bncli.errors import DataError
from bncli.io.locations import is_url, open_random_access
from bncli.io.sources import ArraySource, first_line

__all__ = ["BAD_NPY", "NpySource", "load_npy", "read_npy_header"]

#: Dropping a window's pages from the resident set, where the platform can.
_DONTNEED = getattr(mmap, "MADV_DONTNEED", 0)

#: What NumPy raises on a damaged NPY header: besides ValueError, its header
#: parser lets the tokenizer's and the literal parser's errors through.
BAD_NPY = (ValueError, SyntaxError, tokenize.TokenError)


def load_npy(path: str, what: str = "the NPY array") -> Any:
    """``np.load`` memory-mapped and without pickle, errors naming the file."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except BAD_NPY as e:
        if "object" in str(e).lower():
            raise DataError(
                "NPY array of Python objects (would need pickle, which bncli "
                "never loads)",
                path=path,
            ) from e
        raise DataError(f"cannot read {what} ({first_line(e)})", path=path) from e


class NpySource(ArraySource):
    """An NPY array ``(N, ...)``: from a file, or from a stream (stdin) read once."""

    format = "npy"

    def __init__(self, path: str, stream: BinaryIO | None = None) -> None:
        self.path = path
        self.location = path
        self._stream = stream
        self._file: BinaryIO | None = None
        self._whole: mmap.mmap | None = None
        self._remote: Any = None
        if stream is None and is_url(path):
            # Read by ranges: the header, then each chunk's bytes.
            self._remote = open_random_access(path)
            self.shape, self.dtype, self._offset = _remote_header(self._remote, path)
        elif stream is None:
            _check_npy_length(path)
            try:
                self.array: Any = load_npy(path)
            except OSError as e:
                raise DataError(f"corrupt NPY file ({first_line(e)})", path=path) from e
            self.shape = tuple(self.array.shape)
            self.dtype = self.array.dtype
        else:
            self.shape, self.dtype = _read_stream_header(stream, path)
        self.check_dtype()
        self.num_rows = self.shape[0]

    def chunks(
        self, start: int, rows: int, columns: Sequence[str] | None = None
    ) -> Iterator[npt.NDArray[Any]]:
        if self._remote is not None:
            row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
            for lo in range(start, self.shape[0], rows):
                hi = min(lo + rows, self.shape[0])
                data = self._remote.read_at(
                    (hi - lo) * row_bytes, self._offset + lo * row_bytes
                )
                if len(data) < (hi - lo) * row_bytes:
                    raise DataError("truncated NPY data", path=self.path)
                yield np.frombuffer(data, dtype=self.dtype).reshape(
                    (hi - lo, *self.shape[1:])
                )
            return
        if self._stream is None:
            for lo in range(start, self.shape[0], rows):
                yield self._mapped_rows(lo, min(lo + rows, self.shape[0]))
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

    def _mapped_rows(self, lo: int, hi: int) -> npt.NDArray[Any]:
        """Samples ``[lo, hi)``: a window on one mapping of the whole file.

        The file is mapped once (a mapping per chunk cost an mmap and a
        munmap per chunk, whose page-table work, serialized by the kernel,
        kept 2 workers at 1.2x of 1); a chunk's pages are dropped from the
        resident set (``MADV_DONTNEED``) when the chunk and its views are,
        so the process's resident memory follows the chunks in flight, not
        the part of the file read so far. The page cache is shared either
        way, so a warm file is read at memory speed.
        """
        offset = getattr(self.array, "offset", None)
        if offset is None or not self.array.flags.c_contiguous or hi <= lo:
            piece: npt.NDArray[Any] = self.array[lo:hi]  # Fortran order: rows
            return piece  # are not contiguous
        if self._file is None:
            self._file = open(self.location, "rb", buffering=0)
            weakref.finalize(self, self._file.close)
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        start = offset + lo * row_bytes
        length = (hi - lo) * row_bytes
        if self._whole is None:
            self._whole = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        pages = _Pages(self._whole, start, length // self.dtype.itemsize, self.dtype)
        weakref.finalize(pages, _release, self._whole, start, length)
        window: npt.NDArray[Any] = np.asarray(pages).reshape((hi - lo, *self.shape[1:]))
        return window


class _Pages:
    """A window's pages, the base of every view of the window.

    NumPy points a view at the first object of its base chain that is not
    an array (here this one), so this object lives exactly as long as some
    view of the window does, and its finalizer marks the moment the window's
    pages may leave the process's resident set.
    """

    def __init__(
        self, mapped: mmap.mmap, start: int, count: int, dtype: np.dtype[Any]
    ) -> None:
        first = np.frombuffer(mapped, dtype=np.uint8, count=1, offset=start)
        self.mapped = mapped  # kept mapped while a view is alive
        self.__array_interface__ = {
            "shape": (count,),
            "typestr": dtype.str,
            "data": (first.ctypes.data, True),
            "version": 3,
        }


def _release(mapped: mmap.mmap, start: int, length: int) -> None:
    """Drop the pages of ``[start, start + length)`` of a file mapping from the resident set."""
    aligned = start - start % mmap.PAGESIZE
    try:
        mapped.madvise(_DONTNEED, aligned, length + start - aligned)
    except (ValueError, OSError):  # closed, or a platform without it
        pass


def _remote_header(f: Any, path: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """Shape, dtype and data offset of an NPY object, checked against its size."""
    from numpy.lib import format as npy

    try:
        shape, fortran, dtype = _read_header(f, npy)
    except BAD_NPY as e:
        raise DataError(
            f"cannot read the NPY array ({first_line(e)})", path=path
        ) from e
    if fortran:
        raise DataError(
            "a Fortran-ordered NPY object cannot be read by ranges", path=path
        )
    offset = f.tell()
    claimed = math.prod(shape) * np.dtype(dtype).itemsize
    if any(d < 0 for d in shape) or f.size() - offset < claimed:
        raise DataError(
            f"truncated NPY object: its header claims {claimed:,} bytes of data "
            f"(shape {tuple(shape)}), the object holds {max(f.size() - offset, 0):,}",
            path=path,
        )
    return tuple(shape), np.dtype(dtype), offset


def _check_npy_length(path: str) -> None:
    """Refuse an NPY file whose header claims more data than the file holds."""
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as f:
            shape, _, dtype = _read_header(f, npy)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except (*BAD_NPY, OSError):
        return  # a damaged header: np.load reports it
    if any(d < 0 for d in shape) or math.prod(d for d in shape if d) >= 1 << 62:
        # Negative, or beyond what any index can address (NumPy would
        # overflow computing it): a crafted header.
        raise DataError(f"corrupt NPY header (shape {shape})", path=path)
    claimed = math.prod(shape) * np.dtype(dtype).itemsize
    if size - offset < claimed:
        raise DataError(
            f"truncated NPY file: its header claims {claimed:,} bytes of data "
            f"(shape {tuple(shape)}, {np.dtype(dtype)}), the file holds "
            f"{max(size - offset, 0):,}",
            path=path,
        )


def _read_header(stream: IO[bytes], npy: Any) -> tuple[Any, bool, Any]:
    version = npy.read_magic(stream)
    if version == (1, 0):
        return npy.read_array_header_1_0(stream)  # type: ignore[no-any-return]
    return npy.read_array_header_2_0(stream)  # type: ignore[no-any-return]


def read_npy_header(stream: IO[bytes]) -> tuple[Any, bool, Any]:
    """``(shape, fortran_order, dtype)`` of the NPY header at ``stream``'s position.

    Raises:
        ValueError, SyntaxError, tokenize.TokenError: a damaged header.
    """
    from numpy.lib import format as npy

    return _read_header(stream, npy)


def _read_stream_header(
    stream: BinaryIO, path: str
) -> tuple[tuple[int, ...], np.dtype[Any]]:
    from numpy.lib import format as npy

    try:
        shape, fortran, dtype = _read_header(stream, npy)
    except BAD_NPY as e:
        raise DataError(f"corrupt NPY header ({first_line(e)})", path=path) from e
    if fortran:
        raise DataError("Fortran-ordered NPY cannot be streamed", path=path)
    return tuple(shape), np.dtype(dtype)


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
