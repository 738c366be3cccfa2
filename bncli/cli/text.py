"""Text from files, made safe for a terminal.

Column, layer and file names come from files that may be hostile: an ESC
sequence in a column name would reach the terminal raw (clear the screen,
set the window title, forge a hyperlink), a ``\\r\\n`` would forge a line
such as ``error: ...`` while the command succeeds, and ``[bold]`` would be
taken as rich markup. Everything for people passes through :func:`printable`
(plain lines on stderr) or :func:`cell` (rich tables and titles).
"""

from __future__ import annotations

import re

__all__ = ["cell", "printable"]

# C0 controls, DEL and C1 controls; Unicode line and paragraph separators,
# which some terminals also break lines at.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` with every control character written as an escape.

    Example:
        >>> printable("a\\r\\nerror: forged\\x1b[2J")
        'a\\\\r\\\\nerror: forged\\\\x1b[2J'
    """
    return _CONTROL.sub(_escape, str(text))


def cell(text: object) -> str:
    """``text`` for a rich table or title: printable, and its markup escaped.

    Example:
        >>> cell("[bold]b[/bold]")
        '\\\\[bold]b\\\\[/bold]'
    """
    from rich.markup import escape

    return escape(printable(text))
