"""Pieces of the human-readable output."""

from __future__ import annotations

import numpy as np
import pytest

from bncli.cli.render import counted, log_bars


def test_log_bars_span_the_decades_from_one_block_to_full():
    bars = log_bars([1e-3, 1.0, 1e6], width=10)
    assert [bar.count("█") for bar in bars] == [1, 4, 10]  # a third of the way: 1 + 3
    assert all(len(bar) == 10 for bar in bars)


def test_log_bars_of_close_values_look_alike():
    """Within a decade, the bars show their values on a one-decade scale."""
    bars = log_bars([0.997, 0.999, 0.2], width=10)
    assert [bar.count("█") for bar in bars] == [10, 10, 4]  # 1 + round(9 * 0.30)


def test_log_bars_of_equal_zero_and_bad_values():
    assert log_bars([2.0, 2.0], width=4) == ["████", "████"]
    bars = log_bars([0.0, np.nan, np.inf, 5.0], width=4)
    assert bars == ["····", "····", "····", "████"]
    assert log_bars([0.0], width=3) == ["···"]


def test_counted_nouns():
    assert counted(1, "batch") == "1 batch"
    assert counted(2, "batch", "batches") == "2 batches"
    assert counted(1, "batch", "batches") == "1 batch"
    assert counted(0, "epoch") == "0 epochs"
    assert counted(1, "sample") == "1 sample"


def _model_with_one_layer(tmp_path, name):
    """``m.keras`` in ``tmp_path``: one BatchNormalization layer named ``name``.

    Returns the command that runs bncli.
    """
    import subprocess
    import sys

    import numpy as np

    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    base = [sys.executable, "-m", "bncli"]
    for args in (
        ["fit", "s.h5", "x.npy", "--name", name, "-q"],
        ["export", "s.h5", "m.keras"],
    ):
        assert subprocess.run([*base, *args], cwd=tmp_path, check=False).returncode == 0
    return base


@pytest.mark.slow
def test_model_tables_never_cut_a_layer_name_at_any_width(tmp_path):
    """As a terminal of 40 columns draws it (TTY_COMPATIBLE makes rich draw one)."""
    import os
    import subprocess

    name = "a_batch_normalization_layer_with_a_very_long_name_0123456789"
    env = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "40", "NO_COLOR": "1"}
    base = _model_with_one_layer(tmp_path, name)
    shown = subprocess.run(
        [*base, "inspect", "m.keras"], cwd=tmp_path, env=env, capture_output=True,
        text=True, check=False,
    ).stdout  # fmt: skip
    import re

    plain = re.sub(r"\x1b\[[0-9;]*m", "", shown)
    rows = [line.split("│") for line in plain.splitlines() if line.startswith("│")]
    first_column = "".join(cells[1].strip() for cells in rows)
    assert first_column == name  # folded over lines, every character kept


@pytest.mark.slow
def test_model_tables_in_a_pipe_give_each_layer_one_line(tmp_path):
    """Not a terminal: the table is as wide as its rows, nothing wrapped."""
    import subprocess

    name = "layer_" + "n" * 150  # with its path and health, far past 160 columns
    base = _model_with_one_layer(tmp_path, name)
    done = subprocess.run(
        [*base, "inspect", "m.keras"], cwd=tmp_path, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 1, done.stdout
    assert name in rows[0]
    assert "batch_normalization" in rows[0]  # its path, on the same line
