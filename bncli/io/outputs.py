"""Where an output may go: one set of rules for every command that writes one.

An output is never a file the command reads (whatever its spelling: ``./x``,
a symbolic or a hard link), nor a folder that holds one (replacing it would
delete it). An existing file needs ``--overwrite``. A FIFO or a character
device (``/dev/stdout``, ``/dev/null``, a named pipe) is written into as a
stream: there is nothing to rename, and renaming over it would replace the
device by a regular file. A symbolic link is written through, to its target.

A URL output (``s3://bucket/out.parquet``) is written to a temporary local
file and uploaded only once the command has succeeded: the object appears
whole or not at all, and a failed command leaves nothing under the URL (no
object, no open multipart upload). States and models stay local files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from bncli.errors import DataError, OutputError, UsageError
from bncli.io.atomic import atomic_path

__all__ = ["OutputTarget", "check_output", "writing"]


@dataclasses.dataclass(frozen=True)
class OutputTarget:
    """A checked output.

    Attributes:
        given: the output as the user gave it (for messages).
        path: the file to write (symbolic links resolved); None for stdout
            and for a URL.
        stream: written in place, not renamed into place: stdout, a FIFO or
            a character device.
        url: the object to upload on success, or None for a local output.
    """

    given: str
    path: Path | None
    stream: bool
    url: str | None = None


def _same(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(
    output: str | os.PathLike[str],
    reads: Sequence[str | os.PathLike[str]],
    overwrite: bool,
    *,
    streams: bool = True,
    folder: bool = False,
) -> OutputTarget:
    """Check ``output`` against the rules above, before any work.

    Args:
        output: the output path, or ``-`` for stdout.
        reads: every file the command reads (inputs, state, masks, model).
        overwrite: whether an existing file may be replaced.
        streams: whether the output may be a FIFO or character device (a
            state or a model file may not).
        folder: whether the output is a folder (Dask's Parquet parts), which
            may replace a folder; a file never replaces one.

    Raises:
        UsageError: the output is (or holds) a file the command reads, its
            folder is missing, it exists without ``overwrite``, or it is a
            kind of file that cannot be written.
    """
    given = os.fspath(output)
    if given == "-":
        if not streams:
            raise UsageError("-: this output cannot be written to stdout")
        return OutputTarget(given, None, True)
    from bncli.io.locations import is_url

    local = given
    if given.lower().startswith("file://"):
        # A local file by another name: written as one, renamed into place.
        local = given[len("file://") :]
    elif is_url(given):
        if not streams:
            raise UsageError(f"{given}: this output is a local file, not a URL")
        if folder:
            raise UsageError(
                f"{given}: a folder of parts is written to a local path, not a URL"
            )
        return _check_url(given, reads, overwrite)
    path = Path(os.path.realpath(local))
    for read in reads:
        read = os.fspath(read)
        if read.lower().startswith("file://"):
            read = read[len("file://") :]
        if read == "-" or is_url(read):
            continue
        real = Path(os.path.realpath(read))
        if real == path or _same(read, path):
            raise UsageError(
                f"{given}: the output is one of the inputs ({read}); write elsewhere"
            )
        if path in real.parents:
            raise UsageError(
                f"{given}: the output folder holds the input {read}; write elsewhere"
            )
    if not path.parent.is_dir():
        parent = Path(local).parent
        raise UsageError(f"{given}: the output's folder {parent} does not exist")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return OutputTarget(given, path, False)
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        if not streams:
            raise UsageError(f"{given}: not a regular file")
        return OutputTarget(given, path, True)
    if stat.S_ISDIR(mode) and not folder:
        raise UsageError(
            f"{given}: is a folder; the output is a file (remove the folder, or "
            "write elsewhere)"
        )
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UsageError(f"{given}: not a regular file, a folder, a FIFO or a device")
    if not overwrite:
        raise UsageError(f"{given}: output exists; pass --overwrite to replace it")
    return OutputTarget(given, path, False)


def _check_url(
    given: str, reads: Sequence[str | os.PathLike[str]], overwrite: bool
) -> OutputTarget:
    from pyarrow import fs

    from bncli.io.locations import file_info, is_url, same_place

    for read in reads:
        read = os.fspath(read)
        if not is_url(read):
            continue
        if same_place(read, given):
            raise UsageError(
                f"{given}: the output is one of the inputs ({read}); write elsewhere"
            )
    try:
        info = file_info(given)
        parent = file_info(_container(given))
    except DataError as e:
        raise UsageError(f"{given}: cannot reach the output's place ({e})") from e
    if info.type == fs.FileType.Directory:
        raise UsageError(
            f"{given}: is a prefix (a folder of objects); the output is one object"
        )
    if parent.type != fs.FileType.Directory:
        raise UsageError(
            f"{given}: the output's bucket or folder {_container(given)} does not exist"
        )
    if info.type != fs.FileType.NotFound and not overwrite:
        raise UsageError(f"{given}: output exists; pass --overwrite to replace it")
    return OutputTarget(given, None, False, url=given)


def _container(url: str) -> str:
    """The bucket of an object-store URL; the folder of a ``file://`` or ``hdfs://`` one."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() in ("s3", "gs", "gcs"):
        return f"{scheme}://{rest.partition('/')[0]}"
    return url.rstrip("/").rpartition("/")[0] or url


@contextlib.contextmanager
def writing(target: OutputTarget, *, directory: bool = False) -> Iterator[Any]:
    """Where to write ``target``: a temporary path renamed on success, or a stream.

    Yields:
        A :class:`pathlib.Path` to create (renamed over the target when the
        block ends cleanly), or an open binary file for a stream.
    """
    if target.url is not None:
        with _uploaded(target.url, directory) as tmp:
            yield tmp
        return
    if target.path is None:
        if sys.stdout is None:  # started with stdout closed (``>&-``)
            raise OutputError("standard output is closed", path="-")
        try:
            yield sys.stdout.buffer
            sys.stdout.buffer.flush()
        except BrokenPipeError as e:
            # Nothing more can reach the reader; keep Python's exit-time flush
            # from reporting the same pipe again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise OutputError(
                "the reader closed standard output (broken pipe); the output is "
                "incomplete",
                path="-",
            ) from e
        return
    if target.stream:
        stream: BinaryIO
        with open(target.path, "wb") as stream:
            yield stream
        return
    with atomic_path(target.path, directory=directory) as tmp:
        yield tmp


#: Bytes sent at a time when uploading a finished output.
_UPLOAD_BYTES = 8 << 20


@contextlib.contextmanager
def _uploaded(url: str, directory: bool) -> Iterator[Path]:
    """A temporary local path, uploaded to ``url`` when the block ends cleanly."""
    import shutil
    import tempfile

    from bncli.io.locations import upload

    if directory:
        raise UsageError(f"{url}: a folder of parts cannot be written to a URL")
    scratch = Path(tempfile.mkdtemp(prefix="bncli-upload-"))
    try:
        tmp = scratch / Path(url.rstrip("/")).name
        yield tmp
        upload(tmp, url, _UPLOAD_BYTES)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
