"""The object-storage rows of ``make bench``: a fit from a local S3 server.

Two servers, each started here in a process of its own on 127.0.0.1 (never
competing with the fit for this process's GIL) and stopped at the end:
``s3_server.py``, a minimal read-only endpoint over a folder that sends
ranges with ``sendfile``, and moto's (the dev extra the tests use), which
copies the whole object for every ranged request and so measures itself
more than the reader. With each, bncli's fit from ``s3://`` and from the
file are timed in turns, and so is ``pyarrow.parquet.read_table``: the
yardstick of what the server and the loopback allow any reader.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from measure import side_by_side

_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def s3_server(folder: Path | None = None) -> Iterator[str]:
    """An S3 server in a child process: moto's, or ``s3_server.py`` over
    ``folder``; yields its endpoint, with the environment set for it."""
    port = _free_port()
    if folder is None:
        argv = [
            "-c",
            "from moto.server import ThreadedMotoServer as S; import time; "
            f"S(ip_address='127.0.0.1', port={port}, verbose=False).start(); "
            "time.sleep(10**6)",
        ]
    else:
        argv = [str(Path(__file__).with_name("s3_server.py")), str(folder), str(port)]
    server = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = {k: os.environ.get(k) for k in _ENV}
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        yield endpoint
    finally:
        server.kill()
        server.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def upload(endpoint: str, path: Path) -> str:
    """Put ``path`` in the bucket ``bench``; its URL."""
    from pyarrow import fs

    store = fs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
    store.create_dir("bench")
    fs.copy_files(str(path), f"bench/{path.name}", destination_filesystem=store)
    return f"s3://bench/{path.name}"


def measure(
    parquet: Path,
    fit: Callable[[str], object],
    repeat: int,
    scratch: Path,
    server: str = "plain",
) -> dict[str, float]:
    """Seconds of bncli's fit and of ``read_table``, from S3 and from the file.

    ``server``: ``"plain"`` (``s3_server.py`` over a folder in ``scratch``
    holding a link to the file) or ``"moto"`` (the file uploaded to it).
    """
    import pyarrow.parquet as pq
    from pyarrow import fs

    folder = None
    if server == "plain":
        folder = scratch / "s3-root"
        (folder / "bench").mkdir(parents=True, exist_ok=True)
        link = folder / "bench" / parquet.name
        link.unlink(missing_ok=True)
        link.symlink_to(parquet.resolve())
    with s3_server(folder) as endpoint:
        url = f"s3://bench/{parquet.name}" if folder else upload(endpoint, parquet)
        t_s3, t_file = side_by_side(
            lambda: fit(url), lambda: fit(str(parquet)), repeat, warmup=False
        )
        store = fs.S3FileSystem(endpoint_override=endpoint)
        key = url.removeprefix("s3://")
        r_s3, r_file = side_by_side(
            lambda: pq.read_table(key, filesystem=store),
            lambda: pq.read_table(parquet),
            repeat,
            warmup=False,
        )
    return {"fit_s3": t_s3, "fit_file": t_file, "read_s3": r_s3, "read_file": r_file}
