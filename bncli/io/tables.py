"""Tables as chunks: Arrow record batches to channel-major arrays of floats.

Shared by every table reader's pieces: the channels are selected by name,
copied once into an ``(n, C)`` channel-major array (each column contiguous,
so that outputs go back to Arrow without a copy), nulls filled and masked.

Arrays cross between Arrow and NumPy through their buffers
(:func:`numpy_values`, :func:`numpy_bools`, :func:`arrow_values`), never
through pyarrow's ``to_numpy``, ``pa.array`` or ``pa.scalar``: those import
pandas wherever it is installed, which cost 0.29 s and 45 MiB of peak
resident memory for nothing (pyarrow 26).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bncli.io.chunks import Chunk, Segment

__all__ = [
    "arrow_text",
    "arrow_values",
    "can_be_channel",
    "channel_major",
    "is_numeric",
    "numpy_bools",
    "numpy_values",
    "table_chunk",
]


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
            nulls[:, j] = numpy_bools(column.is_null())
        columns.append(numpy_values(column))
    if data is None:
        dtype = np.result_type(*[c.dtype for c in columns])
        if dtype.kind != "f":
            dtype = np.dtype(np.float64)
        # Channel-major, as channel_major makes it.
        by_column = np.empty((len(columns), n), dtype=dtype)
        for j, column in enumerate(columns):
            by_column[j] = column
            if nulls is not None:  # a null's slot holds anything: 0 it is
                by_column[j][nulls[:, j]] = 0
        data = by_column.T
    mask = None if nulls is None else ~nulls
    if mask_column is not None:
        keep = batch.column(schema.get_field_index(mask_column)).cast(pa.bool_())
        keep_np = numpy_bools(keep)  # a null keeps nothing
        if keep.null_count:
            keep_np &= numpy_bools(keep.is_valid())
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
        return numpy_values(columns[0]).reshape(-1, 1)
    selected = pa.RecordBatch.from_arrays(columns, names=list(features))
    if not hasattr(selected, "to_tensor"):  # pyarrow before 16
        return None
    data: npt.NDArray[Any] = selected.to_tensor(row_major=False).to_numpy()
    return data


def numpy_values(array: Any) -> npt.NDArray[Any]:
    """A numeric Arrow array's values: a read-only view of its buffer.

    Integers and floats of any width, in the machine's byte order (Arrow's
    in memory). A null's slot holds whatever the buffer holds.
    """
    import pyarrow as pa

    kind = array.type
    if pa.types.is_floating(kind):
        code = "f"
    elif pa.types.is_signed_integer(kind):
        code = "i"
    elif pa.types.is_unsigned_integer(kind):
        code = "u"
    else:  # pragma: no cover - callers convert to numbers first
        raise TypeError(f"not a numeric Arrow array: {kind}")
    dtype = np.dtype(f"{code}{kind.bit_width // 8}")
    n = len(array)
    if n == 0:
        return np.empty(0, dtype=dtype)
    values: npt.NDArray[Any] = np.frombuffer(
        array.buffers()[1], dtype=dtype, count=n, offset=array.offset * dtype.itemsize
    )
    values.flags.writeable = False  # Arrow's memory, as to_numpy gives it
    return values


def numpy_bools(array: Any) -> npt.NDArray[np.bool_]:
    """A boolean Arrow array's values, unpacked from its bits (nulls: any)."""
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=bool)
    bits = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    start = array.offset
    unpacked = np.unpackbits(bits, count=start + n, bitorder="little")
    return unpacked[start:].view(np.bool_)


def arrow_values(
    values: npt.NDArray[Any],
    dtype: np.dtype[Any],
    nulls: npt.NDArray[np.bool_] | None = None,
) -> Any:
    """A NumPy column as an Arrow array of ``dtype`` (cast if it is not),
    on the same memory where it is contiguous and of that dtype.

    ``nulls`` marks the cells that are null (a NaN stays a value).
    """
    import pyarrow as pa

    values = np.ascontiguousarray(values, dtype=dtype)
    arrow_type = pa.from_numpy_dtype(values.dtype)
    validity, null_count = None, 0
    if nulls is not None:
        null_count = int(np.count_nonzero(nulls))
        if null_count:
            validity = pa.py_buffer(np.packbits(~nulls, bitorder="little"))
    return pa.Array.from_buffers(
        arrow_type, len(values), [validity, pa.py_buffer(values)], null_count
    )


def arrow_text(value: str | None) -> Any:
    """``value`` as an Arrow string scalar, made from its UTF-8 bytes (None: null)."""
    import pyarrow as pa

    if value is None:
        return pa.nulls(1, pa.string())[0]
    data = value.encode()
    offsets = np.array([0, len(data)], dtype=np.int32)
    one = pa.Array.from_buffers(
        pa.string(), 1, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    return one[0]
