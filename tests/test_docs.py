"""Every command and every option is in the README and has help (sqlite-utils' test_docs)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from bncli.cli.main import COMMANDS, cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands():
    ctx = click.Context(cli)
    return [(name, cli.get_command(ctx, name)) for name in COMMANDS]


@pytest.mark.parametrize(("name", "command"), _commands())
def test_command_and_options_documented(name, command):
    assert f"bncli {name}" in README
    assert command.help and command.short_help
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts} has no help"
            flag = max(param.opts, key=len)
            assert flag in README, f"{name} {flag} missing from README"


def test_quick_start_shows_exactly_two_commands():
    quick = README.split("## Quick start")[1].split("##")[0]
    block = quick.split("```sh")[1].split("```")[0]
    assert [line.split()[0:2] for line in block.strip().splitlines()] == [
        ["make", "run"],
        ["make", "test"],
    ]


def test_python_api_example_runs(tmp_path, monkeypatch):
    """The README's Python API example runs as printed (with two tables beside it)."""
    import re

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    section = README.split("## Python API", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        table = pa.table({"u": rng.normal(size=100), "v": rng.normal(size=100)})
        pq.write_table(table, tmp_path / f"{name}.parquet")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "state.h5").exists()
