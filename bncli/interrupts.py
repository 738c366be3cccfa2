"""Sections that Ctrl-C must not cut in half.

Python raises KeyboardInterrupt at whatever bytecode the main thread is
running. Between creating a temporary file and entering the ``try`` that
removes it, or half-way through renaming a finished output, that leaves
debris or a half-done step. :func:`deferred` holds SIGINT back for such a
section and hands it to the previous handler as soon as the section ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["deferred"]


@contextmanager
def deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) for the block, then deliver it.

    Keep the block short and free of waits: Ctrl-C does nothing inside it.
    Only the main thread receives signals, so elsewhere this does nothing.
    Sections nest: an inner one delivers to the outer one, which records.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is None  # not Python's: cannot restore
    ):
        yield
        return
    received: list[FrameType | None] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(frame)

    previous = signal.signal(signal.SIGINT, record)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            _deliver(previous, received[0])


def _deliver(handler: object, frame: FrameType | None) -> None:
    """Act on a held-back SIGINT as ``handler`` would have."""
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)
