"""One fit session for every engine: resume, fingerprints, epochs, checkpoints.

An engine's part of a fit is a :class:`FoldStream`: for each epoch, from a
given sample, the :class:`BlockFold` of its whole batches in stream order.
The session does everything else, once for all engines: it restores an
interrupted fit's options, opens and checks the inputs (building the layer
on a first fit), records what a checkpoint needs to resume, applies the
folds, checkpoints, counts epochs and sums up. So the local engine and the
Dask engine differ only in where the folds are computed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from bncli.engines.base import (
    RESUMABLE_CHANGES,
    RESUMED_OPTIONS,
    RESUMED_READ_OPTIONS,
    BlockFold,
    EngineLayer,
    FitOptions,
    FitParams,
    FitSummary,
    check_positive,
    require_trainable,
)
from bncli.engines.inputs import open_fit_dataset
from bncli.errors import (
    DataError,
    NotConvergedError,
    StateError,
    StateMismatchError,
    UsageError,
)
from bncli.io.dataset import Dataset
from bncli.io.locations import is_url
from bncli.progress import NullProgress, Progress

__all__ = [
    "FitEngine",
    "FoldStream",
    "fingerprints",
    "fit_layer",
]


class FoldStream(Protocol):
    """An engine's side of one fit, open on its inputs."""

    @property
    def samples(self) -> int | None:
        """Samples fitted per epoch, when known before reading."""
        ...  # pragma: no cover - a protocol

    def epoch(self, first: int) -> Iterator[BlockFold]:
        """The folds of an epoch from sample ``first``, in stream order."""
        ...  # pragma: no cover - a protocol


class FitEngine(Protocol):
    """Where the folds of a fit are computed."""

    def refuse(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        resume: bool,
        checkpoint_every: int | None,
    ) -> None:
        """Raise a usage error for what this engine cannot do, before any work."""
        ...  # pragma: no cover - a protocol

    def open(
        self, dataset: Dataset, params: FitParams, options: FitOptions
    ) -> contextlib.AbstractContextManager[FoldStream]:
        """The engine's fold stream over ``dataset``, for the session's length."""
        ...  # pragma: no cover - a protocol


def fit_layer(
    layer: EngineLayer,
    paths: Sequence[str | os.PathLike[str]],
    options: FitOptions,
    engine: FitEngine,
    *,
    checkpoint_every: int | None = None,
    checkpoint: Callable[[Any], None] | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    given: Collection[str] = (),
) -> FitSummary:
    """Fit ``layer`` on ``paths`` with ``engine``; see :meth:`bncli.BatchNormalization.fit`.

    With ``resume``, the options of :data:`RESUMED_OPTIONS`, the position and
    (unless ``paths`` are given) the inputs come from ``layer.resume``.
    ``given`` names the options of ``options`` the caller set on purpose:
    with ``resume``, ``nan_policy`` given wins over the record (it changes
    nothing already folded), and any other one given that differs from the
    record is a usage error, never silently ignored. Every
    ``checkpoint_every`` batches, ``checkpoint(layer)`` is called with
    ``layer.resume`` set to where the fit has got to.
    """
    started = time.perf_counter()
    progress = progress or NullProgress()
    engine.refuse(paths, resume=resume, checkpoint_every=checkpoint_every)
    layer.require_whole()
    require_trainable(layer)
    start_epoch = start_sample = 0
    if resume:
        paths, options, start_epoch, start_sample = _resumed(
            layer, paths, options, given
        )
    options = options.checked()
    epochs = options.epochs
    if checkpoint_every is not None:
        checkpoint_every = check_positive("checkpoint interval", checkpoint_every)
    if options.until_share is not None:
        _check_until_share(options, paths, layer)
    if resume and options.reset_statistics:
        raise UsageError(
            "--reset-statistics cannot continue an interrupted fit; "
            "leave out --resume to start the statistics again"
        )
    dataset = open_fit_dataset(layer, paths, options, replay=epochs > 1 or resume)
    _settle_statistics(layer, options)
    params = FitParams(
        options.batch_size,
        layer.momentum,
        options.replicas,
        layer.synchronized,
        layer.channels,
        layer.statistics,
    )
    record = _resume_record(options, paths, dataset)
    if resume and layer.resume and "files" in layer.resume:  # absent from old records
        _check_unchanged(layer.resume["files"], record["files"])
    until = options.until_share

    def more_epochs(epoch: int) -> bool:
        if epoch < epochs:
            return True
        if until is None or epoch >= options.max_epochs:
            return False
        return float(layer.initializer_share().max()) >= until

    batches = samples = since_checkpoint = 0
    epoch = start_epoch
    with engine.open(dataset, params, options) as stream:
        total = stream.samples
        progress.start(
            None
            if total is None or until is not None
            else total * (epochs - start_epoch) - start_sample,
            dataset.sample_bytes,
        )
        while more_epochs(epoch):
            first = start_sample if epoch == start_epoch else 0
            for block in stream.epoch(first):
                layer.apply_fold(
                    block.fold, batches=block.batches, samples=block.samples
                )
                batches += block.batches
                samples += block.samples
                since_checkpoint += block.batches
                progress.advance(block.samples)
                if (
                    checkpoint
                    and checkpoint_every
                    and since_checkpoint >= checkpoint_every
                ):
                    layer.resume = {**record, "epoch": epoch, "sample": block.end}
                    checkpoint(layer)
                    since_checkpoint = 0
            layer.epochs += 1
            epoch += 1
    if samples == 0 and start_sample == 0:
        raise DataError("empty input: no sample to fit", path=dataset.sources[0].path)
    layer.resume = None
    progress.finish()
    summary = FitSummary(
        batches, samples, epoch - start_epoch, time.perf_counter() - started
    )
    if until is not None:
        share = float(layer.initializer_share().max())
        if share >= until:
            raise NotConvergedError(
                f"the initializers still weigh {share:.3%} after "
                f"{options.max_epochs} epochs, not under --until-share {until:g}",
                summary=summary,
                hint="raise --max-epochs, or fit on more data",
            )
    return summary


def _check_until_share(
    options: FitOptions, paths: Sequence[str | os.PathLike[str]], layer: EngineLayer
) -> None:
    """``--until-share``: a share in (0, 1), epochs it may repeat, Keras's average."""
    share = options.until_share
    if share is None or not 0 < share < 1:
        raise UsageError(
            f"--until-share must lie strictly between 0 and 1, got {share}"
        )
    if any(os.fspath(p) == "-" for p in paths):
        raise UsageError("--until-share repeats epochs: not with '-' (stdin)")
    mode = options.statistics or layer.statistics
    if mode != "ema":
        raise UsageError(
            f"--until-share is for the ema statistics (the initializers' share "
            f"is 0 after one batch with --stats {mode})"
        )
    if options.epochs > options.max_epochs:
        raise UsageError(
            f"--epochs {options.epochs} is more than --max-epochs {options.max_epochs}"
        )


def _settle_statistics(layer: EngineLayer, options: FitOptions) -> None:
    """Reset the statistics if asked, and settle the mode the fit goes on in.

    A state goes on in its own mode; another one is a mismatch (exit 4)
    once it has seen a batch, unless its statistics start again.
    """
    wanted = options.statistics
    if options.reset_statistics:
        layer.reset_statistics(wanted)
    elif wanted is not None and wanted != layer.statistics:
        if layer.batches_seen:
            raise StateMismatchError(
                f"--stats {wanted} contradicts the state's statistics "
                f"{layer.statistics}",
                hint="add --reset-statistics to start them again in that mode",
            )
        layer.statistics = wanted


# ------------------------------------------------------------------- resume


def _resumed(
    layer: EngineLayer,
    paths: Sequence[str | os.PathLike[str]],
    options: FitOptions,
    given: Collection[str],
) -> tuple[Sequence[str | os.PathLike[str]], FitOptions, int, int]:
    """The inputs, options, epoch and sample an interrupted fit goes on from."""
    recorded_fit = layer.resume
    if not recorded_fit:
        raise StateError(
            "nothing to resume: the state records no interrupted fit",
            hint="run fit without --resume",
        )
    restored = {}
    for key in RESUMED_OPTIONS:
        value, recorded = getattr(options, key), recorded_fit[key]
        if key in given and key in RESUMABLE_CHANGES:
            continue
        if key in given and _as_recorded(key, value) != recorded:
            raise _differs(key, _as_recorded(key, value), recorded)
        restored[key] = recorded
    read = options.read.checked()
    restored_read = {}
    for key in RESUMED_READ_OPTIONS:
        if key not in recorded_fit:  # a record from before they were kept
            continue
        value, recorded = getattr(read, key), recorded_fit[key]
        if key in given and value != recorded:
            raise _differs(key, value, recorded)
        restored_read[key] = recorded
    return (
        paths or recorded_fit["inputs"],
        dataclasses.replace(
            options, **restored, read=dataclasses.replace(read, **restored_read)
        ),
        recorded_fit["epoch"],
        recorded_fit["sample"],
    )


def _differs(key: str, value: Any, recorded: Any) -> UsageError:
    """The error for option ``key`` given to ``--resume`` unlike its record."""
    flag = "--" + ("mask" if key == "mask" else key.replace("_", "-"))
    return UsageError(
        f"{flag} {value!r} differs from the interrupted fit's {recorded!r}; "
        f"--resume continues that fit as it was (leave {flag} out, or fit "
        "again without --resume)"
    )


def _as_recorded(key: str, value: Any) -> Any:
    """An option's value as a resume record stores it (masks as absolute paths)."""
    if key == "mask":
        return None if not value else [str(Path(m).resolve()) for m in value]
    return value


def _resume_record(
    options: FitOptions, paths: Sequence[str | os.PathLike[str]], dataset: Dataset
) -> dict[str, Any]:
    """What a checkpoint records to resume: options, inputs, their fingerprints."""
    return {
        **{key: getattr(options, key) for key in RESUMED_OPTIONS},
        **{key: getattr(options.read, key) for key in RESUMED_READ_OPTIONS},
        "inputs": [
            text if text == "-" or is_url(text) else str(Path(text).resolve())
            for text in (os.fspath(p) for p in paths)
        ],
        "mask": _as_recorded("mask", options.mask),
        "files": fingerprints(dataset, options.mask),
    }


def fingerprints(
    dataset: Dataset, mask: Sequence[str | os.PathLike[str]] | None
) -> list[dict[str, Any]]:
    """Path, size and modification time of every file read, for ``--resume``."""
    paths = [source.path for source in dataset.sources] + list(map(str, mask or ()))
    from bncli.io.locations import file_info

    files = []
    for text in paths:
        if text == "-":
            continue
        if is_url(text):
            info = file_info(text)
            files.append(
                {
                    "path": text,
                    "size": int(info.size),
                    "mtime_ns": int(info.mtime_ns or 0),
                }
            )
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
