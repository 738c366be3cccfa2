"""A state is one file, whatever path names it; pipes and planted links are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bncli.errors import StateLockedError
from bncli.state import lock, lock_path


@pytest.fixture
def data(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(64, 2)))
    return tmp_path / "x.npy"


def test_a_symlinked_state_is_written_through(run_cli, tmp_path, data):
    (tmp_path / "real").mkdir()
    assert run_cli("fit", "real/st.h5", "x.npy", "--quiet").exit_code == 0
    (tmp_path / "link.h5").symlink_to(tmp_path / "real" / "st.h5")
    assert run_cli("fit", "link.h5", "x.npy", "--quiet").exit_code == 0
    assert (tmp_path / "link.h5").is_symlink()  # not replaced by a second state
    seen = json.loads(run_cli("inspect", "real/st.h5", "--json").stdout)
    assert seen["progress"]["batches_seen"] == 4  # 2 batches per fit, both in it
    assert run_cli("freeze", "link.h5").exit_code == 0
    assert (
        json.loads(run_cli("inspect", "real/st.h5", "--json").stdout)["config"][
            "trainable"
        ]
        is False
    )
    assert (tmp_path / "link.h5").is_symlink()


def test_both_spellings_take_one_lock(tmp_path, data):
    (tmp_path / "st.h5").write_bytes(b"")
    (tmp_path / "link.h5").symlink_to(tmp_path / "st.h5")
    assert lock_path(tmp_path / "link.h5") == lock_path(tmp_path / "st.h5")
    with lock(tmp_path / "st.h5"), pytest.raises(StateLockedError):
        with lock(tmp_path / "link.h5"):
            pass


@pytest.mark.slow
def test_a_fifo_as_the_state_is_refused_not_waited_on(tmp_path, data):
    os.mkfifo(tmp_path / "st.h5")
    for args in (["fit", "st.h5", "x.npy"], ["inspect", "st.h5"]):
        done = subprocess.run(
            [sys.executable, "-m", "bncli", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,  # a guard: it used to block forever
        )
        assert done.returncode == 4, done.stderr
        assert done.stderr == "error: st.h5: not a regular file; a state is one\n"


def test_a_fifo_as_an_input_is_a_usage_error(run_cli, tmp_path):
    os.mkfifo(tmp_path / "in.npy")
    result = run_cli("fit", "st.h5", "in.npy")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: in.npy: not a regular file (a pipe or a device) cannot be read as "
        "a named input; give it as stdin: - < in.npy\n"
    )
    assert not (tmp_path / "st.h5").exists()


def test_a_planted_lock_link_creates_nothing(run_cli, tmp_path, data):
    victim = tmp_path / "victim"
    (tmp_path / "st.h5.lock").symlink_to(victim)
    result = run_cli("fit", "st.h5", "x.npy")
    assert result.exit_code == 4
    assert result.stderr.startswith(
        "error: st.h5.lock: the lock file is not a regular file"
    )
    assert not victim.exists() and not (tmp_path / "st.h5").exists()


def test_a_folder_as_the_lock_is_a_clear_error(run_cli, tmp_path, data):
    (tmp_path / "st.h5.lock").mkdir()
    result = run_cli("fit", "st.h5", "x.npy")
    assert result.exit_code == 4
    assert "the lock file is not a regular file" in result.stderr
    assert "remove it if no bncli is running" in result.stderr
