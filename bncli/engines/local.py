"""The local engine: fit and transform on this machine, every core busy.

Chunks are read in the calling thread (pyarrow decodes with its own threads)
and their batches computed in a pool of worker threads: NumPy releases the
GIL in its reductions. Fit reduces each block of whole batches to one
:class:`bncli.kernels.Fold` and applies the folds in stream order, so the
result does not depend on the number of workers.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from bncli import kernels
from bncli.engines.base import (
    RESUMABLE_CHANGES,
    RESUMED_OPTIONS,
    FitOptions,
    FitParams,
    FitSummary,
    TransformOptions,
    TransformSummary,
    check_positive,
)
from bncli.errors import (
    DataError,
    StateError,
    StateFrozenError,
    StateMismatchError,
    UsageError,
)
from bncli.io.batching import batch_blocks, block_rows
from bncli.io.outputs import OutputTarget
from bncli.io.sources import ChannelMismatchError, Chunk, Dataset, open_dataset
from bncli.progress import NullProgress, Progress

__all__ = [
    "FitOptions",
    "TransformOptions",
    "TransformSummary",
    "fit_layer",
    "ordered_map",
    "transform_layer",
]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


def quiet_nonfinite(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` without NumPy's warnings about NaN, infinity or overflow.

    Such values are found and reported as one error naming the column and
    row (:meth:`bncli.io.sources.Chunk.raise_nonfinite`), or masked out; a
    RuntimeWarning on stderr would only add noise to that one line. The
    setting is per thread, so it is made in the worker that computes.
    """

    @functools.wraps(fn)
    def quiet(*args: P.args, **kwargs: P.kwargs) -> R:
        with np.errstate(invalid="ignore", over="ignore"):
            return fn(*args, **kwargs)

    return quiet


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int
) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in order, computed by ``workers`` threads.

    At most ``2 * workers`` items are in flight, so memory stays bounded
    however long the stream.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque[tuple[T, concurrent.futures.Future[R]]]
        pending = collections.deque()
        try:
            for item in items:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= 2 * workers:
                    head, future = pending.popleft()
                    yield head, future.result()
            while pending:
                head, future = pending.popleft()
                yield head, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items``, read ahead by up to ``depth`` items in a background thread.

    Reading (Parquet decoding, the copy of a batch's channels) then overlaps
    with the workers' computing and with the calling thread's bookkeeping,
    instead of alternating with them; the reader's errors are raised here,
    in order. Leaving early (an error, Ctrl-C) stops the reader at its next
    item.
    """
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not put((False, item)):
                    return
            put((True, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((True, e))

    reader = threading.Thread(target=read, name="bncli-reader", daemon=True)
    reader.start()
    try:
        while True:
            done, value = slots.get()
            if done:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        # Wait for the reader to leave its current item: a thread still inside
        # Arrow's C++ when the interpreter exits aborts the process.
        reader.join(timeout=10)


# ---------------------------------------------------------------------- math


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


def _runs(chunk: Chunk, batch_size: int) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, samples_per_batch)`` runs of equal-sized batches."""
    n = len(chunk)
    full = n // batch_size * batch_size
    if full:
        yield 0, full, batch_size
    if n > full:
        yield full, n, n - full


def _batched(
    rows: npt.NDArray[Any],
    mask: npt.NDArray[np.bool_] | None,
    start: int,
    stop: int,
    per_batch: int,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]:
    n, positions, channels = rows[start:stop].shape
    x = rows[start:stop].reshape(n // per_batch, per_batch * positions, channels)
    if mask is None:
        return x, None
    m = mask[start:stop]
    return x, m.reshape(n // per_batch, per_batch * positions, m.shape[-1])


def _as_record(key: str, value: Any) -> Any:
    """An option's value as a resume record stores it (masks as absolute paths)."""
    if key == "mask":
        return None if not value else [str(Path(m).resolve()) for m in value]
    return value


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
def fold_block(chunk: Chunk, params: FitParams) -> tuple[kernels.Fold, int, int]:
    """The fold of a block's batches, with its batch and sample counts."""
    rows = kernels.to_rows(chunk.data, chunk.axis)
    fold = kernels.identity_fold(params.channels)
    batches = 0
    for start, stop, per_batch in _runs(chunk, params.batch_size):
        x, m = _batched(rows, chunk.mask, start, stop, per_batch)
        if m is None and (params.replicas == 1 or params.synchronized):
            scratch = _moments_scratch(x.shape[0], x.shape[2])
            stats = kernels.batched_moments(x, out=scratch)
        else:
            stats, _ = batch_statistics(
                x, m, per_batch, params.replicas, params.synchronized
            )
        # Without a mask every batch counts every channel (shards are never
        # empty): no (K, C) test of validity, and a cheap test of finiteness.
        valid = None if m is None and x.shape[1] else stats.count > 0
        if valid is None:
            finite = _all_finite(stats.mean) and _all_finite(stats.variance)
        else:
            finite = bool(
                ((np.isfinite(stats.mean) & np.isfinite(stats.variance)) | ~valid).all()
            )
        if not finite:
            chunk.raise_nonfinite()
        fold = kernels.compose(
            fold,
            kernels.fold_batches(stats.mean, stats.variance, valid, params.momentum),
        )
        batches += x.shape[0]
    return fold, batches, len(chunk)


# ----------------------------------------------------------------------- fit


def _chunk_bytes(dataset: Dataset, outputs: bool = False) -> tuple[int, int]:
    """``(sample_bytes, target_bytes)`` for :func:`block_rows`: how much to read at once.

    Sized in float64 samples. NPY chunks are memory-mapped windows, unmapped
    once computed: 8 MiB, for long NumPy calls and few hand-offs between
    threads. Table chunks are decoded copies, and a transform's also hold
    their outputs and the record batch while a few are in flight: 4 MiB for
    a fit (a fit on Parquet runs about 1.25x faster than with 2 MiB chunks)
    and 2 MiB for a transform (whose writing sets the pace), to keep the peak
    memory well under a quarter of a 1 GiB input.
    """
    sample_bytes = int(np.prod(dataset.sample_shape)) * 8
    if dataset.kind != "table":
        return sample_bytes, 8 << 20
    return sample_bytes, (2 << 20 if outputs else 4 << 20)


def _resolve_dataset(layer: Any, paths: Sequence[Any], **options: Any) -> Dataset:
    try:
        dataset = open_dataset(
            paths,
            axis=layer.axis,
            features=layer.features if layer.built else None,
            sample_shape=layer.sample_shape
            if layer.built and layer.kind == "array"
            else None,
            **options,
        )
    except ChannelMismatchError as e:
        if layer.built:
            raise StateMismatchError(
                f"channels differ from the state's ({e.message})", path=e.path
            ) from e
        raise
    return dataset


def require_trainable(layer: Any) -> None:
    """Refuse to fit a frozen layer (exit 4)."""
    if not layer.trainable:
        raise StateFrozenError(
            "state is frozen (trainable=False), so fit would not change it",
            hint="unfreeze it first with: bncli unfreeze STATE",
        )


def open_fit_dataset(
    layer: Any, paths: Sequence[Any], options: FitOptions, *, replay: bool
) -> Dataset:
    """Open a fit's inputs against ``layer``, and build the layer on a first fit.

    Every engine's fit starts here, so that they check alike.

    Args:
        layer: the layer to fit (built or not).
        paths: the inputs.
        options: the fit's options (columns, exclude, masks, NaN policy).
        replay: whether the stream will be read more than once (stdin cannot).

    Returns:
        The opened inputs.

    Raises:
        StateMismatchError: inputs that contradict the layer's channels or kind.
        UsageError: stdin with ``replay``.
        DataError: unreadable or empty inputs.
    """
    if replay and any(os.fspath(p) == "-" for p in paths):
        # Refused before stdin is read: an interactive shell would wait on it.
        raise UsageError(
            "'-' (stdin) cannot be replayed: not with --epochs above 1 or --resume"
        )
    columns, exclude = options.columns, options.exclude
    if layer.built and (columns or exclude) and layer.kind == "table":
        chosen = list(columns) if columns else None
        if chosen is not None and chosen != layer.features:
            raise StateMismatchError(
                f"--columns {','.join(chosen)} contradicts the state's channels "
                f"{','.join(layer.features)}"
            )
        columns = exclude = None
    dataset = _resolve_dataset(
        layer,
        paths,
        columns=columns,
        exclude=exclude,
        mask_column=options.mask_column,
        masks=options.mask,
        nan_policy=options.nan_policy,
    )
    if layer.built and layer.kind != dataset.kind:
        raise StateMismatchError(
            f"the state was fitted on {layer.kind}s, the input is an {dataset.kind}",
            path=dataset.sources[0].path,
        )
    if dataset.num_samples == 0:
        raise DataError("empty input: no sample to fit", path=dataset.sources[0].path)
    if not layer.built:
        layer.build(dataset.sample_shape, dataset.features, dataset.kind)
    return dataset


def fit_layer(
    layer: Any,
    paths: Sequence[str | os.PathLike[str]],
    options: FitOptions | None = None,
    *,
    checkpoint_every: int | None = None,
    checkpoint: Callable[[Any], None] | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    given: Collection[str] = (),
) -> Any:
    """Fit ``layer`` on files; see :meth:`bncli.BatchNormalization.fit`.

    With ``resume``, the options of :data:`RESUMED_OPTIONS`, the position and
    (unless ``paths`` are given) the inputs come from ``layer.resume``.
    ``given`` names the options of ``options`` the caller set on purpose:
    with ``resume``, ``nan_policy`` given wins over the record (it changes
    nothing already folded), and any other one given that differs from the
    record is a usage error, never silently ignored.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    options = options or FitOptions()
    require_trainable(layer)
    start_epoch = start_sample = 0
    if resume:
        resumed = layer.resume
        if not resumed:
            raise StateError(
                "nothing to resume: the state records no interrupted fit",
                hint="run fit without --resume",
            )
        paths = paths or resumed["inputs"]
        restored = {}
        for key in RESUMED_OPTIONS:
            value, recorded = getattr(options, key), resumed[key]
            if key in given and key in RESUMABLE_CHANGES:
                continue
            if key in given and _as_record(key, value) != recorded:
                flag = "--" + ("mask" if key == "mask" else key.replace("_", "-"))
                raise UsageError(
                    f"{flag} {_as_record(key, value)!r} differs from the interrupted "
                    f"fit's {recorded!r}; --resume continues that fit as it was "
                    f"(leave {flag} out, or fit again without --resume)"
                )
            restored[key] = recorded
        options = dataclasses.replace(options, **restored)
        start_epoch, start_sample = resumed["epoch"], resumed["sample"]
    options = options.checked()
    batch_size, epochs = options.batch_size, options.epochs
    workers = options.workers or default_workers()
    if checkpoint_every is not None:
        checkpoint_every = check_positive("checkpoint interval", checkpoint_every)
    dataset = open_fit_dataset(layer, paths, options, replay=epochs > 1 or resume)
    params = FitParams(
        batch_size, layer.momentum, options.replicas, layer.synchronized, layer.channels
    )
    rows = block_rows(batch_size, *_chunk_bytes(dataset))
    record = {
        **{key: getattr(options, key) for key in RESUMED_OPTIONS},
        "inputs": [
            text if text == "-" else str(Path(text).resolve())
            for text in (os.fspath(p) for p in paths)
        ],
        "mask": None
        if not options.mask
        else [str(Path(m).resolve()) for m in options.mask],
        "files": _fingerprints(dataset, options.mask),
    }
    if resume and "files" in layer.resume:  # absent from older records
        _check_unchanged(layer.resume["files"], record["files"])
    total = dataset.num_samples
    progress.start(
        None if total is None else total * (epochs - start_epoch) - start_sample,
        dataset.sample_bytes,
    )
    batches = samples = 0
    since_checkpoint = 0
    for epoch in range(start_epoch, epochs):
        first = start_sample if epoch == start_epoch else 0
        blocks = batch_blocks(
            dataset.chunks(first, rows), batch_size, options.drop_remainder, first
        )
        if workers > 1:
            blocks = prefetched(blocks, workers)
        for block, (fold, num_batches, num_samples) in ordered_map(
            lambda b: fold_block(b.chunk, params), blocks, workers
        ):
            layer.apply_fold(fold, batches=num_batches, samples=num_samples)
            batches += num_batches
            samples += num_samples
            since_checkpoint += num_batches
            progress.advance(num_samples)
            if checkpoint_every and checkpoint and since_checkpoint >= checkpoint_every:
                layer.resume = {**record, "epoch": epoch, "sample": block.end_sample}
                checkpoint(layer)
                since_checkpoint = 0
        layer.epochs += 1
    if samples == 0 and start_sample == 0:
        raise DataError("empty input: no sample to fit", path=dataset.sources[0].path)
    layer.resume = None
    progress.finish()
    return FitSummary(
        batches, samples, epochs - start_epoch, time.perf_counter() - started
    )


def _fingerprints(
    dataset: Dataset, mask: Sequence[str | os.PathLike[str]] | None
) -> list[dict[str, Any]]:
    """Path, size and modification time of every file read, for ``--resume``."""
    paths = [source.path for source in dataset.sources] + list(map(str, mask or ()))
    files = []
    for text in paths:
        if text == "-":
            continue
        status = os.stat(text)
        files.append(
            {
                "path": str(Path(text).resolve()),
                "size": status.st_size,
                "mtime_ns": status.st_mtime_ns,
            }
        )
    return files


def _check_unchanged(then: list[dict[str, Any]], now: list[dict[str, Any]]) -> None:
    """Refuse to resume on inputs that differ from the checkpoint's."""
    hint = "restore the inputs, or fit again without --resume"
    if len(then) != len(now):
        raise StateMismatchError(
            f"the inputs are {len(now)} files, the checkpoint read {len(then)}",
            hint=hint,
        )
    for old, new in zip(then, now, strict=True):
        if (old["size"], old["mtime_ns"]) != (new["size"], new["mtime_ns"]):
            raise StateMismatchError(
                "changed since the checkpoint (size or modification time differs)",
                path=new["path"],
                hint=hint,
            )


# ----------------------------------------------------------------- transform


@quiet_nonfinite
def normalize_chunk(
    chunk: Chunk,
    layer: Any,
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
    _normalize_rows(chunk, rows, layer, training, batch_size, replicas, out)
    return out


def _normalize_rows(
    chunk: Chunk,
    rows: npt.NDArray[Any],
    layer: Any,
    training: bool,
    batch_size: int,
    replicas: int,
    out: npt.NDArray[Any],
) -> None:
    """Write the outputs of ``chunk`` (``rows``, ``(n, P, C)``) into ``out``.

    Computed in float64 a cache-sized block at a time
    (:func:`bncli.kernels.normalize` with ``out``) and rounded once to
    ``out``'s dtype.
    """
    gamma, beta, eps = layer.gamma, layer.beta, layer.epsilon
    if not training:
        kernels.normalize(
            rows,
            layer.moving_mean64,
            layer.moving_variance64,
            gamma,
            beta,
            eps,
            out=out,
        )
        return
    for start, stop, per_batch in _runs(chunk, batch_size):
        x, m = _batched(rows, chunk.mask, start, stop, per_batch)
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
            kernels.normalize(
                x[:, part], mean, variance, gamma, beta, eps, out=y[:, part]
            )


def _all_finite(a: npt.NDArray[Any]) -> bool:
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
    layer: Any,
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
        _normalize_rows(chunk, rows, layer, training, batch_size, replicas, out)
    if not _all_finite(out):
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


class _OutputPool:
    """Output arrays the sink has written, handed out again for later chunks.

    Every sink writes (encodes or copies) a chunk's outputs before
    ``write`` returns, so their memory can be reused at once: the transform
    then runs on the same few arrays instead of fresh memory (and fresh
    page faults) for every chunk.
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


def open_transform_dataset(
    layer: Any,
    paths: Sequence[str | os.PathLike[str]],
    output: str,
    options: TransformOptions,
    *,
    folder: bool = False,
) -> tuple[Dataset, OutputTarget]:
    """Open a transform's inputs with the state's channels, and check ``output``.

    Every engine's transform starts here, so that they check alike.

    Returns:
        The dataset, and the output checked by
        :func:`bncli.io.outputs.check_output` against every file read.

    Raises:
        UsageError: the output exists (without ``overwrite``), is an input,
            or its folder is missing; nothing is created.
        DataError: unreadable or empty inputs, or channels unlike the state's.
    """
    from bncli.io.outputs import check_output
    from bncli.io.sinks import check_writable

    dataset = open_dataset(
        paths,
        axis=layer.axis,
        features=layer.features,
        sample_shape=layer.sample_shape if layer.kind == "array" else None,
        mask_column=options.mask_column,
        masks=options.mask,
        nan_policy=options.nan_policy,
    )
    if dataset.kind == "table":
        dataset.check_same_columns()
    reads: list[str | os.PathLike[str]] = [s.path for s in dataset.sources]
    reads += [*(options.mask or ()), *options.reads]
    target = check_output(output, reads, options.overwrite, folder=folder)
    check_writable(output, dataset)
    if dataset.num_samples == 0:
        raise DataError(
            "empty input: nothing to transform", path=dataset.sources[0].path
        )
    return dataset, target


def transform_layer(
    layer: Any,
    paths: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    options: TransformOptions | None = None,
    *,
    progress: Progress | None = None,
) -> TransformSummary:
    """Normalize files into ``output``; see ``bncli transform``.

    Raises:
        UsageError: the output exists (without ``overwrite``), is an input,
            or its folder is missing; nothing is created.
        DataError: inputs that do not match the state's channels.
    """
    from bncli.io.sinks import open_sink, output_dtype_for

    started = time.perf_counter()
    progress = progress or NullProgress()
    layer.require_built()
    options = (options or TransformOptions()).checked()
    batch_size, replicas = options.batch_size, options.replicas
    workers = options.workers or default_workers()
    training = bool(options.training and layer.trainable)
    output = os.fspath(output)
    dataset, target = open_transform_dataset(layer, paths, output, options)
    dtype = output_dtype_for(layer, options.output_dtype)
    rows = block_rows(
        batch_size if training else 1, *_chunk_bytes(dataset, outputs=True)
    )
    chunks: Iterable[Chunk] = dataset.chunks(0, rows, all_columns=True)
    if training:
        chunks = (b.chunk for b in batch_blocks(chunks, batch_size))
    if workers > 1:
        chunks = prefetched(chunks, workers)

    pool = _OutputPool() if dtype.kind == "f" and dtype.itemsize >= 4 else None

    @quiet_nonfinite
    def compute(chunk: Chunk) -> tuple[npt.NDArray[Any], npt.NDArray[Any] | None]:
        out = None if pool is None else pool.take(chunk, dtype)
        y = transform_chunk(
            chunk,
            layer,
            dtype,
            training=training,
            batch_size=batch_size,
            replicas=replicas,
            nan_policy=options.nan_policy,
            out=out,
        )
        return y, out

    progress.start(dataset.num_samples, dataset.sample_bytes)
    samples = 0
    with open_sink(target, dataset, dtype) as sink:
        for chunk, (y, out) in ordered_map(compute, chunks, workers):
            sink.write(chunk, y)
            if pool is not None and out is not None:
                pool.give(out)
            samples += len(chunk)
            progress.advance(len(chunk))
        if samples == 0:  # a stream of unknown length that held nothing
            raise DataError(
                "empty input: nothing to transform", path=dataset.sources[0].path
            )
    progress.finish()
    return TransformSummary(samples, output, time.perf_counter() - started)
