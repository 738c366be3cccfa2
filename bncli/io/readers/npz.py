"""NPZ archives: one array of a zip of NPY files (``np.savez``/``savez_compressed``).

An archive of one array is read as that array; of several, ``--array NAME``
chooses (``NAME.npy`` in the archive). A stored member is memory-mapped in
place, a window at a time, as an NPY file is; a compressed member is
decompressed as a stream, never whole, and read again from its start for
each pass. The NPY header inside is checked against the member's size
before anything is read, so a crafted archive costs no more than its size.
"""

from __future__ import annotations

import math
import struct
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bncli.errors import BncliError, DataError, UsageError
from bncli.io.detect import stored_member_start
from bncli.io.locations import is_url, open_random_access
from bncli.io.readers.npy import BAD_NPY, NpySource, read_npy_header
from bncli.io.sources import first_line

__all__ = ["NpzSource", "npz_arrays"]


def npz_arrays(archive: zipfile.ZipFile) -> list[str]:
    """The arrays an archive holds: its ``.npy`` members, without the suffix."""
    return [i.filename[:-4] for i in archive.infolist() if i.filename.endswith(".npy")]


class NpzSource(NpySource):
    """One array of an NPZ archive."""

    format = "npz"

    def __init__(
        self, path: str, array: str | None = None, name: str | None = None
    ) -> None:
        self.path = path if name is None else name
        self._stream = None
        self._file = None
        self._whole = None
        self._remote = None
        location = path
        remote = is_url(location)
        self._opener = (
            (lambda: open_random_access(location))
            if remote
            else (lambda: open(location, "rb"))
        )
        path = self.path  # in messages: as the user gave it
        self.member = ""
        try:
            with self._opener() as raw, zipfile.ZipFile(raw) as archive:
                self.member = _choose(archive, path, array)
                info = archive.getinfo(self.member)
                with archive.open(info) as f:
                    shape, fortran, dtype = read_npy_header(f)
                    header = f.tell()
                start = None
                if info.compress_type == zipfile.ZIP_STORED and not remote:
                    start = stored_member_start(raw, info)
                    if start is None:
                        raise DataError(
                            f"corrupt NPZ archive (bad local header of {self.member})",
                            path=path,
                        )
        except BncliError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, struct.error) as e:
            raise DataError(f"corrupt NPZ archive ({first_line(e)})", path=path) from e
        except BAD_NPY as e:
            raise DataError(
                f"cannot read array {self.member[:-4]!r} ({first_line(e)})", path=path
            ) from e
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.check_dtype()
        claimed = math.prod(self.shape) * self.dtype.itemsize
        if any(d < 0 for d in self.shape) or info.file_size - header < claimed:
            raise DataError(
                f"truncated NPZ member {self.member}: its header claims {claimed:,} "
                f"bytes (shape {self.shape}), the member holds "
                f"{max(info.file_size - header, 0):,}",
                path=path,
            )
        self.num_rows = self.shape[0]
        self._streamed = start is None
        if start is not None:  # stored: the member's bytes lie in the file as they are
            self.location = location
            self.array = np.memmap(
                location,
                dtype=self.dtype,
                mode="r",
                offset=start + header,
                shape=self.shape,
                order="F" if fortran else "C",
            )
        elif fortran:
            raise DataError(
                f"a Fortran-ordered member ({self.member}) of a compressed or remote "
                "archive cannot be streamed; save it in C order",
                path=path,
            )

    @property
    def replayable(self) -> bool:
        return True

    def chunks(
        self, start: int, rows: int, columns: Sequence[str] | None = None
    ) -> Iterator[npt.NDArray[Any]]:
        if not self._streamed:
            yield from super().chunks(start, rows, columns)
            return
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        try:
            with self._opener() as raw, zipfile.ZipFile(raw) as archive:
                with archive.open(self.member) as f:
                    read_npy_header(f)
                    f.seek(start * row_bytes, 1)  # decompresses what it skips
                    for lo in range(start, self.shape[0], rows):
                        take = min(rows, self.shape[0] - lo)
                        data = f.read(take * row_bytes)
                        if len(data) < take * row_bytes:
                            raise DataError("truncated NPZ member", path=self.path)
                        yield np.frombuffer(data, dtype=self.dtype).reshape(
                            (take, *self.shape[1:])
                        )
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise DataError(
                f"corrupt NPZ archive ({first_line(e)})", path=self.path
            ) from e


def _choose(archive: zipfile.ZipFile, path: str, array: str | None) -> str:
    names = npz_arrays(archive)
    if array is not None:
        if array not in names:
            raise UsageError(
                f"{path}: --array {array}: no such array in the archive "
                f"(arrays: {', '.join(names) or 'none'})"
            )
        return f"{array}.npy"
    if not names:
        raise DataError("the archive holds no NPY arrays", path=path)
    if len(names) > 1:
        raise UsageError(
            f"{path}: the archive holds {len(names)} arrays ({', '.join(names)}); "
            "choose one with --array NAME"
        )
    return f"{names[0]}.npy"
