"""The model table joined without rich (render.plain_table) against rich itself.

Into a file or a pipe, ``inspect MODEL`` writes its table as plain text; rich
is the reference: every expected output here is what rich draws.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bncli.cli import render

#: print_model's columns.
HEADER = ["layer", "path", "channels", "momentum", "epsilon", "center/scale", "health"]
#: A row print_model could print.
GOOD_ROW = ["bn", "layers/bn", "4", "0.99", "0.001", "True/True", "ok"]


@pytest.fixture(autouse=True)
def _no_forced_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich takes a file for a terminal under these, whatever it is."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def _console(width: int, **options: Any) -> Console:
    return Console(file=io.StringIO(), width=width, highlight=False, **options)


def _rich(title: str, rows: list[list[str]], width: int) -> str:
    """What rich draws into a file, the table built as print_model builds it."""
    table = Table(title=title, title_justify="left")
    for column in HEADER:
        folded = column in ("layer", "path")
        table.add_column(column, overflow="fold" if folded else "ellipsis")
    for row in rows:
        table.add_row(*(Text(text) for text in row), style=None)
    console = _console(width)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]


def _natural_width(rows: list[list[str]]) -> int:
    widths = [max(len(row[j]) for row in [HEADER, *rows]) for j in range(len(HEADER))]
    return sum(widths) + 3 * len(widths) + 1


def _words(alphabet: str, max_words: int, max_size: int) -> st.SearchStrategy[str]:
    word = st.text(alphabet=alphabet, min_size=1, max_size=max_size)
    return st.lists(word, min_size=1, max_size=max_words).map(" ".join)


PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))  # no space: words
cells = st.one_of(_words(PRINTABLE, 1, 4), _words(PRINTABLE, 6, 15))
rows_of_7 = st.lists(st.lists(cells, min_size=7, max_size=7), min_size=1, max_size=60)
# No "[" (markup) and no ":" (an emoji code takes two; the title has one).
paths = _words(PRINTABLE.replace("[", "").replace(":", ""), 12, 25)


@given(
    path=paths,
    n=st.integers(0, 10_000),
    cut=st.none() | st.integers(-3, 3),
    rows=rows_of_7,
    extra=st.integers(0, 100),
)
def test_plain_table_is_what_rich_draws_into_a_file(
    path: str, n: int, cut: int | None, rows: list[list[str]], extra: int
) -> None:
    natural = _natural_width(rows)
    suffix = f": {n} BatchNormalization layer(s)"  # as print_model's titles
    if cut is not None:  # a title about as wide as the table
        path = ((path + " ") * natural)[: natural + cut - len(suffix)].rstrip()
    title = path + suffix
    width = natural + extra
    plain = render.plain_table(_console(width), title, HEADER, rows, [None] * len(rows))
    if len(title) > natural:  # rich wraps the title: left to rich
        event("title wider than the table")
        assert plain is None
    else:
        if len(title) == natural:
            event("title as wide as the table")
        assert plain == _rich(title, rows, width)
    narrow = _console(natural - 1)
    assert render.plain_table(narrow, title, HEADER, rows, [None] * len(rows)) is None


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_a_title_as_wide_as_the_table(extra: int) -> None:
    rows = [GOOD_ROW]
    natural = _natural_width(rows)
    title = "t" * (natural + extra - 3) + ": 1"
    plain = render.plain_table(_console(200), title, HEADER, rows, [None])
    assert plain == (None if extra > 0 else _rich(title, rows, 200))


def _layers(tmp_path: Path, renorm: bool) -> list[Any]:
    """A Keras model's BatchNormalization layers as bncli reads them."""
    import numpy as np

    from bncli.keras_compat.files import read_batchnorm_layers
    from tests.unit.test_keras_files import (
        _batchnorms,
        _nested,
        _randomize,
        _with_renorm,
    )

    model = _with_renorm() if renorm else _nested()
    rng = np.random.default_rng(3)
    for layer in _batchnorms(model)[1:]:  # the first keeps its initial values
        _randomize(layer, rng)
    path = tmp_path / "m.keras"
    model.save(path)
    return read_batchnorm_layers(path)


def _print_model(path: str, layers: list[Any]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        render.print_model(path, layers)
    return out.getvalue()


@pytest.mark.parametrize("renorm", [False, True], ids=["supported", "unsupported"])
def test_print_model_writes_what_rich_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renorm: bool
) -> None:
    layers = _layers(tmp_path, renorm)
    joined: list[str | None] = []
    real = render.plain_table

    def spy(*args: Any) -> str | None:
        joined.append(real(*args))
        return joined[-1]

    monkeypatch.setattr(render, "plain_table", spy)
    fast = _print_model("models/m.keras", layers)
    monkeypatch.setattr(render, "plain_table", lambda *args: None)
    slow = _print_model("models/m.keras", layers)
    assert fast == slow
    # A renormalizing layer is unsupported: a yellow row, drawn by rich.
    assert (joined[0] is None) == renorm, joined
    assert all(layer.name in fast for layer in layers)


@pytest.mark.parametrize(
    "text", ["café", "a\u00a0b", "😄", "a  b", " a", "a ", "a\tb", "", "\x1b[2J"]
)
def test_text_rich_could_change_is_left_to_rich(text: str) -> None:
    rows = [GOOD_ROW, [text, *GOOD_ROW[1:]]]
    console = _console(200)
    assert render.plain_table(console, "t: 2", HEADER, rows, [None, None]) is None
    assert render.plain_table(console, "t: 1", HEADER, [GOOD_ROW], [None]) is not None


@pytest.mark.parametrize(
    "title",
    ["\\[x]: 1", "a:smile:: 1", "[bold]x: 1", "café: 1", "a  b: 1", " a: 1", "a: 1 "],
)
def test_titles_rich_could_change_are_left_to_rich(title: str) -> None:
    assert render.plain_table(_console(200), title, HEADER, [GOOD_ROW], [None]) is None


def test_a_styled_row_is_left_to_rich() -> None:
    rows = [GOOD_ROW, GOOD_ROW]
    console = _console(200)
    assert render.plain_table(console, "t: 2", HEADER, rows, [None, "yellow"]) is None
    assert render.plain_table(console, "t: 2", HEADER, rows, [None, None]) is not None


def test_no_rows_are_left_to_rich() -> None:
    assert render.plain_table(_console(200), "t: 0", HEADER, [], []) is None


@pytest.mark.parametrize(
    "options",
    [
        {"force_terminal": True, "color_system": None},  # a terminal
        {"force_terminal": True},  # a terminal with colors
        {"force_terminal": False, "color_system": "standard"},  # colors in a file
        {"legacy_windows": True},  # rich swaps the box for one cmd.exe shows
    ],
    ids=["terminal", "colors", "colored-file", "legacy-windows"],
)
def test_terminals_colors_and_other_boxes_are_left_to_rich(
    options: dict[str, Any],
) -> None:
    console = _console(200, **options)
    assert render.plain_table(console, "t: 1", HEADER, [GOOD_ROW], [None]) is None


def test_a_file_that_is_not_utf8_is_left_to_rich() -> None:
    """rich draws an ASCII box where its file's encoding is not UTF."""
    file = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    console = Console(file=file, width=200, highlight=False)
    assert render.plain_table(console, "t: 1", HEADER, [GOOD_ROW], [None]) is None
