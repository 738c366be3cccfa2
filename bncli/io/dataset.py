"""The inputs opened together as one stream of samples: a :class:`Dataset`.

:func:`open_dataset` expands folders, opens each file with its reader
(:mod:`bncli.io.readers`), and settles the channels every file must agree
on: table columns chosen by name (``--columns``/``--exclude``, or a state's
features), an array axis and sample shape. The dataset then streams
:class:`bncli.io.chunks.Chunk` objects across files, with the masks.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncli.errors import ChannelMismatchError, DataError, InputNotFoundError, UsageError
from bncli.io.chunks import Chunk, Segment
from bncli.io.detect import format_by_name, sniff_format
from bncli.io.locations import is_url, list_objects
from bncli.io.partitions import Keys, hive_keys
from bncli.io.readers import open_source
from bncli.io.readers.npy import BAD_NPY
from bncli.io.sources import (
    TABLE_BATCH_ROWS,
    ArraySource,
    ReadOptions,
    Source,
    TableSource,
    first_line,
)
from bncli.io.tables import can_be_channel, is_numeric, table_chunk

__all__ = [
    "Dataset",
    "check_channels",
    "expand_inputs",
    "expand_with_keys",
    "open_dataset",
    "pandas_index_columns",
]


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Inputs with folders expanded to their data files, sorted by path.

    Subfolders are read too (partitioned datasets: ``year=2024/part-0.parquet``);
    files and folders whose names start with ``.`` or ``_`` (``_SUCCESS``,
    ``.crc`` files, ``_temporary``) are skipped, and so are files of other
    extensions.
    """
    return [path for path, _ in expand_with_keys(inputs)]


def expand_with_keys(
    inputs: Sequence[str | os.PathLike[str]],
) -> list[tuple[str, Keys]]:
    """:func:`expand_inputs`, each file with the Hive keys of its folders below the input."""
    paths: list[tuple[str, Keys]] = []
    for item in inputs:
        text = os.fspath(item)
        if text == "-":
            paths.append((text, ()))
            continue
        if is_url(text):
            found = [u for u in list_objects(text) if format_by_name(u) is not None]
            if not found:
                raise DataError("the prefix holds no data files", path=text)
            base = text.rstrip("/") + "/"
            paths.extend(
                (u, hive_keys(u.removeprefix(base)) if u != text else ()) for u in found
            )
            continue
        path = Path(text)
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(
                    part.startswith((".", "_")) for part in p.relative_to(path).parts
                )
                and format_by_name(p) is not None
            )
            if not files:
                raise DataError("folder holds no data files", path=path)
            paths.extend(
                (str(p), hive_keys(p.relative_to(path).as_posix())) for p in files
            )
        elif not path.exists():
            raise InputNotFoundError("no such file", path=path)
        elif not path.is_file():
            # A pipe (a FIFO, process substitution's /dev/fd/N) cannot be
            # read twice, and its format is told by reading its first bytes.
            raise UsageError(
                f"{text}: not a regular file (a pipe or a device) cannot be read "
                f"as a named input; give it as stdin: - < {text}"
            )
        else:
            paths.append((text, ()))
    if not paths:
        raise UsageError("no input given")
    return paths


def pandas_index_columns(schema: Any) -> set[str]:
    """The columns pandas wrote for an index: never default channels.

    ``__index_level_N__`` and the columns the ``pandas`` schema metadata
    names in ``index_columns`` (a RangeIndex is stored as metadata, not a
    column).
    """
    import json
    import re

    names = {n for n in schema.names if re.fullmatch(r"__index_level_\d+__", n)}
    raw = (schema.metadata or {}).get(b"pandas")
    if raw:
        try:
            about = json.loads(raw)
            names |= {c for c in about.get("index_columns", []) if isinstance(c, str)}
        except (ValueError, AttributeError):
            pass  # not pandas's: nothing to leave out
    return names


def check_channels(channels: int, path: str, where: str) -> None:
    """Refuse no channel at all, or more than :data:`bncli.limits.MAX_CHANNELS`."""
    from bncli.limits import MAX_CHANNELS

    if channels < 1:
        raise DataError(f"no channel: {where} is empty", path=path)
    if channels > MAX_CHANNELS:
        raise DataError(
            f"{channels:,} channels ({where}); bncli takes at most {MAX_CHANNELS:,}",
            path=path,
        )


@dataclasses.dataclass
class Dataset:
    """Inputs opened as one stream of samples."""

    sources: list[Source]
    kind: str
    features: list[str]
    sample_shape: tuple[int, ...]
    axis: int
    mask_column: str | None = None
    masks: list[Any] | None = None
    nan_policy: str = "error"
    read: ReadOptions = dataclasses.field(default_factory=ReadOptions)

    @property
    def num_samples(self) -> int | None:
        """Samples in the stream, when every source knows its size."""
        sizes = [s.num_rows for s in self.sources]
        return None if any(n is None for n in sizes) else sum(n for n in sizes if n)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample's channels as stored (tables: 8 per channel)."""
        return int(np.prod(self.sample_shape)) * self.sources[0].value_bytes

    def check_same_columns(self) -> None:
        """Refuse tables whose other columns differ from the first input's.

        Outputs keep every column, so each input must have the same ones, of
        the same types (the channels may differ in numeric type).

        Raises:
            DataError: naming the first input that differs.
        """
        first = self.sources[0].schema
        if first is None:
            return  # arrays: no other columns
        first_names = set(first.names)
        channels = set(self.features)
        for source in self.sources[1:]:
            schema = source.schema
            if set(schema.names) != first_names or any(
                schema.field(name).type != first.field(name).type
                for name in first.names
                if name not in channels
            ):
                raise DataError(
                    f"columns differ from the first input's ({', '.join(first.names)});"
                    " the output keeps every column, so give inputs with the same ones",
                    path=source.path,
                )

    @property
    def replayable(self) -> bool:
        """Whether the stream can be read again (not stdin)."""
        return all(s.replayable for s in self.sources)

    def chunks(
        self, start: int = 0, rows: int = TABLE_BATCH_ROWS, all_columns: bool = False
    ) -> Iterator[Chunk]:
        """Yield the stream from sample ``start`` as chunks of at most ``rows``."""
        skipped = 0
        mask_offset = 0
        for index, source in enumerate(self.sources):
            size = source.num_rows
            local = max(start - skipped, 0)
            if size is not None and local >= size:
                skipped += size
                mask_offset += size
                continue
            row = local
            if source.kind == "array":
                for piece in source.chunks(local, rows):
                    yield self._array_chunk(
                        source, index, piece, row, mask_offset + row
                    )
                    row += len(piece)
            else:
                columns = self._read_columns(all_columns)
                for batch in source.chunks(local, rows, columns):
                    chunk = table_chunk(
                        batch,
                        self.features,
                        source.path,
                        row,
                        mask_column=self.mask_column,
                        keep_table=all_columns,
                    )
                    if self.nan_policy == "mask":
                        chunk.mask_nonfinite()
                    yield chunk
                    row += batch.num_rows
            skipped += row if size is None else size
            mask_offset += row if size is None else size

    def _read_columns(self, all_columns: bool) -> list[str] | None:
        """The table columns a chunk needs: channels and mask, or all of them."""
        if all_columns:
            return None
        return self.features + ([self.mask_column] if self.mask_column else [])

    def _array_chunk(
        self, source: Source, index: int, data: Any, row: int, stream_row: int
    ) -> Chunk:
        """An array piece as a chunk, with its rows of the NPY masks."""
        n = len(data)
        mask = None
        if self.masks is not None:
            if len(self.masks) == 1 and len(self.sources) > 1:
                piece = self.masks[0][stream_row : stream_row + n]
            else:
                piece = self.masks[index][row : row + n]
            mask = np.asarray(piece).astype(bool, copy=False).reshape(n, -1, 1)
        chunk = Chunk(
            data=data,
            mask=mask,
            nulls=None,
            table=None,
            segments=(Segment(source.path, row, n),),
            features=self.features,
            axis=self.axis,
        )
        if self.nan_policy == "mask":
            chunk.mask_nonfinite()
        return chunk


def open_dataset(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    axis: int = -1,
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
    sample_shape: Sequence[int] | None = None,
    mask_column: str | None = None,
    masks: Sequence[str | os.PathLike[str]] | None = None,
    nan_policy: str = "error",
    read: ReadOptions | None = None,
) -> Dataset:
    """Open the inputs as one stream and settle its channels.

    Args:
        inputs: files, folders (their files sorted by name) or ``-`` (stdin).
        axis: the channel axis of array inputs.
        columns, exclude: the channel columns of tables (default: every
            integer and floating column, in file order).
        features: the channel names a state remembers: tables select those
            columns by name, arrays must have as many channels.
        sample_shape: the per-sample shape a state remembers (arrays).
        mask_column: a boolean or 0/1 column; false rows count in no statistic.
        masks: NPY masks, one per NPY input or one for the whole stream.
        nan_policy: ``"error"`` or ``"mask"``.
        read: CSV's delimiter, an NPZ archive's array.

    Raises:
        UsageError: ``read.array`` with no NPZ input, or a bad delimiter.
        DataError: unreadable inputs, or inputs that disagree.
        ChannelMismatchError: channels that differ from ``features``.
    """
    if nan_policy not in ("error", "mask"):
        raise UsageError(f"nan policy must be 'error' or 'mask', got {nan_policy!r}")
    expanded = expand_with_keys(inputs)
    paths = [path for path, _ in expanded]
    if paths.count("-") and len(paths) > 1:
        raise UsageError("'-' (stdin) must be the only input")
    read = (read or ReadOptions()).checked()
    sources = [open_source(p, read) for p in paths]
    for source, (_, keys) in zip(sources, expanded, strict=True):
        if keys and isinstance(source, TableSource):
            source.add_keys(keys)
    if read.array is not None and not any(s.format == "npz" for s in sources):
        raise UsageError("--array chooses an array of .npz inputs; there is none")
    dataset = _open(
        sources,
        axis,
        columns,
        exclude,
        features,
        sample_shape,
        mask_column,
        masks,
        nan_policy,
    )
    dataset.read = read
    return dataset


def _open(
    sources: list[Source],
    axis: int,
    columns: Sequence[str] | None,
    exclude: Sequence[str] | None,
    features: Sequence[str] | None,
    sample_shape: Sequence[int] | None,
    mask_column: str | None,
    masks: Sequence[str | os.PathLike[str]] | None,
    nan_policy: str,
) -> Dataset:
    kinds = {s.kind for s in sources}
    if len(kinds) > 1:
        raise DataError("inputs mix tables and NPY arrays", path=sources[-1].path)
    if sources[0].kind == "table":
        if masks:
            raise UsageError("--mask is for NPY inputs; use --mask-column for tables")
        return _open_tables(
            sources,
            columns,
            exclude,
            features,
            mask_column,
            nan_policy,
        )
    if mask_column is not None:
        raise UsageError("--mask-column is for tables; use --mask FILE.npy for arrays")
    if columns or exclude:
        raise UsageError("--columns and --exclude are for tables, not NPY arrays")
    arrays = [s for s in sources if isinstance(s, ArraySource)]
    return _open_arrays(arrays, axis, features, sample_shape, masks, nan_policy)


def _open_tables(
    sources: list[Source],
    columns: Sequence[str] | None,
    exclude: Sequence[str] | None,
    features: Sequence[str] | None,
    mask_column: str | None,
    nan_policy: str,
) -> Dataset:
    first = sources[0]
    names = first.schema.names
    present = set(names)  # membership tests stay O(1): tables may be 10^5 columns wide
    if columns and exclude:
        raise UsageError("--columns and --exclude cannot be used together")
    if mask_column is not None and mask_column not in present:
        raise DataError(
            f"mask column {mask_column!r} not found (columns: {', '.join(names)})",
            path=first.path,
        )
    if features is not None:
        chosen = list(features)
        missing = [c for c in chosen if c not in present]
        if missing:
            raise ChannelMismatchError(
                f"column {missing[0]!r} of the state is missing "
                f"(data columns: {', '.join(names)})",
                path=first.path,
            )
    elif columns:
        chosen = list(columns)
        for name in chosen:
            if name not in present:
                raise DataError(
                    f"column {name!r} not found (columns: {', '.join(names)})",
                    path=first.path,
                )
        if len(set(chosen)) != len(chosen):
            raise UsageError("--columns names a column twice")
    else:
        excluded = set(exclude or ())
        unknown = sorted(excluded - present)
        if unknown:
            raise DataError(
                f"--exclude names column {unknown[0]!r}, which is not in the data "
                f"(columns: {', '.join(names)})",
                path=first.path,
            )
        index = pandas_index_columns(first.schema)
        candidates = [
            f
            for f in first.schema
            if f.name not in excluded and f.name != mask_column and f.name not in index
        ]
        for field in candidates:
            _refuse_bad_number(first, field.name, hint=True)
        chosen = [f.name for f in candidates if is_numeric(f.type)]
        if not chosen:
            raise DataError("no numeric column to use as a channel", path=first.path)
    if mask_column is not None and mask_column in set(chosen):
        raise UsageError(f"the mask column {mask_column!r} cannot also be a channel")
    check_channels(len(chosen), first.path, "the selected columns")
    for source in sources:
        schema = source.schema
        in_schema = present if source is first else set(schema.names)
        for name in chosen:
            if name not in in_schema:
                raise ChannelMismatchError(
                    f"column {name!r} is missing (the first input has it)",
                    path=source.path,
                )
            field = schema.field(name)
            if not can_be_channel(field.type):
                _refuse_bad_number(source, name, hint=False)
                raise DataError(
                    f"column is not numeric (type {field.type}); choose channels "
                    "with --columns or --exclude",
                    path=source.path,
                    column=name,
                )
        if mask_column is not None:
            if mask_column not in in_schema:
                raise DataError(
                    f"mask column {mask_column!r} not found", path=source.path
                )
            mask_type = schema.field(mask_column).type
            import pyarrow as pa

            if not (pa.types.is_boolean(mask_type) or pa.types.is_integer(mask_type)):
                raise DataError(
                    f"mask column must be boolean or 0/1, not {mask_type}",
                    path=source.path,
                    column=mask_column,
                )
    return Dataset(
        sources=list(sources),
        kind="table",
        features=chosen,
        sample_shape=(len(chosen),),
        axis=1,
        mask_column=mask_column,
        nan_policy=nan_policy,
    )


def _refuse_bad_number(source: Source, column: str, *, hint: bool) -> None:
    """Refuse a column of numbers in which one cell is not one (CSV's ``?``)."""
    if not isinstance(source, TableSource):
        return
    found = source.bad_number(column)
    if found is not None:
        row, text = found
        raise DataError(
            f"{text!r} is not a number",
            path=source.path,
            column=column,
            row=row,
            hint=f"--exclude {column} if it is not a channel" if hint else None,
        )


def _open_arrays(
    sources: list[ArraySource],
    axis: int,
    features: Sequence[str] | None,
    sample_shape: Sequence[int] | None,
    masks: Sequence[str | os.PathLike[str]] | None,
    nan_policy: str,
) -> Dataset:
    first = sources[0]
    shape = first.shape[1:]
    for source in sources[1:]:
        if source.shape[1:] != shape:
            raise ChannelMismatchError(
                f"sample shape {source.shape[1:]} differs from the first input's "
                f"{shape}",
                path=source.path,
            )
    ndim = len(shape) + 1
    normalized = axis + ndim if axis < 0 else axis
    if not 0 <= normalized < ndim:
        raise UsageError(
            f"axis {axis} is out of bounds for arrays of shape {first.shape}",
            path=first.path,
        )
    if normalized == 0:
        raise UsageError(
            "axis 0 is the sample axis and cannot be the channel axis",
            path=first.path,
        )
    if sample_shape is not None and (
        len(sample_shape) != len(shape)
        or any(d not in (-1, e) for d, e in zip(sample_shape, shape, strict=True))
    ):
        raise ChannelMismatchError(
            f"sample shape {tuple(shape)} differs from the state's "
            f"{tuple(sample_shape)}",
            path=first.path,
        )
    channels = shape[normalized - 1]
    check_channels(channels, first.path, f"axis {axis} of shape {first.shape}")
    names = [str(i) for i in range(channels)] if features is None else list(features)
    if len(names) != channels:
        raise ChannelMismatchError(
            f"{channels} channels on axis {axis}, the state has {len(names)}",
            path=first.path,
        )
    mask_arrays = None
    if masks:
        mask_arrays = _open_masks(sources, masks, normalized)
    return Dataset(
        sources=list(sources),
        kind="array",
        features=names,
        sample_shape=tuple(shape),
        axis=normalized,
        masks=mask_arrays,
        nan_policy=nan_policy,
    )


def _open_masks(
    sources: list[ArraySource], masks: Sequence[str | os.PathLike[str]], axis: int
) -> list[Any]:
    if len(masks) not in (1, len(sources)):
        raise UsageError(
            f"give --mask once per NPY input ({len(sources)}) or once for the "
            f"whole stream, not {len(masks)} times"
        )
    arrays = []
    for mask_path in masks:
        mask_path = os.fspath(mask_path)
        if sniff_format(mask_path) != "npy":
            raise DataError("a mask must be an NPY file", path=mask_path)
        try:
            arrays.append(np.load(mask_path, mmap_mode="r", allow_pickle=False))
        except (*BAD_NPY, OSError) as e:
            raise DataError(
                f"cannot read the mask ({first_line(e)})", path=mask_path
            ) from e
    total = sum(s.shape[0] for s in sources)
    for i, (mask_path, array) in enumerate(zip(masks, arrays, strict=True)):
        data_shape = sources[0].shape if len(arrays) == 1 else sources[i].shape
        expected = list(data_shape[:axis] + data_shape[axis + 1 :])
        if len(arrays) == 1:
            expected[0] = total
        if array.dtype.kind not in "biu":
            raise DataError(
                f"mask of dtype {array.dtype}; expected booleans or 0/1 integers",
                path=mask_path,
            )
        if list(array.shape) != expected:
            raise DataError(
                f"mask of shape {tuple(array.shape)}; expected {tuple(expected)} "
                "(the data's shape without the channel axis)",
                path=mask_path,
            )
    return arrays
