"""Write a file or folder under a temporary name and rename it on success.

A crash or a kill at any moment leaves either the old target or the new one,
whole: the temporary is written in the target's folder (so the rename stays
on one file system), fsynced, renamed over the target, and the folder is
fsynced so that the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TEMP_MARKER", "atomic_path", "fsync_path", "remove_stale_temporaries"]

#: Temporaries are named ``.NAME.bncli-tmp-XXXX`` beside their target.
TEMP_MARKER = ".bncli-tmp-"


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file, or a folder and every file below it."""
    path = Path(path)
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync_one(child)
    _fsync_one(path)


def _fsync_one(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on dirs
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike[str], *, directory: bool = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    Args:
        target: the final path.
        directory: whether the temporary is a folder (created empty) rather
            than a file name to create.

    Yields:
        The temporary path. On an exception it is removed and nothing at
        ``target`` changes.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    prefix = f".{target.name}{TEMP_MARKER}"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=folder)
        os.close(fd)
        tmp = Path(name)
    try:
        # mkstemp and mkdtemp create 0600/0700; give the result the mode a
        # plain open() would (or the replaced file's own), not a private one.
        os.chmod(tmp, _mode_for(target, directory))
        yield tmp
        fsync_path(tmp)
        if directory and target.exists():
            # A folder cannot be renamed over a non-empty one: move the old
            # one aside first, then drop it once the new one is in place.
            aside = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
            os.replace(target, aside / "old")
            os.replace(tmp, target)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            if target.is_dir() and not directory:
                shutil.rmtree(target)
            os.replace(tmp, target)
        _fsync_one(folder)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def _mode_for(target: Path, directory: bool) -> int:
    """The permissions of the replaced target, else the umask's default."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        pass
    umask = os.umask(0o022)  # reading the umask means setting it: restore it
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries of ``target`` left by a killed process; return them.

    Only call this while holding the target's lock, so that a live writer's
    temporary is never taken for a stale one.
    """
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    removed = []
    for tmp in folder.glob(f".{target.name}{TEMP_MARKER}*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        removed.append(tmp)
    return removed
