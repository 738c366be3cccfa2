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


#: Held back alike: Ctrl-C, and the signals the CLI stops on as it does.
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold back SIGINT (and SIGTERM, SIGHUP) for the block, then deliver them.

    Keep the block short and free of waits: those signals do nothing inside
    it. Only the main thread receives signals, so elsewhere this does
    nothing. Sections nest: an inner one delivers to the outer one, which
    records.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # A handler not installed from Python (None) cannot be restored: leave
    # that signal alone.
    held = [s for s in HELD_SIGNALS if signal.getsignal(s) is not None]
    received: list[tuple[int, FrameType | None]] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append((signum, frame))

    previous = {signum: signal.signal(signum, record) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            first, frame = received[0]
            _deliver(previous[signal.Signals(first)], first, frame)


def _deliver(handler: object, signum: int, frame: FrameType | None) -> None:
    """Act on a held-back signal as ``handler`` would have."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)
