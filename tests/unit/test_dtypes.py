"""Dtype policies, checked against ``keras.dtype_policies`` (NumPy backend)."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "numpy")

import keras
import ml_dtypes
import numpy as np
import pytest

from bncli.errors import ConfigError
from bncli.keras_compat.dtypes import (
    POLICY_NAMES,
    DTypePolicy,
    numpy_dtype,
    parse_policy,
)

NAMES = [
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "mixed_float16",
    "mixed_bfloat16",
]
VALID = (
    "valid names: float32, float64, float16, bfloat16, mixed_float16, mixed_bfloat16"
)


def test_policy_names() -> None:
    assert POLICY_NAMES == tuple(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_policy_matches_keras(name: str) -> None:
    expected = keras.dtype_policies.get(name)
    policy = parse_policy(name)
    assert policy.name == expected.name == name
    assert policy.variable_dtype.name == expected.variable_dtype
    assert policy.compute_dtype.name == expected.compute_dtype
    assert isinstance(policy.variable_dtype, np.dtype)
    assert isinstance(policy.compute_dtype, np.dtype)
    assert policy.to_config() == keras.dtype_policies.serialize(expected)


@pytest.mark.parametrize("name", NAMES)
def test_policy_of_a_keras_layer_config(name: str) -> None:
    layer_config = keras.layers.BatchNormalization(dtype=name).get_config()
    assert parse_policy(layer_config["dtype"]).name == name
    assert parse_policy(json.dumps(layer_config["dtype"])).name == name


def test_default_policy_is_keras_default() -> None:
    expected = keras.dtype_policies.get(None)
    policy = parse_policy(None)
    assert policy.name == expected.name == "float32"
    assert policy.variable_dtype == np.dtype(np.float32)
    assert policy.compute_dtype == np.dtype(np.float32)


@pytest.mark.parametrize(
    ("name", "variable", "compute"),
    [
        ("float32", np.float32, np.float32),
        ("float64", np.float64, np.float64),
        ("float16", np.float16, np.float16),
        ("bfloat16", ml_dtypes.bfloat16, ml_dtypes.bfloat16),
        ("mixed_float16", np.float32, np.float16),
        ("mixed_bfloat16", np.float32, ml_dtypes.bfloat16),
    ],
)
def test_policy_dtypes_are_numpy_dtypes(name: str, variable: Any, compute: Any) -> None:
    policy = parse_policy(name)
    assert policy.variable_dtype == np.dtype(variable)
    assert policy.compute_dtype == np.dtype(compute)


@pytest.mark.parametrize(
    "spec",
    [
        {"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}},
        {
            "module": "keras",
            "class_name": "DTypePolicy",
            "config": {"name": "mixed_float16"},
            "registered_name": None,
            "shared_object_id": 140230412345,
        },
        {"class_name": "FloatDTypePolicy", "config": {"name": "mixed_float16"}},
        # Keras 2's mixed-precision policy.
        {"class_name": "Policy", "config": {"name": "mixed_float16"}},
        '{"class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}',
        '  {"class_name": "Policy", "config": {"name": "mixed_float16"}}\n',
        " mixed_float16 ",
    ],
)
def test_policy_spellings(spec: Any) -> None:
    assert parse_policy(spec) == parse_policy("mixed_float16")


def test_policy_instance_passes_through() -> None:
    policy = parse_policy("float16")
    assert parse_policy(policy) is policy


def test_policy_is_frozen_and_hashable() -> None:
    policy = parse_policy("bfloat16")
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.name = "float32"  # type: ignore[misc]
    assert len({policy, parse_policy("bfloat16"), parse_policy("float32")}) == 2
    assert isinstance(policy, DTypePolicy)


BAD_POLICIES: list[tuple[Any, str]] = [
    ("int32", f"unknown dtype policy 'int32'; {VALID}"),
    ("float8_e4m3fn", f"unknown dtype policy 'float8_e4m3fn'; {VALID}"),
    ("half", VALID),
    ("Float32", VALID),
    ("", VALID),
    ("mixed_float32", VALID),
    ("int8_from_float32", VALID),
    (42, f"cannot interpret dtype policy 42; {VALID}"),
    ("{bad", "malformed JSON for a dtype policy"),
    ('{"class_name": "DTypePolicy"}', f"has no 'name'; {VALID}"),
    ({"class_name": "DTypePolicy", "config": {"name": 32}}, "has no 'name'"),
    (
        {"class_name": "QuantizedDTypePolicy", "config": {"mode": "int8"}},
        "unsupported dtype policy class 'QuantizedDTypePolicy'; valid class names: "
        "DTypePolicy, FloatDTypePolicy, Policy",
    ),
    ({"config": {"name": "float32"}}, "unsupported dtype policy class None"),
    ({"class_name": "DTypePolicy", "config": {"name": "int64"}}, VALID),
]


@pytest.mark.parametrize(("spec", "message"), BAD_POLICIES)
def test_bad_policies(spec: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_policy(spec)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float16", np.float16),
        ("bfloat16", ml_dtypes.bfloat16),
        ("float32", np.float32),
        ("float64", np.float64),
    ],
)
def test_numpy_dtype(name: str, expected: Any) -> None:
    dtype = numpy_dtype(name)
    assert isinstance(dtype, np.dtype)
    assert dtype == np.dtype(expected)
    assert dtype.name == keras.backend.standardize_dtype(name)


@pytest.mark.parametrize(
    "name", ["int8", "float8_e4m3fn", "Float32", "mixed_float16", "", "double"]
)
def test_numpy_dtype_refuses_other_names(name: str) -> None:
    with pytest.raises(
        ConfigError,
        match=r"valid names: float16, bfloat16, float32, float64$",
    ):
        numpy_dtype(name)
