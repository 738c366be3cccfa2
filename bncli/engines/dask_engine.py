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

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncli.engines import session
from bncli.engines.base import (
    BlockFold,
    EngineLayer,
    FitOptions,
    FitParams,
    FitSummary,
    TransformOptions,
    TransformSummary,
    check_positive,
)
from bncli.engines.blocks import (
    EpochFold,
    FitPlan,
    RangeFold,
    fold_range,
    transform_chunk,
)
from bncli.engines.dask_cluster import (
    INSTALL_COMMAND,
    connect,
    import_distributed,
    results,
)
from bncli.engines.dask_tasks import (
    Task,
    input_files,
    input_sizes,
    make_tasks,
    naming_inputs,
    num_tasks,
    open_file,
    plan_ranges,
    read_task,
    snap_to_batches,
    snap_to_units,
)
from bncli.engines.inputs import chunk_bytes, open_transform_dataset
from bncli.errors import BncliError, DataError, UsageError
from bncli.io.atomic import atomic_path, scratch_folder
from bncli.io.batching import batch_blocks, block_rows
from bncli.io.chunks import Chunk
from bncli.io.dataset import Dataset
from bncli.io.locations import is_url
from bncli.io.outputs import writing
from bncli.io.partitions import Keys
from bncli.progress import NullProgress, Progress

__all__ = [
    "INSTALL_COMMAND",
    "DaskEngine",
    "fit_layer",
    "fit_task",
    "transform_layer",
    "transform_task",
]

_PART_SUFFIX = {
    "parquet": ".parquet",
    "arrow": ".arrow",
    "arrow-stream": ".arrow",  # parts as files, joined into one stream
    "csv": ".csv",
    "npy": ".npy",
}


def refuse_stdin(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Refuse ``-``: workers read the inputs themselves."""
    if any(os.fspath(p) == "-" for p in paths):
        raise UsageError(
            "'-' (stdin) cannot be used with --engine dask: the workers read the "
            "input files themselves"
        )


# ------------------------------------------------------------------------- fit


def fit_task(task: Task, plan: FitPlan) -> RangeFold:
    """Fold a task's range (:func:`bncli.engines.blocks.fold_range`), on a worker."""
    with np.errstate(invalid="ignore", over="ignore"), naming_inputs(task.files):
        return fold_range(read_task(task), task.start, task.stop, plan)


@dataclasses.dataclass(frozen=True)
class DaskEngine:
    """Folds computed by the tasks of a Dask cluster.

    Attributes:
        scheduler: a scheduler address (``tcp://HOST:PORT``); ``None`` starts
            a local cluster of ``workers`` processes on 127.0.0.1.
        workers: worker processes of a local cluster (default: every core),
            ignored with ``scheduler``.
        tasks: tasks per epoch (default: at least one per worker thread,
            about 64 MiB of samples each).
    """

    scheduler: str | None = None
    workers: int | None = None
    tasks: int | None = None

    def refuse(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        resume: bool,
        checkpoint_every: int | None,
    ) -> None:
        """Dask missing, ``resume``, checkpoints, stdin: usage errors."""
        import_distributed()
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
        if self.tasks is not None:
            check_positive("tasks", self.tasks)
        refuse_stdin(paths)

    @contextlib.contextmanager
    def open(
        self, dataset: Dataset, params: FitParams, options: FitOptions
    ) -> Iterator[DaskFolds]:
        """Connect to the cluster, count the samples and plan the tasks."""
        distributed = import_distributed()
        with connect(distributed, self.scheduler, self.workers) as (client, threads):
            sizes = input_sizes(distributed, client, dataset)
            total = sum(sizes)
            batch_size = params.batch_size
            if options.drop_remainder:
                total = total // batch_size * batch_size
            if total == 0:
                raise DataError(
                    "empty input: no sample to fit", path=dataset.sources[0].path
                )
            sample_bytes = chunk_bytes(dataset)[0]
            files = input_files(dataset, sizes, options.mask)
            count = num_tasks(total, sample_bytes, threads, self.tasks)
            ranges = plan_ranges(total, count, snap_to_units(dataset, files))
            tasks = make_tasks(
                ranges, files, dataset, block_rows(batch_size, sample_bytes)
            )
            yield DaskFolds(distributed, client, tasks, FitPlan(params, total))


@dataclasses.dataclass
class DaskFolds:
    """An epoch's folds as the cluster's tasks return them, in stream order.

    Every epoch is batched on its own and reads the same samples, so its
    fold is the same: the tasks run in the first epoch only, and later
    epochs replay their fold.
    """

    distributed: Any
    client: Any
    tasks: list[Task]
    plan: FitPlan
    _epoch: BlockFold | None = None

    @property
    def samples(self) -> int:
        """Samples fitted per epoch (without a dropped remainder)."""
        return self.plan.samples

    def epoch(self, first: int) -> Iterator[BlockFold]:
        """The folds of an epoch (``first`` is always 0: no resume)."""
        if self._epoch is not None:
            yield self._epoch
            return
        futures = self.client.map(fit_task, self.tasks, plan=self.plan, pure=False)
        epoch = EpochFold(self.plan)
        for task, result in zip(
            self.tasks, results(self.distributed, futures), strict=True
        ):
            fold, batches = epoch.add(result)
            yield BlockFold(fold, batches, task.stop - task.start, task.stop)
        fold, batches = epoch.finish()
        self._epoch = BlockFold(fold, batches, self.plan.samples, self.plan.samples)


def fit_layer(
    layer: EngineLayer,
    paths: Sequence[str | os.PathLike[str]],
    options: FitOptions | None = None,
    *,
    scheduler: str | None = None,
    progress: Progress | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    tasks: int | None = None,
) -> FitSummary:
    """Fit ``layer`` on files with a Dask cluster, as the local engine would.

    The same arguments, checks, updates and result as
    :func:`bncli.engines.local.fit_layer`, which it equals (to rounding) for
    any number of workers and tasks; see :class:`DaskEngine` for
    ``scheduler`` and ``tasks``.

    Raises:
        UsageError: Dask missing, stdin, ``resume`` or ``checkpoint_every``.
        BncliError: an unreachable scheduler (exit 1).
        StateFrozenError, StateMismatchError, DataError: as the local engine.
    """
    options = options or FitOptions()
    return session.fit_layer(
        layer,
        paths,
        options,
        DaskEngine(scheduler, options.workers, tasks),
        checkpoint_every=checkpoint_every,
        progress=progress,
        resume=resume,
    )


# ------------------------------------------------------------------- transform


@dataclasses.dataclass(frozen=True)
class TransformJob:
    """What every transform task shares."""

    layer: EngineLayer
    dtype: np.dtype[Any]
    training: bool
    batch_size: int
    replicas: int
    nan_policy: str
    #: The first input: its schema is the output's, as with the local engine.
    first: str
    first_keys: Keys
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
        sources=[open_file(job.first, options.read, job.first_keys)],
        kind=options.kind,
        features=list(options.features),
        sample_shape=options.sample_shape,
        axis=options.axis,
        read=options.read,
    )
    chunks: Iterator[Chunk] = read_task(task, all_columns=True)
    if job.training:
        chunks = (b.chunk for b in batch_blocks(chunks, job.batch_size))
    samples = 0
    with (
        naming_inputs(task.files),
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
    layer: EngineLayer,
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
    from bncli.io.sinks import csv_compression, sink_format

    started = time.perf_counter()
    progress = progress or NullProgress()
    distributed = import_distributed()
    layer.require_built()
    layer.require_whole()
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
    refuse_stdin(paths)
    parts_folder = not single_file and sink_format(output, "table") == "parquet"
    if parts_folder and is_url(output):
        raise UsageError(
            f"{output}: --engine dask writes Parquet to a URL as one object; "
            "give --single-file"
        )
    dataset, target = open_transform_dataset(
        layer, paths, output, options, folder=parts_folder
    )
    if target.stream:
        raise UsageError(
            f"{output}: --engine dask writes a file or a folder, not a FIFO or a "
            "device; use --engine local"
        )
    fmt = sink_format(output, dataset.kind)
    if csv_compression(output) is not None:
        raise UsageError(
            f"{output}: --engine dask writes plain CSV; compress it afterwards, or "
            "use --engine local"
        )
    dtype = layer.output_dtype(options.output_dtype)
    sample_bytes = chunk_bytes(dataset)[0]
    with connect(distributed, scheduler, workers) as (client, threads):
        sizes = input_sizes(distributed, client, dataset)
        total = sum(sizes)
        if total == 0:
            raise DataError(
                "empty input: nothing to transform", path=dataset.sources[0].path
            )
        files = input_files(dataset, sizes, options.mask)
        count = num_tasks(total, sample_bytes, threads, tasks)
        if training:  # tasks start on batch boundaries: batches never straddle
            snap = snap_to_batches(batch_size)
        else:
            snap = snap_to_units(dataset, files)
        ranges = plan_ranges(total, count, snap)
        rows = block_rows(batch_size if training else 1, sample_bytes)
        specs = make_tasks(ranges, files, dataset, rows)

        def run(folder: Path) -> int:
            job = TransformJob(
                layer=layer,
                dtype=dtype,
                training=training,
                batch_size=batch_size,
                replicas=options.replicas,
                nan_policy=options.nan_policy,
                first=files[0].path,
                first_keys=files[0].keys,
                folder=str(folder.resolve()),  # workers have their own cwd
                suffix=_PART_SUFFIX[fmt],
                width=max(5, len(str(len(specs) - 1))),
            )
            futures = client.map(transform_task, specs, job=job, pure=False)
            progress.start(total, dataset.sample_bytes)
            samples = 0
            for n in results(distributed, futures):
                samples += n
                progress.advance(n)
            return samples

        if fmt == "parquet" and not single_file:
            assert target.path is not None  # a local folder, checked above
            with atomic_path(target.path, directory=True) as folder:
                samples = run(folder)
        else:
            # Parts of a URL output are written in a local scratch folder,
            # joined, and the whole uploaded.
            with scratch_folder(target.path or _scratch_place()) as folder:
                samples = run(folder)
                parts = sorted(folder.glob(f"part-*{_PART_SUFFIX[fmt]}"))
                with writing(target) as tmp:
                    _join(fmt, parts, tmp, dataset.read.delimiter)
    progress.finish()
    return TransformSummary(samples, output, time.perf_counter() - started)


def _scratch_place() -> Path:
    """A name in the temporary folder beside which a URL output's parts are written."""
    import tempfile

    return Path(tempfile.gettempdir()) / "bncli-parts"


#: Bytes copied at a time when joining parts.
_COPY_BYTES = 8 << 20


def _join(fmt: str, parts: Sequence[Path], target: Path, delimiter: str = ",") -> None:
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
    elif fmt in ("arrow", "arrow-stream"):
        import pyarrow as pa

        new = pa.ipc.new_file if fmt == "arrow" else pa.ipc.new_stream
        writer = None
        try:
            for part in parts:
                with pa.memory_map(str(part), "r") as f:
                    reader = pa.ipc.open_file(f)
                    if writer is None:
                        writer = new(str(target), reader.schema)
                    for i in range(reader.num_record_batches):
                        writer.write_batch(reader.get_batch(i))
        finally:
            if writer is not None:
                writer.close()
    elif fmt == "csv":
        _join_csv(parts, target, delimiter)
    else:
        _join_npy(parts, target)


def _join_csv(parts: Sequence[Path], target: Path, delimiter: str) -> None:
    """Concatenate CSV parts, keeping the first part's header only."""
    header = b""
    with open(target, "wb") as out:
        for index, part in enumerate(parts):
            with open(part, "rb") as f:
                if index == 0:
                    header = _csv_header(part, delimiter)
                elif f.read(len(header)) != header:  # pragma: no cover - defensive
                    raise BncliError(
                        f"{part}: a part's CSV header differs from the first's"
                    )
                shutil.copyfileobj(f, out, _COPY_BYTES)


def _csv_header(part: Path, delimiter: str) -> bytes:
    """The header line(s) pyarrow wrote for ``part``'s columns."""
    import pyarrow as pa
    import pyarrow.csv as csv

    parse = csv.ParseOptions(delimiter=delimiter)
    names = csv.open_csv(str(part), parse_options=parse).schema.names
    buffer = pa.BufferOutputStream()
    schema = pa.schema([(name, pa.null()) for name in names])
    options = csv.WriteOptions(delimiter=delimiter)
    csv.CSVWriter(buffer, schema, write_options=options).close()
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
