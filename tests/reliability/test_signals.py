"""SIGTERM and SIGHUP stop a command as Ctrl-C does: same cleanup, own exit code."""

from __future__ import annotations

import signal
import time

import pytest

import bncli
from tests.reliability import helpers
from tests.reliability.helpers import LONG_EPOCHS, LONG_ROWS

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        (signal.SIGTERM, 143, "error: terminated\n"),
        (signal.SIGHUP, 129, "error: hangup\n"),
    ],
)
def test_a_stop_signal_cleans_up_like_ctrl_c(tmp_path, signum, code, line):
    helpers.write_table(tmp_path / "long.parquet", LONG_ROWS, seed=41)
    done = helpers.run(
        "fit", "state.h5", "long.parquet", "--exclude", "id", "-q", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    before = helpers.snapshot(tmp_path)
    process = helpers.start(
        "fit", "state.h5", "long.parquet", "--exclude", "id",
        "--epochs", 20 * LONG_EPOCHS, "--checkpoint-every", "1", cwd=tmp_path,
    )  # fmt: skip
    checkpoint = tmp_path / "state.h5.checkpoint"
    helpers.wait_for(checkpoint.exists)  # under way, a temporary written and renamed
    time.sleep(0.2)
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert process.returncode == code, err
    assert err == line
    assert helpers.temporaries(tmp_path) == []
    assert not (tmp_path / "state.h5.lock").exists()
    after = helpers.snapshot(tmp_path)
    assert after.pop("state.h5.checkpoint") and after == before  # state unchanged
    assert bncli.load(checkpoint).resume is not None
