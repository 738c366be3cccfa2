"""Chunks: consecutive samples of the stream, with where they came from.

Every reader's pieces become :class:`Chunk` objects (by :mod:`bncli.io.dataset`):
the channel data, a mask of what counts, a table's null cells and other
columns, and the :class:`Segment` of each file they hold, so that an error
names the file, column and row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bncli.errors import DataError

__all__ = ["Chunk", "Segment", "concat_chunks"]


@dataclasses.dataclass(frozen=True)
class Segment:
    """Rows ``[row, row + rows)`` of file ``path``, 0-based within the file."""

    path: str
    row: int
    rows: int


@dataclasses.dataclass
class Chunk:
    """Consecutive samples of the stream.

    Attributes:
        data: ``(n, *sample_shape)`` channel data as read (tables: ``(n, C)``).
        mask: ``None`` or booleans in rows layout, ``(n, P, 1)`` or
            ``(n, P, C)``; False excludes an element from the statistics.
        nulls: tables only: ``(n, C)`` null cells (kept null in outputs).
        table: tables only: the whole record batch, for the pass-through columns.
        segments: where the rows come from, for error messages.
        features: the channel names, for error messages.
        axis: the channel axis of ``data``.
    """

    data: npt.NDArray[Any]
    mask: npt.NDArray[np.bool_] | None
    nulls: npt.NDArray[np.bool_] | None
    table: Any
    segments: tuple[Segment, ...]
    features: Sequence[str]
    axis: int

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def slice(self, start: int, stop: int) -> Chunk:
        """Samples ``[start, stop)`` of this chunk (views where possible)."""
        segments = []
        offset = 0
        for seg in self.segments:
            lo, hi = max(start, offset), min(stop, offset + seg.rows)
            if lo < hi:
                segments.append(Segment(seg.path, seg.row + lo - offset, hi - lo))
            offset += seg.rows
        return Chunk(
            data=self.data[start:stop],
            mask=None if self.mask is None else self.mask[start:stop],
            nulls=None if self.nulls is None else self.nulls[start:stop],
            table=None if self.table is None else self.table.slice(start, stop - start),
            segments=tuple(segments),
            features=self.features,
            axis=self.axis,
        )

    def locate(self, index: int) -> tuple[str, int]:
        """The file and the row in it of sample ``index`` of this chunk."""
        offset = 0
        for seg in self.segments:
            if index < offset + seg.rows:
                return seg.path, seg.row + index - offset
            offset += seg.rows
        raise IndexError(index)  # pragma: no cover - callers pass valid indexes

    def raise_nonfinite(self, hint: str | None = None) -> None:
        """Raise a DataError naming the first NaN or infinity not masked out."""
        from bncli.kernels import to_rows

        rows = to_rows(np.asarray(self.data), self.axis)
        bad = ~np.isfinite(rows)
        if self.mask is not None:
            bad &= self.mask
        hits = np.argwhere(bad)
        if not len(hits):
            raise DataError(
                "values too large: their sum overflows float64",
                path=self.segments[0].path if self.segments else None,
            )
        sample, _, channel = (int(v) for v in hits[0])
        path, row = self.locate(sample)
        value = rows[sample].reshape(-1, rows.shape[-1])[:, channel]
        kind = "NaN" if np.isnan(value).any() else "infinity"
        raise DataError(
            f"{kind} in a channel",
            path=path,
            column=str(self.features[channel]),
            row=row,
            hint=hint or "use --nan-policy mask to skip such values",
        )

    def mask_nonfinite(self) -> None:
        """Count NaN and infinite elements as masked out (``--nan-policy mask``)."""
        from bncli.kernels import to_rows

        finite = np.isfinite(to_rows(np.asarray(self.data), self.axis))
        if finite.all():
            return
        self.mask = finite if self.mask is None else self.mask & finite


def concat_chunks(chunks: Sequence[Chunk]) -> Chunk:
    """Join consecutive chunks into one (copies)."""
    if len(chunks) == 1:
        return chunks[0]
    masks = [c.mask for c in chunks]
    mask = None
    if any(m is not None for m in masks):
        width = max(m.shape[-1] for m in masks if m is not None)
        parts = []
        for c in chunks:
            if c.mask is None:
                per = int(np.prod(c.data.shape[1:])) // max(c.data.shape[c.axis], 1)
                parts.append(np.ones((len(c), per, width), dtype=bool))
            else:
                parts.append(np.broadcast_to(c.mask, (*c.mask.shape[:2], width)))
        mask = np.concatenate(parts)
    nulls = None
    if any(c.nulls is not None for c in chunks):
        # A chunk without null cells has no array: stand in all False for it.
        width = len(chunks[0].features)
        nulls = np.concatenate(
            [
                np.zeros((len(c), width), bool) if c.nulls is None else c.nulls
                for c in chunks
            ]
        )
    table = None
    if chunks[0].table is not None:
        import pyarrow as pa

        # Files may store a channel as float32 in one and float64 in another:
        # promote, as the channels' data are (the other columns are the same).
        table = pa.concat_tables(
            [
                pa.Table.from_batches(_as_batches(c.table), c.table.schema)
                for c in chunks
            ],
            promote_options="permissive",
        ).combine_chunks()
        table = table.to_batches()[0] if table.num_rows else table
    return Chunk(
        data=np.concatenate([c.data for c in chunks]),
        mask=mask,
        nulls=nulls,
        table=table,
        segments=tuple(s for c in chunks for s in c.segments),
        features=chunks[0].features,
        axis=chunks[0].axis,
    )


def _as_batches(table: Any) -> list[Any]:
    """A record batch, or a table's batches, as a list of batches."""
    return list(table.to_batches()) if hasattr(table, "to_batches") else [table]
