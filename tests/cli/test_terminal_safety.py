"""Names from files never reach a terminal raw.

A column or layer name may hold an ESC sequence (colours, clearing the
screen, a window title), a ``\\r\\n`` that forges an ``error:`` line while the
command succeeds, or rich markup. Tables, warnings and error lines show them
escaped; ``--json`` keeps them exact.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli.terminal import run_with_terminal_stderr

ESC = "\x1b[31mred"
FORGED = "a\r\nerror: forged"
MARKUP = "[bold]b[/bold]"
TITLE = "t\x1b]0;owned\x07"
NAMES = [ESC, FORGED, MARKUP, TITLE]
RAW = ("\x1b", "\r", "\x07")


def _hostile_table(path, rows=64, nan_in=None):
    rng = np.random.default_rng(0)
    columns = {name: rng.normal(size=rows) for name in NAMES}
    if nan_in is not None:
        columns[nan_in][5] = np.nan
    pq.write_table(pa.table(columns), path)


def _no_raw_controls(text: str) -> None:
    for char in RAW:
        assert char not in text, repr(text)


@pytest.fixture
def hostile_state(run_cli, tmp_path):
    _hostile_table(tmp_path / "x.parquet")
    result = run_cli("fit", "s.h5", "x.parquet", "--quiet")
    assert result.exit_code == 0, result.stderr
    return tmp_path / "s.h5"


def test_inspect_table_shows_names_escaped(run_cli, hostile_state):
    result = run_cli("inspect", "s.h5")
    assert result.exit_code == 0
    _no_raw_controls(result.stdout)
    _no_raw_controls(result.stderr)
    assert "\\x1b[31mred" in result.stdout
    assert "a\\r\\nerror: forged" in result.stdout
    assert MARKUP in result.stdout  # shown as written, not taken as markup
    assert "t\\x1b]0;owned\\x07" in result.stdout


def test_warnings_show_names_escaped(run_cli, hostile_state):
    # One batch at momentum 0.99: every channel's initializer share is above
    # 1%, and the warning names them all.
    result = run_cli("inspect", "s.h5")
    warning = [
        line
        for line in result.stderr.splitlines()
        if "initializers still weigh" in line
    ]
    assert len(warning) == 1 and warning[0].startswith("warning: ")
    assert "\\x1b[31mred" in warning[0] and "a\\r\\nerror: forged" in warning[0]
    _no_raw_controls(result.stderr)
    assert [
        line for line in result.stderr.splitlines() if line.startswith("error:")
    ] == []


def test_json_keeps_names_exact(run_cli, hostile_state):
    result = run_cli("inspect", "s.h5", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["features"] == NAMES


def test_error_line_is_one_line_with_names_escaped(run_cli, tmp_path):
    _hostile_table(tmp_path / "x.parquet", nan_in=FORGED)
    result = run_cli("fit", "s.h5", "x.parquet")
    assert result.exit_code == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: x.parquet: ")
    assert "a\\r\\nerror: forged" in lines[0] and "row 5" in lines[0]
    _no_raw_controls(result.stderr)
    assert not (tmp_path / "s.h5").exists()


def test_a_path_with_control_characters_is_escaped_in_errors(run_cli, tmp_path):
    name = "s\x1b[2J\r\nerror: forged.h5"
    result = run_cli("inspect", name)
    assert result.exit_code == 4
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "s\\x1b[2J\\r\\nerror: forged.h5" in result.stderr
    _no_raw_controls(result.stderr)


def test_model_layer_names_are_escaped(run_cli, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(64, 3)))
    name = "bn\x1b[2J" + MARKUP
    assert run_cli("fit", "s.h5", "x.npy", "--name", name, "--quiet").exit_code == 0
    assert run_cli("export", "s.h5", "m.keras").exit_code == 0
    result = run_cli("inspect", "m.keras")
    assert result.exit_code == 0
    _no_raw_controls(result.stdout)
    assert "bn\\x1b[2J" + MARKUP in result.stdout
    document = json.loads(run_cli("inspect", "m.keras", "--json").stdout)
    assert document["layers"][0]["name"] == name


@pytest.mark.slow
def test_on_a_terminal_nothing_raw_reaches_stderr(tmp_path):
    _hostile_table(tmp_path / "x.parquet")
    code, _ = run_with_terminal_stderr(["fit", "s.h5", "x.parquet"], tmp_path)
    assert code == 0
    code, stderr = run_with_terminal_stderr(["inspect", "s.h5"], tmp_path)
    assert code == 0
    assert "\\x1b[31mred" in stderr  # the warning names the channel, escaped
    assert "\x1b[31mred" not in stderr and "\x1b]0;owned" not in stderr
    assert "\r\nerror: forged" not in stderr
