"""The local engine: fit and transform on this machine, every core busy.

Chunks are read in the calling thread (pyarrow decodes with its own threads,
and a reader thread reads ahead) and their blocks computed by a pool of
worker threads: NumPy releases the GIL in its reductions. A fit reduces each
block of whole batches to one fold (:func:`bncli.engines.blocks.fold_block`)
and hands the folds, in stream order, to the fit session
(:mod:`bncli.engines.session`), so the result does not depend on the number
of workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import numpy.typing as npt

from bncli.engines import columns, session
from bncli.engines.base import (
    BlockFold,
    EngineLayer,
    FitOptions,
    FitParams,
    FitSummary,
    TransformOptions,
    TransformSummary,
)
from bncli.engines.blocks import (
    OutputPool,
    fold_block,
    quiet_nonfinite,
    transform_chunk,
)
from bncli.engines.inputs import chunk_bytes, open_transform_dataset
from bncli.engines.threads import (
    default_workers,
    ordered_map,
    ordered_results,
    prefetched,
)
from bncli.errors import DataError
from bncli.io.batching import Block, batch_blocks, block_rows
from bncli.io.chunks import Chunk
from bncli.io.dataset import Dataset
from bncli.progress import NullProgress, Progress

__all__ = ["LocalEngine", "fit_layer", "transform_layer"]


@dataclasses.dataclass(frozen=True)
class LocalEngine:
    """Folds computed by ``workers`` threads of this process (None: every core)."""

    workers: int | None = None

    def refuse(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        resume: bool,
        checkpoint_every: int | None,
    ) -> None:
        """Nothing: this engine does all a fit may ask."""

    @contextlib.contextmanager
    def open(
        self, dataset: Dataset, params: FitParams, options: FitOptions
    ) -> Iterator[LocalFolds]:
        """The fold stream over ``dataset``."""
        yield LocalFolds(dataset, params, options, self.workers or default_workers())


@dataclasses.dataclass
class LocalFolds:
    """Each epoch's blocks of whole batches, folded by a pool of threads."""

    dataset: Dataset
    params: FitParams
    options: FitOptions
    workers: int

    @property
    def samples(self) -> int | None:
        """Samples per epoch, when the inputs say (not on stdin or CSV)."""
        return self.dataset.num_samples

    def epoch(self, first: int) -> Iterator[BlockFold]:
        """The folds of an epoch from sample ``first``, in stream order."""
        if columns.applies(self.dataset):
            yield from columns.epoch_folds(
                self.dataset, self.params, self.options, first, self.workers
            )
            return
        batch_size = self.params.batch_size
        rows = block_rows(batch_size, *chunk_bytes(self.dataset, params=self.params))
        blocks = batch_blocks(
            self.dataset.chunks(first, rows),
            batch_size,
            self.options.drop_remainder,
            first,
        )
        if self.workers > 1:
            blocks = prefetched(blocks, self.workers)
        params = self.params

        def fold(block: Block) -> BlockFold:
            fold, batches, samples = fold_block(block.chunk, params)
            return BlockFold(fold, batches, samples, block.end_sample)

        # The workers drop the blocks they folded: a window of a mapped file
        # leaves the resident set in the thread that read it.
        yield from ordered_results(fold, blocks, self.workers)


def fit_layer(
    layer: EngineLayer,
    paths: Sequence[str | os.PathLike[str]],
    options: FitOptions | None = None,
    *,
    checkpoint_every: int | None = None,
    checkpoint: Callable[[Any], None] | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    given: Collection[str] = (),
) -> FitSummary:
    """Fit ``layer`` on files with threads; see :func:`bncli.engines.session.fit_layer`."""
    options = options or FitOptions()
    return session.fit_layer(
        layer,
        paths,
        options,
        LocalEngine(options.workers),
        checkpoint_every=checkpoint_every,
        checkpoint=checkpoint,
        progress=progress,
        resume=resume,
        given=given,
    )


def transform_layer(
    layer: EngineLayer,
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
    from bncli.io.sinks import open_sink

    started = time.perf_counter()
    progress = progress or NullProgress()
    layer.require_built()
    layer.require_whole()
    options = (options or TransformOptions()).checked()
    batch_size, replicas = options.batch_size, options.replicas
    workers = options.workers or default_workers()
    training = bool(options.training and layer.trainable)
    output = os.fspath(output)
    dataset, target = open_transform_dataset(layer, paths, output, options)
    dtype = layer.output_dtype(options.output_dtype)
    rows = block_rows(
        batch_size if training else 1, *chunk_bytes(dataset, outputs=True)
    )
    chunks: Iterable[Chunk] = dataset.chunks(0, rows, all_columns=True)
    if training:
        chunks = (b.chunk for b in batch_blocks(chunks, batch_size))
    if workers > 1:
        chunks = prefetched(chunks, workers)

    pool = OutputPool() if dtype.kind == "f" and dtype.itemsize >= 4 else None

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
            if pool is not None and out is not None and not sink.keeps_outputs:
                pool.give(out)
            samples += len(chunk)
            progress.advance(len(chunk))
        if samples == 0:  # a stream of unknown length that held nothing
            raise DataError(
                "empty input: nothing to transform", path=dataset.sources[0].path
            )
    progress.finish()
    return TransformSummary(samples, output, time.perf_counter() - started)
