"""The Python API of ``bncli.BatchNormalization``, as the README documents it."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import bncli
from bncli.errors import ConfigError, DataError
from tests.conftest import PRECISE


def test_signature_and_defaults_are_keras():
    ours = bncli.BatchNormalization().get_config()
    theirs = keras.layers.BatchNormalization(name="batch_normalization").get_config()
    assert list(ours) == list(theirs)
    assert ours == json.loads(json.dumps(theirs))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"axis": 1, "momentum": 0.5, "epsilon": 1e-5, "center": False},
        {
            "scale": False,
            "gamma_initializer": "constant",
            "beta_initializer": "random_normal",
        },
        {
            "gamma_regularizer": "l2",
            "beta_constraint": "non_neg",
            "gamma_constraint": "max_norm",
        },
        {"dtype": "mixed_float16", "name": "bn7", "trainable": False},
        {"dtype": "float64", "moving_variance_initializer": "ones"},
    ],
)
def test_config_matches_keras_and_round_trips(kwargs):
    kwargs = {"name": "bn", **kwargs}  # Keras numbers unnamed layers
    keras_kwargs = {
        k: (keras.initializers.Constant() if v == "constant" else v)
        for k, v in kwargs.items()
    }
    theirs = keras.layers.BatchNormalization(**keras_kwargs).get_config()
    ours = bncli.BatchNormalization(**kwargs).get_config()
    assert ours == json.loads(json.dumps(theirs))
    # A Keras config builds the same layer, and ours builds Keras's.
    assert bncli.BatchNormalization.from_config(theirs).get_config() == ours
    assert keras.layers.BatchNormalization.from_config(ours).get_config() == theirs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"momentum": 1.5}, "momentum must lie in \\[0, 1\\]"),
        ({"momentum": -0.1}, "momentum"),
        ({"epsilon": 0.0}, "epsilon must be positive"),
        ({"epsilon": -1.0}, "epsilon must be positive"),
        ({"axis": 1.5}, "axis must be an integer"),
        ({"center": "yes"}, "center must be True or False"),
        ({"gamma_initializer": "nonsense"}, "unknown initializer 'nonsense'"),
        ({"beta_regularizer": "l3"}, "unknown regularizer"),
        ({"dtype": "int8"}, "policy"),
        ({"renorm": True}, "renorm"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        bncli.BatchNormalization(**kwargs)
    assert isinstance(info.value, ConfigError)


def test_momentum_bounds_are_included():
    bncli.BatchNormalization(momentum=0.0)
    bncli.BatchNormalization(momentum=1.0)


def test_from_config_refuses_unknown_keys():
    with pytest.raises(ValueError, match="unrecognized config keys: bogus"):
        bncli.BatchNormalization.from_config({"bogus": 1})


def test_variables_shapes_and_absence():
    bn = bncli.BatchNormalization(center=False)
    assert bn.gamma is None and not bn.built
    bn(np.ones((3, 5)))
    assert bn.gamma.shape == (5,) and bn.beta is None
    assert bn.moving_mean.dtype == np.float32
    bn = bncli.BatchNormalization(scale=False)
    bn(np.ones((3, 5)))
    assert bn.gamma is None and bn.beta.shape == (5,)


def test_training_updates_and_inference_uses_moving_statistics():
    x = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    bn = bncli.BatchNormalization(momentum=0.75, epsilon=1e-3)
    y = bn(x, training=True)
    mean, var = x.mean(0), x.var(0)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), **PRECISE)
    np.testing.assert_allclose(bn.moving_mean64, 0.25 * mean, **PRECISE)
    np.testing.assert_allclose(bn.moving_variance64, 0.75 + 0.25 * var, **PRECISE)
    y = bn(x)
    np.testing.assert_allclose(
        y, (x - 0.25 * mean) / np.sqrt(0.75 + 0.25 * var + 1e-3), rtol=1e-6
    )
    assert bn.batches_seen == 1 and bn.samples_seen == 3


def test_frozen_layer_runs_training_as_inference():
    bn = bncli.BatchNormalization(trainable=False)
    x = np.random.default_rng(0).normal(3, 2, size=(8, 2))
    y = bn(x, training=True)
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-3), rtol=1e-6)
    np.testing.assert_array_equal(bn.moving_mean, [0, 0])
    assert bn.batches_seen == 0


def test_any_channel_axis():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3, 4, 5))
    for axis in (1, 2, 3, -1, -2, -3):
        bn = bncli.BatchNormalization(axis=axis, momentum=0.0)
        y = bn(x, training=True)
        reduce = tuple(a for a in range(4) if a != axis % 4)
        mean = x.mean(axis=reduce, keepdims=True)
        var = x.var(axis=reduce, keepdims=True)
        np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-3), **PRECISE)
        np.testing.assert_allclose(bn.moving_mean64, mean.ravel(), **PRECISE)
    with pytest.raises(ValueError, match="axis 0"):
        bncli.BatchNormalization(axis=0)(x)


def test_mask_shapes():
    x = np.arange(24, dtype=float).reshape(2, 3, 4)
    bn = bncli.BatchNormalization(momentum=0.0)
    mask = np.array([[True, False, True], [True, True, False]])
    bn(x, training=True, mask=mask)
    kept = x[mask]
    np.testing.assert_allclose(bn.moving_mean64, kept.mean(0), **PRECISE)
    np.testing.assert_allclose(bn.moving_variance64, kept.var(0), **PRECISE)
    other = bncli.BatchNormalization(momentum=0.0)
    other(
        x,
        training=True,
        mask=np.array([[[True], [False], [True]]]).reshape(1, 3)[..., :],
    )
    with pytest.raises(DataError, match="one dimension less"):
        bn(x, training=True, mask=np.ones((2, 3, 4), bool))


def test_channel_with_no_unmasked_value_keeps_its_statistics():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    bn = bncli.BatchNormalization(momentum=0.5)
    bn(x, training=True, mask=np.array([False, False]))
    np.testing.assert_array_equal(bn.moving_mean64, [0.0, 0.0])
    np.testing.assert_array_equal(bn.moving_variance64, [1.0, 1.0])
    np.testing.assert_array_equal(bn.channel_batches, [0, 0])
    assert bn.initializer_share().tolist() == [1.0, 1.0]


def test_setters_apply_constraints_and_check_length():
    bn = bncli.BatchNormalization(
        gamma_constraint="non_neg", beta_constraint="max_norm:1"
    )
    bn(np.ones((2, 3)))
    bn.gamma = [-1.0, 2.0, 3.0]
    np.testing.assert_array_equal(bn.gamma, [0.0, 2.0, 3.0])
    bn.beta = [3.0, 4.0, 0.0]
    np.testing.assert_allclose(
        bn.beta, np.array([3.0, 4.0, 0.0]) / (5.0 + 1e-7), rtol=1e-6
    )
    with pytest.raises(ValueError, match="needs 3 values"):
        bn.moving_mean = [1.0, 2.0]


def test_regularization_penalties():
    bn = bncli.BatchNormalization(
        gamma_regularizer="l2:0.5", beta_regularizer="l1:0.25"
    )
    bn(np.ones((2, 2)))
    bn.gamma = [1.0, 2.0]
    bn.beta = [-1.0, 3.0]
    penalties = bn.regularization_penalties()
    assert penalties["gamma"] == pytest.approx(0.5 * 5.0)
    assert penalties["beta"] == pytest.approx(0.25 * 4.0)
    assert bncli.BatchNormalization().regularization_penalties() == {
        "gamma": 0.0,
        "beta": 0.0,
    }


def test_seed_makes_random_initializers_reproducible():
    a = bncli.BatchNormalization(gamma_initializer="random_normal", seed=5)
    b = bncli.BatchNormalization(gamma_initializer="random_normal", seed=5)
    a(np.ones((2, 4)))
    b(np.ones((2, 4)))
    np.testing.assert_array_equal(a.gamma, b.gamma)
    assert a.get_config()["gamma_initializer"]["config"]["seed"] == 5


def test_float16_output_overflow_is_an_error():
    bn = bncli.BatchNormalization(dtype="float16", epsilon=1e-3)
    bn(np.ones((2, 1)))
    bn.moving_variance = [0.0]
    with pytest.raises(DataError, match="overflow float16"):
        bn(np.array([[1e5], [0.0]]))


def test_output_dtypes_follow_the_policy():
    x = np.ones((2, 2))
    for policy, dtype in [
        ("float32", "float32"),
        ("float64", "float64"),
        ("mixed_float16", "float16"),
        ("mixed_bfloat16", "bfloat16"),
    ]:
        assert bncli.BatchNormalization(dtype=policy)(x).dtype.name == dtype


def test_a_negative_moving_variance_is_refused_by_the_library():
    bn = bncli.BatchNormalization(epsilon=1e-3)
    bn(np.random.default_rng(0).normal(size=(8, 3)), training=True)
    before = bn.moving_variance64.copy()
    with pytest.raises(ConfigError, match="channel 0 has -5"):
        bn.moving_variance = [-5, 1, 1]
    np.testing.assert_array_equal(bn.moving_variance64, before)
    y = bn(np.ones((2, 3)))
    assert np.isfinite(y).all()
    # within epsilon of zero stays allowed: the denominator is still positive
    # (Keras's E[x^2] - E[x]^2 can leave such values in a model file)
    bn.moving_variance = [-1e-4, 1, 1]
    assert np.isfinite(bn(np.ones((2, 3)))).all()
