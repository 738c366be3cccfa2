"""The progress interface the library reports to; by default it does nothing.

The CLI passes a rich progress bar (``bncli.cli.render``) only when stderr is
a terminal and ``--quiet`` is off; the library never prints.
"""

from __future__ import annotations

__all__ = ["NullProgress", "Progress"]


class Progress:
    """Receives the progress of a long operation, in samples."""

    def start(self, total: int | None, sample_bytes: int = 0) -> None:
        """Work begins: ``total`` samples (None: unknown) of ``sample_bytes`` each."""

    def advance(self, samples: int) -> None:
        """``samples`` more samples are done."""

    def finish(self) -> None:
        """Work is done."""


class NullProgress(Progress):
    """Reports nowhere."""
