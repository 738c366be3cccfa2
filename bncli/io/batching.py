"""Exact batching: batches of ``batch_size`` consecutive samples across files.

:func:`batch_blocks` regroups a stream of chunks into *blocks*: runs of whole
batches that start on a batch boundary (the last block of a stream may end
with a partial batch). The bulk of each chunk passes through as a view; only
a batch that straddles two chunks (a file or row-group boundary) is copied,
at most ``batch_size - 1`` samples per chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

from bncli.io.chunks import Chunk, concat_chunks

__all__ = ["Block", "batch_blocks", "block_rows"]


@dataclasses.dataclass
class Block:
    """Whole batches of the stream (the last may be partial).

    Attributes:
        chunk: the samples.
        first_sample: the index in the epoch of the block's first sample.
    """

    chunk: Chunk
    first_sample: int

    @property
    def end_sample(self) -> int:
        """The index in the epoch just after the block's last sample."""
        return self.first_sample + len(self.chunk)


_MAX_CHUNK_ROWS = 2**31 - 1


def block_rows(batch_size: int, sample_bytes: int, target_bytes: int = 8 << 20) -> int:
    """Samples per chunk to read: about ``target_bytes``, a multiple of the batch."""
    samples = max(target_bytes // max(sample_bytes, 1), 1)
    # Readers take a C integer; a larger batch is joined from several chunks.
    return min(max(samples // batch_size, 1) * batch_size, _MAX_CHUNK_ROWS)


def batch_blocks(
    chunks: Iterable[Chunk],
    batch_size: int,
    drop_remainder: bool = False,
    first_sample: int = 0,
) -> Iterator[Block]:
    """Regroup ``chunks`` into blocks of whole batches.

    Args:
        chunks: the stream, from a batch boundary on.
        batch_size: samples per batch.
        drop_remainder: leave out a final partial batch.
        first_sample: the index in the epoch of the first chunk's first sample.
    """
    carry: list[Chunk] = []
    carried = 0
    position = first_sample
    for chunk in chunks:
        n = len(chunk)
        if not n:
            continue
        start = 0
        if carried:
            need = batch_size - carried
            if n < need:
                carry.append(chunk)
                carried += n
                continue
            joined = concat_chunks([*carry, chunk.slice(0, need)])
            yield Block(joined, position)
            position += batch_size
            carry, carried, start = [], 0, need
        full = (n - start) // batch_size * batch_size
        if full:
            yield Block(chunk.slice(start, start + full), position)
            position += full
        if start + full < n:
            carry = [chunk.slice(start + full, n)]
            carried = n - start - full
    if carried and not drop_remainder:
        yield Block(concat_chunks(carry), position)
