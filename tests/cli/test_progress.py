"""Progress bars: on stderr when it is a terminal, never in pipes or with --quiet."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tests.cli.terminal import run_with_terminal_stderr


def test_bar_on_a_terminal_and_quiet_silences_it(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((300_000, 4), dtype=np.float32))
    code, err = run_with_terminal_stderr(["fit", "s.h5", "x.npy"], tmp_path)
    assert code == 0
    assert "samples/s" in err and "fitted s.h5" in err
    code, err = run_with_terminal_stderr(["fit", "s.h5", "x.npy", "--quiet"], tmp_path)
    assert code == 0 and err == ""


def test_no_bar_in_a_pipe(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((1000, 4), dtype=np.float32))
    done = subprocess.run(
        [sys.executable, "-m", "bncli", "fit", "s.h5", "x.npy"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0
    assert "samples/s" not in done.stderr and done.stderr.startswith("fitted s.h5")
