"""Planning a Dask job and reading its tasks: ranges, files, chunks.

The client reads metadata only (Parquet row-group sizes, NPY shapes, Arrow
IPC batch sizes) and cuts the stream of samples into :class:`Task` ranges
at row-group (or file) boundaries; a worker opens the same paths itself and
reads its range with :func:`read_task`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncli.engines.dask_cluster import results
from bncli.errors import BncliError, DataError
from bncli.io.chunks import Chunk
from bncli.io.dataset import Dataset
from bncli.io.locations import is_url
from bncli.io.partitions import Keys
from bncli.io.readers import open_source
from bncli.io.sources import TABLE_BATCH_ROWS, ReadOptions, Source, TableSource

__all__ = [
    "TASK_BYTES",
    "InputFile",
    "StreamOptions",
    "Task",
    "absolute",
    "input_files",
    "input_sizes",
    "make_tasks",
    "naming_inputs",
    "num_tasks",
    "open_file",
    "plan_ranges",
    "read_task",
    "snap_to_batches",
    "snap_to_units",
]

#: About this many bytes of float64 samples per task, beyond one per worker.
TASK_BYTES = 64 << 20


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
    #: Hive partition keys of the file's folders (columns of its rows).
    keys: Keys = ()


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How a worker opens the inputs: what :class:`Dataset` holds beside its sources."""

    kind: str
    features: tuple[str, ...]
    sample_shape: tuple[int, ...]
    axis: int
    mask_column: str | None
    nan_policy: str
    read: ReadOptions


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


def unit_starts(source: Source, offset: int) -> list[int] | None:
    """Stream positions where a task may start in ``source``: its units
    (row groups, record batches; only its start where it has none), or
    ``None``: anywhere, as in an NPY array."""
    sizes = source.unit_rows()
    if sizes is None:
        return None
    starts = [offset]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    return starts


def snap_to_units(dataset: Dataset, files: Sequence[InputFile]) -> Callable[[int], int]:
    """Snap a cut to the nearest row-group or file start (NPY: anywhere)."""
    starts: list[int] = []
    anywhere = False
    for source, file in zip(dataset.sources, files, strict=True):
        units = unit_starts(source, file.offset)
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


def snap_to_batches(batch_size: int) -> Callable[[int], int]:
    """Snap a cut to the nearest batch start."""
    return lambda position: round(position / batch_size) * batch_size


def num_tasks(
    total: int, sample_bytes: int, threads: int, requested: int | None
) -> int:
    """At least one task per worker thread, about :data:`TASK_BYTES` each,
    a multiple of the threads so that they finish together."""
    if requested is not None:
        return requested
    rounds = math.ceil(total * sample_bytes / (TASK_BYTES * threads))
    return threads * max(rounds, 1)


def count_rows(path: str, read: ReadOptions) -> int:
    """Samples in a file without metadata (CSV), counted by reading it."""
    source = open_file(path, read)
    return sum(batch.num_rows for batch in source.chunks(0, TABLE_BATCH_ROWS))


def input_sizes(distributed: Any, client: Any, dataset: Dataset) -> list[int]:
    """Every input's samples: from metadata, or counted by one task per file."""
    sizes = [s.num_rows for s in dataset.sources]
    unknown = [i for i, n in enumerate(sizes) if n is None]
    if unknown:
        paths = [absolute(dataset.sources[i].path) for i in unknown]
        futures = client.map(count_rows, paths, read=dataset.read, pure=False)
        for i, n in zip(unknown, results(distributed, futures), strict=True):
            sizes[i] = n
    return [int(n or 0) for n in sizes]


def absolute(path: str | os.PathLike[str]) -> str:
    """The path as every worker must see it: absolute (a URL as it is)."""
    text = os.fspath(path)
    return text if is_url(text) else str(Path(text).resolve())


def input_files(
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
            mask_path = absolute(mask[0] if whole_stream_mask else mask[i])
            mask_offset = offset if whole_stream_mask else 0
        files.append(
            InputFile(
                absolute(source.path),
                source.path,
                offset,
                rows,
                mask_path,
                mask_offset or 0,
                getattr(source, "keys", ()),
            )
        )
        offset += rows
    return files


def make_tasks(
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
        read=dataset.read,
    )
    tasks = []
    for index, (start, stop) in enumerate(ranges):
        held = tuple(
            f for f in files if f.offset < stop and f.offset + f.rows > start and f.rows
        )
        tasks.append(Task(index, start, stop, held, options, rows))
    return tasks


@contextlib.contextmanager
def naming_inputs(files: Sequence[InputFile]) -> Iterator[None]:
    """Name inputs in errors as the user gave them, not by absolute path."""
    try:
        yield
    except BncliError as e:
        names = {f.path: f.name for f in files}
        if e.path in names:
            e.path = names[e.path]
        raise


def open_file(path: str, read: ReadOptions, keys: Keys = ()) -> Source:
    """The reader of an input, on a worker, with its Hive keys."""
    source = open_source(path, read)
    if keys and isinstance(source, TableSource):
        source.add_keys(keys)
    return source


def read_task(task: Task, all_columns: bool = False) -> Iterator[Chunk]:
    """The task's samples as chunks of at most ``task.rows``, in order."""
    sources = []
    masks = []
    for file in task.files:
        source = open_file(file.path, task.options.read, file.keys)
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
