"""More accurate than Keras: statistics in float64, taken from the input as read.

Keras computes a batch's moments in float32 (even under the float64 policy)
as E[x^2] - E[x]^2, after casting the input to its compute dtype. bncli takes
them in float64, in two passes, before any cast. On data far from
zero relative to its spread that is the difference between the right answer
and none; these tests show both sides.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bncli
from tests import reference
from tests.conftest import PRECISE

pytestmark = pytest.mark.keras

MOMENTUM = 0.5
BATCH = 32


def _exact_fit(data: np.ndarray, momentum: float, batch_size: int):
    """The moving statistics, each batch's moments summed exactly (math.fsum)."""
    mean = np.zeros(data.shape[1])
    variance = np.ones(data.shape[1])
    for lo in range(0, len(data), batch_size):
        batch = data[lo : lo + batch_size]
        for c in range(data.shape[1]):
            values = batch[:, c].tolist()
            mu = math.fsum(values) / len(values)
            var = math.fsum((v - mu) ** 2 for v in values) / len(values)
            mean[c] = mean[c] * momentum + mu * (1 - momentum)
            variance[c] = variance[c] * momentum + var * (1 - momentum)
    return mean, variance


@pytest.fixture(scope="module")
def far_from_zero() -> np.ndarray:
    """float64 data with mean 1e6 and standard deviation 1e-2 (16 batches)."""
    return np.random.default_rng(0).normal(1e6, 1e-2, (16 * BATCH, 2))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_moving_variance_far_from_zero(far_from_zero, dtype, tmp_path) -> None:
    data = far_from_zero
    exact_mean, exact_variance = _exact_fit(data, MOMENTUM, BATCH)
    # The reference loop agrees with the exact sums.
    ref = reference.fit(data, momentum=MOMENTUM, batch_size=BATCH)
    np.testing.assert_allclose(ref.moving_variance, exact_variance, rtol=1e-9)

    path = tmp_path / "x.npy"
    np.save(path, data)
    bn = bncli.BatchNormalization(momentum=MOMENTUM, dtype=dtype)
    bn.fit([path], batch_size=BATCH)
    np.testing.assert_allclose(bn.moving_variance, exact_variance, rtol=1e-6)
    np.testing.assert_allclose(bn.moving_mean, exact_mean, rtol=1e-6)

    per_batch = bncli.BatchNormalization(momentum=MOMENTUM, dtype=dtype)
    for lo in range(0, len(data), BATCH):
        per_batch(data[lo : lo + BATCH], training=True)
    np.testing.assert_allclose(per_batch.moving_variance, exact_variance, rtol=1e-6)

    # Keras, batch by batch: float32 moments of float32-rounded inputs. Its
    # E[x^2] - E[x]^2 even comes out negative here (its outputs are NaN).
    layer = keras.layers.BatchNormalization(momentum=MOMENTUM, dtype=dtype)
    with np.errstate(invalid="ignore"):
        for lo in range(0, len(data), BATCH):
            layer(data[lo : lo + BATCH], training=True)
    theirs = np.asarray(layer.moving_variance.numpy(), dtype=np.float64)
    relative_error = np.abs(theirs - exact_variance) / exact_variance
    assert np.all(relative_error > 1e-2), relative_error


def test_inference_far_from_zero(far_from_zero) -> None:
    """Outputs subtract the mean in float64 first: standardized values come
    out right where Keras's float32 ``x * a + b`` keeps nothing of them."""
    data = far_from_zero
    bn = bncli.BatchNormalization(dtype="float64", epsilon=1e-12)
    bn(data[:BATCH], training=True)
    mean, variance = np.full(2, 1e6), np.full(2, 1e-4)
    bn.moving_mean, bn.moving_variance = mean, variance
    ours = bn(data)
    expected = reference.inference(data, mean, variance, epsilon=1e-12)
    np.testing.assert_allclose(ours, expected, **PRECISE)
    assert 0.5 < ours.std() < 2  # standardized: spread about 1

    layer = keras.layers.BatchNormalization(dtype="float64", epsilon=1e-12)
    layer.build(data.shape)
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(variance)
    theirs = np.asarray(layer(data))
    assert np.max(np.abs(theirs - expected)) > 1.0


def _below_float32_resolution(n: int = 64) -> np.ndarray:
    """Two channels: 1 + k * 5e-10 and -3 + k * 5e-10; float32 rounds each to a
    single value (its resolution near 1 is 1.2e-7)."""
    k = np.arange(n, dtype=np.float64)
    data = np.stack([1.0 + k * 5e-10, -3.0 + k * 5e-10], axis=1)
    assert len(np.unique(data.astype(np.float32)[:, 0])) == 1
    return data


@pytest.mark.parametrize("dtype", ["float32", "float64", "mixed_float16"])
def test_float64_input_is_not_rounded_before_its_moments(
    dtype, tmp_path, run_cli
) -> None:
    data = _below_float32_resolution()
    exact = np.array([np.var(np.arange(64) * 5e-10)] * 2)  # 8.5e-17
    exact_mean = data.mean(axis=0)

    bn = bncli.BatchNormalization(momentum=0.0, epsilon=1e-30, dtype=dtype)
    y = bn(data, training=True)
    np.testing.assert_allclose(bn.moving_variance, exact, rtol=1e-6)
    # The variables round the mean to their dtype, but only afterwards.
    np.testing.assert_array_equal(
        bn.moving_mean, exact_mean.astype(bn.moving_mean.dtype)
    )
    # Training outputs are the standardized values, not float32's zeros.
    expected = (data - exact_mean) / np.sqrt(exact + 1e-30)
    np.testing.assert_allclose(
        y.astype(np.float64), expected, rtol=1e-2 if dtype.startswith("mixed") else 1e-6
    )
    assert np.abs(y).max() > 1.5

    # The same from files, an NPY array and a Parquet table of float64.
    np.save(tmp_path / "x.npy", data)
    pq.write_table(pa.table({"a": data[:, 0], "b": data[:, 1]}), tmp_path / "x.parquet")
    for name in ("x.npy", "x.parquet"):
        fitted = bncli.BatchNormalization(momentum=0.0, dtype=dtype)
        fitted.fit([tmp_path / name], batch_size=64)
        np.testing.assert_allclose(
            fitted.moving_variance, exact, rtol=1e-6, err_msg=name
        )
        state = tmp_path / f"{name}.h5"
        args = ("fit", state, tmp_path / name, "--momentum", "0", "--dtype", dtype)
        result = run_cli(*args, "--batch-size", "64")
        assert result.exit_code == 0, result.stderr
        shown = json.loads(run_cli("inspect", state, "--json").stdout)
        np.testing.assert_allclose(
            shown["variables"]["moving_variance"], exact, rtol=1e-6
        )

    # Keras rounds the input to float32 first (even under the float64
    # policy), so its batch variance and its outputs are all zero.
    layer = keras.layers.BatchNormalization(
        momentum=0.0, epsilon=1e-30, dtype="float64"
    )
    theirs = np.asarray(layer(data, training=True))
    assert np.all(layer.moving_variance.numpy() == 0.0)
    assert np.all(theirs == 0.0)
