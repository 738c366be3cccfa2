"""Shared by the reliability tests: data, real subprocesses, snapshots, comparisons.

The subprocesses are real ``python -m bncli`` runs, so that SIGKILL, SIGINT
and two processes competing for a state behave as they do for users.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import bncli
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parents[2]

#: Rows of the "long" table: with ``LONG_EPOCHS`` epochs a fit takes about a
#: second, long enough to be killed or interrupted at varied moments.
LONG_ROWS = 400_000
LONG_EPOCHS = 25
CHANNELS = ("c0", "c1", "c2", "c3")


def write_table(path: Path, rows: int, seed: int, row_group_size: int = 50_000) -> Path:
    """A Parquet table of ``CHANNELS`` (normal, distinct means) and an id column."""
    rng = np.random.default_rng(seed)
    columns = {
        name: rng.normal(loc=2.0 * i, scale=1.0 + i, size=rows)
        for i, name in enumerate(CHANNELS)
    }
    table = pa.table({"id": np.arange(rows), **columns})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def bncli_argv(*args: object) -> list[str]:
    """The argv of a real ``python -m bncli`` run."""
    return [sys.executable, "-m", "bncli", *map(str, args)]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH")) if p
    )
    env.pop("BNCLI_DEBUG", None)
    return env


def _default_sigint() -> None:  # pragma: no cover - runs in the child
    # A parent started in the background may ignore SIGINT, and the child
    # would inherit that; a user's Ctrl-C always reaches bncli.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: object, cwd: Path, stdin: int | None = None) -> subprocess.Popen[str]:
    """Start ``bncli ARGS`` in ``cwd``; stdout and stderr are captured as text.

    With ``stdin=subprocess.PIPE``, write bytes to ``process.stdin.buffer``.
    """
    return subprocess.Popen(
        bncli_argv(*args),
        cwd=cwd,
        env=_child_env(),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def run(
    *args: object, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``bncli ARGS`` in ``cwd`` to its end."""
    return subprocess.run(
        bncli_argv(*args),
        cwd=cwd,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_default_sigint,
    )


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(0.005)


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file below ``folder`` (hidden ones too): size, mtime, content hash."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files[str(path.relative_to(folder))] = (
                stat.st_size,
                stat.st_mtime_ns,
                digest,
            )
        elif path.is_dir():
            files[str(path.relative_to(folder)) + "/"] = (0, 0, "")
    return files


def temporaries(folder: Path) -> list[str]:
    """Temporaries of atomic writes left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if ".bncli-tmp-" in p.name)


def assert_same_state(
    got: bncli.BatchNormalization, want: bncli.BatchNormalization
) -> None:
    """Equal progress exactly, equal statistics within ``FAST``."""
    assert got.get_config() == want.get_config()
    assert got.features == want.features
    assert (got.batches_seen, got.samples_seen, got.epochs) == (
        want.batches_seen,
        want.samples_seen,
        want.epochs,
    )
    np.testing.assert_array_equal(got.channel_batches, want.channel_batches)
    np.testing.assert_allclose(got.moving_mean64, want.moving_mean64, **FAST)
    np.testing.assert_allclose(got.moving_variance64, want.moving_variance64, **FAST)
    np.testing.assert_array_equal(got.gamma, want.gamma)
    np.testing.assert_array_equal(got.beta, want.beta)


def dead_pid() -> int:
    """The PID of a process that has exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def temporary_owner(pid: int) -> str:
    """The ``HOST-PID`` part of a temporary's name, as bncli writes it."""
    from bncli.io import atomic

    return f"{atomic.HOST}-{pid}"
