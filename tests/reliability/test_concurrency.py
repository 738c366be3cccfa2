"""Two real processes fitting one state never lose an update silently.

The read-modify-write of a state holds an exclusive lock on ``STATE.lock``:
a second ``fit`` fails at once (exit 4, the state is in use), or with
``--wait`` runs after the first, so that both updates count.
"""

from __future__ import annotations

import os
import shutil

import pytest

import bncli
from tests.reliability import helpers
from tests.reliability.helpers import LONG_EPOCHS, LONG_ROWS, assert_same_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    d = tmp_path_factory.mktemp("concurrency")
    helpers.write_table(d / "long.parquet", LONG_ROWS, seed=21)
    helpers.write_table(d / "small.parquet", 100, seed=22)
    old = bncli.BatchNormalization(momentum=0.95)
    old.fit(d / "small.parquet", exclude=["id"], batch_size=10)
    old.save(d / "old.h5")
    return d, old


@pytest.fixture
def workdir(tmp_path, setting):
    d, _ = setting
    for name in ("long.parquet", "small.parquet"):
        os.link(d / name, tmp_path / name)
    shutil.copy(d / "old.h5", tmp_path / "state.h5")
    return tmp_path


def _after(
    start: bncli.BatchNormalization, *fits: tuple[str, int, int]
) -> bncli.BatchNormalization:
    """``start`` then each (table, epochs, batch size) fit, in order."""
    layer = bncli.BatchNormalization.from_state(start.to_state())
    for path, epochs, batch_size in fits:
        layer.fit(path, epochs=epochs, batch_size=batch_size)
    return layer


def test_a_second_fit_fails_while_the_first_holds_the_state(workdir, setting):
    _, old = setting
    state = workdir / "state.h5"
    lock_file = workdir / "state.h5.lock"
    first = helpers.start(
        "fit", "state.h5", "long.parquet", "--epochs", LONG_EPOCHS, "-q", cwd=workdir
    )
    helpers.wait_for(lock_file.exists)
    second = helpers.run(
        "fit", "state.h5", "small.parquet", "--batch-size", "10", cwd=workdir
    )
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert second.returncode == 4, second.stderr
    assert second.stderr == (
        "error: state.h5: state is in use by another process; "
        "wait for it to finish, or pass --wait\n"
    )
    # Only the first fit's update is in the state, and the lock is gone.
    want = _after(old, (workdir / "long.parquet", LONG_EPOCHS, 32))
    assert_same_state(bncli.load(state), want)
    assert not lock_file.exists()
    assert helpers.temporaries(workdir) == []


def test_with_wait_both_fits_count(workdir, setting):
    """The second fit waits for the first one's lock, then goes on from its result."""
    _, old = setting
    state = workdir / "state.h5"
    first = helpers.start(
        "fit",
        "state.h5",
        "long.parquet",
        "--epochs",
        LONG_EPOCHS,
        "--wait",
        "-q",
        cwd=workdir,
    )
    helpers.wait_for((workdir / "state.h5.lock").exists)
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
    for process in (first, second):
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    got = bncli.load(state)
    assert got.batches_seen == old.batches_seen + LONG_EPOCHS * -(-LONG_ROWS // 32) + 10
    assert got.samples_seen == old.samples_seen + LONG_EPOCHS * LONG_ROWS + 100
    long_fit = (workdir / "long.parquet", LONG_EPOCHS, 32)
    want = _after(old, long_fit, (workdir / "small.parquet", 1, 10))
    assert_same_state(got, want)
    assert not (workdir / "state.h5.lock").exists()
