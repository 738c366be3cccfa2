"""Two real processes fitting one state never lose an update silently.

The read-modify-write of a state holds an exclusive lock on ``STATE.lock``:
a second ``fit`` fails at once (exit 4, the state is in use), or with
``--wait`` runs after the first, so that both updates count.

The first fit reads an Arrow stream from its stdin, which the test writes
only once the second process has had its turn: the first one holds the
lock all that time, whatever the machine's load, with no timing involved.
"""

from __future__ import annotations

import io
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bncli
from tests.reliability import helpers
from tests.reliability.helpers import assert_same_state

pytestmark = pytest.mark.slow

ROWS = 50_000


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    d = tmp_path_factory.mktemp("concurrency")
    helpers.write_table(d / "first.parquet", ROWS, seed=21)
    helpers.write_table(d / "small.parquet", 100, seed=22)
    old = bncli.BatchNormalization(momentum=0.95)
    old.fit(d / "small.parquet", exclude=["id"], batch_size=10)
    old.save(d / "old.h5")
    sink = io.BytesIO()
    table = pq.read_table(d / "first.parquet")
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=4096)
    return d, old, sink.getvalue()


@pytest.fixture
def workdir(link_into, setting):
    d, _, _ = setting
    return link_into(
        d, "first.parquet", "small.parquet", copies=(("old.h5", "state.h5"),)
    )


def _after(start, *fits):
    """``start`` then each (table, batch size) fit, in order."""
    layer = bncli.BatchNormalization.from_state(start.to_state())
    for path, batch_size in fits:
        layer.fit(path, batch_size=batch_size)
    return layer


def _first_fit(workdir, *flags):
    """A fit from stdin that holds the lock until its input is written."""
    process = helpers.start(
        "fit", "state.h5", "-", "-q", *flags, cwd=workdir, stdin=subprocess.PIPE
    )
    helpers.wait_for((workdir / "state.h5.lock").exists)
    return process


def _feed(process, data):
    process.stdin.buffer.write(data)
    process.stdin.buffer.flush()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err


def test_a_second_fit_fails_while_the_first_holds_the_state(workdir, setting):
    _, old, stream = setting
    first = _first_fit(workdir)
    second = helpers.run(
        "fit", "state.h5", "small.parquet", "--batch-size", "10", cwd=workdir
    )
    assert second.returncode == 4, second.stderr
    assert second.stderr == (
        "error: state.h5: state is in use by another process; "
        "wait for it to finish, or pass --wait\n"
    )
    _feed(first, stream)
    # The first fit's update is in the state, whole; the lock file is gone.
    want = _after(old, (workdir / "first.parquet", 32))
    assert_same_state(bncli.load(workdir / "state.h5"), want)
    assert not (workdir / "state.h5.lock").exists()
    assert helpers.temporaries(workdir) == []


def test_with_wait_both_fits_count(workdir, setting):
    """The second fit waits for the first one's lock, then goes on from its result."""
    _, old, stream = setting
    first = _first_fit(workdir)
    second = helpers.start(
        "fit",
        "state.h5",
        "small.parquet",
        "--batch-size",
        "10",
        "--wait",
        "-q",
        cwd=workdir,
    )
    with pytest.raises(subprocess.TimeoutExpired):
        second.wait(timeout=1.0)  # blocked on the lock, not failed
    _feed(first, stream)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    got = bncli.load(workdir / "state.h5")
    assert got.batches_seen == old.batches_seen + -(-ROWS // 32) + 10
    assert got.samples_seen == old.samples_seen + ROWS + 100
    want = _after(old, (workdir / "first.parquet", 32), (workdir / "small.parquet", 10))
    assert_same_state(got, want)
    assert not (workdir / "state.h5.lock").exists()
