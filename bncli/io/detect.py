"""Every magic number bncli knows, and what a file is by its first bytes.

Content first, extension second (as xarray's ``guess_can_open`` does): a
file's first bytes say what it is, and its extension only speaks for formats
without a magic number (CSV) or names the format a file fails to be. The
signatures of data files, of bncli's sealed states (HDF5 with a user block)
and of Keras archives (zip) all live here.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from bncli.errors import DataError, InputNotFoundError

__all__ = [
    "ARROW_FILE_MAGIC",
    "ARROW_STREAM_MAGIC",
    "CSV_COMPRESSIONS",
    "DATA_EXTENSIONS",
    "HDF5_SIGNATURE",
    "NPY_MAGIC",
    "PARQUET_MAGIC",
    "SEAL_MAGIC",
    "ZIP_MAGICS",
    "data_format_of",
    "format_by_name",
    "sniff_format",
    "stored_member_start",
]

#: Parquet files start (and end) with these bytes.
PARQUET_MAGIC = b"PAR1"
#: Arrow IPC files (Feather v2) start with these bytes.
ARROW_FILE_MAGIC = b"ARROW1"
#: Arrow IPC streams start with a continuation marker.
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"
#: NPY files start with these bytes.
NPY_MAGIC = b"\x93NUMPY"
#: The first bytes of every HDF5 file without a user block.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: bncli's states start with an HDF5 user block holding this line and the
#: SHA-256 of everything after the block (see :mod:`bncli.state`).
SEAL_MAGIC = b"bncli-state sha256 "
#: The first bytes of a zip file (a ``.keras`` archive), or of an empty one.
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")

#: Data files by extension, where folders are expanded and where a file's
#: content does not say.
DATA_EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".arrows": "arrow-stream",
    ".csv": "csv",
    ".npy": "npy",
    ".npz": "npz",
}


#: Compressed CSV, by the name's last extension (after ``.csv``), read
#: through pyarrow's decompressing streams (``.lz4``: the LZ4 frame format).
CSV_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}


def format_by_name(path: str | os.PathLike[str]) -> str | None:
    """The data format a file's name says, compressed CSV included, or None."""
    name = Path(path).name.lower()
    for suffix in CSV_COMPRESSIONS:
        if name.endswith(".csv" + suffix):
            return "csv"
    return DATA_EXTENSIONS.get(Path(name).suffix)


def data_format_of(head: bytes) -> str | None:
    """The data format whose magic number ``head`` starts with, or None.

    Example:
        >>> data_format_of(b"PAR1\\x15\\x04")
        'parquet'
        >>> data_format_of(b"a,b\\n1,2") is None
        True
    """
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    if head.startswith(ARROW_FILE_MAGIC):
        return "arrow"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ARROW_STREAM_MAGIC):
        return "arrow-stream"
    if head.startswith(ZIP_MAGICS):  # NPZ: a zip of NPY files
        return "npz"
    return None


def sniff_format(path: str | os.PathLike[str]) -> str:
    """The format of a data file: by magic bytes, then by extension.

    Raises:
        InputNotFoundError: no such file.
        DataError: a format bncli does not read, or contents that contradict
            the extension.
    """
    from bncli.io.locations import is_url, read_head

    if is_url(path):
        head = read_head(os.fspath(path), 8)
        found = data_format_of(head)
        if found is not None:
            return found
        if not head:
            raise DataError("empty file", path=os.fspath(path))
        if format_by_name(path) == "csv":
            return "csv"
        raise DataError(
            "unrecognized format; bncli reads .parquet, .arrow/.feather/.ipc, .csv "
            "and .npy objects",
            path=os.fspath(path),
        )
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
    found = data_format_of(head)
    if found is not None:
        return found
    if not head:
        raise DataError("empty file", path=path)
    by_extension = format_by_name(path)
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
        ".csv (also .csv.gz, .csv.bz2, .csv.zst, .csv.lz4) and .npy files",
        path=path,
    )


#: A zip local file header, before its name and extra field.
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def stored_member_start(raw: Any, info: Any) -> int | None:
    """Where the bytes of the stored zip member ``info`` begin in the open file ``raw``.

    Read from the member's local header (its name and extra field may differ
    from the central directory's). None when that header is damaged or the
    member's bytes would run past the file's end: a crafted archive.
    """
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or header[:4] != ZIP_MAGICS[0]:
        return None
    fields = _LOCAL_HEADER.unpack(header)
    start = int(info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10])
    if start + info.file_size > os.fstat(raw.fileno()).st_size:
        return None
    return start
