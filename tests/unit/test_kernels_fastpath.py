"""The kernels' fast paths against the straightforward formulas, written here.

The blocked moments, the folded moving averages and the blocked
normalization must give what the plain NumPy formula gives, for every
layout (contiguous, channel-major, strided), every dtype, and every size
around the block boundaries; the block size is shrunk so that small data
crosses many of them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bncli import kernels, normalization
from bncli.engines.blocks import all_finite
from tests.conftest import FAST


def _plain_moments(x):
    """Two-pass float64 moments of each batch of ``x`` ``(K, R, C)``."""
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=1)
    variance = ((x64 - mean[:, None, :]) ** 2).mean(axis=1)
    return mean, variance


def _plain_fold(means, variances, valid, momentum, m0, v0):
    """The moving averages after each batch in turn, as Keras updates them."""
    m, v = m0.copy(), v0.copy()
    for k in range(len(means)):
        keep = valid[k]
        m = np.where(keep, m * momentum + means[k] * (1 - momentum), m)
        v = np.where(keep, v * momentum + variances[k] * (1 - momentum), v)
    return m, v


@pytest.fixture(params=[1 << 15, 64, 7])
def block(request, monkeypatch):
    """The kernels' block size: the real one, and small ones crossing many blocks."""
    monkeypatch.setattr(kernels, "BLOCK_ELEMENTS", request.param)
    return request.param


# ---------------------------------------------------------------- moments


@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (5, 1, 3), (3, 7, 2), (9, 8, 16), (2, 300, 5), (1, 5000, 16)]
)
@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.float16, np.int32, np.bool_]
)
def test_blocked_moments_equal_the_formula(block, shape, dtype):
    rng = np.random.default_rng(0)
    x = (rng.normal(3.0, 2.0, shape) * (10 if dtype == np.int32 else 1)).astype(dtype)
    got = kernels.batched_moments(x)
    mean, variance = _plain_moments(x)
    np.testing.assert_array_equal(got.count, np.full(shape[::2], float(shape[1])))
    np.testing.assert_allclose(got.mean, mean, **FAST)
    np.testing.assert_allclose(got.variance, variance, **FAST)


@pytest.mark.parametrize("rows", [1, 8, 32, 4096])
def test_blocked_moments_of_channel_major_and_strided_data(block, rows):
    """Tables arrive channel-major ((C, n) transposed); slices are strided."""
    rng = np.random.default_rng(1)
    by_column = rng.normal(-4.0, 3.0, (6, rows * 5)).astype(np.float32)
    x = by_column.T.reshape(5, rows, 6)
    assert not x.flags.c_contiguous
    for view in (x, x[::2], x[:, ::-1], x[:, :, 1::2]):
        got = kernels.batched_moments(view)
        mean, variance = _plain_moments(view)
        np.testing.assert_allclose(got.mean, mean, **FAST)
        np.testing.assert_allclose(got.variance, variance, **FAST)


@pytest.mark.parametrize("offset", [1e4, 1e8])
def test_blocked_moments_keep_precision_far_from_zero(block, offset):
    """Two passes in float64: a large mean does not swamp a small variance."""
    rng = np.random.default_rng(2)
    x = offset + rng.normal(0.0, 1.0, (3, 2000, 2))
    got = kernels.batched_moments(x)
    for k in range(3):
        for c in range(2):
            values = x[k, :, c].tolist()
            mean = math.fsum(values) / len(values)
            variance = math.fsum((v - mean) ** 2 for v in values) / len(values)
            assert got.mean[k, c] == pytest.approx(mean, rel=1e-13)
            assert got.variance[k, c] == pytest.approx(variance, rel=1e-9)


def test_blocked_moments_of_nothing():
    for shape in [(0, 4, 3), (2, 0, 3), (2, 4, 0)]:
        got = kernels.batched_moments(np.zeros(shape, np.float32))
        assert got.mean.shape == got.variance.shape == (shape[0], shape[2])
        assert not got.mean.any() and not got.variance.any()


def test_blocked_moments_carry_nonfinite_values():
    x = np.ones((4, 3, 2), np.float32)
    x[2, 1, 0] = np.nan
    x[3, 0, 1] = np.inf
    with np.errstate(invalid="ignore"):
        got = kernels.batched_moments(x)
    finite = np.isfinite(got.mean) & np.isfinite(got.variance)
    assert finite.tolist() == [[True, True], [True, True], [False, True], [True, False]]


@given(
    k=st.integers(1, 6),
    r=st.integers(1, 40),
    c=st.integers(1, 5),
    size=st.integers(1, 300),
    seed=st.integers(0, 2**16),
)
def test_blocked_moments_any_block_size(k, r, c, size, seed):
    x = np.random.default_rng(seed).normal(1.0, 5.0, (k, r, c)).astype(np.float32)
    saved = kernels.BLOCK_ELEMENTS
    kernels.BLOCK_ELEMENTS = size
    try:
        got = kernels.batched_moments(x)
    finally:
        kernels.BLOCK_ELEMENTS = saved
    mean, variance = _plain_moments(x)
    np.testing.assert_allclose(got.mean, mean, **FAST)
    np.testing.assert_allclose(got.variance, variance, **FAST)


# ------------------------------------------------------------------- fold


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("masked", [False, True])
def test_fold_equals_the_update_loop(momentum, masked):
    rng = np.random.default_rng(3)
    means = rng.normal(0, 3, (50, 4))
    variances = rng.random((50, 4)) * 4
    valid = rng.random((50, 4)) < 0.7 if masked else np.ones((50, 4), bool)
    m0, v0 = rng.normal(0, 1, 4), rng.random(4) + 0.5
    fold = kernels.fold_batches(means, variances, valid, momentum)
    m, v = fold.apply(m0, v0)
    want_m, want_v = _plain_fold(means, variances, valid, momentum, m0, v0)
    np.testing.assert_allclose(m, want_m, **FAST)
    np.testing.assert_allclose(v, want_v, **FAST)
    np.testing.assert_array_equal(fold.batches, valid.sum(axis=0))


def test_fold_of_no_batch_is_the_identity():
    fold = kernels.fold_batches(
        np.zeros((0, 3)), np.zeros((0, 3)), np.ones((0, 3), bool), 0.9
    )
    m, v = fold.apply(np.arange(3.0), np.ones(3))
    np.testing.assert_array_equal(m, np.arange(3.0))
    np.testing.assert_array_equal(v, np.ones(3))


# -------------------------------------------------------------- normalize


def _plain_normalize(x, mean, variance, gamma, beta, epsilon):
    g = 1.0 if gamma is None else gamma
    b = 0.0 if beta is None else beta
    return g * (np.asarray(x, np.float64) - mean) / np.sqrt(variance + epsilon) + b


@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("shape", [(4, 3, 5), (2, 700, 3), (1, 1, 1)])
@pytest.mark.parametrize("out_dtype", [np.float32, np.float64])
def test_blocked_normalize_rounds_the_float64_result_once(
    block, per_batch, affine, shape, out_dtype
):
    rng = np.random.default_rng(4)
    k, _, c = shape
    x = rng.normal(50.0, 3.0, shape).astype(np.float32)
    stats_shape = (k, 1, c) if per_batch else (c,)
    mean = rng.normal(50.0, 1.0, stats_shape)
    variance = rng.random(stats_shape) * 9 + 0.1
    gamma = rng.normal(1, 0.2, c).astype(np.float32) if affine else None
    beta = rng.normal(0, 0.2, c).astype(np.float32) if affine else None
    out = np.empty(shape, out_dtype)
    got = normalization.normalize(x, mean, variance, gamma, beta, 1e-3, out=out)
    assert got is out
    plain = normalization.normalize(x, mean, variance, gamma, beta, 1e-3)
    np.testing.assert_array_equal(out, plain.astype(out_dtype))
    np.testing.assert_allclose(
        plain,
        _plain_normalize(x, mean, variance, gamma, beta, 1e-3),
        **FAST,
    )


def test_blocked_normalize_into_strided_and_channel_major_arrays(block):
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (7, 40)).astype(np.float32).T.reshape(40, 1, 7)
    out = np.empty((7, 40), np.float32).T.reshape(40, 1, 7)
    mean, variance = rng.normal(0, 1, 7), rng.random(7) + 0.5
    normalization.normalize(x, mean, variance, None, None, 1e-3, out=out)
    np.testing.assert_array_equal(
        out,
        normalization.normalize(x, mean, variance, None, None, 1e-3).astype(np.float32),
    )


def test_blocked_normalize_keeps_data_far_from_zero_exact():
    """(x - mean) in float64 first: no cancellation for a large mean."""
    x = np.array([[[1e8 + 1.0, 1e8 - 3.0]]], dtype=np.float64).reshape(1, 2, 1)
    out = np.empty_like(x, dtype=np.float32)
    normalization.normalize(
        x, np.array([1e8]), np.array([4.0]), None, None, 0.0, out=out
    )
    np.testing.assert_array_equal(out.ravel(), [0.5, -1.5])


def testall_finite():
    assert all_finite(np.ones((3, 4), np.float32))
    big = np.full(4, 3e38, np.float32)  # the sum overflows, the values are finite
    assert all_finite(big)
    for bad in (np.nan, np.inf, -np.inf):
        a = np.ones(10)
        a[7] = bad
        assert not all_finite(a)


# ------------------------------------------------- reused memory, layouts


def test_moments_into_given_arrays_equal_new_ones(block):
    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 3.0, (40, 8, 5)).astype(np.float32)
    mean, variance = np.full((40, 5), np.nan), np.full((40, 5), np.nan)
    got = kernels.batched_moments(x, out=(mean, variance))
    assert got.mean is mean and got.variance is variance
    want = kernels.batched_moments(x)
    np.testing.assert_array_equal(got.mean, want.mean)
    np.testing.assert_array_equal(got.variance, want.variance)
    np.testing.assert_array_equal(got.count, want.count)
    assert not got.count.flags.writeable


def test_block_buffer_reuse_across_shapes_and_threads():
    """One thread's buffer, reused by calls of other shapes, and by no other thread."""
    import concurrent.futures

    rng = np.random.default_rng(7)
    arrays = [
        rng.normal(0, 1, shape) for shape in [(3, 900, 2), (50, 4, 7), (1, 3, 1)] * 4
    ]

    def both(x):
        return kernels.batched_moments(x), _plain_moments(x)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        for got, (mean, variance) in pool.map(both, arrays):
            np.testing.assert_allclose(got.mean, mean, **FAST)
            np.testing.assert_allclose(got.variance, variance, **FAST)


@pytest.mark.parametrize("momentum", [0.0, 0.9, 1.0])
def test_fold_without_validity_equals_all_valid(momentum):
    rng = np.random.default_rng(8)
    means, variances = rng.normal(0, 1, (30, 3)), rng.random((30, 3))
    a = kernels.fold_batches(means, variances, None, momentum)
    b = kernels.fold_batches(means, variances, np.ones((30, 3), bool), momentum)
    for field in ("decay", "mean_offset", "variance_offset", "batches"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_outputs_follow_the_input_layout():
    from bncli.engines.blocks import OutputPool, output_rows
    from bncli.io.chunks import Chunk, Segment

    def chunk(data, axis):
        return Chunk(data, None, None, None, (Segment("x", 0, len(data)),), ["a"], axis)

    by_column = np.zeros((3, 10), np.float32)
    table = output_rows(chunk(by_column.T, 1), np.float32)
    assert table.shape == (10, 1, 3) and table[:, 0, 1].flags.c_contiguous
    array = output_rows(chunk(np.zeros((4, 5, 6)), 1), np.float64)
    assert array.shape == (4, 6, 5) and array.flags.c_contiguous

    pool = OutputPool()
    first = pool.take(chunk(by_column.T, 1), np.float32)
    pool.give(first)
    assert pool.take(chunk(by_column.T, 1), np.float32) is first
    assert pool.take(chunk(by_column.T, 1), np.float32) is not first


@pytest.mark.parametrize("rows", [32, 100, 4096])
def test_channel_major_moments_any_block_size(block, rows):
    """Taken a channel at a time when each channel's batches are contiguous."""
    rng = np.random.default_rng(9)
    by_column = rng.normal(5.0, 2.0, (3, rows * 7)).astype(np.float32)
    x = by_column.T.reshape(7, rows, 3)
    assert x.strides[1] == 4 and x.strides[0] == rows * 4
    got = kernels.batched_moments(x)
    mean, variance = _plain_moments(x)
    np.testing.assert_allclose(got.mean, mean, **FAST)
    np.testing.assert_allclose(got.variance, variance, **FAST)


def test_table_channels_in_one_copy_equal_column_by_column():
    import pyarrow as pa

    from bncli.io.tables import channel_major

    rng = np.random.default_rng(10)
    a, b = (
        rng.normal(size=50).astype(np.float32),
        rng.normal(size=50).astype(np.float32),
    )
    batch = pa.record_batch({"id": np.arange(50), "a": a, "b": b}).slice(5, 40)
    data = channel_major(batch, ["b", "a"])
    np.testing.assert_array_equal(data, np.stack([b[5:45], a[5:45]], axis=1))
    assert data.shape == (40, 2) and data[:, 0].flags.c_contiguous
    # Where it does not apply, the caller builds the array column by column.
    with_null = pa.record_batch({"a": pa.array([1.0, None]), "b": [1.0, 2.0]})
    mixed = pa.record_batch({"a": np.ones(2, np.float32), "b": np.ones(2)})
    integers = pa.record_batch({"a": [1, 2], "b": [3, 4]})
    for other in (with_null, mixed, integers, batch.slice(0, 0)):
        assert channel_major(other, ["a", "b"]) is None


def test_prefetched_keeps_order_raises_in_order_and_stops():
    import threading

    from bncli.engines.threads import prefetched

    assert list(prefetched(iter(range(100)), 3)) == list(range(100))

    def failing():
        yield 1
        yield 2
        raise ValueError("bad row")

    seen = []
    with pytest.raises(ValueError, match="bad row"):
        for item in prefetched(failing(), 2):
            seen.append(item)
    assert seen == [1, 2]

    produced = []
    stopped = threading.Event()

    def endless():
        try:
            for i in range(10**9):
                produced.append(i)
                yield i
        finally:
            stopped.set()

    stream = prefetched(endless(), 2)
    assert next(stream) == 0
    stream.close()
    assert stopped.wait(5)
    assert len(produced) < 10


class _Item:
    """An item that records the thread it died in."""

    def __init__(self, value, deaths):
        import threading
        import weakref

        self.value = value
        weakref.finalize(
            self, lambda: deaths.append((value, threading.current_thread().name))
        )


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_ordered_results_keep_order_and_bound_the_items_in_flight(workers):
    import threading

    from bncli.engines.threads import ordered_results

    alive = 0
    most = 0
    lock = threading.Lock()

    def items():
        nonlocal alive, most
        for i in range(60):
            with lock:
                alive += 1
                most = max(most, alive)
            yield i

    def square(i):
        nonlocal alive
        with lock:
            alive -= 1
        return i * i

    assert list(ordered_results(square, items(), workers)) == [i * i for i in range(60)]
    assert most <= max(2 * workers, 1) + 1


def test_ordered_results_let_the_workers_drop_the_items():
    import gc
    import threading

    from bncli.engines.threads import ordered_results

    gc.disable()  # an item must die of its last reference, not of a collection
    try:
        deaths = []
        # Item i's worker waits until the caller has asked for item i + 1,
        # so the caller has long let go of item i when the worker does.
        moved_on = [threading.Event() for _ in range(9)]

        def slow_value(item):
            assert moved_on[item.value].wait(5)
            return item.value

        def items():
            for i in range(8):
                yield _Item(i, deaths)
                moved_on[i].set()

        assert list(ordered_results(slow_value, items(), 2)) == list(range(8))
    finally:
        gc.enable()
    assert sorted(v for v, _ in deaths) == list(range(8))
    caller = threading.current_thread().name
    assert all(thread != caller for _, thread in deaths), deaths


def test_ordered_results_raise_the_first_error_in_order():
    from bncli.engines.threads import ordered_results

    def fail_on_five(i):
        if i == 5:
            raise ValueError("five")
        return i

    seen = []
    with pytest.raises(ValueError, match="five"):
        for result in ordered_results(fail_on_five, iter(range(20)), 2):
            seen.append(result)
    assert seen == [0, 1, 2, 3, 4]


@given(
    samples=st.integers(8, 60),
    per_batch=st.integers(1, 8),
    channels=st.integers(1, 6),
    positions=st.sampled_from([(1,), (3,), (2, 3)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_merged_sample_moments_equal_the_plain_batch_moments(
    samples, per_batch, channels, positions, seed
):
    """Channels-first samples ``(n, C, ...)``, read in place, merged per batch."""
    rng = np.random.default_rng(seed)
    data = rng.normal(3.0, 2.0, (samples, channels, *positions)).astype(np.float32)
    n = samples - samples % per_batch
    rows = kernels.to_rows(data[:n], 1)  # a strided view: no copy
    got = kernels.merged_sample_moments(rows, per_batch)
    batches = np.moveaxis(data[:n], 1, -1).reshape(
        n // per_batch, per_batch * math.prod(positions), channels
    )
    mean, variance = _plain_moments(batches)
    np.testing.assert_allclose(got.mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got.variance, variance, rtol=1e-10, atol=1e-12)
    assert np.all(got.count == per_batch * math.prod(positions))


@pytest.mark.parametrize("statistics", ["ema", "precise", "exact"])
@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_a_channels_first_fit_equals_the_channels_last_fit(
    tmp_path, statistics, batch_size
):
    import bncli

    x = np.random.default_rng(5).normal(1.0, 4.0, (203, 5, 4, 3)).astype(np.float32)
    np.save(tmp_path / "first.npy", x)
    np.save(tmp_path / "last.npy", np.ascontiguousarray(np.moveaxis(x, 1, -1)))
    first = bncli.BatchNormalization(axis=1)
    first.fit(tmp_path / "first.npy", batch_size=batch_size, stats=statistics)
    last = bncli.BatchNormalization()
    last.fit(tmp_path / "last.npy", batch_size=batch_size, stats=statistics)
    np.testing.assert_allclose(
        first.moving_mean64, last.moving_mean64, rtol=1e-12, atol=1e-13
    )
    np.testing.assert_allclose(
        first.moving_variance64, last.moving_variance64, rtol=1e-11
    )
