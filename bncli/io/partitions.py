"""Hive partition keys: the ``key=value`` folders a partitioned dataset's files sit in.

``sales/year=2024/region=eu/part-0.parquet`` read as the folder ``sales``
holds the columns ``year`` (``"2024"``) and ``region`` (``"eu"``) besides
its own. They are text (as written in the folder names, ``%XX`` decoded;
``__HIVE_DEFAULT_PARTITION__`` is null), never default channels, and pass
through ``transform``. Only folders below the folder given count.
"""

from __future__ import annotations

from urllib.parse import unquote

__all__ = ["Keys", "hive_keys"]

#: ``(name, value)`` pairs, outermost folder first; a None value is null.
Keys = tuple[tuple[str, str | None], ...]

#: The value Hive writes for a null key.
_NULL = "__HIVE_DEFAULT_PARTITION__"


def hive_keys(relative: str) -> Keys:
    """The keys of the folders in ``relative``, a file's path below the folder given.

    Example:
        >>> hive_keys("year=2024/region=e%2Fu/part-0.parquet")
        (('year', '2024'), ('region', 'e/u'))
        >>> hive_keys("part-0.parquet")
        ()
    """
    keys: list[tuple[str, str | None]] = []
    for part in relative.replace("\\", "/").split("/")[:-1]:
        name, sep, value = part.partition("=")
        if not sep or not name:
            continue
        text = unquote(value)
        keys.append((unquote(name), None if text == _NULL else text))
    return tuple(keys)
