"""CRC-32 in pieces, joined: equal to zlib's over the whole, however cut."""

from __future__ import annotations

import os
import platform
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bncli.io import checksums


@given(a=st.binary(max_size=300), b=st.binary(max_size=300))
def test_combine_equals_the_crc_of_the_joined_bytes(a, b):
    assert checksums.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(
        a + b
    )


@given(
    length=st.integers(0, 2**40),
    crc1=st.integers(0, 2**32 - 1),
)
def test_combine_with_nothing_after_is_the_first_crc(length, crc1):
    assert checksums.crc32_combine(crc1, 0, 0) == crc1
    # A run of zero bytes after: as zlib extends a CRC over them.
    if length <= 4096:
        zeros = bytes(length)
        assert checksums.crc32_combine(crc1, zlib.crc32(zeros), length) == zlib.crc32(
            zeros, crc1
        )


def test_combine_refuses_a_negative_length():
    with pytest.raises(ValueError):
        checksums.crc32_combine(1, 2, -1)


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
@pytest.mark.parametrize("size", [0, 1, (8 << 20) - 1, (24 << 20) + 7])
def test_crc_in_threads_equals_zlib(workers, size):
    data = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert checksums.crc32(data, workers) == zlib.crc32(data)
    assert checksums.crc32(memoryview(data), workers) == zlib.crc32(data)


def test_small_pieces_are_joined_in_order():
    data = bytes(range(200)) * 3
    for workers in range(1, 12):
        assert checksums.crc32(data, workers, piece_bytes=7) == zlib.crc32(data), (
            workers
        )


def _has_pclmul() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return platform.machine() == "x86_64" and " pclmulqdq" in f.read()
    except OSError:
        return False


@pytest.fixture
def compiled():
    """The compiled CRC (skips only where BNCLI_REQUIRE_NATIVE=0 says so)."""
    if os.environ.get("BNCLI_REQUIRE_NATIVE", "1") != "0":
        from bncli.native.crc import crc32_blocks  # fails loudly when missing

        assert checksums.blocks is crc32_blocks
        return crc32_blocks
    if checksums.blocks is None:
        pytest.skip("BNCLI_REQUIRE_NATIVE=0: no C compiler here")
    return checksums.blocks


@given(
    data=st.binary(max_size=2000),
    skip=st.integers(0, 15),
    crc=st.integers(0, 2**32 - 1),
)
def test_the_carry_less_crc_continues_zlibs(compiled, data, skip, crc):
    """Any length, any alignment, any CRC to continue: the blocks the C code
    sums, then zlib's sum of the rest, equal zlib's sum of the whole."""
    view = memoryview(data)[skip:]
    got, done = compiled(view, crc)
    if len(view) >= 64 and _has_pclmul():
        assert done == len(view) - len(view) % 16
    else:
        assert (done, got) == (0, crc)
    assert zlib.crc32(view[done:], got) == zlib.crc32(view, crc)


def test_the_carry_less_crc_of_a_large_buffer(compiled):
    data = bytes(range(251)) * 40_000 + b"tail"  # 10 MB, not a multiple of 16
    assert checksums.crc32(data, 1) == zlib.crc32(data)
    assert checksums.crc32(data, 2, piece_bytes=1 << 20) == zlib.crc32(data)
