"""Write a file or folder under a temporary name and rename it on success.

A crash or a kill at any moment leaves either the old target or the new one,
whole: the temporary is written in the target's folder (so the rename stays
on one file system), fsynced, renamed over the target, and the folder is
fsynced so that the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bncli.errors import BncliError, OutputError, UsageError
from bncli.interrupts import deferred

__all__ = [
    "TEMP_MARKER",
    "atomic_path",
    "fsync_path",
    "remove_stale_temporaries",
    "scratch_folder",
    "sidecar",
]

#: Temporaries are named ``.NAME.bncli-tmp-HOST-PID-XXXX`` beside their target.
TEMP_MARKER = ".bncli-tmp-"
#: This machine, as temporaries name it (a stale one is removed only on its host).
HOST = (socket.gethostname().replace("-", "_") or "host")[:64]


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
    folder, prefix = _folder(target), temp_prefix(target)
    tmp: Path | None = None
    # Ctrl-C is held back while the temporary comes into being and while it
    # is renamed or removed: it can only land where the except clause below
    # sees it, so no temporary outlives this block.
    try:
        with deferred():
            remove_stale_temporaries(target)
            try:
                tmp = create_temp(prefix, folder, directory)
            except OSError as e:
                raise _unwritable(e, target, folder) from e
            # mkstemp and mkdtemp create 0600/0700; give the result the mode
            # a plain open() would (or the replaced file's own), not a private one.
            os.chmod(tmp, _mode_for(target, directory))
        try:
            yield tmp
            fsync_path(tmp)  # may take long on a large output: stays interruptible
            with deferred():
                move_into_place(tmp, target, prefix, folder, directory)
        except (OSError, RuntimeError) as e:  # h5py reports write errors as both
            raise _write_failed(e, target) from e
    except BaseException:
        with deferred():
            if tmp is not None:
                remove_path(tmp)
        raise


#: What a failed write says, by errno or (where a library keeps only the text,
#: as libhdf5 and Arrow do) by the C library's own words.
_WRITE_ERRORS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EROFS: "Read-only file system",
    errno.EIO: "Input/output error",
    errno.EFBIG: "File too large",
}


def _unwritable(e: OSError, target: Path, folder: Path) -> BaseException:
    """A temporary that cannot be created: the folder is not writable (exit 2)."""
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UsageError(
            f"{target}: the folder {folder} is not writable ({e.strerror})"
        )
    return _write_failed(e, target)


def _write_failed(e: OSError | RuntimeError, target: Path) -> BaseException:
    """A write that failed for want of room or a working disk: name the target,
    never the temporary."""
    if isinstance(e, BncliError):
        return e
    reason = _WRITE_ERRORS.get(getattr(e, "errno", None) or 0)
    if reason is None:
        text = str(e)
        reason = next(
            (words for words in _WRITE_ERRORS.values() if words in text), None
        )
    if reason is None:
        return e
    return OutputError(f"cannot write: {reason.lower()}", path=target)


@contextlib.contextmanager
def scratch_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty folder beside ``target``, removed afterwards in any case.

    It is named as the temporaries of :func:`atomic_path` are, so that the
    leftovers of a killed writer are recognized and removed.
    """
    target = Path(target)
    tmp: Path | None = None
    try:
        with deferred():
            tmp = create_temp(temp_prefix(target), _folder(target), directory=True)
        yield tmp
    finally:
        with deferred():
            if tmp is not None:
                remove_path(tmp)


def _folder(target: Path) -> Path:
    return target.parent if str(target.parent) else Path(".")


#: Longest file name most file systems take (NAME_MAX).
_NAME_MAX = 255


def _stem(name: str) -> str:
    """``.NAME``, shortened (a prefix and a hash) where a temporary's name would
    not fit in NAME_MAX: a 250-character target still gets a temporary."""
    room = _NAME_MAX - len(TEMP_MARKER) - len(HOST) - 30  # "-PID-" + mkstemp's 8
    encoded = name.encode()
    if len(encoded) + 1 <= room:
        return f".{name}"
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    head = encoded[: room - 1 - 17].decode(errors="ignore")
    return f".{head}~{digest}"


def sidecar(path: Path, suffix: str) -> Path:
    """``PATH.suffix`` beside ``path`` (a lock, a checkpoint), its name shortened
    with a hash where ``NAME.suffix`` would exceed NAME_MAX."""
    name = path.name + suffix
    if len(name.encode()) <= _NAME_MAX:
        return path.with_name(name)
    digest = hashlib.sha256(path.name.encode()).hexdigest()[:16]
    room = _NAME_MAX - len(suffix.encode()) - 17
    head = path.name.encode()[:room].decode(errors="ignore")
    return path.with_name(f"{head}~{digest}{suffix}")


def temp_prefix(target: Path) -> str:
    """The start of this process's temporaries' names for ``target``."""
    return f"{_stem(target.name)}{TEMP_MARKER}{HOST}-{os.getpid()}-"


def create_temp(prefix: str, folder: Path, directory: bool) -> Path:
    """A new, empty temporary file (or folder) in ``folder``, named ``prefix...``."""
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=folder)
    os.close(fd)
    return Path(name)


def move_into_place(
    tmp: Path, target: Path, prefix: str, folder: Path, directory: bool
) -> None:
    """Rename ``tmp`` over ``target`` and fsync the folder."""
    if directory and target.exists():
        # A folder cannot be renamed over a non-empty one: move the old one
        # aside first, then drop it once the new one is in place.
        aside = Path(tempfile.mkdtemp(prefix=prefix, dir=folder))
        os.replace(target, aside / "old")
        os.replace(tmp, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        if target.is_dir() and not directory:
            shutil.rmtree(target)
        os.replace(tmp, target)
    _fsync_one(folder)


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _mode_for(target: Path, directory: bool) -> int:
    """The permissions of the replaced target, else the umask's default."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        pass
    umask = os.umask(0o022)  # reading the umask means setting it: restore it
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _is_stale(name: str, marker: str) -> bool:
    """Whether a temporary's writer is gone: same host, and its PID is not alive.

    Temporaries are named ``.NAME.bncli-tmp-HOST-PID-XXXX``; one written on
    another host (a shared file system) or of another form is left alone.
    """
    try:
        host, pid_text, _ = name[len(marker) :].rsplit("-", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != HOST:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove temporaries of ``target`` whose writer died; return them.

    A temporary names its writer's host and PID, so a live writer's is never
    taken for a stale one and no lock is needed.
    """
    target = Path(target)
    folder = _folder(target)
    marker = f"{_stem(target.name)}{TEMP_MARKER}"
    removed = []
    for tmp in folder.glob(f"{glob.escape(marker)}*"):
        if not _is_stale(tmp.name, marker):
            continue
        remove_path(tmp)
        removed.append(tmp)
    return removed
