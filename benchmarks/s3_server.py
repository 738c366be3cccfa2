"""A minimal read-only S3 endpoint over a local folder, for the object-storage bench.

It answers what pyarrow's S3 client asks when it reads objects: ``HEAD`` of a
bucket or an object, ``GET`` of an object or of a byte range (sent with
``sendfile``, no copy through Python), and ``ListObjectsV2`` of a prefix.
Requests are not authenticated. moto, the server the tests use, copies the
whole object for every ranged ``GET`` (a cost that grows with the object:
five 1 MiB ranges of a 400 MB object take 1.4 s there), which measures moto
rather than the reader; this one serves a range in the time its bytes take.

Usage: ``python s3_server.py FOLDER PORT`` (the folder's subfolders are the
buckets).
"""

from __future__ import annotations

import email.utils
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _target(self) -> tuple[Path, str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        return (
            self.root / unquote(parts.path).lstrip("/"),
            parts.path,
            parse_qs(parts.query),
        )

    def _empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        path, _, _ = self._target()
        if path.is_dir():
            self._empty(200)
        elif path.is_file():
            self.send_response(200)
            self._object_headers(path, path.stat().st_size)
            self.end_headers()
        else:
            self._empty(404)

    def _object_headers(self, path: Path, length: int) -> None:
        info = path.stat()
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header(
            "Last-Modified", email.utils.formatdate(info.st_mtime, usegmt=True)
        )
        self.send_header("ETag", f'"{info.st_mtime_ns:x}-{info.st_size:x}"')
        self.send_header("Accept-Ranges", "bytes")

    def do_GET(self) -> None:
        path, raw, query = self._target()
        if "list-type" in query or path.is_dir():
            return self._list(raw, query)
        if not path.is_file():
            return self._empty(404)
        size = path.stat().st_size
        start, stop = 0, size
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            first, _, last = ranged[len("bytes=") :].partition("-")
            start = int(first)
            stop = min(int(last) + 1, size) if last else size
        self.send_response(206 if ranged else 200)
        self._object_headers(path, stop - start)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.end_headers()
        with open(path, "rb") as f:
            self.connection.sendfile(f, start, stop - start)

    def _list(self, raw: str, query: dict[str, list[str]]) -> None:
        bucket = unquote(raw).strip("/").split("/")[0]
        prefix = query.get("prefix", [""])[0]
        base = self.root / bucket
        keys = sorted(
            str(p.relative_to(base))
            for p in base.rglob("*")
            if p.is_file() and str(p.relative_to(base)).startswith(prefix)
        )
        body = "".join(
            f"<Contents><Key>{escape(k)}</Key><Size>{(base / k).stat().st_size}</Size>"
            "<LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>"
            for k in keys
        )
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(keys)}</KeyCount><IsTruncated>false</IsTruncated>"
            f"{body}</ListBucketResult>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(xml)))
        self.end_headers()
        self.wfile.write(xml)


def main() -> None:
    Handler.root = Path(sys.argv[1]).resolve()
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
