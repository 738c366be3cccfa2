"""Arrow arrays to NumPy and back through their buffers (bncli.io.tables).

pyarrow's own conversions (``to_numpy``, ``to_pylist``, ``pa.array``) are
the oracle: bncli avoids them only because they import pandas.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bncli.io.tables import arrow_text, arrow_values, numpy_bools, numpy_values

NUMERIC = [
    pa.float16(),
    pa.float32(),
    pa.float64(),
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint16(),
    pa.uint32(),
    pa.uint64(),
]


@st.composite
def sliced(draw, kind):
    """An Arrow array of ``kind`` (with nulls, maybe), sliced at any offset."""
    n = draw(st.integers(0, 70))
    raw = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(
        0, 100, size=n
    )
    valid = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    values = [int(v) if ok else None for v, ok in zip(raw, valid, strict=True)]
    if kind == "bool":
        array = pa.array(
            [None if v is None else v % 2 == 1 for v in values], type=pa.bool_()
        )
    else:
        array = pa.array(values, type=kind)
    start = draw(st.integers(0, n))
    stop = draw(st.integers(start, n))
    return array.slice(start, stop - start)


@pytest.mark.parametrize("kind", NUMERIC, ids=str)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_numpy_values_are_arrows_values(kind, data):
    array = data.draw(sliced(kind))
    got = numpy_values(array)
    assert got.dtype == array.type.to_pandas_dtype()
    assert len(got) == len(array)
    valid = ~np.array(array.is_null().to_pylist(), dtype=bool)
    expected = np.array(
        [0 if v is None else v for v in array.to_pylist()], dtype=got.dtype
    )
    np.testing.assert_array_equal(got[valid], expected[valid])
    if len(array):  # a read-only view of Arrow's memory, not a copy
        assert not got.flags.writeable
        data = array.buffers()[1]
        assert got.ctypes.data == data.address + array.offset * got.itemsize
    if not array.null_count:
        np.testing.assert_array_equal(got, array.to_numpy(zero_copy_only=True))


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_numpy_bools_are_arrows_bools(data):
    array = data.draw(sliced("bool"))
    got = numpy_bools(array)
    assert got.dtype == np.bool_ and len(got) == len(array)
    expected = [bool(v) for v in array.to_pylist() if v is not None]
    assert got[~np.array(array.is_null().to_pylist(), dtype=bool)].tolist() == expected
    # is_null and is_valid carry no nulls: every cell is meant
    assert numpy_bools(array.is_null()).tolist() == [
        v is None for v in array.to_pylist()
    ]
    assert numpy_bools(array.is_valid()).tolist() == [
        v is not None for v in array.to_pylist()
    ]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(width=16, allow_nan=True), max_size=50),
    data=st.data(),
)
def test_arrow_values_is_pa_array(dtype, values, data):
    x = np.array(values, dtype=np.float64)
    nulls = np.array(
        data.draw(st.lists(st.booleans(), min_size=len(x), max_size=len(x))),
        dtype=bool,
    )
    for mask in (None, nulls):
        got = arrow_values(x, np.dtype(dtype), mask)
        expected = pa.array(x.astype(dtype), mask=mask)
        got.validate(full=True)
        assert got.type == expected.type
        assert got.null_count == expected.null_count
        # NaN stays a value, not a null (equal() treats NaN as unequal)
        assert got.to_pylist() == pytest.approx(expected.to_pylist(), nan_ok=True)


def test_arrow_values_of_a_contiguous_column_shares_its_memory():
    y = np.arange(12, dtype=np.float32).reshape(3, 4).T  # channel-major columns
    column = arrow_values(y[:, 1], np.dtype(np.float32))
    assert column.buffers()[1].address == y[:, 1].ctypes.data
    cast = arrow_values(y[:, 1], np.dtype(np.float64))
    assert cast.type == pa.float64() and cast.to_pylist() == [4.0, 5.0, 6.0, 7.0]


@settings(max_examples=60, deadline=None)
@given(value=st.none() | st.text())
def test_arrow_text_is_pa_scalar(value):
    got = arrow_text(value)
    expected = pa.scalar(value, pa.string())
    assert got.type == pa.string()
    assert got.is_valid == expected.is_valid
    assert got.as_py() == expected.as_py() == value
    assert pa.repeat(got, 3).equals(pa.repeat(expected, 3))
