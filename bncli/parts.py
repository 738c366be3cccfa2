"""Partial fits and merges: a fit sharded by any orchestrator, composed exactly.

``fit PART --rows A:B`` (or ``--part K/N``) folds the rows ``[A, B)`` of the
stream, batched as the whole stream is (batch boundaries at multiples of the
batch size from row 0): the fold of the batches wholly inside, and the
moments of the *pieces* of the batches cut at its two ends
(:func:`bncli.engines.blocks.fold_range`, what the Dask engine's tasks
compute). The part is written as a *partial state*: the new layer, unchanged,
with a ``part`` record (rows, the stream's rows, the inputs' fingerprints,
the options) and arrays (the fold, the pieces).

:func:`merge_parts` checks that the parts tile the same stream, joins the
pieces of each cut batch with Chan's formula and composes everything in
stream order (:class:`bncli.engines.blocks.EpochFold`): exactly the fold of
one ``fit`` over the whole stream.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncli import kernels
from bncli.engines.base import FitOptions, FitParams, FitSummary
from bncli.engines.blocks import (
    EpochFold,
    FitPlan,
    Piece,
    RangeFold,
    SampleTaker,
    fold_range,
)
from bncli.errors import StateError, StateMismatchError, UsageError
from bncli.progress import NullProgress, Progress

__all__ = [
    "MergeResult",
    "PartResult",
    "fit_part",
    "merge_parts",
    "parse_part",
    "parse_rows",
    "part_bounds",
]

#: The fit options every part of one stream must share.
_SHARED_OPTIONS = (
    "drop_remainder",
    "replicas",
    "columns",
    "exclude",
    "mask_column",
    "mask",
    "nan_policy",
)
#: The fold's arrays, by mode, as a partial state stores them.
_FOLD_ARRAYS = {
    "ema": ("decay", "mean_offset", "variance_offset"),
    "precise": ("mean_sum", "variance_sum"),
    "exact": ("count", "mean", "variance"),
}


def parse_rows(text: str) -> tuple[int, int | None]:
    """``"START:STOP"`` (STOP may be left out) as integers."""
    start, sep, stop = text.partition(":")
    try:
        first = int(start)
        last = int(stop) if stop.strip() else None
    except ValueError:
        first = -1
        last = None
    if not sep or first < 0 or (last is not None and last <= first):
        raise UsageError(
            f"--rows {text!r}: expected START:STOP with 0 <= START < STOP "
            "(STOP may be left out)"
        )
    return first, last


def parse_part(text: str) -> tuple[int, int]:
    """``"K/N"`` with ``1 <= K <= N``."""
    index, sep, count = text.partition("/")
    try:
        k, n = int(index), int(count)
    except ValueError:
        k = n = 0
    if not sep or not 1 <= k <= n:
        raise UsageError(f"--part {text!r}: expected K/N with 1 <= K <= N")
    return k, n


def part_bounds(rows: int, k: int, n: int) -> tuple[int, int]:
    """The ``k``-th (from 1) of ``n`` ranges of ``rows``, as ``numpy.array_split``.

    Example:
        >>> [part_bounds(10, k, 3) for k in (1, 2, 3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    base, extra = divmod(rows, n)
    start = (k - 1) * base + min(k - 1, extra)
    return start, start + base + (1 if k - 1 < extra else 0)


@dataclasses.dataclass(frozen=True)
class PartResult:
    """What ``fit_part`` wrote."""

    path: Path
    start: int
    stop: int
    rows: int
    summary: FitSummary


@dataclasses.dataclass(frozen=True)
class MergeResult:
    """What ``merge_parts`` did, and the state's counters after it."""

    state: Path
    summary: FitSummary
    batches_seen: int
    samples_seen: int


# -------------------------------------------------------------- a partial fit


def fit_part(
    path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    options: FitOptions,
    *,
    rows: tuple[int, int | None] | None = None,
    part: tuple[int, int] | None = None,
    layer_options: dict[str, Any] | None = None,
    seed: int | None = None,
    wait: bool = False,
    progress: Progress | None = None,
) -> PartResult:
    """Fit rows of the stream into the partial state ``path`` (``fit --rows``/``--part``).

    Args:
        path: the partial state to write (a partial state there is replaced;
            a whole state is refused).
        inputs: the whole stream's inputs, in order.
        options: the fit's options (one epoch; ``statistics`` the mode).
        rows: ``(start, stop)`` rows of the stream (stop None: to the end).
        part: ``(k, n)``: the k-th of n ranges, as ``numpy.array_split``.
        layer_options, seed: the layer, as ``bncli fit`` creates it.

    Raises:
        UsageError: neither or both of ``rows`` and ``part``, stdin, epochs
            other than 1, rows past the stream's end.
        StateError: a whole state at ``path``.
        DataError: unreadable inputs.
    """
    import time

    from bncli.engines.inputs import chunk_bytes, open_fit_dataset
    from bncli.engines.session import fingerprints
    from bncli.io.batching import block_rows
    from bncli.layer import BatchNormalization
    from bncli.state import is_state, lock

    started = time.perf_counter()
    progress = progress or NullProgress()
    if (rows is None) == (part is None):
        raise UsageError("a partial fit takes one of --rows START:STOP and --part K/N")
    if any(os.fspath(p) == "-" for p in inputs):
        raise UsageError("a partial fit reads its rows of files: not '-' (stdin)")
    if options.epochs != 1:
        raise UsageError("a partial fit is one epoch; give --epochs to merge")
    options = options.checked()
    target = Path(path)
    layer = BatchNormalization(
        **{k: v for k, v in (layer_options or {}).items() if v is not None}, seed=seed
    )
    dataset = open_fit_dataset(layer, inputs, options, replay=True)
    layer.statistics = options.statistics or "ema"
    total = dataset.num_samples
    if total is None:  # CSV, Arrow streams: counted by reading them
        total = sum(len(c) for c in dataset.chunks(0, 1 << 16))
    if part is not None:
        start, stop = part_bounds(total, *part)
    else:
        assert rows is not None
        start, stop = rows[0], total if rows[1] is None else rows[1]
        if stop > total:
            raise UsageError(f"--rows {start}:{stop}: the stream has {total} rows")
    batch_size = options.batch_size
    fitted = total // batch_size * batch_size if options.drop_remainder else total
    params = FitParams(
        batch_size,
        layer.momentum,
        options.replicas,
        layer.synchronized,
        layer.channels,
        layer.statistics,
    )
    plan = FitPlan(params, fitted)
    first, last = min(start, fitted), min(stop, fitted)
    progress.start(last - first, dataset.sample_bytes)
    if last > first:
        reading = block_rows(batch_size, *chunk_bytes(dataset))
        chunks = SampleTaker(dataset.chunks(first, reading)).take(last - first)
        with np.errstate(invalid="ignore", over="ignore"):
            folded = fold_range(chunks, first, last, plan)
    else:  # rows past a dropped remainder: nothing to fold
        folded = RangeFold(
            None, kernels.identity_fold(layer.channels, layer.statistics), 0, None
        )
    progress.advance(last - first)
    record = {
        "start": start,
        "stop": stop,
        "rows": total,
        "samples": last - first,
        "batch_size": batch_size,
        "statistics": layer.statistics,
        "options": _shared_options(options),
        "files": fingerprints(dataset, options.mask),
        "batches": folded.batches,
    }
    layer.part = _encode(record, folded)
    with lock(target, wait=wait):
        if target.exists():
            if not is_state(target):
                raise StateError(
                    "not a partial state; a partial fit writes a new file", path=target
                )
            from bncli.layer import load

            if load(target).part is None:
                raise StateError(
                    "a whole state: a partial fit writes a part of its own",
                    path=target,
                    hint="give another file for the part",
                )
        layer.save(target)
    progress.finish()
    summary = FitSummary(folded.batches, last - first, 1, time.perf_counter() - started)
    return PartResult(target, start, stop, total, summary)


def _shared_options(options: FitOptions) -> dict[str, Any]:
    values = {key: getattr(options, key) for key in _SHARED_OPTIONS}
    for key in ("columns", "exclude"):
        values[key] = None if values[key] is None else list(values[key])
    if values["mask"]:
        values["mask"] = [str(Path(m).resolve()) for m in values["mask"]]
    else:
        values["mask"] = None
    # How the inputs are read: parts read with another delimiter or array
    # are parts of another stream.
    values["delimiter"] = options.read.delimiter
    values["array"] = options.read.array
    return values


def _encode(record: dict[str, Any], folded: RangeFold) -> dict[str, Any]:
    """A part's record and arrays, as a partial state stores them."""
    fold = folded.fold
    arrays: dict[str, Any] = {"fold_batches": fold.batches}
    if isinstance(fold, kernels.Fold):
        arrays |= {
            "decay": fold.decay,
            "mean_offset": fold.mean_offset,
            "variance_offset": fold.variance_offset,
        }
    elif isinstance(fold, kernels.MeanFold):
        arrays |= {"mean_sum": fold.mean_sum, "variance_sum": fold.variance_sum}
    else:
        arrays |= {
            "count": fold.moments.count,
            "mean": fold.moments.mean,
            "variance": fold.moments.variance,
        }
    record = dict(record)
    for end, piece in (("head", folded.head), ("tail", folded.tail)):
        if piece is None:
            record[end] = None
            continue
        shards = sorted(piece.shards)
        record[end] = {"batch": piece.batch, "samples": piece.samples, "shards": shards}
        for name in ("count", "mean", "variance"):
            arrays[f"{end}_{name}"] = np.stack(
                [getattr(piece.shards[i], name) for i in shards]
            )
    return {"record": record, "arrays": arrays}


# ------------------------------------------------------------------- merging


@dataclasses.dataclass(frozen=True)
class _Part:
    """A partial state read back and checked."""

    path: str
    layer: Any
    record: dict[str, Any]
    folded: RangeFold


def _decode(path: str, layer: Any) -> _Part:
    """A partial state's part, checked against its layer (exit 4 naming it)."""
    if layer.part is None:
        raise StateError("a whole state, not a part: give partial states", path=path)
    record, arrays = layer.part["record"], layer.part["arrays"]
    channels = layer.channels
    try:
        ints = {
            k: record[k] for k in ("start", "stop", "rows", "samples", "batch_size")
        }
        if not all(type(v) is int and v >= 0 for v in ints.values()):
            raise ValueError("counts")
        if not ints["start"] < ints["stop"] <= ints["rows"] or ints["batch_size"] < 1:
            raise ValueError("rows")
        mode = record["statistics"]
        names = ("fold_batches", *_FOLD_ARRAYS[mode])
        if any(arrays[n].shape != (channels,) for n in names):
            raise ValueError("fold shape")
        batches = arrays["fold_batches"].astype(np.int64)
        if mode == "ema":
            fold: kernels.AnyFold = kernels.Fold(
                arrays["decay"],
                arrays["mean_offset"],
                arrays["variance_offset"],
                batches,
            )
        elif mode == "precise":
            fold = kernels.MeanFold(arrays["mean_sum"], arrays["variance_sum"], batches)
        else:
            fold = kernels.PopulationFold(
                kernels.Moments(arrays["count"], arrays["mean"], arrays["variance"]),
                batches,
            )
        pieces: dict[str, Piece | None] = {}
        for end in ("head", "tail"):
            about = record[end]
            if about is None:
                pieces[end] = None
                continue
            shards = [int(i) for i in about["shards"]]
            stacked = [arrays[f"{end}_{n}"] for n in ("count", "mean", "variance")]
            if any(a.shape != (len(shards), channels) for a in stacked):
                raise ValueError("piece shape")
            pieces[end] = Piece(
                int(about["batch"]),
                int(about["samples"]),
                {
                    i: kernels.Moments(stacked[0][j], stacked[1][j], stacked[2][j])
                    for j, i in enumerate(shards)
                },
            )
        folded = RangeFold(pieces["head"], fold, int(record["batches"]), pieces["tail"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise StateError(f"corrupt partial state ({e})", path=path) from e
    return _Part(path, layer, record, folded)


def merge_parts(
    state: str | os.PathLike[str],
    parts: Sequence[str | os.PathLike[str]],
    *,
    epochs: int = 1,
    wait: bool = False,
) -> MergeResult:
    """Compose partial states into ``state``, as one fit over the whole stream.

    The parts may come in any order; they must tile the same stream (its
    rows and inputs) with the same batch size, mode, options, config and
    channels. ``state`` is created from the parts' layer, or continued as
    ``fit`` continues it (the merged batches come after the ones it has
    seen); ``epochs`` applies the merged epoch that many times.

    Raises:
        StateError: a part missing, overlapping, of another stream or fit (a
            :class:`StateMismatchError` naming the part), or a whole state
            given as a part.
        UsageError: no part, or ``epochs`` below 1.
    """
    import time

    from bncli.engines.base import check_positive, require_trainable
    from bncli.layer import BatchNormalization, load
    from bncli.state import lock

    started = time.perf_counter()
    epochs = check_positive("epochs", epochs)
    if not parts:
        raise UsageError("merge: give at least one PART")
    read = sorted(
        (_decode(os.fspath(p), load(p)) for p in parts),
        key=lambda part: (part.record["start"], part.record["stop"]),
    )
    first = read[0]
    _check_same_stream(first, read)
    _check_tiling(read)
    layer0, record = first.layer, first.record
    batch_size = record["batch_size"]
    options = record["options"]
    rows = record["rows"]
    fitted = rows // batch_size * batch_size if options["drop_remainder"] else rows
    params = FitParams(
        batch_size,
        layer0.momentum,
        options["replicas"],
        layer0.synchronized,
        layer0.channels,
        record["statistics"],
    )
    epoch = EpochFold(FitPlan(params, fitted))
    for part in read:
        epoch.add(part.folded)
    fold, batches = epoch.finish()
    target = Path(state)
    with lock(target, wait=wait):
        if target.exists():
            layer = load(target)
            try:
                layer.require_whole()
                require_trainable(layer)
            except StateError as e:
                e.path = e.path or str(target)
                raise
            _check_continues(layer, first, target)
        else:
            layer = BatchNormalization.from_state(layer0.to_state())
            layer.part = None
        for _ in range(epochs):
            layer.apply_fold(fold, batches=batches, samples=fitted)
            layer.epochs += 1
        layer.save(target)
    summary = FitSummary(
        batches * epochs, fitted * epochs, epochs, time.perf_counter() - started
    )
    return MergeResult(target, summary, layer.batches_seen, layer.samples_seen)


def _check_same_stream(first: _Part, parts: Sequence[_Part]) -> None:
    """Refuse a part of another stream, fit or layer, naming it (exit 4)."""
    reference = first.record
    for part in parts[1:]:
        record = part.record
        checks = (
            ("rows", "the stream's rows"),
            ("files", "inputs (paths, sizes or modification times)"),
            ("batch_size", "batch size"),
            ("statistics", "statistics mode"),
            ("options", "fit options"),
        )
        for key, what in checks:
            if record.get(key) != reference.get(key):
                raise StateMismatchError(
                    f"its {what} differ from {first.path}'s: not a part of the same fit",
                    path=part.path,
                )
        if part.layer.get_config() != first.layer.get_config():
            raise StateMismatchError(
                f"its layer config differs from {first.path}'s", path=part.path
            )
        if (part.layer.features, part.layer.sample_shape) != (
            first.layer.features,
            first.layer.sample_shape,
        ):
            raise StateMismatchError(
                f"its channels differ from {first.path}'s", path=part.path
            )


def _check_tiling(parts: Sequence[_Part]) -> None:
    """Refuse a gap, an overlap, or a missing start or end (exit 4)."""
    position = 0
    for part in parts:
        start, stop = part.record["start"], part.record["stop"]
        if start > position:
            raise StateMismatchError(
                f"rows {position}:{start} are in no part (this part starts at {start})",
                path=part.path,
            )
        if start < position:
            raise StateMismatchError(
                f"its rows {start}:{stop} overlap another part's (up to {position})",
                path=part.path,
            )
        position = stop
    rows = parts[-1].record["rows"]
    if position != rows:
        raise StateMismatchError(
            f"rows {position}:{rows} are in no part (the stream has {rows} rows)",
            path=parts[-1].path,
        )


def _check_continues(layer: Any, first: _Part, target: Path) -> None:
    """Refuse continuing a state unlike the parts' layer (exit 4)."""
    if layer.get_config() != first.layer.get_config():
        raise StateMismatchError(
            f"its config differs from the parts' ({first.path})", path=target
        )
    if (layer.features, layer.kind) != (first.layer.features, first.layer.kind):
        raise StateMismatchError(
            f"its channels differ from the parts' ({first.path})", path=target
        )
    if layer.statistics != first.record["statistics"]:
        raise StateMismatchError(
            f"its statistics {layer.statistics} differ from the parts' "
            f"{first.record['statistics']}",
            path=target,
        )
