"""The exception hierarchy of bncli.

Every exception bncli raises derives from :class:`BncliError` and carries the
exit code the command-line tool maps it to, as a class attribute (as click's
``ClickException`` does). Each also derives from the built-in exception a
Python user would catch (``ValueError``, ``FileNotFoundError``), so library
users need not know our classes.

An error keeps its context (file, column, row, batch) and builds one line:
what was found, and what to do about it. This module imports neither click
nor rich: the library never prints or exits.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "BncliError",
    "BncliWarning",
    "ChannelMismatchError",
    "ConfigError",
    "DataError",
    "InputNotFoundError",
    "NotConvergedError",
    "OutputError",
    "StateError",
    "StateFrozenError",
    "StateLockedError",
    "StateMismatchError",
    "StateNotFoundError",
    "UnsupportedLayerError",
    "UsageError",
]


class BncliError(Exception):
    """Base of every bncli error; ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike[str] | None = None,
        column: str | None = None,
        row: int | None = None,
        batch: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.column = column
        self.row = row
        self.batch = batch
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        """The one-line description: context, what was found, what to do."""
        parts = []
        if self.path is not None:
            parts.append(self.path)
        where = []
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.batch is not None:
            where.append(f"batch {self.batch}")
        if where:
            parts.append(", ".join(where))
        text = self.message if not self.hint else f"{self.message}; {self.hint}"
        parts.append(text)
        return ": ".join(parts)

    def __str__(self) -> str:
        return self.line()


class UsageError(BncliError, ValueError):
    """A bad value for an option or argument (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A bad layer argument or spec string: also a ``ValueError``, as in Keras."""


class DataError(BncliError, ValueError):
    """Bad input data: unreadable, wrong format, mismatched, NaN (exit 3)."""

    exit_code = 3


class InputNotFoundError(DataError, FileNotFoundError):
    """An input file that does not exist (exit 3)."""


class ChannelMismatchError(DataError):
    """Data whose channels differ from those expected (a state's, the first file's)."""


class NotConvergedError(DataError):
    """``fit --until-share``: the share stayed above the goal for ``--max-epochs``.

    The fit itself went through: ``summary`` says what it did, and the
    caller saves its result before reporting this (exit 3).
    """

    def __init__(self, message: str, *, summary: Any = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.summary = summary


class OutputError(BncliError, OSError):
    """An output that cannot be written: stdout closed, or its reader gone (exit 1)."""


class StateError(BncliError, ValueError):
    """A state that is missing, corrupt, foreign or incompatible (exit 4)."""

    exit_code = 4


class StateNotFoundError(StateError, FileNotFoundError):
    """A state file that does not exist (exit 4)."""


class StateMismatchError(StateError):
    """Data or options that contradict a stored state (exit 4)."""


class StateFrozenError(StateError):
    """A fit asked of a frozen state (exit 4)."""


class StateLockedError(StateError):
    """A state in use by another process (exit 4)."""


class UnsupportedLayerError(StateError):
    """A layer of a Keras file that bncli cannot represent (exit 4).

    Batch renormalization, virtual batches, several axes, a dtype policy or
    object that is not a Keras built-in, or variables a weights-only file does
    not name. The file itself is sound: its other layers can still be read.
    ``reason`` says what in a few words, for listings
    (``"batch renormalization (renorm=True)"``).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        path: str | os.PathLike[str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.reason = reason
        super().__init__(message, path=path, hint=hint)


class BncliWarning(UserWarning):
    """Warnings bncli emits (the test suite turns them into errors)."""
