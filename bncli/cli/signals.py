"""Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread happens to be, and
where that is a weakref callback or a ``__del__``, the exception is printed
and swallowed: the command would go on to the end. So the handler also
records the request, and :func:`check` (called by the progress hook after
every block of work) raises it again.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_requested = threading.Event()


def _handler(signum: int, frame: FrameType | None) -> None:
    _requested.set()
    raise KeyboardInterrupt


@contextmanager
def catching_interrupts() -> Iterator[None]:
    """Install the SIGINT handler for the block (main thread only)."""
    _requested.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    previous_hook = sys.unraisablehook

    def quiet_about_interrupts(unraisable: Any) -> None:
        # The swallowed KeyboardInterrupt is raised again by check(); Python's
        # "Exception ignored in ..." report of it would break the one-line error.
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    sys.unraisablehook = quiet_about_interrupts
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed, even if it was swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt
