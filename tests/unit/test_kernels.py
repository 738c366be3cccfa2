"""Each kernel of bncli.kernels against its formula, written out here."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bncli import kernels, normalization
from tests.conftest import FAST, PRECISE


def _formula_moments(x, keep):
    """count, mean and biased variance of each (batch, channel), by np.mean/np.var."""
    num_batches, _, channels = x.shape
    count = np.zeros((num_batches, channels))
    mean = np.zeros((num_batches, channels))
    variance = np.zeros((num_batches, channels))
    for k, c in itertools.product(range(num_batches), range(channels)):
        values = x[k, :, c][keep[k, :, c]].astype(np.float64)
        count[k, c] = values.size
        if values.size:
            mean[k, c] = values.mean()
            variance[k, c] = ((values - values.mean()) ** 2).mean()
    return count, mean, variance


def _data(seed, shape, loc=3.0, scale=2.0):
    return np.random.default_rng(seed).normal(loc, scale, shape)


# ---------------------------------------------------------------- moments


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 2), (2, 1, 4), (4, 32, 3)])
def test_batched_moments_without_mask(shape):
    x = _data(0, shape)
    got = kernels.batched_moments(x)
    count, mean, variance = _formula_moments(x, np.ones(shape, bool))
    assert got.mean.shape == got.variance.shape == got.count.shape == shape[::2]
    np.testing.assert_array_equal(got.count, count)
    np.testing.assert_allclose(got.mean, mean, **PRECISE)
    np.testing.assert_allclose(got.variance, variance, **PRECISE)


@pytest.mark.parametrize("per_cell", [False, True])
def test_batched_moments_with_mask(per_cell):
    x = _data(1, (5, 9, 3))
    rng = np.random.default_rng(2)
    mask = rng.random((5, 9, 3 if per_cell else 1)) < 0.6
    mask[0] = False  # a batch with no unmasked value at all
    mask[1, :, 0] = False  # a channel (per cell) or all (per element) masked
    mask[2] = True
    got = kernels.batched_moments(x, mask)
    keep = np.broadcast_to(mask, x.shape)
    count, mean, variance = _formula_moments(x, keep)
    np.testing.assert_array_equal(got.count, count)
    np.testing.assert_allclose(got.mean, mean, **PRECISE)
    np.testing.assert_allclose(got.variance, variance, **PRECISE)
    # The documented convention for an empty channel: count, mean, variance 0.
    assert (got.count[0] == 0).all() and (got.mean[0] == 0).all()
    assert (got.variance[0] == 0).all()


def test_batched_moments_two_pass_is_exact_far_from_zero():
    # E[x^2] - E[x]^2 would lose everything here; two passes keep it.
    x = (1e8 + np.arange(10.0) * 1e-3).reshape(1, 10, 1)
    got = kernels.batched_moments(x)
    exact = np.var(np.arange(10.0) * 1e-3)
    np.testing.assert_allclose(got.variance[0, 0], exact, rtol=1e-6)


def test_batched_moments_float32_input_accumulates_in_float64():
    x = np.full((1, 100_000, 1), 0.1, dtype=np.float32)
    x[0, ::2, 0] = np.float32(0.3)
    got = kernels.batched_moments(x)
    expected = x.astype(np.float64)[0, :, 0]
    assert got.mean.dtype == np.float64
    np.testing.assert_allclose(got.mean[0, 0], expected.mean(), rtol=1e-12)
    np.testing.assert_allclose(got.variance[0, 0], expected.var(), rtol=1e-10)


def test_moments_of_one_batch():
    x = _data(3, (11, 4))
    mask = np.random.default_rng(4).random((11, 1)) < 0.5
    got = kernels.moments(x, mask)
    count, mean, variance = _formula_moments(
        x[None], np.broadcast_to(mask, x.shape)[None]
    )
    np.testing.assert_array_equal(got.count, count[0])
    np.testing.assert_allclose(got.mean, mean[0], **PRECISE)
    np.testing.assert_allclose(got.variance, variance[0], **PRECISE)


# ------------------------------------------------------------------ merge


@given(
    st.integers(0, 12),
    st.integers(0, 12),
    st.integers(1, 3),
    st.integers(0, 2**32 - 1),
)
def test_merge_moments_equals_moments_of_the_concatenation(na, nb, channels, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(5.0, 3.0, (na, channels))
    b = rng.normal(-2.0, 0.5, (nb, channels))
    merged = kernels.merge_moments(kernels.moments(a), kernels.moments(b))
    both = np.concatenate([a, b])
    assert (merged.count == na + nb).all()
    if na + nb:
        np.testing.assert_allclose(merged.mean, both.mean(axis=0), **PRECISE)
        np.testing.assert_allclose(merged.variance, both.var(axis=0), **PRECISE)
    else:
        assert (merged.mean == 0).all() and (merged.variance == 0).all()


def test_merge_moments_with_masked_pieces_per_channel():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(6, 2)), rng.normal(size=(4, 2))
    mask_a = np.array([[True, False]] * 6)  # channel 1 empty in a
    mask_b = rng.random((4, 2)) < 0.7
    mask_b[0] = True
    merged = kernels.merge_moments(
        kernels.moments(a, mask_a), kernels.moments(b, mask_b)
    )
    for c in range(2):
        values = np.concatenate([a[mask_a[:, c], c], b[mask_b[:, c], c]])
        assert merged.count[c] == values.size
        np.testing.assert_allclose(merged.mean[c], values.mean(), **PRECISE)
        np.testing.assert_allclose(merged.variance[c], values.var(), **PRECISE)


# ------------------------------------------------------------------- folds


def _sequential(m0, v0, means, variances, valid, momentum):
    m, v = m0.copy(), v0.copy()
    for k in range(len(means)):
        for c in range(m.size):
            if valid[k, c]:
                m[c] = m[c] * momentum + means[k, c] * (1 - momentum)
                v[c] = v[c] * momentum + variances[k, c] * (1 - momentum)
    return m, v


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("batches", [0, 1, 5, 40])
def test_fold_batches_equals_the_sequential_loop(momentum, batches):
    rng = np.random.default_rng(batches)
    channels = 3
    means = rng.normal(size=(batches, channels))
    variances = rng.random((batches, channels)) * 4
    valid = rng.random((batches, channels)) < 0.7
    if batches:
        valid[-1, 0] = False  # the last batch leaves channel 0 alone
        valid[:, 2] = False  # channel 2 never updated
    m0, v0 = rng.normal(size=channels), rng.random(channels) + 0.5
    fold = kernels.fold_batches(means, variances, valid, momentum)
    m, v = fold.apply(m0, v0)
    em, ev = _sequential(m0, v0, means, variances, valid, momentum)
    np.testing.assert_allclose(m, em, **PRECISE)
    np.testing.assert_allclose(v, ev, **PRECISE)
    np.testing.assert_array_equal(fold.batches, valid.sum(axis=0))
    np.testing.assert_array_equal(m[2], m0[2])  # never valid: untouched


def test_fold_with_momentum_zero_is_the_last_valid_batch():
    means = np.array([[1.0, 2.0], [3.0, 4.0]])
    variances = np.array([[5.0, 6.0], [7.0, 8.0]])
    valid = np.array([[True, True], [True, False]])
    m, v = kernels.fold_batches(means, variances, valid, 0.0).apply(
        np.zeros(2), np.ones(2)
    )
    np.testing.assert_array_equal(m, [3.0, 2.0])
    np.testing.assert_array_equal(v, [7.0, 6.0])


def test_fold_with_momentum_one_never_moves():
    means = np.random.default_rng(0).normal(size=(4, 2))
    fold = kernels.fold_batches(means, means**2, np.ones((4, 2), bool), 1.0)
    m, v = fold.apply(np.array([0.5, -1.0]), np.array([2.0, 3.0]))
    np.testing.assert_array_equal(m, [0.5, -1.0])
    np.testing.assert_array_equal(v, [2.0, 3.0])


def _random_fold(rng, channels, momentum):
    k = int(rng.integers(0, 6))
    return kernels.fold_batches(
        rng.normal(size=(k, channels)),
        rng.random((k, channels)),
        rng.random((k, channels)) < 0.8,
        momentum,
    )


def _assert_fold_equal(a, b):
    np.testing.assert_allclose(a.decay, b.decay, **FAST)
    np.testing.assert_allclose(a.mean_offset, b.mean_offset, **FAST)
    np.testing.assert_allclose(a.variance_offset, b.variance_offset, **FAST)
    np.testing.assert_array_equal(a.batches, b.batches)


@given(st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.3, 0.9, 0.999, 1.0]))
def test_compose_is_associative_and_sequential(seed, momentum):
    rng = np.random.default_rng(seed)
    f, g, h = (_random_fold(rng, 3, momentum) for _ in range(3))
    left = kernels.compose(kernels.compose(f, g), h)
    right = kernels.compose(f, kernels.compose(g, h))
    _assert_fold_equal(left, right)
    identity = kernels.identity_fold(3)
    _assert_fold_equal(kernels.compose(identity, f), f)
    _assert_fold_equal(kernels.compose(f, identity), f)
    # Composition means "first f, then g": apply one after the other.
    m0, v0 = rng.normal(size=3), rng.random(3)
    m1, v1 = g.apply(*f.apply(m0, v0))
    m2, v2 = kernels.compose(f, g).apply(m0, v0)
    np.testing.assert_allclose(m2, m1, **FAST)
    np.testing.assert_allclose(v2, v1, **FAST)


def test_fold_of_a_run_equals_composed_folds_of_its_pieces():
    rng = np.random.default_rng(9)
    means, variances = rng.normal(size=(10, 2)), rng.random((10, 2))
    valid = rng.random((10, 2)) < 0.8
    whole = kernels.fold_batches(means, variances, valid, 0.9)
    pieces = kernels.identity_fold(2)
    for lo, hi in [(0, 3), (3, 4), (4, 4), (4, 10)]:
        part = kernels.fold_batches(means[lo:hi], variances[lo:hi], valid[lo:hi], 0.9)
        pieces = kernels.compose(pieces, part)
    _assert_fold_equal(whole, pieces)


# ------------------------------------------------------------------ shards


@given(st.integers(0, 100), st.integers(1, 12))
def test_shard_bounds_are_array_split(samples, replicas):
    bounds = kernels.shard_bounds(samples, replicas)
    expected = [s for s in np.array_split(np.arange(samples), replicas) if s.size]
    assert [(int(s[0]), int(s[-1]) + 1) for s in expected] == bounds


def test_replica_moments_average_the_shards():
    rng = np.random.default_rng(11)
    per_batch, positions, replicas = 7, 2, 3
    x = rng.normal(size=(2, per_batch * positions, 3))
    mask = rng.random((2, per_batch * positions, 1)) < 0.8
    # Batch 1: shard 0 (samples 0..2) sees nothing.
    mask[1, : 3 * positions] = False
    update, shards = kernels.replica_moments(x, mask, per_batch, replicas)
    parts = np.array_split(np.arange(per_batch), replicas)
    assert [b for b, _ in shards] == [(int(p[0]), int(p[-1]) + 1) for p in parts]
    for k in range(2):
        shard_stats = []
        for part in parts:
            rows = slice(part[0] * positions, (part[-1] + 1) * positions)
            keep = np.broadcast_to(mask[k, rows], x[k, rows].shape)
            count, mean, variance = _formula_moments(x[k, rows][None], keep[None])
            if count[0, 0]:
                shard_stats.append((mean[0], variance[0]))
        np.testing.assert_allclose(
            update.mean[k], np.mean([m for m, _ in shard_stats], axis=0), **PRECISE
        )
        np.testing.assert_allclose(
            update.variance[k], np.mean([v for _, v in shard_stats], axis=0), **PRECISE
        )
    assert len(shard_stats) == 2  # the empty shard was left out of batch 1


# --------------------------------------------------------------- normalize


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("scale", [False, True])
def test_normalize_and_affine_coefficients(center, scale):
    rng = np.random.default_rng(12)
    x = rng.normal(2.0, 3.0, (5, 4, 3))
    mean, variance = rng.normal(size=3), rng.random(3) + 0.1
    gamma = rng.normal(size=3) if scale else None
    beta = rng.normal(size=3) if center else None
    eps = 1e-3
    g = gamma if scale else 1.0
    b = beta if center else 0.0
    expected = g * (x - mean) / np.sqrt(variance + eps) + b
    got = normalization.normalize(x, mean, variance, gamma, beta, eps)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, **PRECISE)
    a, c = normalization.affine_coefficients(mean, variance, gamma, beta, eps)
    np.testing.assert_allclose(x * a + c, expected, **PRECISE)


def test_normalize_with_per_batch_statistics():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(2, 6, 3))
    mean, variance = rng.normal(size=(2, 1, 3)), rng.random((2, 1, 3))
    got = normalization.normalize(x, mean, variance, None, None, 0.01)
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(variance + 0.01), **PRECISE)


def test_normalize_keeps_precision_far_from_zero():
    x = np.array([[1e9 + 0.5], [1e9 - 0.5]])
    got = normalization.normalize(
        x, np.array([1e9]), np.array([0.25]), None, None, 1e-12
    )
    np.testing.assert_allclose(got[:, 0], [1.0, -1.0], rtol=1e-9)


# ------------------------------------------------------------------- rows


SHAPES = [(4, 3), (2, 3, 5), (2, 3, 4, 5), (1, 2, 1, 3, 2)]


@pytest.mark.parametrize(
    ("shape", "axis"),
    [(shape, axis) for shape in SHAPES for axis in range(1, len(shape))],
)
def test_to_rows_and_from_rows(shape, axis):
    data = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    rows = kernels.to_rows(data, axis)
    channels = shape[axis]
    assert rows.shape == (shape[0], data.size // shape[0] // channels, channels)
    # Row p of sample n holds, channel by channel, the data at position p of
    # the other axes in C order: the layout masks (shape without the channel
    # axis) are reshaped to.
    others = shape[1:axis] + shape[axis + 1 :]
    for n in range(shape[0]):
        for p, position in enumerate(itertools.product(*map(range, others))):
            before, after = position[: axis - 1], position[axis - 1 :]
            for c in range(channels):
                assert rows[n, p, c] == data[(n, *before, c, *after)]
    back = kernels.from_rows(rows, shape, axis)
    np.testing.assert_array_equal(back, data)
    assert back.shape == shape
