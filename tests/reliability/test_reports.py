"""After a commit, a report that cannot be written fails nothing; stdout's fate is told.

A retrying caller must not fit the same data twice because the JSON report
went to a full disk or a closed pipe once the state was written.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

BNCLI = f"{sys.executable} -m bncli"


def sh(command: str, cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def data(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(64, 2)))
    np.save(tmp_path / "big.npy", np.random.default_rng(1).normal(size=(400_000, 2)))
    return tmp_path


def _batches(cwd) -> int:
    done = sh(f"{BNCLI} inspect s.h5 --json", cwd)
    return int(json.loads(done.stdout)["progress"]["batches_seen"])


def test_a_full_disk_for_the_report_is_a_warning_after_the_commit(data):
    done = sh(f"{BNCLI} fit s.h5 x.npy --json > /dev/full", data)
    assert done.returncode == 0
    assert done.stderr == (
        "warning: committed, but the report could not be written to stdout: "
        "No space left on device\n"
    )
    assert _batches(data) == 2


def test_a_closed_pipe_for_the_report_is_quiet_after_the_commit(data):
    done = sh(f"{BNCLI} fit s.h5 x.npy --json | true", data)
    assert done.returncode == 0 and done.stderr == ""
    assert _batches(data) == 2
    done = sh(f"{BNCLI} transform s.h5 x.npy -o y.npy --json | true", data)
    assert done.returncode == 0 and done.stderr == ""
    assert np.load(data / "y.npy").shape == (64, 2)


def test_stdout_closed_before_the_start(data):
    sh(f"{BNCLI} fit s.h5 x.npy --quiet", data)
    for command in ("transform s.h5 x.npy -o -", "inspect s.h5"):
        done = sh(f"{BNCLI} {command} >&-", data)
        assert done.returncode == 1, command
        assert done.stderr == "error: -: standard output is closed\n"


def test_a_data_output_cut_short_by_its_reader_is_an_error(data):
    sh(f"{BNCLI} fit s.h5 x.npy --quiet", data)
    done = sh(f"{BNCLI} transform s.h5 big.npy -o - | head -c 10 > /dev/null", data)
    assert done.returncode == 1
    assert done.stderr == (
        "error: -: the reader closed standard output (broken pipe); the output "
        "is incomplete\n"
    )


def test_json_with_stdout_output_is_refused_before_any_work(data):
    sh(f"{BNCLI} fit s.h5 x.npy --quiet", data)
    done = sh(f"{BNCLI} transform s.h5 x.npy -o - --json", data)
    assert done.returncode == 2
    assert done.stdout == ""  # nothing written before the refusal
    assert done.stderr.startswith("error: --json cannot share stdout with -o -")
