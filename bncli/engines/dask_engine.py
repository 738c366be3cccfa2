"""The Dask engine: fit and transform on a Dask cluster, equal to the local engine.

Dask is an optional extra (``pip install 'bncli[dask]'``) and is imported
here only, inside the functions that need it, never when bncli is imported.

What travels: the client reads metadata only (Parquet row-group sizes, NPY
shapes, Arrow IPC batch sizes) and sends each task file paths and a range of
samples; workers open the same paths themselves, so every worker must see
the inputs (and, for ``transform``, the output's folder) under the same
paths as the client. Back come O(channels) numbers per task for ``fit``, a
sample count for ``transform``.

Fit. Each epoch's stream ``[0, N)`` is cut into contiguous ranges of samples
at row-group (or file) boundaries, about equal in size, at least one per
worker thread. A task returns a :class:`TaskFold`: the :class:`Fold` of the
batches it holds whole, and the moments (per shard, for unsynchronized
replicas) of the batches it shares with its neighbours, a *head* piece and a
*tail* piece. The client merges the pieces of each straddling batch with
Chan's formula (:func:`bncli.kernels.merge_moments`), folds it as one batch,
and composes everything in stream order. As every epoch is batched on its
own and reads the same samples, its fold is the same: the tasks run once and
the fold is applied once per epoch. CSV and Arrow IPC stream files carry no
row count: one task per such file counts its rows first, and tasks start
only where such a file starts.

Transform. Each task normalizes its own range and writes its own part (task
ranges start on batch boundaries in training mode, so batches never
straddle tasks). A Parquet output is a folder of ordered parts
``part-00000.parquet``, ...; with ``single_file``, and for every other
format, the parts are written to a scratch folder beside the output and
joined into the one file on the client, streaming.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import shutil
import socket
import time
import warnings
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from bncli import kernels
from bncli.engines.base import (
    FitOptions,
    FitParams,
    FitSummary,
    TransformOptions,
    TransformSummary,
    check_positive,
)
from bncli.engines.local import (
    default_workers,
    fold_block,
    open_fit_dataset,
    open_transform_dataset,
    require_trainable,
    transform_chunk,
)
from bncli.errors import BncliError, DataError, UsageError
from bncli.io.atomic import atomic_path, scratch_folder
from bncli.io.batching import batch_blocks, block_rows
from bncli.io.sources import (
    TABLE_BATCH_ROWS,
    ArraySource,
    Chunk,
    Dataset,
    Source,
    TableSource,
    sniff_format,
)
from bncli.progress import NullProgress, Progress

__all__ = [
    "INSTALL_COMMAND",
    "EpochFold",
    "FitPlan",
    "InputFile",
    "Piece",
    "Task",
    "TaskFold",
    "fit_layer",
    "fit_task",
    "plan_ranges",
    "transform_layer",
    "transform_task",
]

#: What to run when Dask is missing.
INSTALL_COMMAND = "pip install 'bncli[dask]'"
#: The address schemes of a scheduler that bncli can reach from its own process.
SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss")
#: Seconds to wait for a scheduler to answer.
CONNECT_TIMEOUT = 5.0
#: About this many bytes of float64 samples per task, beyond one per worker.
TASK_BYTES = 64 << 20
_PART_SUFFIX = {"parquet": ".parquet", "arrow": ".arrow", "csv": ".csv", "npy": ".npy"}


# ------------------------------------------------------------------ the cluster


def _import_distributed() -> Any:
    """``distributed``, or a usage error naming the install command."""
    try:
        import distributed
    except ImportError as e:
        raise UsageError(
            f"--engine dask needs Dask, which is not installed; install it with: "
            f"{INSTALL_COMMAND}"
        ) from e
    return distributed


def _unreachable(address: str, reason: str) -> BncliError:
    return BncliError(
        f"cannot reach the Dask scheduler at {address} ({reason})",
        hint="check the address and that the scheduler is running",
    )


def _probe(address: str) -> None:
    """Fail fast, with one clear error, when no Dask scheduler answers at ``address``.

    A plain socket first: Dask's own connect retries until its timeout even
    when the port is closed, where a socket is refused at once. Then Dask's
    handshake, alone, so that a service that is not a scheduler is named as
    such, rather than failing deep inside a half-built client.
    """
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.core import connect
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(address)
        get_backend(scheme)
    except ValueError as e:
        raise UsageError(f"bad scheduler address {address!r} ({e})") from e
    if scheme not in SCHEDULER_SCHEMES:
        # inproc:// lives in one process (bncli's has no scheduler), and ucx://
        # needs UCX: both would only time out, with Dask's traceback.
        raise UsageError(
            f"scheduler address {address!r}: the {scheme}:// scheme is not "
            f"supported; use one of {', '.join(s + '://' for s in SCHEDULER_SCHEMES)}"
        )
    if scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parse_host_port(location, 8786)
    except ValueError as e:
        raise UsageError(f"bad scheduler address {address!r} ({e})") from e
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise _unreachable(address, e.strerror or type(e).__name__) from e
    if scheme != "tcp":
        return  # a TLS handshake needs the client's credentials

    async def handshake() -> None:
        # Dask bounds the connection but not its handshake: a service that
        # accepts and then waits for a request of its own (an HTTP server, the
        # dashboard's port) would hold the handshake forever.
        comm = await asyncio.wait_for(
            connect(address, timeout=CONNECT_TIMEOUT),  # type: ignore[no-untyped-call]
            CONNECT_TIMEOUT,
        )
        await comm.close()

    # In a thread of its own, as the caller may be running an event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, handshake()).result()
        except TimeoutError as e:
            raise _unreachable(
                address,
                f"no Dask handshake within {CONNECT_TIMEOUT:g} s: what answers is "
                "not a Dask scheduler",
            ) from e
        except OSError as e:
            raise _unreachable(address, _first_line(e)) from e
        except Exception as e:
            raise _unreachable(address, "what answers is not a Dask scheduler") from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def _connect(
    distributed: Any, scheduler: str | None, workers: int | None
) -> Iterator[tuple[Any, int]]:
    """A client of ``scheduler``, or of a local cluster of ``workers`` processes.

    Yields:
        ``(client, threads)``: the client and the cluster's worker threads.
    """
    cluster = None
    if scheduler is not None:
        _probe(scheduler)
        try:
            client = distributed.Client(
                scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False
            )
        except Exception as e:
            raise _unreachable(scheduler, _first_line(e)) from e
    else:
        with warnings.catch_warnings():
            # Its HTTP server moves off a busy port 8787 with a warning that
            # would only add noise on stderr.
            warnings.filterwarnings("ignore", "Port .* is already in use", UserWarning)
            cluster = distributed.LocalCluster(
                n_workers=workers or default_workers(),
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        client = distributed.Client(cluster, set_as_default=False)
    try:
        threads = sum(client.nthreads().values())
        if not threads:
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as e:
                raise BncliError(
                    f"the Dask scheduler at {scheduler} has no worker",
                    hint="start workers with: dask worker ADDRESS",
                ) from e
            threads = sum(client.nthreads().values())
        yield client, max(threads, 1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _results(distributed: Any, futures: Sequence[Any]) -> Iterator[Any]:
    """The futures' results in order; a failed task raises its own error."""
    try:
        for future in futures:
            try:
                yield future.result()
            except BncliError:
                raise
            except distributed.KilledWorker as e:
                raise BncliError(
                    f"a Dask worker died while running a task ({e})",
                    hint="check the workers' memory and logs",
                ) from e
            except (OSError, distributed.client.FutureCancelledError) as e:
                raise BncliError(
                    f"the Dask cluster failed ({type(e).__name__}: {e})"
                ) from e
    finally:
        for future in futures:
            if not future.done():
                future.cancel()


# --------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class InputFile:
    """One input file as tasks see it.

    Attributes:
        path: the absolute path, as every worker must see it.
        name: the path as given, for error messages.
        offset: the stream position of its first sample.
        rows: its samples.
        mask: the absolute path of its NPY mask, if any.
        mask_offset: the mask's row of the file's first sample.
    """

    path: str
    name: str
    offset: int
    rows: int
    mask: str | None = None
    mask_offset: int = 0


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How a worker opens the inputs: what :class:`Dataset` holds beside its sources."""

    kind: str
    features: tuple[str, ...]
    sample_shape: tuple[int, ...]
    axis: int
    mask_column: str | None
    nan_policy: str


@dataclasses.dataclass(frozen=True)
class Task:
    """Samples ``[start, stop)`` of an epoch's stream, from the ``files`` holding them."""

    index: int
    start: int
    stop: int
    files: tuple[InputFile, ...]
    options: StreamOptions
    #: Samples per chunk to read (a multiple of the batch size).
    rows: int


def plan_ranges(
    total: int, tasks: int, snap: Callable[[int], int]
) -> list[tuple[int, int]]:
    """Cut ``[0, total)`` into at most ``tasks`` contiguous, non-empty ranges.

    The ideal cuts ``i * total / tasks`` move to ``snap(cut)``: the nearest
    allowed boundary (a row group's start, a batch's start); cuts that
    coincide merge, so fewer ranges result where boundaries are scarce.

    Example:
        >>> plan_ranges(10, 3, lambda p: p // 4 * 4)
        [(0, 4), (4, 10)]
    """
    cuts = sorted(
        {snap(round(i * total / tasks)) for i in range(1, tasks)} - {0, total}
    )
    cuts = [c for c in cuts if 0 < c < total]
    return list(itertools.pairwise([0, *cuts, total]))


def _unit_starts(source: Source, offset: int) -> list[int] | None:
    """Stream positions where a task may start in ``source``: row groups or
    record batches (``None``: anywhere, as in an NPY array)."""
    if source.kind == "array":
        return None
    fmt = getattr(source, "format", None)
    starts = [offset]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        metadata = pq.read_metadata(source.path)
        sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    elif fmt == "arrow":
        import pyarrow as pa

        with pa.memory_map(source.path, "r") as f:
            reader = pa.ipc.open_file(f)
            sizes = [
                reader.get_batch(i).num_rows for i in range(reader.num_record_batches)
            ]
    else:  # CSV: no metadata, one task per file
        return starts
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    return starts


def _snap_to_units(
    dataset: Dataset, files: Sequence[InputFile]
) -> Callable[[int], int]:
    """Snap a cut to the nearest row-group or file start (NPY: anywhere)."""
    starts: list[int] = []
    anywhere = False
    for source, file in zip(dataset.sources, files, strict=True):
        units = _unit_starts(source, file.offset)
        if units is None:
            anywhere = True
            break
        starts.extend(units)
    if anywhere:
        return lambda position: position

    def snap(position: int) -> int:
        i = bisect_left(starts, position)
        nearby = starts[max(i - 1, 0) : i + 1]
        return min(nearby, key=lambda s: (abs(s - position), s))

    return snap


def _snap_to_batches(batch_size: int) -> Callable[[int], int]:
    """Snap a cut to the nearest batch start."""
    return lambda position: round(position / batch_size) * batch_size


def _num_tasks(
    total: int, sample_bytes: int, threads: int, requested: int | None
) -> int:
    """At least one task per worker thread, about :data:`TASK_BYTES` each,
    a multiple of the threads so that they finish together."""
    if requested is not None:
        return requested
    rounds = math.ceil(total * sample_bytes / (TASK_BYTES * threads))
    return threads * max(rounds, 1)


def _count_rows(path: str) -> int:
    """Samples in a file without metadata (CSV), counted by reading it."""
    source = _open_file(path)
    return sum(batch.num_rows for batch in source.chunks(0, TABLE_BATCH_ROWS))


def _sizes(distributed: Any, client: Any, dataset: Dataset) -> list[int]:
    """Every input's samples: from metadata, or counted by one task per file."""
    sizes = [s.num_rows for s in dataset.sources]
    unknown = [i for i, n in enumerate(sizes) if n is None]
    if unknown:
        paths = [_absolute(dataset.sources[i].path) for i in unknown]
        futures = client.map(_count_rows, paths, pure=False)
        for i, n in zip(unknown, _results(distributed, futures), strict=True):
            sizes[i] = n
    return [int(n or 0) for n in sizes]


def _absolute(path: str | os.PathLike[str]) -> str:
    return str(Path(path).resolve())


def _input_files(
    dataset: Dataset,
    sizes: Sequence[int],
    mask: Sequence[str | os.PathLike[str]] | None,
) -> list[InputFile]:
    """The inputs with their stream offsets and masks, as tasks read them."""
    files = []
    offset = 0
    whole_stream_mask = bool(mask) and len(mask or ()) == 1 and len(sizes) > 1
    for i, (source, rows) in enumerate(zip(dataset.sources, sizes, strict=True)):
        mask_path = mask_offset = None
        if mask:
            mask_path = _absolute(mask[0] if whole_stream_mask else mask[i])
            mask_offset = offset if whole_stream_mask else 0
        files.append(
            InputFile(
                _absolute(source.path),
                source.path,
                offset,
                rows,
                mask_path,
                mask_offset or 0,
            )
        )
        offset += rows
    return files


def _tasks(
    ranges: Sequence[tuple[int, int]],
    files: Sequence[InputFile],
    dataset: Dataset,
    rows: int,
) -> list[Task]:
    options = StreamOptions(
        kind=dataset.kind,
        features=tuple(dataset.features),
        sample_shape=tuple(dataset.sample_shape),
        axis=dataset.axis,
        mask_column=dataset.mask_column,
        nan_policy=dataset.nan_policy,
    )
    tasks = []
    for index, (start, stop) in enumerate(ranges):
        held = tuple(
            f for f in files if f.offset < stop and f.offset + f.rows > start and f.rows
        )
        tasks.append(Task(index, start, stop, held, options, rows))
    return tasks


# ---------------------------------------------------------- reading, on workers


@contextlib.contextmanager
def _naming_inputs(files: Sequence[InputFile]) -> Iterator[None]:
    """Name inputs in errors as the user gave them, not by absolute path."""
    try:
        yield
    except BncliError as e:
        names = {f.path: f.name for f in files}
        if e.path in names:
            e.path = names[e.path]
        raise


def _open_file(path: str) -> Source:
    fmt = sniff_format(path)
    return ArraySource(path) if fmt == "npy" else TableSource(path, fmt)


def _read(task: Task, all_columns: bool = False) -> Iterator[Chunk]:
    """The task's samples as chunks of at most ``task.rows``, in order."""
    sources = []
    masks = []
    for file in task.files:
        source = _open_file(file.path)
        if source.num_rows is not None and source.num_rows != file.rows:
            raise DataError(
                f"{source.num_rows} samples on a worker, {file.rows} on the client; "
                "the workers must see the same files as the client",
                path=file.path,
            )
        sources.append(source)
        if file.mask is not None:
            array = np.load(file.mask, mmap_mode="r", allow_pickle=False)
            masks.append(array[file.mask_offset : file.mask_offset + file.rows])
    options = task.options
    dataset = Dataset(
        sources=sources,
        kind=options.kind,
        features=list(options.features),
        sample_shape=options.sample_shape,
        axis=options.axis,
        mask_column=options.mask_column,
        masks=masks or None,
        nan_policy=options.nan_policy,
    )
    remaining = task.stop - task.start
    for chunk in dataset.chunks(
        task.start - task.files[0].offset, task.rows, all_columns
    ):
        if len(chunk) >= remaining:
            yield chunk.slice(0, remaining) if len(chunk) > remaining else chunk
            return
        yield chunk
        remaining -= len(chunk)


class _Taker:
    """Hands out consecutive runs of exactly ``n`` samples of a chunk stream."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self._chunks = chunks
        self._left: Chunk | None = None

    def take(self, n: int) -> Iterator[Chunk]:
        while n > 0:
            chunk = self._left if self._left is not None else next(self._chunks, None)
            self._left = None
            if chunk is None:
                return
            if len(chunk) > n:
                self._left = chunk.slice(n, len(chunk))
                chunk = chunk.slice(0, n)
            n -= len(chunk)
            yield chunk


# ------------------------------------------------------------------ fit tasks


@dataclasses.dataclass(frozen=True)
class Piece:
    """Part of a batch that straddles tasks: per shard, the moments of its samples.

    Attributes:
        batch: the batch's index in the epoch.
        samples: the samples of the batch the piece holds.
        shards: shard index (in ``shard_bounds`` order) -> moments of the
            piece's samples in that shard, arrays of shape ``(C,)``.
    """

    batch: int
    samples: int
    shards: dict[int, kernels.Moments]

    def merge(self, other: Piece) -> Piece:
        """This piece and the next one of the same batch, with Chan's formula."""
        shards = dict(self.shards)
        for index, moments in other.shards.items():
            mine = shards.get(index)
            shards[index] = (
                moments if mine is None else kernels.merge_moments(mine, moments)
            )
        return Piece(self.batch, self.samples + other.samples, shards)


@dataclasses.dataclass(frozen=True)
class TaskFold:
    """What a fit task sends back: O(channels) numbers.

    Attributes:
        head: the end of a batch begun in an earlier task, if any.
        fold: the fold of the batches the task holds whole.
        batches: how many there are.
        tail: the start of a batch that ends in a later task, if any.
    """

    head: Piece | None
    fold: kernels.Fold
    batches: int
    tail: Piece | None


@dataclasses.dataclass(frozen=True)
class FitPlan:
    """What every fit task shares: the batching of the epoch."""

    params: FitParams
    #: Samples in the epoch that are fitted (without a dropped remainder).
    samples: int

    def batch_size_of(self, batch: int) -> int:
        """Samples in batch ``batch`` (the last one may be partial)."""
        start = batch * self.params.batch_size
        return min(start + self.params.batch_size, self.samples) - start

    def shards_of(self, batch: int) -> list[tuple[int, int]]:
        """The shards of a batch whose statistics are taken apart."""
        size = self.batch_size_of(batch)
        params = self.params
        if params.replicas > 1 and not params.synchronized:
            return kernels.shard_bounds(size, params.replicas)
        return [(0, size)]


def _piece(chunks: Iterator[Chunk], start: int, plan: FitPlan) -> Piece:
    """The moments of samples ``start, ...`` (all in one batch), per shard."""
    batch = start // plan.params.batch_size
    position = start - batch * plan.params.batch_size
    bounds = plan.shards_of(batch)
    shards: dict[int, kernels.Moments] = {}
    samples = 0
    for chunk in chunks:
        rows = kernels.to_rows(chunk.data, chunk.axis)
        n = len(chunk)
        for index, (first, last) in enumerate(bounds):
            lo, hi = max(first, position) - position, min(last, position + n) - position
            if lo >= hi:
                continue
            x = cast(
                npt.NDArray[np.floating[Any]], rows[lo:hi].reshape(-1, rows.shape[-1])
            )
            mask = None
            if chunk.mask is not None:
                mask = chunk.mask[lo:hi].reshape(-1, chunk.mask.shape[-1])
            moments = kernels.moments(x, mask)
            valid = moments.count > 0
            if not (
                np.isfinite(moments.mean[valid]).all()
                and np.isfinite(moments.variance[valid]).all()
            ):
                chunk.slice(lo, hi).raise_nonfinite()
            mine = shards.get(index)
            shards[index] = (
                moments if mine is None else kernels.merge_moments(mine, moments)
            )
        position += n
        samples += n
    return Piece(batch, samples, shards)


def fit_task(task: Task, plan: FitPlan) -> TaskFold:
    """Fold a task's range: whole batches folded, straddling ones as pieces.

    Runs on a worker. The head is ``[start, next batch start)``, the tail
    ``[last batch start, stop)``; at the end of the epoch the final, partial
    batch is whole if the task holds its start.
    """
    with np.errstate(invalid="ignore", over="ignore"), _naming_inputs(task.files):
        return _fit_range(task, plan)


def _fit_range(task: Task, plan: FitPlan) -> TaskFold:
    batch_size = plan.params.batch_size
    start, stop = task.start, task.stop
    head_stop = min(stop, -(-start // batch_size) * batch_size)
    tail_start = (
        stop
        if stop == plan.samples
        else max(head_stop, stop // batch_size * batch_size)
    )
    taker = _Taker(_read(task))
    head = (
        _piece(taker.take(head_stop - start), start, plan)
        if head_stop > start
        else None
    )
    fold = kernels.identity_fold(plan.params.channels)
    batches = 0
    for block in batch_blocks(taker.take(tail_start - head_stop), batch_size):
        block_fold, num_batches, _ = fold_block(block.chunk, plan.params)
        fold = kernels.compose(fold, block_fold)
        batches += num_batches
    tail = None
    if stop > tail_start:
        tail = _piece(taker.take(stop - tail_start), tail_start, plan)
    return TaskFold(head, fold, batches, tail)


class EpochFold:
    """Combines task folds, in stream order, into the fold of an epoch."""

    def __init__(self, plan: FitPlan) -> None:
        self.plan = plan
        self.fold = kernels.identity_fold(plan.params.channels)
        self.batches = 0
        self._open: Piece | None = None

    def add(self, result: TaskFold) -> None:
        """Compose the next task's result."""
        if result.head is not None:
            self._add_piece(result.head)
        if result.batches:
            self._require_closed()
            self.fold = kernels.compose(self.fold, result.fold)
            self.batches += result.batches
        if result.tail is not None:
            self._add_piece(result.tail)

    def finish(self) -> tuple[kernels.Fold, int]:
        """The epoch's fold and batch count."""
        self._require_closed()
        return self.fold, self.batches

    def _require_closed(self) -> None:
        if self._open is not None:  # pragma: no cover - a planning bug
            raise RuntimeError(f"batch {self._open.batch} is incomplete")

    def _add_piece(self, piece: Piece) -> None:
        if self._open is None:
            self._open = piece
        elif self._open.batch == piece.batch:
            self._open = self._open.merge(piece)
        else:  # pragma: no cover - a planning bug
            raise RuntimeError(f"batch {self._open.batch} is incomplete")
        if self._open.samples == self.plan.batch_size_of(self._open.batch):
            self.fold = kernels.compose(self.fold, self._fold_batch(self._open))
            self.batches += 1
            self._open = None

    def _fold_batch(self, piece: Piece) -> kernels.Fold:
        stats = kernels.combine_shards([piece.shards[i] for i in sorted(piece.shards)])
        valid = stats.count > 0
        if not (
            np.isfinite(stats.mean[valid]).all()
            and np.isfinite(stats.variance[valid]).all()
        ):
            raise DataError(
                "values too large: their moments overflow float64", batch=piece.batch
            )
        return kernels.fold_batches(
            stats.mean[None],
            stats.variance[None],
            valid[None],
            self.plan.params.momentum,
        )


# ------------------------------------------------------------------------- fit


def _refuse_stdin(paths: Sequence[str | os.PathLike[str]]) -> None:
    if any(os.fspath(p) == "-" for p in paths):
        raise UsageError(
            "'-' (stdin) cannot be used with --engine dask: the workers read the "
            "input files themselves"
        )


def fit_layer(
    layer: Any,
    paths: Sequence[str | os.PathLike[str]],
    options: FitOptions | None = None,
    *,
    scheduler: str | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    tasks: int | None = None,
) -> Any:
    """Fit ``layer`` on files with a Dask cluster, as the local engine would.

    The same arguments, checks, updates and result as
    :func:`bncli.engines.local.fit_layer`, which it equals (to rounding) for
    any number of workers and tasks.

    Args:
        layer: the :class:`bncli.BatchNormalization` to update in place.
        paths: input files or folders (not stdin).
        scheduler: a scheduler address (``tcp://HOST:PORT``); ``None`` starts
            a local cluster of ``workers`` processes on 127.0.0.1.
        options: as for the local engine; ``workers`` is the number of
            worker processes of a local cluster (default: every core),
            ignored with ``scheduler``.
        progress: receives the samples done.
        resume, checkpoint_every: not supported by this engine (refused).
        tasks: tasks per epoch (default: at least one per worker thread,
            about 64 MiB of samples each).

    Returns:
        A :class:`bncli.layer.FitSummary`.

    Raises:
        UsageError: Dask missing, stdin, ``resume`` or ``checkpoint_every``.
        BncliError: an unreachable scheduler (exit 1).
        StateFrozenError, StateMismatchError, DataError: as the local engine.
    """

    started = time.perf_counter()
    progress = progress or NullProgress()
    distributed = _import_distributed()
    if resume:
        raise UsageError(
            "--resume is not supported with --engine dask; fit again from the "
            "start, or resume with --engine local"
        )
    if checkpoint_every is not None:
        raise UsageError(
            "--checkpoint-every is not supported with --engine dask; use "
            "--engine local for checkpoints"
        )
    require_trainable(layer)
    options = (options or FitOptions()).checked()
    batch_size, epochs, workers = options.batch_size, options.epochs, options.workers
    if tasks is not None:
        tasks = check_positive("tasks", tasks)
    _refuse_stdin(paths)
    dataset = open_fit_dataset(layer, paths, options, replay=True)
    params = FitParams(
        batch_size, layer.momentum, options.replicas, layer.synchronized, layer.channels
    )
    sample_bytes = int(np.prod(dataset.sample_shape)) * 8
    with _connect(distributed, scheduler, workers) as (client, threads):
        sizes = _sizes(distributed, client, dataset)
        total = sum(sizes)
        samples = total // batch_size * batch_size if options.drop_remainder else total
        if samples == 0:
            raise DataError(
                "empty input: no sample to fit", path=dataset.sources[0].path
            )
        files = _input_files(dataset, sizes, options.mask)
        count = _num_tasks(samples, sample_bytes, threads, tasks)
        ranges = plan_ranges(samples, count, _snap_to_units(dataset, files))
        plan = FitPlan(params, samples)
        specs = _tasks(ranges, files, dataset, block_rows(batch_size, sample_bytes))
        futures = client.map(fit_task, specs, plan=plan, pure=False)
        progress.start(samples * epochs, dataset.sample_bytes)
        epoch = EpochFold(plan)
        for spec, result in zip(specs, _results(distributed, futures), strict=True):
            epoch.add(result)
            progress.advance((spec.stop - spec.start) * epochs)
        fold, batches = epoch.finish()
    for _ in range(epochs):
        layer.apply_fold(fold, batches=batches, samples=samples)
        layer.epochs += 1
    layer.resume = None
    progress.finish()
    return FitSummary(
        batches * epochs, samples * epochs, epochs, time.perf_counter() - started
    )


# ------------------------------------------------------------------- transform


@dataclasses.dataclass(frozen=True)
class TransformJob:
    """What every transform task shares."""

    layer: Any
    dtype: np.dtype[Any]
    training: bool
    batch_size: int
    replicas: int
    nan_policy: str
    #: The first input: its schema is the output's, as with the local engine.
    first: str
    folder: str
    suffix: str
    width: int

    def part(self, index: int) -> str:
        """The path of part ``index``."""
        return os.path.join(self.folder, f"part-{index:0{self.width}d}{self.suffix}")


def transform_task(task: Task, job: TransformJob) -> int:
    """Normalize a task's range into its own part; return its samples.

    Runs on a worker. In training mode the range starts on a batch boundary,
    so its batches are the stream's.
    """
    from bncli.io.sinks import open_sink

    options = task.options
    schema_source = Dataset(
        sources=[_open_file(job.first)],
        kind=options.kind,
        features=list(options.features),
        sample_shape=options.sample_shape,
        axis=options.axis,
    )
    chunks: Iterator[Chunk] = _read(task, all_columns=True)
    if job.training:
        chunks = (b.chunk for b in batch_blocks(chunks, job.batch_size))
    samples = 0
    with (
        _naming_inputs(task.files),
        np.errstate(invalid="ignore", over="ignore"),
        open_sink(job.part(task.index), schema_source, job.dtype) as sink,
    ):
        for chunk in chunks:
            y = transform_chunk(
                chunk,
                job.layer,
                job.dtype,
                training=job.training,
                batch_size=job.batch_size,
                replicas=job.replicas,
                nan_policy=job.nan_policy,
            )
            sink.write(chunk, y)
            samples += len(chunk)
    return samples


def transform_layer(
    layer: Any,
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    options: TransformOptions | None = None,
    *,
    scheduler: str | None = None,
    single_file: bool = False,
    progress: Progress | None = None,
    tasks: int | None = None,
) -> TransformSummary:
    """Normalize files into ``output`` with a Dask cluster, as the local engine.

    A Parquet ``output`` becomes a folder of ordered parts
    (``part-00000.parquet``, ...) unless ``single_file``; other formats are
    always one file, joined from the parts on the client. Read in order, the
    output equals the local engine's. Written atomically: nothing is left
    behind on an error.

    Args:
        layer: a built :class:`bncli.BatchNormalization`.
        paths: input files or folders (not stdin).
        output: a ``.parquet``, ``.arrow``/``.feather``/``.ipc``, ``.csv`` or
            ``.npy`` path (not ``-``); workers must see its folder.
        options: as for the local engine; ``workers`` as for :func:`fit_layer`.
        scheduler, tasks: as for :func:`fit_layer`.
        single_file: join a Parquet output's parts into one file.
        progress: receives the samples done.

    Returns:
        A :class:`bncli.engines.local.TransformSummary`.

    Raises:
        UsageError: Dask missing, stdin or stdout, an existing output without
            ``overwrite``, an output that is or holds an input.
        BncliError: an unreachable scheduler (exit 1).
        DataError: as the local engine.
    """
    from bncli.io.sinks import output_dtype_for, sink_format

    started = time.perf_counter()
    progress = progress or NullProgress()
    distributed = _import_distributed()
    layer.require_built()
    options = (options or TransformOptions()).checked()
    batch_size, workers = options.batch_size, options.workers
    if tasks is not None:
        tasks = check_positive("tasks", tasks)
    training = bool(options.training and layer.trainable)
    output = os.fspath(output)
    if output == "-":
        raise UsageError(
            "--engine dask writes a file or a folder, not stdout; give -o PATH, "
            "or use --engine local for -o -"
        )
    _refuse_stdin(paths)
    parts_folder = not single_file and sink_format(output, "table") == "parquet"
    dataset, target = open_transform_dataset(
        layer, paths, output, options, folder=parts_folder
    )
    if target.stream or target.path is None:
        raise UsageError(
            f"{output}: --engine dask writes a file or a folder, not a FIFO or a "
            "device; use --engine local"
        )
    fmt = sink_format(output, dataset.kind)
    dtype = output_dtype_for(layer, options.output_dtype)
    sample_bytes = int(np.prod(dataset.sample_shape)) * 8
    with _connect(distributed, scheduler, workers) as (client, threads):
        sizes = _sizes(distributed, client, dataset)
        total = sum(sizes)
        if total == 0:
            raise DataError(
                "empty input: nothing to transform", path=dataset.sources[0].path
            )
        files = _input_files(dataset, sizes, options.mask)
        count = _num_tasks(total, sample_bytes, threads, tasks)
        if training:  # tasks start on batch boundaries: batches never straddle
            snap = _snap_to_batches(batch_size)
        else:
            snap = _snap_to_units(dataset, files)
        ranges = plan_ranges(total, count, snap)
        rows = block_rows(batch_size if training else 1, sample_bytes)
        specs = _tasks(ranges, files, dataset, rows)

        def run(folder: Path) -> int:
            job = TransformJob(
                layer=layer,
                dtype=dtype,
                training=training,
                batch_size=batch_size,
                replicas=options.replicas,
                nan_policy=options.nan_policy,
                first=files[0].path,
                folder=str(folder.resolve()),  # workers have their own cwd
                suffix=_PART_SUFFIX[fmt],
                width=max(5, len(str(len(specs) - 1))),
            )
            futures = client.map(transform_task, specs, job=job, pure=False)
            progress.start(total, dataset.sample_bytes)
            samples = 0
            for n in _results(distributed, futures):
                samples += n
                progress.advance(n)
            return samples

        if fmt == "parquet" and not single_file:
            with atomic_path(target.path, directory=True) as folder:
                samples = run(folder)
        else:
            with scratch_folder(target.path) as folder:
                samples = run(folder)
                parts = sorted(folder.glob(f"part-*{_PART_SUFFIX[fmt]}"))
                with atomic_path(target.path) as tmp:
                    _join(fmt, parts, tmp)
    progress.finish()
    return TransformSummary(samples, output, time.perf_counter() - started)


#: Bytes copied at a time when joining parts.
_COPY_BYTES = 8 << 20


def _join(fmt: str, parts: Sequence[Path], target: Path) -> None:
    """Join ordered parts into ``target``, streaming: constant memory."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        writer = None
        try:
            for part in parts:
                reader = pq.ParquetFile(part)
                if writer is None:
                    writer = pq.ParquetWriter(str(target), reader.schema_arrow)
                for i in range(reader.num_row_groups):
                    writer.write_table(reader.read_row_group(i))
        finally:
            if writer is not None:
                writer.close()
    elif fmt == "arrow":
        import pyarrow as pa

        writer = None
        try:
            for part in parts:
                with pa.memory_map(str(part), "r") as f:
                    reader = pa.ipc.open_file(f)
                    if writer is None:
                        writer = pa.ipc.new_file(str(target), reader.schema)
                    for i in range(reader.num_record_batches):
                        writer.write_batch(reader.get_batch(i))
        finally:
            if writer is not None:
                writer.close()
    elif fmt == "csv":
        _join_csv(parts, target)
    else:
        _join_npy(parts, target)


def _join_csv(parts: Sequence[Path], target: Path) -> None:
    """Concatenate CSV parts, keeping the first part's header only."""
    header = b""
    with open(target, "wb") as out:
        for index, part in enumerate(parts):
            with open(part, "rb") as f:
                if index == 0:
                    header = _csv_header(part)
                elif f.read(len(header)) != header:  # pragma: no cover - defensive
                    raise BncliError(
                        f"{part}: a part's CSV header differs from the first's"
                    )
                shutil.copyfileobj(f, out, _COPY_BYTES)


def _csv_header(part: Path) -> bytes:
    """The header line(s) pyarrow wrote for ``part``'s columns."""
    import pyarrow as pa
    import pyarrow.csv as csv

    names = csv.open_csv(str(part)).schema.names
    buffer = pa.BufferOutputStream()
    schema = pa.schema([(name, pa.null()) for name in names])
    csv.CSVWriter(buffer, schema).close()
    header: bytes = buffer.getvalue().to_pybytes()
    return header


def _join_npy(parts: Sequence[Path], target: Path) -> None:
    """Concatenate NPY parts along the first axis: one header, then their bytes."""
    from numpy.lib import format as npy

    headers = []
    for part in parts:
        with open(part, "rb") as f:
            version = npy.read_magic(f)
            read = (
                npy.read_array_header_1_0
                if version == (1, 0)
                else npy.read_array_header_2_0
            )
            shape, _, dtype = read(f)
            headers.append((tuple(shape), dtype, f.tell()))
    shape, dtype, _ = headers[0]
    total = sum(h[0][0] for h in headers)
    with open(target, "wb") as out:
        header = {
            "descr": npy.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": (total, *shape[1:]),
        }
        npy.write_array_header_1_0(out, header)
        for part, (_, _, offset) in zip(parts, headers, strict=True):
            with open(part, "rb") as f:
                f.seek(offset)
                shutil.copyfileobj(f, out, _COPY_BYTES)
