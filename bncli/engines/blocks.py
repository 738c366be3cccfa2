"""The per-block math every engine runs: fit folds, batch pieces, outputs.

An engine cuts its stream into blocks of whole batches (and, where a batch
straddles two workers' ranges, into pieces of it); what it computes on each
is defined here once, so that engines differ only in where they run it.

Fit: :func:`fold_block` reduces a block's batches to one
:class:`bncli.kernels.Fold` (or a population mode's fold); :func:`piece_moments` gives the moments of a
piece of a batch, per shard, and :class:`EpochFold` joins pieces and folds,
in stream order, into the fold of an epoch. Transform: :func:`transform_chunk`
normalizes a chunk into its outputs (:func:`output_rows`, reused through an
:class:`OutputPool`).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar, cast

import numpy as np
import numpy.typing as npt

from bncli import kernels, normalization
from bncli.engines.base import EngineLayer, FitParams
from bncli.errors import DataError
from bncli.io.batching import batch_blocks
from bncli.io.chunks import Chunk

__all__ = [
    "EpochFold",
    "FitPlan",
    "OutputPool",
    "Piece",
    "RangeFold",
    "SampleTaker",
    "all_finite",
    "batch_statistics",
    "fold_block",
    "fold_range",
    "normalize_chunk",
    "output_rows",
    "piece_moments",
    "quiet_nonfinite",
    "transform_chunk",
]

R = TypeVar("R")
P = ParamSpec("P")


def quiet_nonfinite(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` without NumPy's warnings about NaN, infinity or overflow.

    Such values are found and reported as one error naming the column and
    row (:meth:`bncli.io.chunks.Chunk.raise_nonfinite`), or masked out; a
    RuntimeWarning on stderr would only add noise to that one line. The
    setting is per thread, so it is made in the worker that computes.
    """

    @functools.wraps(fn)
    def quiet(*args: P.args, **kwargs: P.kwargs) -> R:
        with np.errstate(invalid="ignore", over="ignore"):
            return fn(*args, **kwargs)

    return quiet


# ---------------------------------------------------------------------- fit


def batch_statistics(
    x: npt.NDArray[Any],
    mask: npt.NDArray[np.bool_] | None,
    samples_per_batch: int,
    replicas: int,
    synchronized: bool,
) -> tuple[kernels.Moments, list[tuple[tuple[int, int], kernels.Moments]]]:
    """Moments of each batch of ``x`` (``(K, R, C)``) for the moving update, and
    the per-shard moments the outputs use (one shard unless unsynchronized
    replicas)."""
    if replicas > 1 and not synchronized:
        return kernels.replica_moments(x, mask, samples_per_batch, replicas)
    stats = kernels.batched_moments(x, mask)
    return stats, [((0, samples_per_batch), stats)]


def equal_batch_runs(chunk: Chunk, batch_size: int) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, samples_per_batch)`` runs of equal-sized batches."""
    n = len(chunk)
    full = n // batch_size * batch_size
    if full:
        yield 0, full, batch_size
    if n > full:
        yield full, n, n - full


def as_batches(
    rows: npt.NDArray[Any],
    mask: npt.NDArray[np.bool_] | None,
    start: int,
    stop: int,
    per_batch: int,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]:
    """Rows ``[start, stop)`` (and their mask) as batches of ``per_batch``
    samples: ``(K, per_batch * P, C)``, a view."""
    n, positions, channels = rows[start:stop].shape
    x = rows[start:stop].reshape(n // per_batch, per_batch * positions, channels)
    if mask is None:
        return x, None
    m = mask[start:stop]
    return x, m.reshape(n // per_batch, per_batch * positions, m.shape[-1])


def _population_fold(
    chunk: Chunk, piece: npt.NDArray[Any], num_batches: int
) -> kernels.AnyFold:
    """The ``"exact"`` fold of a run of unmasked batches: the moments of all its values.

    Taken over cache-sized blocks of rows (each read once, both passes in
    cache) and merged with Chan's formula; never batch by batch.
    """
    channels = piece.shape[2]
    rows = piece.reshape(-1, channels)
    step = max(_EXACT_BLOCK_ELEMENTS // channels, 1)
    whole = len(rows) - len(rows) % step
    parts = [kernels.batched_moments(rows[:whole].reshape(-1, step, channels))]
    if whole < len(rows):
        parts.append(kernels.batched_moments(rows[whole:][None]))
    blocks = kernels.Moments(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("count", "mean", "variance")
        )
    )
    moments = kernels.population_moments(blocks)
    if not (all_finite(moments.mean) and all_finite(moments.variance)):
        chunk.raise_nonfinite()
    return kernels.PopulationFold(
        moments, np.full(channels, num_batches, dtype=np.int64)
    )


#: Values per block of an ``"exact"`` fold: 256 KiB of float64, in cache.
_EXACT_BLOCK_ELEMENTS = 1 << 15


def batches_are_views(rows: npt.NDArray[Any], per_batch: int) -> bool:
    """Whether ``(n, P, C)`` rows view as ``(n // per_batch, per_batch * P, C)`` without a copy."""
    positions = rows.shape[1]
    return (
        positions <= 1
        or per_batch <= 1
        or rows.strides[0] == positions * rows.strides[1]
    )


_scratch = threading.local()


def _moments_scratch(batches: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Two ``(batches, channels)`` float64 arrays, reused within a thread.

    :func:`fold_block` folds a block's moments at once and keeps none of
    them; reusing their memory spares fresh pages (and their page faults)
    on every block, which at small batch sizes cost as much as the moments.
    """
    size = batches * channels
    buffer: np.ndarray | None = getattr(_scratch, "moments", None)
    if buffer is None or buffer.shape[1] < size:
        buffer = np.empty((2, size))
        _scratch.moments = buffer
    return (
        buffer[0, :size].reshape(batches, channels),
        buffer[1, :size].reshape(batches, channels),
    )


@quiet_nonfinite
def fold_block(chunk: Chunk, params: FitParams) -> tuple[kernels.AnyFold, int, int]:
    """The fold of a block's batches, with its batch and sample counts."""
    rows = kernels.to_rows(chunk.data, chunk.axis)
    fold = kernels.identity_fold(params.channels, params.statistics)
    batches = 0
    for start, stop, per_batch in equal_batch_runs(chunk, params.batch_size):
        piece = rows[start:stop]
        num_batches = len(piece) // per_batch
        unmasked = chunk.mask is None and params.one_shard
        if (
            unmasked
            and params.statistics == "exact"
            and piece.shape[1]
            and batches_are_views(piece, len(piece))
        ):
            # "exact" wants the moments of every value: those of the whole
            # run, in cache-sized blocks, not K batches' merged.
            fold = kernels.compose(fold, _population_fold(chunk, piece, num_batches))
            batches += num_batches
            continue
        if unmasked and not batches_are_views(piece, per_batch):
            # Channels first ((N, C, H, W), axis 1): a batch's positions are
            # no single run of rows. Moments per sample (views), merged per
            # batch, rather than a copy of every batch in channels-last order.
            stats = kernels.merged_sample_moments(piece, per_batch)
            m = None
        elif unmasked:
            x, m = as_batches(rows, None, start, stop, per_batch)
            scratch = _moments_scratch(x.shape[0], x.shape[2])
            stats = kernels.batched_moments(x, out=scratch)
        else:
            x, m = as_batches(rows, chunk.mask, start, stop, per_batch)
            # "exact" takes every value: each batch's own moments, whatever
            # the replicas (one_shard).
            stats, _ = batch_statistics(
                x, m, per_batch, params.replicas, params.one_shard
            )
        # Without a mask every batch counts every channel (shards are never
        # empty): no (K, C) test of validity, and a cheap test of finiteness.
        valid = None if m is None and piece.shape[1] else stats.count > 0
        if valid is None:
            finite = all_finite(stats.mean) and all_finite(stats.variance)
        else:
            finite = bool(
                ((np.isfinite(stats.mean) & np.isfinite(stats.variance)) | ~valid).all()
            )
        if not finite:
            chunk.raise_nonfinite()
        fold = kernels.compose(
            fold,
            kernels.fold_statistics(stats, valid, params.momentum, params.statistics),
        )
        batches += num_batches
    return fold, batches, len(chunk)


# ----------------------------------------------------- pieces of batches


@dataclasses.dataclass(frozen=True)
class Piece:
    """Part of a batch that straddles ranges: per shard, the moments of its samples.

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
class RangeFold:
    """The fold of a range of an epoch: O(channels) numbers.

    Attributes:
        head: the end of a batch begun in an earlier range, if any.
        fold: the fold of the batches the range holds whole.
        batches: how many there are.
        tail: the start of a batch that ends in a later range, if any.
    """

    head: Piece | None
    fold: kernels.AnyFold
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


def piece_moments(chunks: Iterator[Chunk], start: int, plan: FitPlan) -> Piece:
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


def fold_range(
    chunks: Iterator[Chunk], start: int, stop: int, plan: FitPlan
) -> RangeFold:
    """Fold samples ``[start, stop)`` of an epoch, read from ``chunks``.

    The batches held whole are folded; the batch begun before ``start``
    ends in a *head* piece, ``[start, next batch start)``, and the one going
    on after ``stop`` begins in a *tail* piece, ``[last batch start, stop)``.
    At the end of the epoch the final, partial batch is whole if the range
    holds its start.
    """
    batch_size = plan.params.batch_size
    head_stop = min(stop, -(-start // batch_size) * batch_size)
    tail_start = (
        stop
        if stop == plan.samples
        else max(head_stop, stop // batch_size * batch_size)
    )
    taker = SampleTaker(chunks)
    head = (
        piece_moments(taker.take(head_stop - start), start, plan)
        if head_stop > start
        else None
    )
    fold = kernels.identity_fold(plan.params.channels, plan.params.statistics)
    batches = 0
    for block in batch_blocks(taker.take(tail_start - head_stop), batch_size):
        block_fold, num_batches, _ = fold_block(block.chunk, plan.params)
        fold = kernels.compose(fold, block_fold)
        batches += num_batches
    tail = None
    if stop > tail_start:
        tail = piece_moments(taker.take(stop - tail_start), tail_start, plan)
    return RangeFold(head, fold, batches, tail)


class SampleTaker:
    """Hands out consecutive runs of exactly ``n`` samples of a chunk stream."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self._chunks = chunks
        self._left: Chunk | None = None

    def take(self, n: int) -> Iterator[Chunk]:
        """The next ``n`` samples (fewer at the stream's end), as chunks."""
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


class EpochFold:
    """Combines the folds of consecutive ranges, in stream order, into an epoch's."""

    def __init__(self, plan: FitPlan) -> None:
        self.plan = plan
        self.fold = kernels.identity_fold(plan.params.channels, plan.params.statistics)
        self.batches = 0
        self._open: Piece | None = None

    def add(self, result: RangeFold) -> tuple[kernels.AnyFold, int]:
        """Compose the next range's fold.

        Returns:
            The fold and count of the batches this range completes (its
            whole batches, and those its pieces close).
        """
        parts: list[tuple[kernels.AnyFold, int]] = []
        done = None if result.head is None else self._add_piece(result.head)
        if done is not None:
            parts.append((done, 1))
        if result.batches:
            self._require_closed()
            parts.append((result.fold, result.batches))
        done = None if result.tail is None else self._add_piece(result.tail)
        if done is not None:
            parts.append((done, 1))
        fold = kernels.identity_fold(
            self.plan.params.channels, self.plan.params.statistics
        )
        for part, _ in parts:
            fold = kernels.compose(fold, part)
        batches = sum(count for _, count in parts)
        self.fold = kernels.compose(self.fold, fold)
        self.batches += batches
        return fold, batches

    def finish(self) -> tuple[kernels.AnyFold, int]:
        """The epoch's fold and batch count."""
        self._require_closed()
        return self.fold, self.batches

    def _require_closed(self) -> None:
        if self._open is not None:  # pragma: no cover - a planning bug
            raise RuntimeError(f"batch {self._open.batch} is incomplete")

    def _add_piece(self, piece: Piece) -> kernels.AnyFold | None:
        """Add a piece; the fold of its batch if the piece completes it."""
        if self._open is None:
            self._open = piece
        elif self._open.batch == piece.batch:
            self._open = self._open.merge(piece)
        else:  # pragma: no cover - a planning bug
            raise RuntimeError(f"batch {self._open.batch} is incomplete")
        if self._open.samples < self.plan.batch_size_of(self._open.batch):
            return None
        done, self._open = self._open, None
        return self._fold_batch(done)

    def _fold_batch(self, piece: Piece) -> kernels.AnyFold:
        """The fold of one batch whose pieces are all in: its shards combined
        as the moving update takes them (Chan-merged for ``"exact"``)."""
        params = self.plan.params
        shards = [piece.shards[i] for i in sorted(piece.shards)]
        if params.statistics == "exact":
            stats = shards[0]
            for shard in shards[1:]:
                stats = kernels.merge_moments(stats, shard)
        else:
            stats = kernels.combine_shards(shards)
        valid = stats.count > 0
        if not (
            np.isfinite(stats.mean[valid]).all()
            and np.isfinite(stats.variance[valid]).all()
        ):
            raise DataError(
                "values too large: their moments overflow float64", batch=piece.batch
            )
        batch = kernels.Moments(
            stats.count[None], stats.mean[None], stats.variance[None]
        )
        return kernels.fold_statistics(
            batch, valid[None], params.momentum, params.statistics
        )


# ----------------------------------------------------------------- transform


@quiet_nonfinite
def normalize_chunk(
    chunk: Chunk,
    layer: EngineLayer,
    training: bool,
    batch_size: int,
    replicas: int,
) -> npt.NDArray[np.float64]:
    """The layer's float64 outputs for a chunk, in rows layout ``(n, P, C)``.

    Inference uses the moving statistics; training mode each batch's own
    (each shard's, for unsynchronized replicas), and a channel with no
    unmasked value in a batch falls back on the moving statistics.
    """
    rows = kernels.to_rows(chunk.data, chunk.axis)
    out = np.empty(rows.shape, dtype=np.float64)
    normalize_rows_into(chunk, rows, layer, training, batch_size, replicas, out)
    return out


def normalize_rows_into(
    chunk: Chunk,
    rows: npt.NDArray[Any],
    layer: EngineLayer,
    training: bool,
    batch_size: int,
    replicas: int,
    out: npt.NDArray[Any],
) -> None:
    """Write the outputs of ``chunk`` (``rows``, ``(n, P, C)``) into ``out``.

    Computed in float64 a cache-sized block at a time
    (:func:`bncli.normalization.normalize` with ``out``) and rounded once to
    ``out``'s dtype.
    """
    gamma, beta, eps = layer.gamma, layer.beta, layer.epsilon
    if not training:
        normalization.normalize(
            rows,
            layer.moving_mean64,
            layer.moving_variance64,
            gamma,
            beta,
            eps,
            out=out,
        )
        return
    for start, stop, per_batch in equal_batch_runs(chunk, batch_size):
        x, m = as_batches(rows, chunk.mask, start, stop, per_batch)
        _, shards = batch_statistics(x, m, per_batch, replicas, layer.synchronized)
        y = out[start:stop].reshape(x.shape)
        per_sample = x.shape[1] // per_batch
        for (lo, hi), stats in shards:
            seen = stats.count > 0
            mean = np.where(seen, stats.mean, layer.moving_mean64)[:, None, :]
            variance = np.where(seen, stats.variance, layer.moving_variance64)[
                :, None, :
            ]
            part = slice(lo * per_sample, hi * per_sample)
            normalization.normalize(
                x[:, part], mean, variance, gamma, beta, eps, out=y[:, part]
            )


def all_finite(a: npt.NDArray[Any]) -> bool:
    """Whether every element of ``a`` is finite: a cheap sum first.

    A finite sum means no NaN and no infinity; only when it is not (or it
    overflowed) are the elements tested one by one.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(a, axis=None)):
            return True
    return bool(np.isfinite(a).all())


def transform_chunk(
    chunk: Chunk,
    layer: EngineLayer,
    dtype: np.dtype[Any],
    *,
    training: bool,
    batch_size: int,
    replicas: int,
    nan_policy: str,
    out: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """The layer's outputs for a chunk, in the chunk's shape, cast to ``dtype``.

    Args:
        chunk: the samples.
        layer: the layer (its statistics, gamma, beta, epsilon).
        dtype: the outputs' dtype.
        training, batch_size, replicas, nan_policy: as for ``transform``.
        out: where to write the outputs, of the rows layout ``(n, P, C)`` and
            ``dtype`` (see :func:`output_rows`); new memory by default. Used
            for float32 and float64 outputs; narrower ones are cast from a
            float64 result, refusing an overflow.

    Raises:
        DataError: a NaN or infinity in the outputs, with ``nan_policy="error"``.
    """
    dtype = np.dtype(dtype)
    rows = kernels.to_rows(chunk.data, chunk.axis)
    if dtype.kind != "f" or dtype.itemsize < 4:
        # Narrow outputs: computed in float64, then cast.
        y = normalize_chunk(chunk, layer, training, batch_size, replicas)
        with np.errstate(over="ignore", invalid="ignore"):
            out = y.astype(dtype)
    else:
        if out is None:
            out = output_rows(chunk, dtype)
        normalize_rows_into(chunk, rows, layer, training, batch_size, replicas, out)
    if not all_finite(out):
        _refuse_nonfinite_outputs(chunk, rows, out, nan_policy)
    result: npt.NDArray[Any] = kernels.from_rows(out, chunk.data.shape, chunk.axis)
    return result


def _refuse_nonfinite_outputs(
    chunk: Chunk,
    rows: npt.NDArray[Any],
    out: npt.NDArray[Any],
    nan_policy: str,
) -> None:
    """Name the cause of a NaN or infinity in the outputs ``out`` (rows layout).

    A NaN or infinity in the input is an error under ``nan_policy="error"``
    (masked out, it stays NaN in the output); a finite input whose output is
    not finite overflowed the output dtype, an error under every policy,
    named with its file, column and row.
    """
    if nan_policy == "error":
        bad_inputs = ~np.isfinite(rows)
        if chunk.mask is not None:
            bad_inputs &= chunk.mask
        if bad_inputs.any():
            chunk.raise_nonfinite()
    overflow = ~np.isfinite(out) & np.isfinite(rows)
    hits = np.argwhere(overflow)
    if not len(hits):
        return
    sample, position, channel = (int(v) for v in hits[0])
    path, row = chunk.locate(sample)
    raise DataError(
        f"the output overflows {out.dtype.name} (input value "
        f"{float(rows[sample, position, channel]):.6g})",
        path=path,
        column=str(chunk.features[channel]),
        row=row,
        hint="use a wider output dtype: --output-dtype "
        + ("float32" if out.dtype.itemsize < 4 else "float64"),
    )


def output_rows(chunk: Chunk, dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """New memory for the outputs of ``chunk`` in rows layout ``(n, P, C)``.

    Channel-major inputs (table columns) get channel-major outputs, so that
    each output column is contiguous and passes to Arrow without a copy.
    """
    data = chunk.data
    n, channels = len(chunk), data.shape[chunk.axis]
    positions = int(np.prod(data.shape[1:])) // max(channels, 1)
    if data.ndim == 2 and n > 1 and data.strides[1] > data.strides[0]:
        return np.empty((channels, positions, n), dtype=dtype).T
    return np.empty((n, positions, channels), dtype=dtype)


class OutputPool:
    """Output arrays the sink has written, handed out again for later chunks.

    A sink that writes (encodes or copies) a chunk's outputs before
    ``write`` returns hands their memory back at once: the transform then
    runs on the same few arrays instead of fresh memory (and fresh page
    faults) for every chunk. One that keeps them (Parquet, gathering a row
    group: ``Sink.keeps_outputs``) does not.
    """

    def __init__(self) -> None:
        self._free: dict[tuple[Any, ...], list[npt.NDArray[Any]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(array: npt.NDArray[Any]) -> tuple[Any, ...]:
        return (array.shape, array.strides, array.dtype.str)

    def take(self, chunk: Chunk, dtype: npt.DTypeLike) -> npt.NDArray[Any]:
        """An output array for ``chunk`` (see :func:`output_rows`)."""
        fresh = output_rows(chunk, dtype)
        with self._lock:
            free = self._free.get(self._key(fresh))
            if free:
                return free.pop()
        return fresh

    def give(self, array: npt.NDArray[Any]) -> None:
        """Hand back an array whose outputs are written."""
        with self._lock:
            free = self._free.setdefault(self._key(array), [])
            if len(free) < 4:
                free.append(array)
