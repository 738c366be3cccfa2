"""The compiled moments kernel (``bncli.native.moments``) against NumPy.

The C path must give what :func:`bncli.kernels.numpy_moments` (the NumPy
reference, which ``BNCLI_KERNEL=numpy`` forces) gives, and what the plain
float64 formula gives, for float32 and float64 data in every layout:
contiguous ``(K, R, C)``, channel-major, and arbitrary slices and axis orders
with negative steps. It must give the same bits on every call and from
concurrent threads.

Tolerances: the two kernels sum in different orders, so they agree to the
rounding of a sum of ``R`` terms: ``rtol`` 1e-12 with an ``atol`` of 1e-12
times the data's scale (``max|x|`` for the mean, ``max|x|**2`` for the
variance), without which a mean that cancels to about zero would have no
relative precision to compare. Against the plain formula, 1e-10 likewise.

The install builds the C path wherever a C compiler is (CI's machines have
one): a missing build fails :func:`test_the_native_kernel_is_built`. On a
machine without a compiler, ``BNCLI_REQUIRE_NATIVE=0`` says so, and the tests
of the C path then skip (the NumPy kernels serve, and the rest of the suite
tests them).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bncli import fast_moments, kernels

ROOT = Path(__file__).resolve().parents[2]
DTYPES = [np.float32, np.float64]


REQUIRED = os.environ.get("BNCLI_REQUIRE_NATIVE", "1") != "0"


@pytest.fixture
def compiled():
    """The compiled module (skips only where BNCLI_REQUIRE_NATIVE=0 says so)."""
    if REQUIRED:
        import bncli.native.moments as module

        return module
    return pytest.importorskip("bncli.native.moments")


@pytest.mark.skipif(not REQUIRED, reason="BNCLI_REQUIRE_NATIVE=0: no C compiler here")
def test_the_native_kernel_is_built():
    import bncli.native.moments  # noqa: F401  (fails loudly when missing)

    assert fast_moments.AVAILABLE


def _native(x, mean=None, m2=None):
    result = fast_moments.native_moments(x, mean, m2, force=True)
    assert result is not None, "the C kernel declined"
    return result


def _plain(x):
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=1)
    variance = ((x64 - mean[:, None, :]) ** 2).mean(axis=1)
    return mean, variance


def _assert_close(got, want, x, rtol):
    scale = float(np.max(np.abs(x), initial=0.0)) if x.size else 0.0
    np.testing.assert_allclose(got[0], want[0], rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(got[1], want[1], rtol=rtol, atol=rtol * scale**2)


@st.composite
def batches(draw, dtype):
    """``(K, R, C)`` data of ``dtype`` in a drawn layout."""
    k = draw(st.integers(0, 20))
    r = draw(st.integers(1, 300))
    c = draw(st.integers(1, 40))
    layout = draw(st.sampled_from(["contiguous", "channel-major", "strided"]))
    offset = draw(st.sampled_from([0.0, 1.0, -1e3, 1e6]))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def data(shape):
        return (offset + scale * rng.standard_normal(shape)).astype(dtype)

    if layout == "contiguous":
        return data((k, r, c))
    if layout == "channel-major":
        return np.ascontiguousarray(data((k, r, c)).transpose(2, 0, 1)).transpose(
            1, 2, 0
        )
    steps = [draw(st.integers(1, 3)) for _ in range(3)]
    backwards = [draw(st.booleans()) for _ in range(3)]
    order = draw(st.permutations([0, 1, 2]))
    full = (k * steps[0], r * steps[1], c * steps[2])
    storage = data(tuple(full[axis] for axis in order))
    x = storage.transpose(np.argsort(order))
    assert x.shape == full
    x = x[
        tuple(
            slice(None, None, -step if back else step)
            for step, back in zip(steps, backwards, strict=True)
        )
    ]
    assert x.shape == (k, r, c)
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_native_equals_the_numpy_reference(compiled, dtype, data):
    x = data.draw(batches(dtype))
    _assert_close(_native(x), kernels.numpy_moments(x), x, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_native_equals_the_plain_formula(compiled, dtype, data):
    x = data.draw(batches(dtype))
    _assert_close(_native(x), _plain(x), x, rtol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_native_gives_the_same_bits_every_call(compiled, dtype, data):
    x = data.draw(batches(dtype))
    first = _native(x)
    second = _native(x)
    assert first[0].tobytes() == second[0].tobytes()
    assert first[1].tobytes() == second[1].tobytes()


# ------------------------------------- a batch's bits depend on that batch only
#
# The kernel interleaves batches (rows) and columns (channel-major, C == 1)
# only to overlap their dependency chains, and reads a gang's vectors whole
# where they lie within the buffer: none of that may change a batch's bits.
# The fit splits its input into chunks of varying K, so each batch must get
# the same bits alone (K=1), within any sub-range of batches, and within the
# whole call.


def _stack(rng, dtype, shape, layout):
    """``(K, R, C)`` data of ``dtype`` in ``layout``, from ``rng``."""
    k, r, c = shape
    offset = rng.choice([0.0, 3.0, -1e3])
    # magnitudes over many binades, so that float32 sums are inexact in
    # float64 too and any change of order shows in the bits
    scale = np.exp(rng.uniform(-12.0, 12.0, shape))
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    if layout == "channel-major":
        return np.ascontiguousarray(x.transpose(2, 0, 1)).transpose(1, 2, 0)
    if layout == "batch-minor":  # (R, K, C) in memory
        return np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    if layout == "padded":  # rows longer than C
        padded = np.full((k, r, c + 3), np.nan, dtype)
        padded[:, :, :c] = x
        return padded[:, :, :c]
    if layout == "reversed":  # negative batch and row strides
        return np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]
    return x


LAYOUTS = ["contiguous", "channel-major", "batch-minor", "padded", "reversed"]


def _assert_batchwise_bits(x):
    """Each batch alone, each sub-range, and the whole give the same bits."""
    whole = _native(x)
    for k in range(x.shape[0]):
        alone = _native(x[k : k + 1])
        assert alone[0].tobytes() == whole[0][k : k + 1].tobytes(), f"mean, batch {k}"
        assert alone[1].tobytes() == whole[1][k : k + 1].tobytes(), f"m2, batch {k}"
    return whole


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    k=st.integers(1, 30),
    r=st.integers(1, 70),
    c=st.integers(1, 40),
    layout=st.sampled_from(LAYOUTS),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_a_batch_gets_the_same_bits_alone_and_among_others(
    compiled, dtype, k, r, c, layout, seed, data
):
    x = _stack(np.random.default_rng(seed), dtype, (k, r, c), layout)
    whole = _assert_batchwise_bits(x)
    lo = data.draw(st.integers(0, k - 1))
    hi = data.draw(st.integers(lo + 1, k))
    part = _native(x[lo:hi])
    assert part[0].tobytes() == whole[0][lo:hi].tobytes()
    assert part[1].tobytes() == whole[1][lo:hi].tobytes()
    _assert_close(whole, _plain(x), x, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channel-major", "reversed"])
def test_every_channel_count_gets_batchwise_bits(compiled, dtype, layout):
    """C = 1..40 (every narrow width, alone and after 16-wide blocks)."""
    rng = np.random.default_rng(11)
    for c in range(1, 41):
        for r in (1, 7, 8, 9, 32, 33, 70):
            x = _stack(rng, dtype, (int(rng.integers(13, 26)), r, c), layout)
            whole = _assert_batchwise_bits(x)
            _assert_close(whole, _plain(x), x, rtol=1e-12)


def _in_row_order(x):
    """The rows path's documented order, in NumPy float64: per channel, the
    rows added one at a time from 0.0, then / R; the squares likewise."""
    rows = x.shape[1]
    total = np.zeros((x.shape[0], x.shape[2]))
    for r in range(rows):
        total = total + x[:, r].astype(np.float64)
    mean = total / rows
    total = np.zeros_like(mean)
    for r in range(rows):
        d = x[:, r].astype(np.float64) - mean
        total = total + d * d
    return mean, total / rows


@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_rows_are_summed_row_after_row(compiled, dtype):
    """Rows wider than 1 KiB, and batches of 32 channels or more in over 256
    rows (several rows per accumulator at once, and the rows left over one
    at a time): the bits of adding rows in order."""
    rng = np.random.default_rng(5)
    shapes = [(c, r) for c in (129, 257, 1024, 1031) for r in (1, 3, 4, 5, 8, 32, 35)]
    shapes += [(c, r) for c in (31, 32, 47, 64, 128) for r in (256, 257, 259, 1024)]
    for c, r in shapes:
        x = _stack(rng, dtype, (3, r, c), "contiguous")
        whole = _assert_batchwise_bits(x)
        expected = _in_row_order(x)
        assert whole[0].tobytes() == expected[0].tobytes(), (c, r)
        assert whole[1].tobytes() == expected[1].tobytes(), (c, r)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mprotect via libc")
@pytest.mark.parametrize("dtype", DTYPES)
def test_reads_stay_within_the_buffer(compiled, dtype):
    """Data that ends where an unreadable page starts: no read past its end."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE
    pages = mmap.mmap(-1, 48 * page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(pages))
    end = 47 * page
    assert libc.mprotect(start + end, page, 0) == 0  # PROT_NONE
    try:
        size = np.dtype(dtype).itemsize
        for c in range(1, 41):
            for r in (1, 3, 32):
                for k in (1, 5, 13):
                    count = k * r * c
                    x = np.frombuffer(pages, dtype, count, end - count * size)
                    x = x.reshape(k, r, c)
                    x[...] = 1.5
                    for view in (x, x[::-1], x[:, ::-1], x[::-1, ::-1]):
                        _native(view)
                    del x, view
    finally:
        assert libc.mprotect(start + end, page, 3) == 0  # PROT_READ | PROT_WRITE


@pytest.mark.parametrize(
    "layout", ["contiguous", "channel-major", "channel-major-long", "big-batch"]
)
def test_threads_give_the_same_bits(compiled, layout):
    rng = np.random.default_rng(7)
    shape = {
        "contiguous": (400, 32, 16),
        "channel-major": (400, 32, 16),
        "channel-major-long": (3, 5000, 16),
        "big-batch": (2, 70_000, 2),  # a batch bigger than the caches' 256 KiB
    }[layout]
    x = (3.0 + rng.standard_normal(shape)).astype(np.float32)
    if layout.startswith("channel-major"):
        x = np.ascontiguousarray(x.transpose(2, 0, 1)).transpose(1, 2, 0)
    alone = _native(x)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: _native(x), range(8)))
    for mean, variance in results:
        assert mean.tobytes() == alone[0].tobytes()
        assert variance.tobytes() == alone[1].tobytes()
    _assert_close(alone, kernels.numpy_moments(x), x, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_shapes(compiled, dtype):
    for shape in [(0, 5, 3), (4, 0, 3), (4, 5, 0), (0, 0, 0), (3, 1, 4), (3, 9, 1)]:
        x = np.arange(np.prod(shape), dtype=dtype).reshape(shape) - 2.5
        got, want = _native(x), kernels.numpy_moments(x)
        assert got[0].shape == got[1].shape == (shape[0], shape[2])
        _assert_close(got, want, x, rtol=1e-12)


def test_out_arrays_of_any_layout_are_written(compiled):
    x = np.random.default_rng(1).standard_normal((6, 10, 5)).astype(np.float32)
    mean = np.full((5, 6), np.nan).T  # (6, 5), not C-contiguous
    m2 = np.full((6, 5), np.nan)
    got = _native(x, mean, m2)
    assert got[0] is mean and got[1] is m2
    _assert_close((mean, m2), kernels.numpy_moments(x), x, rtol=1e-12)


def test_out_arrays_are_filled_through_batched_moments(compiled):
    x = np.random.default_rng(2).standard_normal((6, 10, 5))
    out = (np.empty((6, 5)), np.empty((6, 5)))
    result = kernels.batched_moments(x, out=out)
    _assert_close((out[0], out[1]), _plain(x), x, rtol=1e-10)
    np.testing.assert_array_equal(result.count, 10.0)


@pytest.mark.parametrize(
    "x",
    [
        np.ones((2, 3, 4), dtype=np.float16),
        np.ones((2, 3, 4), dtype=np.int32),
        np.ones((2, 3, 4), dtype=np.longdouble),
        np.ones((2, 3, 4), dtype=">f8" if sys.byteorder == "little" else "<f8"),
        np.frombuffer(np.zeros(2 * 3 * 4 * 4 + 1, np.uint8)[1:], np.float32).reshape(
            2, 3, 4
        ),  # unaligned
    ],
    ids=["float16", "int32", "longdouble", "swapped", "unaligned"],
)
def test_declines_what_it_does_not_handle(compiled, x):
    assert fast_moments.native_moments(x, force=True) is None
    result = kernels.batched_moments(x)
    _assert_close(
        (result.mean, result.variance), _plain(x), x.astype(np.float64), rtol=1e-10
    )


def test_the_module_checks_its_arguments(compiled):
    x = np.zeros((2, 3, 4))
    mean, m2 = np.empty(8), np.empty(8)
    compiled.moments(x, mean, m2, 2, 3, 4, 12, 4, 1, "d")
    with pytest.raises(ValueError, match="outside"):
        compiled.moments(x, mean, m2, 2, 4, 4, 12, 4, 1, "d")
    with pytest.raises(ValueError, match="outside"):
        compiled.moments(x, mean, m2, 2, 3, 4, 12, 4, -1, "d")
    with pytest.raises(ValueError, match="kind"):
        compiled.moments(x, mean, m2, 2, 3, 4, 12, 4, 1, "e")
    with pytest.raises(ValueError, match="format"):
        compiled.moments(x, mean, m2, 2, 3, 4, 12, 4, 1, "f")
    with pytest.raises(ValueError, match="float64 buffers"):
        compiled.moments(x, np.empty(7), m2, 2, 3, 4, 12, 4, 1, "d")
    with pytest.raises(ValueError, match="overlap"):
        compiled.moments(x, x.reshape(-1)[:8], m2, 2, 3, 4, 12, 4, 1, "d")
    with pytest.raises(BufferError):  # read-only
        compiled.moments(x, mean, np.empty(8).tobytes(), 2, 3, 4, 12, 4, 1, "d")
    with pytest.raises(OverflowError):
        compiled.moments(x, mean, m2, 2, 3, 4, 2**62, 4, 1, "d")


def test_bncli_kernel_numpy_turns_it_off():
    code = "from bncli import fast_moments as f; print(f.KERNEL, f.AVAILABLE)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BNCLI_KERNEL": "numpy"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    kernel, available = out.stdout.split()
    assert kernel == "numpy"
    env.pop("BNCLI_KERNEL")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    kernel, available = out.stdout.split()
    assert kernel == ("native" if available == "True" else "numpy")


# ---------------------------------------------- the moving average, folded in C


@given(
    batches=st.integers(0, 3000),  # past 32: the segmented fold of few channels
    channels=st.integers(1, 12),
    momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_ema_fold_equals_the_numpy_fold(
    compiled, batches, channels, momentum, seed
):
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.0, 50.0, (batches, channels))
    variance = rng.exponential(4.0, (batches, channels))
    fast = fast_moments.native_ema_offsets(mean, variance, momentum)
    assert fast is not None
    reference = kernels.fold_batches(mean, variance, None, momentum)
    scale = max(float(np.abs(mean).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(
        fast[0], reference.mean_offset, rtol=1e-12, atol=1e-12 * scale
    )
    np.testing.assert_allclose(
        fast[1],
        reference.variance_offset,
        rtol=1e-12,
        atol=1e-12 * variance.max(initial=1.0),
    )
    folded = kernels.fold_statistics(
        kernels.Moments(np.ones_like(mean), mean, variance), None, momentum
    )
    np.testing.assert_array_equal(folded.decay, reference.decay)
    np.testing.assert_array_equal(folded.batches, reference.batches)


@given(
    batches=st.integers(0, 300),
    channels=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_precise_sums_equal_numpy_sums(compiled, batches, channels, seed):
    """``--stats precise`` folds plain sums of the batch moments (segmented
    under 8 channels): the sums of the plain formula, to rounding."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.0, 50.0, (batches, channels))
    variance = rng.exponential(4.0, (batches, channels))
    sums = fast_moments.native_column_sums(mean, variance)
    assert sums is not None
    for got, values in zip(sums, (mean, variance), strict=True):
        expected = np.array(
            [float(np.sum(values[:, c], dtype=np.float64)) for c in range(channels)]
        )
        scale = float(np.abs(values).sum(initial=1.0))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13 * scale)
    folded = kernels.fold_statistics(
        kernels.Moments(np.ones_like(mean), mean, variance), None, 0.99, "precise"
    )
    assert folded.mean_sum.tolist() == sums[0].tolist()
    assert folded.batches.tolist() == [batches] * channels


def test_a_precise_sum_that_is_not_finite_is_left_to_numpy(compiled):
    mean = np.zeros((40, 3))
    mean[7, 2] = np.inf
    assert fast_moments.native_column_sums(mean, np.ones((40, 3))) is None
    folded = kernels.fold_statistics(
        kernels.Moments(np.ones_like(mean), mean, np.ones((40, 3))),
        None,
        0.99,
        "precise",
    )
    assert folded.mean_sum.tolist() == [0.0, 0.0, np.inf]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("momentum", [0.0, 0.99, 1.0])
def test_a_statistic_that_is_not_finite_leaves_the_fold_to_numpy(
    compiled, bad, momentum
):
    mean = np.zeros((10, 3))
    variance = np.ones((10, 3))
    mean[4, 1] = bad
    assert fast_moments.native_ema_offsets(mean, variance, momentum) is None


def test_a_whole_fit_with_the_c_kernels_equals_the_numpy_one(tmp_path):
    """The same fit in a process with BNCLI_KERNEL=numpy: equal to rounding."""
    import bncli

    x = np.random.default_rng(3).normal(5.0, 3.0, (20_000, 7)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BNCLI_KERNEL": "numpy"}
    done = subprocess.run(
        [sys.executable, "-m", "bncli", "fit", str(tmp_path / "numpy.h5"), str(tmp_path / "x.npy"), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    layer = bncli.BatchNormalization()
    layer.fit(tmp_path / "x.npy")
    reference = bncli.load(tmp_path / "numpy.h5")
    np.testing.assert_allclose(layer.moving_mean64, reference.moving_mean64, rtol=1e-12)
    np.testing.assert_allclose(
        layer.moving_variance64, reference.moving_variance64, rtol=1e-12
    )
