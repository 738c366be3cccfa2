"""Fixtures shared by the reliability tests.

Each module builds its inputs once (a module-scoped ``setting``: long tables,
an old state); every test then works in a folder of its own holding hard
links to them, so that what a test writes or breaks never reaches another.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def link_into(tmp_path: Path) -> Callable[..., Path]:
    """``link_into(folder, *names, copies=())``: this test's folder, holding
    hard links to ``names`` in ``folder`` and copies of ``copies`` (files a
    test changes, given as ``(name, new_name)``)."""

    def link(
        folder: Path, *names: str, copies: tuple[tuple[str, str], ...] = ()
    ) -> Path:
        for name in names:
            os.link(folder / name, tmp_path / name)
        for name, new_name in copies:
            shutil.copy(folder / name, tmp_path / new_name)
        return tmp_path

    return link
