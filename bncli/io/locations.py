"""Inputs by URL: ``s3://``, ``gs://``, ``hdfs://`` and ``file://``, through ``pyarrow.fs``.

Credentials, regions and endpoints come from the environment as pyarrow
reads them (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...). A URL names
an object or a prefix, which expands as a folder does; every error names
the URL as the user gave it.
"""

from __future__ import annotations

import os
from typing import Any

from bncli.errors import DataError, InputNotFoundError

__all__ = [
    "URL_SCHEMES",
    "file_info",
    "is_url",
    "list_objects",
    "open_random_access",
    "open_stream",
    "read_head",
    "same_place",
    "upload",
]

#: The schemes read through ``pyarrow.fs``.
URL_SCHEMES = ("s3", "gs", "gcs", "hdfs", "file")


def is_url(text: str | os.PathLike[str]) -> bool:
    """Whether ``text`` is a URL bncli reads through ``pyarrow.fs``.

    Example:
        >>> is_url("s3://bucket/data/"), is_url("data/part.parquet")
        (True, False)
    """
    scheme, sep, _ = os.fspath(text).partition("://")
    return bool(sep) and scheme.lower() in URL_SCHEMES


def _resolve(url: str) -> tuple[Any, str]:
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(url)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"cannot open the URL ({_first_line(e)})", path=url) from e
    return filesystem, str(path)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__


def file_info(url: str) -> Any:
    """pyarrow's ``FileInfo`` of the object or prefix at ``url``."""
    filesystem, path = _resolve(url)
    try:
        return filesystem.get_file_info(path)
    except OSError as e:
        raise DataError(f"cannot reach the object ({_first_line(e)})", path=url) from e


def list_objects(url: str) -> list[str]:
    """The objects below the prefix ``url``, as URLs, sorted; ``[url]`` for an object.

    Raises:
        InputNotFoundError: nothing at ``url``.
    """
    from pyarrow import fs

    filesystem, path = _resolve(url)
    info = file_info(url)
    if info.type == fs.FileType.NotFound:
        raise InputNotFoundError("no such file or object", path=url)
    if info.type == fs.FileType.File:
        return [url]
    scheme = url.partition("://")[0]
    base = path.rstrip("/")
    try:
        found = filesystem.get_file_info(fs.FileSelector(base, recursive=True))
    except OSError as e:
        raise DataError(f"cannot list the prefix ({_first_line(e)})", path=url) from e
    urls = []
    for entry in found:
        if entry.type != fs.FileType.File:
            continue
        relative = entry.path[len(base) :].lstrip("/")
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        prefix = "file://" if scheme == "file" else f"{scheme}://"
        urls.append(prefix + entry.path)
    return sorted(urls)


def open_random_access(url: str) -> Any:
    """The object as a random-access file (read by ranges, never downloaded whole)."""
    filesystem, path = _resolve(url)
    try:
        return filesystem.open_input_file(path)
    except FileNotFoundError as e:
        raise InputNotFoundError("no such file or object", path=url) from e
    except OSError as e:
        raise DataError(f"cannot open the object ({_first_line(e)})", path=url) from e


def open_stream(url: str, compression: str | None = None) -> Any:
    """The object as a sequential stream (decompressed by its extension if asked)."""
    filesystem, path = _resolve(url)
    try:
        return filesystem.open_input_stream(path, compression=compression)
    except FileNotFoundError as e:
        raise InputNotFoundError("no such file or object", path=url) from e
    except OSError as e:
        raise DataError(f"cannot open the object ({_first_line(e)})", path=url) from e


def read_head(url: str, size: int) -> bytes:
    """The first ``size`` bytes of the object at ``url``."""
    with open_random_access(url) as f:
        head: bytes = f.read(size)
    return head


def same_place(a: str, b: str) -> bool:
    """Whether two URLs name the same object, or ``b`` is below the prefix ``a``.

    Example:
        >>> same_place("s3://data/parts/", "s3://data/parts/p1.parquet")
        True
    """
    ka, kb = _key(a), _key(b)
    return ka == kb or kb.startswith(ka + "/") or ka.startswith(kb + "/")


def _key(url: str) -> str:
    scheme, _, rest = url.partition("://")
    scheme = {"gcs": "gs"}.get(scheme.lower(), scheme.lower())
    return f"{scheme}://{rest.strip('/')}"


def upload(local: str | os.PathLike[str], url: str, block: int) -> None:
    """Copy the finished file ``local`` to the object ``url``, whole or not at all.

    The object is created when the stream closes (a single request, or a
    multipart upload completed at the end). If anything fails on the way the
    object is deleted again, so that nothing partial stays under ``url``.

    Raises:
        OutputError: the upload failed.
    """
    from bncli.errors import OutputError

    filesystem, path = _resolve(url)
    done = False
    try:
        with open(local, "rb") as source, filesystem.open_output_stream(path) as out:
            while data := source.read(block):
                out.write(data)
        done = True
    except OSError as e:
        raise OutputError(f"upload failed ({_first_line(e)})", path=url) from e
    finally:
        if not done:
            try:
                filesystem.delete_file(path)
            except OSError:
                pass  # nothing was created
