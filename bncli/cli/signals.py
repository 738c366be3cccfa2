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
_received: list[int] = []

#: The signals that stop a command as Ctrl-C does, with the same cleanup
#: (temporaries and lock files removed): SIGINT, SIGTERM (kill, timeout,
#: a scheduler), SIGHUP (the terminal went away).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where KeyboardInterrupt would be: same cleanup."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _handler(signum: int, frame: FrameType | None) -> None:
    request_stop(signum)
    raise _stop(signum)


def request_stop(signum: int = signal.SIGINT) -> None:
    """Record a stop request, as the handler does before it raises.

    :func:`check` then raises it, wherever the handler's own exception went.
    """
    _received.append(signum)
    _requested.set()


def received() -> int:
    """The first stop signal received in this command (SIGINT if none)."""
    return _received[0] if _received else int(signal.SIGINT)


@contextmanager
def catching_interrupts() -> Iterator[None]:
    """Install the SIGINT handler for the block (main thread only)."""
    _requested.clear()
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handler) for signum in STOP_SIGNALS}
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
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = previous_hook


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed, even if it was swallowed."""
    if _requested.is_set():
        raise _stop(received())
