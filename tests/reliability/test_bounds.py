"""Small hostile inputs cannot make bncli do unbounded work.

A header is a few bytes anyone can write: what it claims (a shape, a channel
count) is checked against the file's real length and against documented
limits before anything is allocated from it. Bounds are asserted as limits
on what a child process may allocate (``RLIMIT_AS``), never as timings.
"""

from __future__ import annotations

import http.server
import json
import resource
import socket
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bncli.limits import MAX_CHANNELS

pytestmark = pytest.mark.slow

BNCLI = (sys.executable, "-m", "bncli")
#: What a child may allocate: far below what the hostile headers claim.
MEMORY_LIMIT = 1 << 30


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(args, cwd, stdin: bytes | None = None):
    return subprocess.run(
        [sys.executable, "-m", "bncli", *args],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        preexec_fn=_limited,
        timeout=120,
    )


def npy_header(shape, dtype="<f4") -> bytes:
    """A version 1.0 NPY header, padded as NumPy pads it."""
    text = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text += " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


def test_a_huge_shape_on_stdin_is_refused_before_any_allocation(tmp_path):
    header = npy_header((4, 2**40))
    assert len(header) == 128
    done = run_limited(["fit", "s.h5", "-"], tmp_path, stdin=header)
    assert done.returncode == 3, done.stderr
    assert done.stderr.decode() == (
        f"error: -: {2**40:,} channels (axis -1 of shape (4, {2**40})); "
        f"bncli takes at most {MAX_CHANNELS:,}\n"
    )
    assert not (tmp_path / "s.h5").exists()


def test_a_sparse_file_with_too_many_channels_is_refused(tmp_path):
    channels = 2 * MAX_CHANNELS  # 128 MiB of float32 on one row: a sparse file
    path = tmp_path / "wide.npy"
    header = npy_header((1, channels))
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + 4 * channels)
    done = run_limited(["fit", "s.h5", "wide.npy"], tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stderr.decode().startswith(f"error: wide.npy: {channels:,} channels")
    assert not (tmp_path / "s.h5").exists()


def test_a_header_that_claims_more_than_the_file_holds(tmp_path):
    (tmp_path / "claim.npy").write_bytes(npy_header((4, 2**40)) + b"\0" * 64)
    done = run_limited(["fit", "s.h5", "claim.npy"], tmp_path)
    assert done.returncode == 3
    assert done.stderr.decode() == (
        f"error: claim.npy: truncated NPY file: its header claims {4 * 4 * 2**40:,} "
        f"bytes of data (shape (4, {2**40}), float32), the file holds 64\n"
    )


def test_an_array_with_no_channel_names_its_file(run_cli, tmp_path):
    np.save(tmp_path / "zero.npy", np.zeros((10, 0)))
    result = run_cli("fit", "s.h5", "zero.npy")
    assert result.exit_code == 3
    assert result.stderr == (
        "error: zero.npy: no channel: axis -1 of shape (10, 0) is empty\n"
    )
    assert not (tmp_path / "s.h5").exists()


def test_a_wide_table_is_fitted_transformed_and_inspected(run_cli, tmp_path):
    # 50,000 columns: each step was quadratic in the width (minutes); the
    # values are checked against NumPy.
    rng = np.random.default_rng(0)
    width, rows = 50_000, 8
    values = rng.normal(size=(rows, width))
    pq.write_table(
        pa.table({f"c{j}": values[:, j] for j in range(width)}), tmp_path / "w.parquet"
    )
    assert run_cli("fit", "s.h5", "w.parquet", "--momentum", "0").exit_code == 0
    document = json.loads(run_cli("inspect", "s.h5", "--json").stdout)
    assert len(document["features"]) == width
    np.testing.assert_allclose(
        document["variables"]["moving_mean"], values.mean(axis=0), rtol=1e-6
    )
    table = run_cli("inspect", "s.h5")
    assert table.exit_code == 0
    assert "200 of 50,000 channels shown" in table.stdout
    assert table.stdout.count("│ c") == 200


def test_a_wide_state_shows_its_flagged_channels_first(run_cli, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 1000))
    x[:, [17, 640, 999]] = 5.0  # constant channels: variance 0, "dead"
    np.save(tmp_path / "x.npy", x)
    assert run_cli("fit", "s.h5", "x.npy", "--momentum", "0").exit_code == 0
    result = run_cli("inspect", "s.h5")
    lines = [line for line in result.stdout.splitlines() if line.startswith("│ ")]
    assert len(lines) == 200
    shown = [line.split("│")[1].strip() for line in lines]
    assert {"17", "640", "999"} <= set(shown)
    assert shown[:3] == ["0", "1", "2"]
    assert "200 of 1,000 channels shown" in result.stdout
    html = run_cli("inspect", "s.h5", "--html", "r.html")
    assert html.exit_code == 0
    report = (tmp_path / "r.html").read_text()
    assert report.count("<figure>") == 200
    assert "200 of 1,000 channels shown" in report


@pytest.mark.parametrize(
    ("dtype", "data", "value", "wider"),
    [
        ("float32", 1e300, "1e+300", "float64"),
        ("float16", 1e6, "1e+06", "float32"),
    ],
)
def test_an_output_overflow_names_the_dtype_and_the_cell(
    run_cli, tmp_path, dtype, data, value, wider
):
    np.save(tmp_path / "x.npy", np.random.default_rng(2).normal(size=(64, 2)))
    big = np.zeros((8, 2))
    big[5, 1] = data
    np.save(tmp_path / "big.npy", big)
    assert run_cli("fit", "s.h5", "x.npy").exit_code == 0
    result = run_cli(
        "transform", "s.h5", "big.npy", "-o", "y.npy", "--output-dtype", dtype
    )
    assert result.exit_code == 3
    assert result.stderr == (
        f"error: big.npy: column '1', row 5: the output overflows {dtype} "
        f"(input value {value}); use a wider output dtype: --output-dtype {wider}\n"
    )
    assert not (tmp_path / "y.npy").exists()


# ------------------------------------------------------------- Dask schedulers


class _Silent:
    """A TCP server that accepts and then says nothing."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self.socket.close()
        for connection in self.connections:
            connection.close()


@pytest.fixture
def not_a_scheduler(request):
    """An HTTP server, or a silent one, on a free port of 127.0.0.1."""
    if request.param == "http":
        server = http.server.HTTPServer(
            ("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield server.server_address[1]
        server.shutdown()
        server.server_close()
    else:
        silent = _Silent()
        yield silent.port
        silent.close()


@pytest.mark.dask
@pytest.mark.parametrize("not_a_scheduler", ["http", "silent"], indirect=True)
def test_a_service_that_is_not_a_scheduler_fails_within_the_timeout(
    tmp_path, not_a_scheduler
):
    np.save(tmp_path / "x.npy", np.ones((8, 2)))
    address = f"tcp://127.0.0.1:{not_a_scheduler}"
    done = subprocess.run(
        [*BNCLI, "fit", "s.h5", "x.npy", "--engine", "dask", "--scheduler", address],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,  # a guard: the handshake is bounded at a few seconds
    )
    assert done.returncode == 1
    assert done.stderr == (
        f"error: cannot reach the Dask scheduler at {address} (no Dask handshake "
        "within 5 s: what answers is not a Dask scheduler); check the address and "
        "that the scheduler is running\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]  # no lock left


@pytest.mark.dask
@pytest.mark.parametrize("address", ["inproc://somewhere", "ucx://127.0.0.1:8786"])
def test_schemes_bncli_cannot_reach_are_usage_errors(tmp_path, address):
    np.save(tmp_path / "x.npy", np.ones((8, 2)))
    done = subprocess.run(
        [*BNCLI, "fit", "s.h5", "x.npy", "--engine", "dask", "--scheduler", address],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 2
    scheme = address.split(":")[0]
    assert done.stderr == (
        f"error: scheduler address {address!r}: the {scheme}:// scheme is not "
        "supported; use one of tcp://, tls://, ws://, wss://\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
