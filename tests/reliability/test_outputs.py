"""Outputs never destroy what a command reads, nor a FIFO or a device.

One rule set for every command that writes (transform -o, inspect --html,
export, import -o): an output is never a file the command reads, in any
spelling, nor a folder holding one; an existing file needs --overwrite; a
FIFO or a character device is written into, never replaced by a regular file.
"""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.reliability.helpers import snapshot


@pytest.fixture
def workdir(run_cli, tmp_path):
    rng = np.random.default_rng(0)
    pq.write_table(
        pa.table({"a": rng.normal(size=64), "b": rng.normal(size=64)}),
        tmp_path / "d.parquet",
    )
    np.save(tmp_path / "x.npy", rng.normal(size=(64, 3)))
    np.save(tmp_path / "m.npy", np.ones(64, dtype=bool))
    assert run_cli("fit", "s.h5", "d.parquet", "--quiet").exit_code == 0
    assert run_cli("fit", "a.h5", "x.npy", "--quiet").exit_code == 0
    return tmp_path


def _refused(result, *pieces):
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for piece in pieces:
        assert piece in lines[0]


@pytest.mark.parametrize(
    ("args", "pieces"),
    [
        (["inspect", "s.h5", "--html", "s.h5"], ["s.h5", "one of the inputs"]),
        (["inspect", "s.h5", "--html", "./s.h5", "--overwrite"], ["one of the inputs"]),
        (
            [
                "inspect",
                "s.h5",
                "--data",
                "d.parquet",
                "--html",
                "d.parquet",
                "--overwrite",
            ],
            ["one of the inputs"],
        ),
        (
            ["transform", "s.h5", "d.parquet", "-o", "s.h5", "--overwrite"],
            ["one of the inputs (s.h5)"],
        ),
        (
            [
                "transform",
                "a.h5",
                "x.npy",
                "--mask",
                "m.npy",
                "-o",
                "m.npy",
                "--overwrite",
            ],
            ["one of the inputs (m.npy)"],
        ),
        (
            ["transform", "s.h5", "d.parquet", "-o", ".", "--overwrite"],
            ["holds the input"],
        ),
        (
            ["import", "out.keras", "-o", "out.keras", "--overwrite"],
            ["one of the inputs"],
        ),
        (["export", "s.h5", "link.keras", "--overwrite"], ["one of the inputs"]),
    ],
)
def test_an_output_is_never_a_file_the_command_reads(run_cli, workdir, args, pieces):
    assert run_cli("export", "s.h5", "out.keras").exit_code == 0
    (workdir / "link.keras").symlink_to(workdir / "s.h5")
    before = snapshot(workdir)
    _refused(run_cli(*args), *pieces)
    assert snapshot(workdir) == before


def test_inspect_html_needs_overwrite_to_replace_a_file(run_cli, workdir):
    (workdir / "r.html").write_text("old")
    _refused(run_cli("inspect", "s.h5", "--html", "r.html"), "output exists")
    assert (workdir / "r.html").read_text() == "old"
    assert run_cli("inspect", "s.h5", "--html", "r.html", "--overwrite").exit_code == 0
    assert (workdir / "r.html").read_text().startswith("<!doctype html>")


def _drain(path, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with open(path, "rb") as f:
            into.append(f.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("command", ["inspect", "transform"])
def test_a_fifo_output_is_written_into_not_replaced(run_cli, workdir, command):
    fifo = workdir / ("out.html" if command == "inspect" else "out.npy")
    os.mkfifo(fifo)
    received: list[bytes] = []
    thread = _drain(fifo, received)
    if command == "inspect":
        result = run_cli("inspect", "s.h5", "--html", fifo.name)
    else:
        result = run_cli("transform", "a.h5", "x.npy", "-o", fifo.name)
    thread.join(timeout=60)
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO
    data = received[0]
    if command == "inspect":
        assert data.startswith(b"<!doctype html>")
    else:
        import io

        assert np.load(io.BytesIO(data)).shape == (64, 3)


def test_a_character_device_stays_a_device(run_cli, workdir):
    result = run_cli("inspect", "s.h5", "--html", os.devnull)
    assert result.exit_code == 0
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_symbolic_link_output_is_written_through(run_cli, workdir):
    (workdir / "real.npy").write_bytes(b"old")
    (workdir / "link.npy").symlink_to(workdir / "real.npy")
    result = run_cli("transform", "a.h5", "x.npy", "-o", "link.npy", "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert (workdir / "link.npy").is_symlink()
    assert np.load(workdir / "real.npy").shape == (64, 3)


def test_a_folder_output_holding_an_input_keeps_the_input(run_cli, workdir):
    (workdir / "data").mkdir()
    os.replace(workdir / "x.npy", workdir / "data" / "x.npy")
    result = run_cli("transform", "a.h5", "data/x.npy", "-o", "data", "--overwrite")
    _refused(result, "holds the input data/x.npy")
    assert (workdir / "data" / "x.npy").exists()


def test_names_up_to_name_max_work_and_their_temporaries_are_cleaned(run_cli, workdir):
    # The temporary's name is longer than its target's: a 250-character name
    # must still get one, and the stale ones of a dead writer still be found.
    import subprocess
    from unittest import mock

    from bncli.io import atomic

    state = "s" * 247 + ".h5"  # 250 characters
    output = "o" * 246 + ".npy"
    assert (
        run_cli("fit", state, "x.npy", "--quiet", "--checkpoint-every", "1").exit_code
        == 0
    )
    assert run_cli("transform", state, "x.npy", "-o", output).exit_code == 0
    assert np.load(workdir / output).shape == (64, 3)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with mock.patch.object(atomic.os, "getpid", lambda: dead.pid):
        stale = atomic.create_temp(
            atomic.temp_prefix(workdir / state), workdir, directory=False
        )
    assert len(stale.name) <= 255 and stale.exists()
    again = run_cli("fit", state, "x.npy", "--quiet")
    assert again.exit_code == 0, again.stderr
    assert not stale.exists()
    assert sorted(p.name for p in workdir.iterdir() if len(p.name) > 200) == sorted(
        [state, output]
    )


def test_a_full_disk_names_the_output_not_its_temporary(run_cli, workdir, monkeypatch):
    import errno

    from bncli.io import atomic

    def full(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(atomic, "fsync_path", full)
    before = snapshot(workdir)
    result = run_cli("transform", "a.h5", "x.npy", "-o", "y.npy")
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {workdir / 'y.npy'}: cannot write: no space left on device\n"
    )
    assert snapshot(workdir) == before  # no temporary left


def test_libhdf5_write_errors_are_told_too(run_cli, workdir, monkeypatch):
    from bncli.io import atomic

    def failed(path):
        raise RuntimeError(
            "Disable slist on flush dest failure failed (file write failed: "
            "errno = 28, error message = 'No space left on device')"
        )

    monkeypatch.setattr(atomic, "fsync_path", failed)
    before = snapshot(workdir)
    result = run_cli("fit", "s.h5", "d.parquet", "--quiet")
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {workdir / 's.h5'}: cannot write: no space left on device\n"
    )
    assert snapshot(workdir) == before


def test_a_folder_that_is_not_writable_is_a_usage_error(run_cli, workdir, monkeypatch):
    import errno
    import tempfile

    def refused(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", refused)
    before = snapshot(workdir)
    result = run_cli("transform", "a.h5", "x.npy", "-o", "y.npy")
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {workdir / 'y.npy'}: the folder {workdir} is not writable "
        "(Permission denied)\n"
    )
    assert snapshot(workdir) == before


def test_a_file_output_never_replaces_a_folder(run_cli, workdir):
    (workdir / "kept").mkdir()
    (workdir / "kept" / "a.txt").write_text("mine")
    (workdir / "link.npy").symlink_to(workdir / "kept")
    for output in ("kept", "link.npy"):
        result = run_cli("transform", "a.h5", "x.npy", "-o", output, "--overwrite")
        assert result.exit_code == 2
        assert "is a folder; the output is a file" in result.stderr
    assert (workdir / "kept" / "a.txt").read_text() == "mine"
