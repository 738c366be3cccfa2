"""A fit of Parquet files column by column: each channel's column read alone
(a wide table's, a few side by side).

pyarrow decodes a column chunk read alone for about 0.6-0.75 of the CPU time
it spends on the same column inside record batches of every column (16
float32 columns, 1 GiB: 0.72 CPU-s against 0.98-1.2, in one run), and a
column read alone lands as one contiguous array that the kernel reads in
place, without the channel-major copy of the whole table. Each channel's
moving statistics depend on that channel's values alone, so the stream is
cut into ranges at row-group starts, each ``(range, channel)`` is folded by
a worker (:func:`bncli.engines.blocks.fold_range`: the whole batches, and
the pieces of the batches that straddle the range's ends), and the channels
of a range are stacked into one :class:`~bncli.engines.blocks.RangeFold`
that :class:`~bncli.engines.blocks.EpochFold` joins in stream order: the
same batches, the same per-batch moments as a fit of whole chunks.

A table of more than :data:`GROUPS` channels is read :data:`GROUP_COLUMNS`
or fewer columns a task: a reader costs about 1.5 ms to open and holds its
state for every column it reads, so 1,024 float32 columns (256 MiB) took
1.7 s a column at a time, and read together in whole chunks 1.7 s and
710 MiB of memory (pyarrow holds every column's reader and pages); 16 a
task take 0.23 s and 19 MiB of Arrow's memory (``pq.read_table``: 0.2-1.0 s).

Where a range holds a NaN or an infinity, it is read again in whole chunks,
for the error to name the first one in stream order, as the chunk path does.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from bncli.engines.base import BlockFold, FitOptions, FitParams
from bncli.engines.blocks import (
    EpochFold,
    FitPlan,
    RangeFold,
    fold_range,
    quiet_nonfinite,
)
from bncli.engines.inputs import chunk_bytes
from bncli.engines.threads import ordered_results
from bncli.errors import DataError
from bncli.io.batching import block_rows
from bncli.io.dataset import Dataset

__all__ = [
    "GROUPS",
    "GROUP_COLUMNS",
    "MAX_CHANNELS",
    "MIN_ROWS",
    "RANGE_ROWS",
    "applies",
    "column_groups",
    "epoch_folds",
    "stack_channels",
]

#: Rows a range holds at least (row groups are joined up to it): each of its
#: columns is a task, so a range must repay the opening of its readers.
RANGE_ROWS = 1 << 20

#: Rows a fit must hold, and channels it may hold at most, to go column by
#: column: a task per column (or group of columns) and range costs a reader
#: of its own, which a small table (50,000 columns of 8 rows) would not repay.
MIN_ROWS = 1 << 16
MAX_CHANNELS = 1 << 16

#: Tasks a range's channels are spread over before columns are grouped, and
#: columns a task reads at most (see the module's note).
GROUPS = 64
GROUP_COLUMNS = 16

#: Bytes of float64 values a task decodes at once: a column's whole row
#: groups of up to 1Mi rows (a column decoded whole costs least), 8 MiB per
#: worker.
PIECE_BYTES = 8 << 20


def applies(dataset: Dataset) -> bool:
    """Whether ``dataset`` is fitted column by column.

    Parquet files (local or not: the choice, and so the bits, depend on the
    data alone) of at least :data:`MIN_ROWS` rows and 2 to
    :data:`MAX_CHANNELS` channels: files whose columns can be read alone
    cheaply (not CSV, nor Arrow streams).
    """
    return (
        dataset.kind == "table"
        and 1 < len(dataset.features) <= MAX_CHANNELS
        and (dataset.num_samples or 0) >= MIN_ROWS
        and all(s.columns_alone for s in dataset.sources)
    )


def epoch_folds(
    dataset: Dataset,
    params: FitParams,
    options: FitOptions,
    first: int,
    workers: int,
) -> Iterator[BlockFold]:
    """The folds of an epoch from sample ``first``, a range at a time, in order."""
    total = dataset.num_samples
    assert total is not None
    batch_size = params.batch_size
    fitted = total // batch_size * batch_size if options.drop_remainder else total
    plan = FitPlan(params, fitted)
    groups = column_groups(list(dataset.features))
    channels = [dataclasses.replace(dataset, features=g) for g in groups]
    plans = {
        n: FitPlan(dataclasses.replace(params, channels=n), fitted)
        for n in {len(g) for g in groups}
    }
    ranges = cut_ranges(*unit_starts(dataset), first, fitted)

    @quiet_nonfinite
    def fold(task: tuple[tuple[int, int], int]) -> RangeFold | DataError:
        (start, stop), j = task
        width = len(groups[j])
        rows = block_rows(batch_size, 8 * width, PIECE_BYTES)
        try:
            chunks = channels[j].chunks(start, rows)
            return fold_range(chunks, start, stop, plans[width])
        except DataError as e:  # read again whole, below, for the first one
            return e

    epoch = EpochFold(plan)
    tasks = ((r, j) for r in ranges for j in range(len(channels)))
    results = ordered_results(fold, tasks, workers)
    try:
        for start, stop in ranges:
            parts = list(itertools.islice(results, len(channels)))
            if any(isinstance(p, DataError) for p in parts):
                _raise_first_error(dataset, start, stop, plan)
                raise next(p for p in parts if isinstance(p, DataError))
            folded, batches = epoch.add(stack_channels(parts))
            # A checkpoint resumes at a batch's start: not inside one still open.
            end = stop if stop == fitted else stop // batch_size * batch_size
            yield BlockFold(folded, batches, stop - start, end)
    finally:
        # Leaving early (an error, a signal): the workers stop here, now.
        results.close()


def column_groups(features: list[str]) -> list[list[str]]:
    """``features`` in groups read by one task each, in order: one column a
    group up to :data:`GROUPS` channels, then up to :data:`GROUP_COLUMNS`.

    Example:
        >>> [len(g) for g in column_groups([f"c{j}" for j in range(16)])]
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
        >>> [len(g) for g in column_groups([f"c{j}" for j in range(150)])][-3:]
        [3, 3, 3]
    """
    size = min(GROUP_COLUMNS, -(-len(features) // GROUPS))
    return [features[i : i + size] for i in range(0, len(features), size)]


def unit_starts(dataset: Dataset) -> tuple[list[int], set[int]]:
    """Stream positions of every row group's start, and of every file's."""
    starts: list[int] = []
    files: set[int] = set()
    offset = 0
    for source in dataset.sources:
        files.add(offset)
        for n in source.unit_rows() or [source.num_rows or 0]:
            starts.append(offset)
            offset += n
    return starts, files


def cut_ranges(
    starts: Sequence[int], files: set[int], first: int, stop: int
) -> list[tuple[int, int]]:
    """``[first, stop)`` cut at unit starts into ranges of ``RANGE_ROWS`` or
    more, and at every file's start (a file's fold is checkpointed before
    the next file is read).

    Example:
        >>> cut_ranges([0, 600_000, 1_200_000, 1_800_000], {0}, 0, 2_000_000)
        [(0, 1200000), (1200000, 2000000)]
    """
    bounds = [first]
    for position in starts:
        wanted = position - bounds[-1] >= RANGE_ROWS or position in files
        if wanted and bounds[-1] < position < stop:
            bounds.append(position)
    if stop > bounds[-1]:
        bounds.append(stop)
    return list(itertools.pairwise(bounds))


def stack_channels(parts: Sequence[Any]) -> Any:
    """One channel's folds (or pieces, moments, arrays) of a range, stacked.

    Arrays are joined along their last axis (the channels); counts and batch
    indexes, the same for every channel, are taken once.
    """
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts, axis=-1)
    if isinstance(first, dict):
        return {key: stack_channels([p[key] for p in parts]) for key in first}
    if dataclasses.is_dataclass(first):
        return dataclasses.replace(
            first,  # type: ignore[type-var]
            **{
                f.name: stack_channels([getattr(p, f.name) for p in parts])
                for f in dataclasses.fields(first)
            },
        )
    if any(p != first for p in parts):  # pragma: no cover - a planning bug
        raise RuntimeError(f"channels of one range disagree: {parts!r}")
    return first


def _raise_first_error(dataset: Dataset, start: int, stop: int, plan: FitPlan) -> None:
    """Fold ``[start, stop)`` in whole chunks: the error that names the first
    bad value in stream order (row, then column) is raised there."""
    rows = block_rows(plan.params.batch_size, *chunk_bytes(dataset))
    quiet_nonfinite(fold_range)(dataset.chunks(start, rows), start, stop, plan)
