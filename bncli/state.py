"""The state file: one HDF5 file holding a layer's config, variables and progress.

Layout (``format_version`` 2; version 1 is read too)::

    bytes 0-511           user block: "bncli-state sha256 " and the SHA-256 of
                          everything after it (version 2; absent in version 1)

    /                     attrs: format="bncli-state", format_version, bncli_version,
                                 config (JSON, Keras get_config() keys), kind
                                 ("table" or "array"), axis (normalized channel
                                 axis of the full input), sample_shape, resume (JSON,
                                 optional)
    /features             channel names, variable-length UTF-8 strings, (C,)
    /variables/NAME       gamma (if scale), beta (if center), moving_mean,
                          moving_variance: (C,) in the policy's variable dtype
                          (bfloat16 is stored as float32 with attr dtype="bfloat16")
    /accumulators/NAME    moving_mean, moving_variance in float64, and
                          channel_batches (int64): batches that updated each channel
    /progress             attrs: batches_seen, samples_seen, epochs

Writes go to a temporary file in the same folder, which is fsynced and
renamed over the old state (:func:`bncli.io.atomic.atomic_path`). A
read-modify-write holds :func:`lock`, a ``STATE.lock`` sidecar, since the
rename replaces the state's inode. A fit's checkpoints go to another
sidecar, ``STATE.checkpoint`` (:func:`checkpoint_path`), never into the
state itself. A symlinked state is resolved once (:func:`state_path`): the
lock and the write go to its target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bncli.errors import (
    StateError,
    StateLockedError,
    StateNotFoundError,
    UsageError,
)
from bncli.interrupts import deferred
from bncli.io import hdf5
from bncli.io.atomic import atomic_path, remove_stale_temporaries, sidecar
from bncli.io.detect import HDF5_SIGNATURE, SEAL_MAGIC
from bncli.limits import MAX_CHANNELS
from bncli.version import __version__

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "State",
    "is_state",
    "lock",
    "read_state",
    "write_state",
]

FORMAT = "bncli-state"
#: The newest version written and read. States in Keras's moving average
#: are written as version 2, which earlier bncli releases read; version 3
#: adds the population modes, which they must refuse rather than misread.
FORMAT_VERSION = 3
_MODES_VERSION = 3
STATISTICS = ("ema", "precise", "exact")
VARIABLE_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")
_MAX_CHANNELS = MAX_CHANNELS


@dataclasses.dataclass
class State:
    """Everything a state file holds, as plain data."""

    config: dict[str, Any]
    features: list[str]
    kind: str
    axis: int
    sample_shape: tuple[int, ...]
    variables: dict[str, npt.NDArray[Any]]
    moving_mean64: npt.NDArray[np.float64]
    moving_variance64: npt.NDArray[np.float64]
    channel_batches: npt.NDArray[np.int64]
    batches_seen: int = 0
    samples_seen: int = 0
    epochs: int = 0
    resume: dict[str, Any] | None = None
    #: How the moving statistics sum up batches: "ema", "precise" or "exact".
    statistics: str = "ema"
    #: Where they started: "initializers" or "imported".
    statistics_start: str = "initializers"
    #: Values per channel summed up ("exact"); zeros otherwise.
    channel_count: npt.NDArray[np.float64] | None = None
    #: A partial state's part (:mod:`bncli.parts`): a JSON record and named
    #: float64 arrays of at most two dimensions; None for a whole state.
    part: dict[str, Any] | None = None

    @property
    def channels(self) -> int:
        """The number of channels, C."""
        return len(self.features)


#: States start with an HDF5 user block (bytes HDF5 itself skips) holding
#: :data:`bncli.io.detect.SEAL_MAGIC` and the SHA-256 of everything after the
#: block, in hex. A damaged file is refused on that checksum before any of
#: its bytes reach libhdf5, which on some damaged files loops forever
#: (HDFGroup/hdf5#1707; seen here with one changed byte). States written
#: before format version 2 have no user block and are read as they are.
USERBLOCK_SIZE = 512


def seal(path: str | os.PathLike[str]) -> None:
    """Write the checksum into the user block of an HDF5 file made with one."""
    with open(path, "r+b") as f:
        f.seek(USERBLOCK_SIZE)
        digest = hashlib.sha256(f.read()).hexdigest().encode()
        f.seek(0)
        f.write(SEAL_MAGIC + digest + b"\n")


def refuse_url(path: str | os.PathLike[str]) -> None:
    """A state URL is a usage error (exit 2), whatever is behind it."""
    from bncli.io.locations import is_url

    if is_url(path):
        raise UsageError(
            f"{os.fspath(path)}: a state is a local file, not a URL; keep states on "
            "a local or mounted file system"
        )


def state_path(path: str | os.PathLike[str]) -> Path:
    """Where the state at ``path`` really is: symbolic links resolved once.

    Every read-modify-write locks and replaces this path, so that two
    spellings of one state (``link.h5 -> real/st.h5``) take the same lock and
    a write goes through the link, never replacing it by a second state.

    Raises:
        StateError: something other than a regular file is there (a FIFO,
            a device, a socket: opening one could block forever).
    """
    refuse_url(path)
    real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except OSError:
        return real  # missing: created, or reported, by the caller
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise StateError("not a regular file; a state is one", path=path)
    return real


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(len(SEAL_MAGIC))


def is_state(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a bncli state (never raises).

    A sealed state is told by its user block; an older one by its ``format``
    attribute. :func:`read_state` validates the rest.
    """
    import h5py

    path = Path(path)
    try:
        if not path.is_file():
            return False
        head = _head(path)
        if head.startswith(SEAL_MAGIC):
            return True
        if not head.startswith(HDF5_SIGNATURE):
            return False
        # Any HDF5 file gets here: parsed in a child bounded in time, since
        # libhdf5 loops forever on some damaged files (bncli.io.child).
        from bncli.io.child import bounded

        def unsealed_state() -> bool:
            with h5py.File(path, "r") as f:
                return attribute_text(f.attrs.get("format")) == FORMAT

        found: bool = bounded(unsealed_state, path=path, encode=bool, decode=bool)
        return found
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError):
        return False  # damaged: read_state() says why
    except StateError:
        return False  # not parsed in time: nothing says it is a state


def read_state(path: str | os.PathLike[str]) -> State:
    """Read and validate a state file.

    Raises:
        StateNotFoundError: no file at ``path``.
        StateError: the file is not a bncli state, is corrupt, comes from a
            newer bncli, or holds inconsistent values.
    """
    import h5py

    refuse_url(path)
    path = Path(path)
    if not path.exists():
        raise StateNotFoundError(
            "state not found", path=path, hint="fit one first with: bncli fit"
        )
    state_path(path)  # refuses a FIFO or a device before opening it
    if path.is_dir():
        raise StateError("is a folder, not a state file", path=path)
    try:
        source: Any = path
        head = _head(path)
        if head.startswith(SEAL_MAGIC):
            source = io.BytesIO(_checked_bytes(path))  # parse what was checked
        elif not head.startswith(HDF5_SIGNATURE):
            raise StateError("not a bncli state (not an HDF5 file)", path=path)
        with h5py.File(source, "r") as f:
            return _read(f, path)
    except StateError:
        raise
    except PermissionError as e:
        raise StateError("cannot read the state (permission denied)", path=path) from e
    except (
        OSError,
        KeyError,
        ValueError,
        TypeError,
        RuntimeError,
        AttributeError,
    ) as e:
        # h5py reports damaged structures as RuntimeError too, and a damaged
        # link may name a group where a dataset belongs (AttributeError).
        raise StateError(f"corrupt state ({_short(e)})", path=path) from e


def _checked_bytes(path: Path) -> bytes:
    """A sealed state's bytes, once their checksum matches."""
    data = path.read_bytes()
    stored = data[len(SEAL_MAGIC) : len(SEAL_MAGIC) + 64]
    if hashlib.sha256(data[USERBLOCK_SIZE:]).hexdigest().encode() != stored:
        raise StateError(
            "corrupt state (checksum mismatch: the file was damaged, or changed "
            "by another program)",
            path=path,
        )
    return data


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def _read(f: Any, path: Path) -> State:
    fmt = attribute_text(f.attrs.get("format"))
    if fmt != FORMAT:
        raise StateError(
            "not a bncli state (no format='bncli-state' attribute)", path=path
        )
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise StateError(
            f"state format version {version} is newer than this bncli "
            f"understands ({FORMAT_VERSION})",
            path=path,
            hint="upgrade bncli",
        )
    if version < 1:
        raise StateError(f"unknown state format version {version}", path=path)
    config = json.loads(attribute_text(f.attrs["config"]))
    if not isinstance(config, dict):
        raise StateError("corrupt state (config is not a JSON object)", path=path)
    features = [
        attribute_text(x)
        for x in _corrupt_unless(
            hdf5.read_dataset,
            _child(f, "features", path),
            "features",
            path,
            _MAX_CHANNELS,
        )
    ]
    channels = len(features)
    if not 0 < channels <= _MAX_CHANNELS:
        raise StateError(f"corrupt state ({channels} channels)", path=path)
    kind = attribute_text(f.attrs["kind"])
    if kind not in ("table", "array"):
        raise StateError(f"corrupt state (unknown kind {kind!r})", path=path)
    axis = int(f.attrs["axis"])
    sample_shape = tuple(int(d) for d in np.asarray(f.attrs["sample_shape"]).ravel())
    if (
        not 1 <= axis <= len(sample_shape)
        or sample_shape[axis - 1] != channels
        or min(sample_shape) < -1
    ):
        raise StateError(
            "corrupt state (sample shape, axis and channels disagree)", path=path
        )
    variables: dict[str, npt.NDArray[Any]] = {}
    group = _child(f, "variables", path)
    for name in VARIABLE_NAMES:
        if name in group:
            variables[name] = _read_vector(
                _child(group, name, path), channels, path, f"variables/{name}"
            )
    acc = _child(f, "accumulators", path)

    def read_accumulator(name: str) -> Any:
        return _read_vector(
            _child(acc, name, path), channels, path, f"accumulators/{name}"
        )

    moving_mean64 = read_accumulator("moving_mean")
    moving_variance64 = read_accumulator("moving_variance")
    # Values are checked before use: no NaN, and finite float64 accumulators
    # (a float16 variable may overflow to infinity; a negative initializer may
    # make a moving variance negative, as in Keras).
    checked = [*variables.items(), ("moving_mean", moving_mean64)]
    checked.append(("moving_variance", moving_variance64))
    for index, (name, value) in enumerate(checked):
        value = np.asarray(value, dtype=np.float64)
        accumulator = index >= len(variables)
        if np.isnan(value).any() or (accumulator and not np.isfinite(value).all()):
            raise StateError(f"corrupt state ({name} has invalid values)", path=path)
    channel_batches = np.asarray(read_accumulator("channel_batches"), dtype=np.int64)
    if channel_batches.shape != (channels,) or (channel_batches < 0).any():
        raise StateError("corrupt state (channel_batches)", path=path)
    statistics = attribute_text(f.attrs.get("statistics", "ema"))
    start = attribute_text(f.attrs.get("statistics_start", "initializers"))
    if statistics not in STATISTICS or start not in ("initializers", "imported"):
        raise StateError(
            f"corrupt state (statistics {statistics!r} from {start!r})", path=path
        )
    channel_count = np.zeros(channels)
    if statistics == "exact":
        channel_count = np.asarray(read_accumulator("channel_count"), dtype=np.float64)
        if not (np.isfinite(channel_count).all() and (channel_count >= 0).all()):
            raise StateError("corrupt state (channel_count)", path=path)
    part = _read_part(f, path) if "part" in f else None
    progress = _child(f, "progress", path).attrs
    resume = f.attrs.get("resume")
    state = State(
        config=config,
        features=features,
        kind=kind,
        axis=axis,
        sample_shape=sample_shape,
        variables=variables,
        moving_mean64=moving_mean64.astype(np.float64),
        moving_variance64=moving_variance64.astype(np.float64),
        channel_batches=channel_batches,
        batches_seen=int(progress["batches_seen"]),
        samples_seen=int(progress["samples_seen"]),
        epochs=int(progress["epochs"]),
        resume=None if resume is None else _check_resume(attribute_text(resume), path),
        statistics=statistics,
        statistics_start=start,
        channel_count=channel_count,
        part=part,
    )
    if min(state.batches_seen, state.samples_seen, state.epochs) < 0:
        raise StateError("corrupt state (negative progress counters)", path=path)
    return state


def _check_resume(text: str, path: Path) -> dict[str, Any]:
    """The record of an interrupted fit, checked before ``fit --resume`` uses it."""
    record = json.loads(text)

    def count(value: Any, least: int) -> bool:
        return type(value) is int and value >= least

    def names(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    checks: dict[str, Callable[[Any], bool]] = {
        "inputs": lambda v: names(v) and len(v) > 0,
        "batch_size": lambda v: count(v, 1),
        "epochs": lambda v: count(v, 1),
        "drop_remainder": lambda v: isinstance(v, bool),
        "replicas": lambda v: count(v, 1),
        "mask_column": lambda v: v is None or isinstance(v, str),
        "mask": lambda v: v is None or names(v),
        "nan_policy": lambda v: v in ("error", "mask"),
        "epoch": lambda v: count(v, 0),
        "sample": lambda v: count(v, 0),
    }

    def files(value: Any) -> bool:
        return isinstance(value, list) and all(
            isinstance(v, dict)
            and isinstance(v.get("path"), str)
            and count(v.get("size"), 0)
            and type(v.get("mtime_ns")) is int
            for v in value
        )

    if not isinstance(record, dict):
        raise StateError("corrupt state (resume record is not an object)", path=path)
    for key, check in checks.items():
        if key not in record or not check(record[key]):
            raise StateError(f"corrupt state (resume record: bad {key!r})", path=path)
    # Absent from older records: the files read, and how they were read.
    optional: dict[str, Callable[[Any], bool]] = {
        "files": files,
        "delimiter": lambda v: isinstance(v, str) and len(v) == 1 and v not in '"\r\n',
        "array": lambda v: v is None or isinstance(v, str),
    }
    for key, check in optional.items():
        if key in record and not check(record[key]):
            raise StateError(f"corrupt state (resume record: bad {key!r})", path=path)
    return record


#: Arrays a partial state may hold, and the values in all: its fold's and
#: its two pieces' (a piece holds a few shards' moments).
_MAX_PART_ARRAYS = 32
_MAX_PART_VALUES = 1 << 26


def _read_part(f: Any, path: Path) -> dict[str, Any]:
    """A partial state's record and arrays, bounded; :mod:`bncli.parts` checks them."""
    group = _child(f, "part", path)
    try:
        record = json.loads(attribute_text(group.attrs["record"]))
    except (KeyError, ValueError) as e:
        raise StateError("corrupt state (part record)", path=path) from e
    if not isinstance(record, dict):
        raise StateError("corrupt state (part record is not an object)", path=path)
    names = list(group)
    if len(names) > _MAX_PART_ARRAYS:
        raise StateError("corrupt state (too many part arrays)", path=path)
    arrays = {}
    left = _MAX_PART_VALUES
    for name in names:
        dataset = _child(group, name, path)
        value = _corrupt_unless(hdf5.read_dataset, dataset, f"part/{name}", path, left)
        value = np.asarray(value)
        if value.ndim > 2 or value.dtype.kind != "f" or not np.isfinite(value).all():
            raise StateError(f"corrupt state (part/{name})", path=path)
        left -= value.size
        arrays[name] = value.astype(np.float64)
    return {"record": record, "arrays": arrays}


def attribute_text(value: Any) -> str:
    """An HDF5 attribute (bytes, str or a scalar dataset of either) as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return attribute_text(value[()])
    return str(value)


def _corrupt_unless(check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)``, its refusal worded as a corrupt state."""
    try:
        return check(*args)
    except StateError as e:
        raise StateError(f"corrupt state ({e.message})", path=e.path) from e


def _child(parent: Any, name: str, path: Path) -> Any:
    """A hard-linked group or dataset of the state (never a link out of it)."""
    return _corrupt_unless(hdf5.plain_child, parent, name, path)


def _read_vector(dataset: Any, channels: int, path: Path, name: str) -> Any:
    _corrupt_unless(hdf5.check_dataset, dataset, name, path, _MAX_CHANNELS)
    if dataset.shape != (channels,):
        raise StateError(
            f"corrupt state ({name} has shape {dataset.shape}, expected ({channels},))",
            path=path,
        )
    value = dataset[()]
    stored = attribute_text(dataset.attrs.get("dtype", ""))
    if stored == "bfloat16":
        import ml_dtypes

        value = np.asarray(value, dtype=np.float32).astype(ml_dtypes.bfloat16)
    elif value.dtype.kind not in "fiu":
        raise StateError(f"corrupt state ({name} is not numeric)", path=path)
    return value


def write_state(path: str | os.PathLike[str], state: State) -> None:
    """Write ``state`` atomically: temporary file, fsync, rename, fsync folder."""
    import h5py

    path = state_path(path)
    # A state is small: Ctrl-C waits the few milliseconds of the whole write,
    # so it never lands inside h5py (see bncli.interrupts).
    with deferred(), atomic_path(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK_SIZE) as f:
            write_contents(f, state)
        seal(tmp)


def write_contents(f: Any, state: State) -> None:
    """The state's attributes, groups and datasets, into an open HDF5 file."""
    import h5py

    f.attrs["format"] = FORMAT
    plain = state.statistics == "ema" and state.part is None
    f.attrs["format_version"] = 2 if plain else _MODES_VERSION
    f.attrs["statistics"] = state.statistics
    f.attrs["statistics_start"] = state.statistics_start
    f.attrs["bncli_version"] = __version__
    f.attrs["config"] = json.dumps(state.config)
    f.attrs["kind"] = state.kind
    f.attrs["axis"] = state.axis
    f.attrs["sample_shape"] = np.asarray(state.sample_shape, dtype=np.int64)
    if state.resume is not None:
        f.attrs["resume"] = json.dumps(state.resume)
    f.create_dataset(
        "features",
        data=np.array(state.features, dtype=object),
        dtype=h5py.string_dtype("utf-8"),
    )
    group = f.create_group("variables")
    for name in VARIABLE_NAMES:
        if name in state.variables:
            write_vector(group, name, state.variables[name])
    acc = f.create_group("accumulators")
    acc.create_dataset("moving_mean", data=state.moving_mean64)
    acc.create_dataset("moving_variance", data=state.moving_variance64)
    acc.create_dataset("channel_batches", data=state.channel_batches)
    if state.channel_count is not None and state.statistics == "exact":
        acc.create_dataset("channel_count", data=state.channel_count)
    if state.part is not None:
        part = f.create_group("part")
        part.attrs["record"] = json.dumps(state.part["record"])
        for name, array in state.part["arrays"].items():
            part.create_dataset(name, data=np.asarray(array, dtype=np.float64))
    progress = f.create_group("progress")
    progress.attrs["batches_seen"] = state.batches_seen
    progress.attrs["samples_seen"] = state.samples_seen
    progress.attrs["epochs"] = state.epochs


def write_vector(group: Any, name: str, value: npt.NDArray[Any]) -> None:
    """One variable into ``group`` (bfloat16 stored as float32, marked so)."""
    if value.dtype.name == "bfloat16":
        dataset = group.create_dataset(name, data=value.astype(np.float32))
        dataset.attrs["dtype"] = "bfloat16"
    else:
        group.create_dataset(name, data=value)


def checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """Where a fit checkpoints the state at ``path``: ``STATE.checkpoint``, beside it.

    A checkpoint is a whole state with the position reached; the state itself
    changes only when a fit ends well.
    """
    return sidecar(state_path(path), ".checkpoint")


_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The sidecar lock file of a state: ``STATE.lock``, beside the real file."""
    return sidecar(state_path(path), ".lock")


@contextlib.contextmanager
def lock(path: str | os.PathLike[str], *, wait: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of the state at ``path``.

    The lock is ``flock`` on a sidecar file, removed on release. Because a
    waiter may hold the inode of a sidecar that was just removed, the lock is
    only taken once the locked inode is the one at the path. Stale
    temporaries of a killed writer are removed once the lock is held.

    Args:
        path: the state file.
        wait: block until the lock is free instead of failing.

    Raises:
        StateLockedError: another process holds the lock and ``wait`` is off.
    """
    import fcntl

    sidecar = lock_path(path)
    fd = -1
    held = False
    try:
        while True:
            try:
                # O_NOFOLLOW: a planted STATE.lock -> /some/path must not make
                # bncli create or open that path.
                fd = os.open(sidecar, _LOCK_FLAGS, 0o644)
            except FileNotFoundError as e:
                raise StateError("folder does not exist", path=sidecar.parent) from e
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    raise
                raise StateError(
                    "the lock file is not a regular file (a symbolic link, a "
                    "folder or a device)",
                    path=f"{os.fspath(path)}.lock",
                    hint="remove it if no bncli is running on this state",
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise StateLockedError(
                        "state is in use by another process",
                        path=path,
                        hint="wait for it to finish, or pass --wait",
                    ) from e
                raise
            try:
                held = os.fstat(fd).st_ino == os.stat(sidecar).st_ino
            except FileNotFoundError:
                held = False
            if held:
                break
            os.close(fd)
            fd = -1
            time.sleep(0.001)
        remove_stale_temporaries(state_path(path))
        yield
    finally:
        # Also on Ctrl-C or an error while taking the lock: let go of it and
        # remove the sidecar, unless another process holds it by then.
        with deferred():
            if held:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sidecar)
            if fd >= 0:
                os.close(fd)
            if not held:
                _remove_unheld_sidecar(sidecar)


def _remove_unheld_sidecar(sidecar: Path) -> None:
    """Remove ``sidecar`` if no process holds its lock (the release protocol)."""
    import fcntl

    try:
        fd = os.open(sidecar, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino == os.stat(sidecar).st_ino:
            os.unlink(sidecar)
    except OSError:
        pass  # held by another process, or already gone
    finally:
        os.close(fd)
