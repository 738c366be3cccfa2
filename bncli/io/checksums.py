"""CRC-32 (zlib's) of large buffers on every core.

Pieces of a buffer are summed side by side in threads (the GIL is released
while they are) and their CRCs joined with zlib's ``crc32_combine`` (not
exposed by Python's zlib module; written out here after zlib 1.2.12's
``multmodp``/``x2nmodp``). Each piece is summed by carry-less multiplication
where the compiled :mod:`bncli.native.crc` was built and the CPU has
PCLMULQDQ (11.5 GB/s on one core here, zlib 1.2.13's tables 3.4), zlib
finishing the last bytes; by ``zlib.crc32`` otherwise. The CRC of a 100 MB
stored member of a ``.keras`` archive, checked before libhdf5 reads a byte
of it, then costs a few milliseconds.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import Any

from bncli.limits import available_cores

blocks: Callable[[Any, int], tuple[int, int]] | None
try:
    from bncli.native.crc import crc32_blocks as blocks
except ImportError:  # not built: zlib sums every byte
    blocks = None

__all__ = ["PIECE_BYTES", "crc32", "crc32_combine"]

_POLY = 0xEDB88320  # reflected
#: The least a thread sums: below it, a thread costs more than it saves.
PIECE_BYTES = 8 << 20


def _multmodp(a: int, b: int) -> int:
    """``a * b`` modulo the CRC polynomial (both reflected)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    """``x**(2**k)`` modulo the polynomial, k = 0..31."""
    table = []
    p = 1 << 30  # x**1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``a + b`` from ``crc1`` of ``a``, ``crc2`` of ``b`` and ``len(b)``.

    Example:
        >>> crc32_combine(zlib.crc32(b"bat"), zlib.crc32(b"ch"), 2) == zlib.crc32(b"batch")
        True
    """
    if len2 < 0:
        raise ValueError("a length is not negative")
    p = 1 << 31  # x**0
    k = 3  # len2 bytes: x**(8 * len2) = x**(2**3 * len2)
    n = len2
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1 & 0xFFFFFFFF) ^ (crc2 & 0xFFFFFFFF)


def crc32(data: Any, workers: int | None = None, piece_bytes: int = PIECE_BYTES) -> int:
    """``zlib.crc32(data)``, in up to ``workers`` threads (None: every core),
    each summing ``piece_bytes`` at least."""
    if workers is None:
        workers = available_cores()
    view = memoryview(data).cast("B")
    size = len(view)
    pieces = max(min(workers, size // max(piece_bytes, 1)), 1)
    if pieces == 1:
        return _crc32(view)
    bounds = [size * i // pieces for i in range(pieces + 1)]
    crcs = [0] * pieces

    def run(i: int) -> None:
        crcs[i] = _crc32(view[bounds[i] : bounds[i + 1]])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, pieces)]
    for thread in threads:
        thread.start()
    run(0)
    for thread in threads:
        thread.join()
    crc = crcs[0]
    for i in range(1, pieces):
        crc = crc32_combine(crc, crcs[i], bounds[i + 1] - bounds[i])
    return crc


def _crc32(view: memoryview) -> int:
    """``zlib.crc32(view)``: its 16-byte blocks in C where built, the rest by zlib."""
    if blocks is None:
        return zlib.crc32(view)
    crc, done = blocks(view, 0)
    return zlib.crc32(view[done:], crc)
