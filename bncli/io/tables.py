"""Tables as chunks: Arrow record batches to channel-major arrays of floats.

Shared by every table reader's pieces: the channels are selected by name,
copied once into an ``(n, C)`` channel-major array (each column contiguous,
so that outputs go back to Arrow without a copy), nulls filled and masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bncli.io.chunks import Chunk, Segment

__all__ = ["can_be_channel", "channel_major", "is_numeric", "table_chunk"]


def is_numeric(arrow_type: Any) -> bool:
    """Whether a column of this Arrow type is a default channel.

    Integers, floats and decimals (read as float64), dictionary-encoded or
    not. Bool columns are channels only when named (1.0 and 0.0).
    """
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return bool(
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_decimal(arrow_type)
    )


def can_be_channel(arrow_type: Any) -> bool:
    """Whether a column of this Arrow type may be named as a channel."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return is_numeric(arrow_type) or pa.types.is_boolean(arrow_type)


def _as_numbers(column: Any) -> Any:
    """A decimal, bool or dictionary-encoded column as plain numbers."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.dictionary_decode()
        kind = column.type
    if pa.types.is_decimal(kind) or pa.types.is_boolean(kind):
        column = pc.cast(column, pa.float64())
    return column


def table_chunk(
    batch: Any,
    features: Sequence[str],
    path: str,
    row: int,
    *,
    mask_column: str | None = None,
    keep_table: bool = True,
) -> Chunk:
    """A record batch as a chunk: its channel columns as ``(n, C)`` floats.

    Null cells are filled with 0 and marked in ``nulls`` (and masked out);
    ``mask_column`` (booleans or 0/1, null meaning false) masks whole rows.
    The batch is kept for the outputs' other columns unless ``keep_table``
    is off.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = batch.num_rows
    schema = batch.schema
    data = channel_major(batch, features)
    columns = []
    nulls = None
    for j, name in enumerate([] if data is not None else features):
        column = _as_numbers(batch.column(schema.get_field_index(name)))
        if column.null_count:
            if nulls is None:
                nulls = np.zeros((n, len(features)), dtype=bool)
            nulls[:, j] = column.is_null().to_numpy(zero_copy_only=False)
            column = pc.fill_null(column, 0)
        columns.append(column.to_numpy(zero_copy_only=False))
    if data is None:
        dtype = np.result_type(*[c.dtype for c in columns])
        if dtype.kind != "f":
            dtype = np.dtype(np.float64)
        # Channel-major, as channel_major makes it.
        by_column = np.empty((len(columns), n), dtype=dtype)
        for j, column in enumerate(columns):
            by_column[j] = column
        data = by_column.T
    mask = None if nulls is None else ~nulls
    if mask_column is not None:
        keep = batch.column(schema.get_field_index(mask_column))
        keep_np = pc.fill_null(keep.cast(pa.bool_()), False).to_numpy(
            zero_copy_only=False
        )
        mask = keep_np[:, None] if mask is None else mask & keep_np[:, None]
    chunk = Chunk(
        data=data,
        mask=None if mask is None else mask.reshape(n, 1, -1),
        nulls=nulls,
        # Only outputs need the other columns; without them, a batch that
        # spans files whose channel types differ (float32, float64) joins.
        table=batch if keep_table else None,
        segments=(Segment(path, row, n),),
        features=features,
        axis=1,
    )
    return chunk


def channel_major(batch: Any, features: Sequence[str]) -> npt.NDArray[Any] | None:
    """The channel columns as an ``(n, C)`` channel-major array, in one copy.

    One column is Arrow's own memory, read-only, without a copy.

    Channel-major (each column contiguous, the array the transpose of a
    ``(C, n)`` one): a column is one contiguous copy, where filling an
    ``(n, C)`` row-major array column by column is a strided write several
    times slower, and the outputs, laid out alike, go back to Arrow without a
    copy. Arrow makes it (``to_tensor``) in memory from its own pool, which
    reuses freed memory instead of touching fresh pages for every chunk.

    Returns ``None`` where that does not apply, for the caller to build the
    array column by column: a null in a channel, channels of different
    types, or integer channels (they become float64).
    """
    import pyarrow as pa

    if not isinstance(batch, pa.RecordBatch) or not batch.num_rows or not features:
        return None
    columns = [batch.column(batch.schema.get_field_index(name)) for name in features]
    types = {column.type for column in columns}
    if len(types) != 1 or any(column.null_count for column in columns):
        return None
    (kind,) = types
    if not pa.types.is_floating(kind) or pa.types.is_float16(kind):
        return None
    if len(columns) == 1:  # a column is already channel-major: no copy
        column: npt.NDArray[Any] = columns[0].to_numpy(zero_copy_only=True)
        return column.reshape(-1, 1)
    selected = pa.RecordBatch.from_arrays(columns, names=list(features))
    if not hasattr(selected, "to_tensor"):  # pyarrow before 16
        return None
    data: npt.NDArray[Any] = selected.to_tensor(row_major=False).to_numpy()
    return data
