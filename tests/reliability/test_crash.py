"""SIGKILL at random moments: the state is always whole, the old one or the new one.

A real ``bncli fit`` subprocess on a table long enough to take about a
second is killed after random delays (seeded, spread over its whole run,
writes included). Each time the state must load and equal one of the two
candidates computed here separately with the Python API: the state before
the fit (then its bytes are untouched), or the state after a complete fit.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time

import pytest

import bncli
from bncli.io.atomic import atomic_path
from tests.reliability import helpers
from tests.reliability.helpers import LONG_EPOCHS, LONG_ROWS, assert_same_state

pytestmark = pytest.mark.slow

KILLS = 6


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The long table, the old state, and the two candidates."""
    d = tmp_path_factory.mktemp("crash")
    helpers.write_table(d / "long.parquet", LONG_ROWS, seed=11)
    helpers.write_table(d / "small.parquet", 200, seed=12)
    old = bncli.BatchNormalization(momentum=0.9)
    old.fit(d / "small.parquet", exclude=["id"])
    old.save(d / "old.h5")
    new = bncli.load(d / "old.h5")
    new.fit(d / "long.parquet", epochs=LONG_EPOCHS)
    return d, old, new


def _fit_args(state: str) -> list[object]:
    return ["fit", state, "long.parquet", "--epochs", LONG_EPOCHS, "-q"]


def test_sigkill_leaves_the_old_or_the_new_state(tmp_path, link_into, setting):
    d, old, new = setting
    link_into(d, "long.parquet", "small.parquet")
    state = tmp_path / "state.h5"
    old_bytes = (d / "old.h5").read_bytes()

    # One uninterrupted run: its time spreads the kills, its result is `new`.
    shutil.copy(d / "old.h5", state)
    started = time.monotonic()
    done = helpers.run(*_fit_args("state.h5"), cwd=tmp_path)
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert_same_state(bncli.load(state), new)
    print(f"uninterrupted fit: {duration:.2f} s")

    rng = random.Random(20240611)
    outcomes = []
    for _ in range(KILLS):
        state.write_bytes(old_bytes)
        process = helpers.start(*_fit_args("state.h5"), cwd=tmp_path)
        time.sleep(rng.uniform(0.1, duration * 1.05))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=30)
        got = bncli.load(state)  # whole, whatever the moment
        if state.read_bytes() == old_bytes:
            outcomes.append("old")
            assert_same_state(got, old)
        else:
            outcomes.append("new")
            assert_same_state(got, new)
            assert got.resume is None
        # A temporary of the killed writer may remain (never the state
        # itself); the next holder of the lock removes it.
        assert all(
            t.startswith(".state.h5.bncli-tmp-") for t in helpers.temporaries(tmp_path)
        )
    assert "old" in outcomes  # the kills did land before the end

    leftover = (
        tmp_path
        / f".state.h5.bncli-tmp-{helpers.temporary_owner(helpers.dead_pid())}-x"
    )
    leftover.write_bytes(b"half a state")
    live = tmp_path / f".state.h5.bncli-tmp-{helpers.temporary_owner(os.getpid())}-y"
    live.write_bytes(b"a live writer's")
    done = helpers.run("fit", "state.h5", "small.parquet", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert helpers.temporaries(tmp_path) == [live.name]  # the live writer's stays
    live.unlink()
    assert not (tmp_path / "state.h5.lock").exists()


def test_sigkill_between_checkpoints_then_resume_equals_one_fit(
    tmp_path, link_into, setting
):
    """With checkpoints, a killed fit leaves the old state or a checkpoint;
    ``fit --resume`` from there ends equal to one uninterrupted fit."""
    d, old, new = setting
    link_into(d, "long.parquet", copies=(("old.h5", "state.h5"),))
    state = tmp_path / "state.h5"
    process = helpers.start(
        *_fit_args("state.h5"), "--checkpoint-every", "1", cwd=tmp_path
    )
    checkpoint = tmp_path / "state.h5.checkpoint"
    helpers.wait_for(checkpoint.exists)
    time.sleep(random.Random(7).uniform(0.0, 0.2))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    got = bncli.load(state)
    if not checkpoint.exists():  # pragma: no cover - the fit outran the kill
        assert_same_state(got, new)
        return
    assert_same_state(got, old)  # the state itself never moved
    assert old.batches_seen < bncli.load(checkpoint).batches_seen < new.batches_seen
    done = helpers.run("fit", "state.h5", "--resume", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_same_state(bncli.load(state), new)


def test_writes_keep_permissions(tmp_path):
    """Temporaries are created private (0600); the result is not."""
    target = tmp_path / "out.bin"
    umask = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"1")
        assert target.stat().st_mode & 0o777 == 0o644
        target.chmod(0o640)
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"2")
        assert target.stat().st_mode & 0o777 == 0o640
        with atomic_path(tmp_path / "folder", directory=True) as tmp:
            (tmp / "part-0").write_bytes(b"3")
        assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(umask)


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "state.h5"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")
    assert sorted(os.listdir(tmp_path)) == ["state.h5"]
    assert target.read_bytes() == b"old"
