"""Spec strings, configs and NumPy math of initializers, regularizers, constraints.

Every expected config comes from ``keras.<kind>.serialize`` of the object
Keras builds from the same arguments; every expected penalty and projection
from calling Keras's object; every expected moment from a formula written
here. Keras runs on its NumPy backend.
"""

from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "numpy")

import keras
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bncli.keras_compat.specs as specs_module
from bncli.errors import ConfigError
from bncli.keras_compat.compute import (
    apply_constraint,
    initial_value,
    regularization_penalty,
)
from bncli.keras_compat.specs import (
    describe,
    parse_constraint,
    parse_initializer,
    parse_regularizer,
)

RTOL = 1e-6
FLOAT_DTYPES = [
    np.dtype(np.float16),
    np.dtype(ml_dtypes.bfloat16),
    np.dtype(np.float32),
    np.dtype(np.float64),
]

init = keras.initializers
reg = keras.regularizers
con = keras.constraints


def as_json(config: Any) -> str:
    """JSON text that tells 2 from 2.0, so configs compare type for type."""
    return json.dumps(config, sort_keys=True)


# --- parsing: parity with Keras's serialized configs --------------------------

INITIALIZER_CASES: list[tuple[str, Any]] = [
    # Every spelling Keras's own ``get`` accepts (Constant needs a value there).
    *[
        (name, lambda name=name: init.get(name))
        for name in [
            "zeros",
            "Zeros",
            "zero",
            "ones",
            "Ones",
            "one",
            "random_normal",
            "RandomNormal",
            "normal",
            "random_uniform",
            "RandomUniform",
            "uniform",
            "truncated_normal",
            "TruncatedNormal",
            "glorot_normal",
            "GlorotNormal",
            "glorot_uniform",
            "GlorotUniform",
            "he_normal",
            "HeNormal",
            "he_uniform",
            "HeUniform",
            "lecun_normal",
            "LecunNormal",
            "lecun_uniform",
            "LecunUniform",
            "variance_scaling",
            "VarianceScaling",
            "orthogonal",
            "Orthogonal",
            "OrthogonalInitializer",
            "identity",
            "Identity",
            "IdentityInitializer",
        ]
    ],
    ("constant", lambda: init.Constant()),
    ("Constant", lambda: init.Constant()),
    ("constant:0.5", lambda: init.Constant(0.5)),
    ("constant:2", lambda: init.Constant(2)),
    ("constant:value=-1.5", lambda: init.Constant(value=-1.5)),
    ("random_normal:0,0.05", lambda: init.RandomNormal(0, 0.05)),
    ("random_normal:1,2,3", lambda: init.RandomNormal(1, 2, 3)),
    ("random_normal:stddev=0.1,seed=7", lambda: init.RandomNormal(stddev=0.1, seed=7)),
    ("random_uniform:-1,1", lambda: init.RandomUniform(-1, 1)),
    ("random_uniform:.5,2.", lambda: init.RandomUniform(0.5, 2.0)),
    ("truncated_normal:0.5,0.1,seed=9", lambda: init.TruncatedNormal(0.5, 0.1, 9)),
    (
        "variance_scaling:2.0,fan_in,truncated_normal",
        lambda: init.VarianceScaling(2.0, "fan_in", "truncated_normal"),
    ),
    (
        "variance_scaling:1,fan_avg,normal",
        lambda: init.VarianceScaling(1, "fan_avg", "normal"),
    ),
    (
        "variance_scaling:scale=0.5,distribution=UNIFORM,mode=fan_out",
        lambda: init.VarianceScaling(scale=0.5, distribution="UNIFORM", mode="fan_out"),
    ),
    (
        "variance_scaling:3,fan_in,untruncated_normal,1,[0],[0]",
        lambda: init.VarianceScaling(3, "fan_in", "untruncated_normal", 1, [0], [0]),
    ),
    ("he_normal:seed=5", lambda: init.HeNormal(seed=5)),
    ("glorot_uniform:11", lambda: init.GlorotUniform(11)),
    (
        "lecun_normal:seed=None,input_axes=[0, 1],output_axes=[1]",
        lambda: init.LecunNormal(input_axes=[0, 1], output_axes=[1]),
    ),
    ("orthogonal:2.0,seed=1", lambda: init.Orthogonal(2.0, seed=1)),
    ("identity:gain=1", lambda: init.Identity(gain=1)),
    ("  ones  ", lambda: init.Ones()),
]

REGULARIZER_CASES: list[tuple[str, Any]] = [
    ("l1", lambda: reg.get("l1")),
    ("L1", lambda: reg.get("L1")),
    ("l2", lambda: reg.get("l2")),
    ("L2", lambda: reg.get("L2")),
    ("L1L2", lambda: reg.get("L1L2")),
    ("l1l2", lambda: reg.get("l1l2")),
    ("l1_l2", lambda: reg.get("L1L2")),
    ("l1:0.3", lambda: reg.L1(0.3)),
    ("l1:0.01", lambda: reg.L1(0.01)),
    ("l2:0.01", lambda: reg.L2(0.01)),
    ("l2:1", lambda: reg.L2(1)),
    ("l2:l2=0", lambda: reg.L2(l2=0)),
    ("l1_l2:0.01,0.02", lambda: reg.L1L2(0.01, 0.02)),
    ("l1_l2:l2=0.1", lambda: reg.L1L2(l2=0.1)),
    ("l1_l2:1e-3", lambda: reg.L1L2(1e-3)),
]

CONSTRAINT_CASES: list[tuple[str, Any]] = [
    *[
        (name, lambda name=name: con.get(name))
        for name in [
            "non_neg",
            "NonNeg",
            "max_norm",
            "MaxNorm",
            "min_max_norm",
            "MinMaxNorm",
            "unit_norm",
            "UnitNorm",
        ]
    ],
    ("max_norm:2", lambda: con.MaxNorm(2)),
    ("max_norm:2.5,axis=-1", lambda: con.MaxNorm(2.5, axis=-1)),
    ("min_max_norm:0.5,2", lambda: con.MinMaxNorm(0.5, 2)),
    ("min_max_norm:0.5,2,0.25,0", lambda: con.MinMaxNorm(0.5, 2, 0.25, 0)),
    ("unit_norm:-1", lambda: con.UnitNorm(-1)),
    ("unit_norm:axis=[0]", lambda: con.UnitNorm([0])),
]

PARSE_CASES = [
    *[(parse_initializer, init, spec, make) for spec, make in INITIALIZER_CASES],
    *[(parse_regularizer, reg, spec, make) for spec, make in REGULARIZER_CASES],
    *[(parse_constraint, con, spec, make) for spec, make in CONSTRAINT_CASES],
]


@pytest.mark.parametrize(
    ("parse", "kind", "spec", "make"),
    PARSE_CASES,
    ids=[case[2] for case in PARSE_CASES],
)
def test_spec_string_parses_to_keras_config(
    parse: Any, kind: Any, spec: str, make: Any
) -> None:
    expected = kind.serialize(make())
    assert as_json(parse(spec)) == as_json(expected)


@pytest.mark.parametrize(
    ("parse", "kind", "spec", "make"),
    PARSE_CASES,
    ids=[case[2] for case in PARSE_CASES],
)
def test_keras_config_parses_to_itself(
    parse: Any, kind: Any, spec: str, make: Any
) -> None:
    expected = kind.serialize(make())
    short = {"class_name": expected["class_name"], "config": expected["config"]}
    assert as_json(parse(expected)) == as_json(expected)
    assert as_json(parse(json.dumps(expected))) == as_json(expected)
    assert as_json(parse(short)) == as_json(expected)
    assert as_json(parse(" " + json.dumps(short) + "\n")) == as_json(expected)
    # Keras reads the short form back to the same object.
    assert as_json(kind.serialize(kind.get(short))) == as_json(expected)


@pytest.mark.parametrize(
    ("parse", "kind", "config"),
    [
        # Keras 2 configs: no module, fewer keys, older spellings.
        (
            parse_initializer,
            init,
            {
                "class_name": "VarianceScaling",
                "config": {"scale": 2.0, "mode": "fan_in", "distribution": "normal"},
            },
        ),
        (
            parse_initializer,
            init,
            {"class_name": "GlorotUniform", "config": {"seed": None}},
        ),
        (
            parse_initializer,
            init,
            {"class_name": "RandomNormal", "config": {"stddev": 1}},
        ),
        (parse_initializer, init, {"class_name": "Zeros", "config": {}}),
        (
            parse_regularizer,
            reg,
            {"class_name": "L1L2", "config": {"l1": 0.0, "l2": 1e-4}},
        ),
        (parse_regularizer, reg, {"class_name": "L2", "config": {"l2": None}}),
        (parse_constraint, con, {"class_name": "MaxNorm", "config": {"max_value": 3}}),
    ],
)
def test_older_configs_parse_as_keras_reads_them(
    parse: Any, kind: Any, config: dict[str, Any]
) -> None:
    assert as_json(parse(config)) == as_json(kind.serialize(kind.get(config)))


@pytest.mark.parametrize("parse", [parse_regularizer, parse_constraint])
@pytest.mark.parametrize("spec", [None, "none", "None", "null", " none "])
def test_none_means_no_regularizer_or_constraint(parse: Any, spec: Any) -> None:
    assert parse(spec) is None


@pytest.mark.parametrize(
    ("parse", "spec"),
    [(parse, spec) for parse, _, spec, _ in PARSE_CASES],
    ids=[case[2] for case in PARSE_CASES],
)
def test_parsing_is_idempotent(parse: Any, spec: str) -> None:
    config = parse(spec)
    assert as_json(parse(config)) == as_json(config)


INITIALIZER_NAMES = (
    "constant, glorot_normal, glorot_uniform, he_normal, he_uniform, identity, "
    "lecun_normal, lecun_uniform, ones, orthogonal, random_normal, random_uniform, "
    "truncated_normal, variance_scaling, zeros"
)

BAD_SPECS: list[tuple[Any, Any, str]] = [
    # (parser, spec, a piece of the message)
    (
        parse_initializer,
        "foo",
        f"unknown initializer 'foo'; valid names: {INITIALIZER_NAMES}",
    ),
    (parse_initializer, "stft", "unknown initializer 'stft'; valid names: constant"),
    (parse_initializer, "ZEROS", "unknown initializer 'ZEROS'"),
    (
        parse_initializer,
        None,
        f"an initializer is required, got None; valid names: {INITIALIZER_NAMES}",
    ),
    (parse_initializer, "none", "an initializer is required"),
    (parse_initializer, 42, "cannot interpret initializer 42; valid names: constant"),
    (parse_regularizer, "l3", "unknown regularizer 'l3'; valid names: l1, l1_l2, l2"),
    (parse_regularizer, "orthogonal_regularizer", "valid names: l1, l1_l2, l2"),
    (
        parse_constraint,
        "nonneg",
        "unknown constraint 'nonneg'; "
        "valid names: max_norm, min_max_norm, non_neg, unit_norm",
    ),
    (parse_constraint, "l2", "unknown constraint 'l2'"),
    # wrong number of arguments
    (
        parse_regularizer,
        "l2:1,2",
        "2 positional arguments given, l2 takes at most 1; usage: l2[:l2]",
    ),
    (parse_regularizer, "l1_l2:1,2,3", "l1_l2 takes at most 2; usage: l1_l2[:l1,l2]"),
    (parse_constraint, "non_neg:1", "non_neg takes no arguments"),
    (parse_initializer, "zeros:0", "zeros takes no arguments"),
    (parse_initializer, "constant:", "empty argument; usage: constant[:value]"),
    (parse_initializer, "constant:1,", "empty argument"),
    (
        parse_initializer,
        "random_normal:mean=1,2",
        "positional argument '2' after a keyword",
    ),
    (parse_initializer, "random_normal:1,mean=2", "'mean' given twice"),
    (parse_initializer, "random_normal:seed=1,seed=2", "'seed' given twice"),
    (parse_regularizer, "l2:l3=1", "unknown argument 'l3'; usage: l2[:l2]"),
    # non-numeric or out-of-range arguments
    (parse_regularizer, "l2:abc", "l2: expected a number, got 'abc'; usage: l2[:l2]"),
    (parse_regularizer, "l2:true", "l2: expected a number, got True"),
    (parse_regularizer, "l2:-0.1", "l2: expected a non-negative number, got -0.1"),
    (parse_regularizer, "l1_l2:0.1,-1", "l2: expected a non-negative number"),
    (parse_regularizer, "l1:-1", "l1: expected a non-negative number"),
    (parse_regularizer, "l1:inf", "expected a finite number"),
    (parse_regularizer, "l2:nan", "expected a finite number"),
    (
        parse_constraint,
        "max_norm:x",
        "max_value: expected a number, got 'x'; usage: max_norm[:max_value,axis]",
    ),
    (parse_constraint, "max_norm:axis=x", "axis: expected an integer axis"),
    (parse_constraint, "unit_norm:1.5", "axis: expected an integer axis"),
    (parse_constraint, "min_max_norm:0,1,fast", "rate: expected a number"),
    (parse_initializer, "constant:zero", "value: expected a number, got 'zero'"),
    (parse_initializer, "random_normal:0,-1", "stddev: expected a non-negative number"),
    (parse_initializer, "random_uniform:0,inf", "maxval: expected a finite number"),
    (
        parse_initializer,
        "variance_scaling:0",
        "scale: expected a positive number, got 0",
    ),
    (parse_initializer, "variance_scaling:-2", "scale: expected a positive number"),
    (
        parse_initializer,
        "variance_scaling:1,fan_sideways",
        "mode: expected one of fan_in, fan_out, fan_avg",
    ),
    (
        parse_initializer,
        "variance_scaling:1,fan_in,gamma",
        "expected one of truncated_normal, untruncated_normal, uniform",
    ),
    (parse_initializer, "variance_scaling:1,FAN_IN", "mode: expected one of"),
    (
        parse_initializer,
        "random_normal:seed=-1",
        "seed: expected an integer seed in [0, 2**32)",
    ),
    (
        parse_initializer,
        "random_normal:seed=4294967296",
        "seed: expected an integer seed",
    ),
    (parse_initializer, "random_normal:seed=1.5", "seed: expected an integer seed"),
    (
        parse_initializer,
        "he_normal:input_axes=x",
        "input_axes: expected an integer axis",
    ),
    (
        parse_initializer,
        "identity:2",
        "gain: expected 1 (Keras does not save Identity's gain)",
    ),
    # JSON and configs
    (parse_regularizer, "{bad json", "malformed JSON in regularizer spec"),
    (parse_initializer, '{"class_name": "Zeros"', "malformed JSON in initializer spec"),
    (
        parse_regularizer,
        '{"class_name": "Foo", "config": {}}',
        "unknown regularizer class 'Foo'; valid class names: L1, L1L2, L2",
    ),
    (
        parse_initializer,
        '{"class_name": "L2", "config": {}}',
        "unknown initializer class 'L2'; valid class names: Constant, GlorotNormal",
    ),
    (
        parse_constraint,
        '{"config": {}}',
        "unknown constraint class None; "
        "valid class names: MaxNorm, MinMaxNorm, NonNeg, UnitNorm",
    ),
    (
        parse_regularizer,
        '{"class_name": "L2", "config": {"l3": 1}}',
        "unknown argument 'l3'",
    ),
    (
        parse_regularizer,
        '{"class_name": "L2", "config": 5}',
        "'config' must be an object",
    ),
    (
        parse_regularizer,
        {"class_name": "L2", "config": {"l2": -1}},
        "expected a non-negative number",
    ),
    (
        parse_regularizer,
        {"class_name": "L2", "config": {"l2": "0.1"}},
        "expected a number",
    ),
    (
        parse_regularizer,
        {
            "module": "my_pkg",
            "class_name": "L2",
            "config": {},
            "registered_name": "my_pkg>L2",
        },
        "custom regularizer 'my_pkg>L2' from 'my_pkg' is not supported; "
        "valid names: l1",
    ),
    (
        parse_initializer,
        {
            "class_name": "RandomNormal",
            "config": {"seed": {"class_name": "SeedGenerator"}},
        },
        "seed: expected an integer seed",
    ),
]


@pytest.mark.parametrize(
    ("parse", "spec", "message"),
    BAD_SPECS,
    ids=[f"{case[0].__name__}-{case[1]!s}" for case in BAD_SPECS],
)
def test_bad_specs_raise_config_error(parse: Any, spec: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(spec)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert raised.value.exit_code == 2


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        (reg, {"class_name": "L2", "config": {"l2": -1}}),
        (reg, {"class_name": "L1", "config": {"l1": float("inf")}}),
        (init, {"class_name": "VarianceScaling", "config": {"scale": 0}}),
        (init, {"class_name": "VarianceScaling", "config": {"mode": "fan_x"}}),
        (init, {"class_name": "VarianceScaling", "config": {"distribution": "x"}}),
        (init, {"class_name": "Foo", "config": {}}),
        (reg, {"class_name": "L2", "config": {"l3": 1}}),
    ],
)
def test_keras_refuses_what_we_refuse(kind: Any, config: dict[str, Any]) -> None:
    parse = {init: parse_initializer, reg: parse_regularizer}[kind]
    with pytest.raises((ValueError, TypeError)):
        kind.get(config)
    with pytest.raises(ConfigError):
        parse(config)


@settings(max_examples=50, deadline=None)
@given(factor=st.floats(min_value=0, max_value=1e6, allow_subnormal=False))
def test_any_factor_parses_as_keras_stores_it(factor: float) -> None:
    for name, make in [("l1", reg.L1), ("l2", reg.L2)]:
        expected = reg.serialize(make(factor))
        assert as_json(parse_regularizer(f"{name}:{factor!r}")) == as_json(expected)


# --- initial values --------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(
    ("spec", "expected"),
    [("zeros", 0.0), ("ones", 1.0), ("constant:0.5", 0.5), ("constant:-3", -3.0)],
)
def test_constant_initializers(
    spec: str, expected: float, dtype: np.dtype[Any]
) -> None:
    config = parse_initializer(spec)
    values = initial_value(config, (5,), dtype, None)
    assert values.shape == (5,)
    assert values.dtype == dtype
    np.testing.assert_array_equal(values.astype(np.float64), np.full(5, expected))
    keras_values = init.get(config)(shape=(5,), dtype="float64")
    np.testing.assert_array_equal(values.astype(np.float64), keras_values)


RANDOM_SPECS = [
    "random_normal",
    "random_normal:1,2",
    "random_uniform",
    "random_uniform:-3,1",
    "truncated_normal",
    "truncated_normal:1,0.5",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "lecun_uniform",
    "variance_scaling",
    "variance_scaling:3,fan_out,untruncated_normal",
    "variance_scaling:0.5,fan_avg,uniform",
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_random_initializers_are_deterministic_with_a_seed(
    spec: str, dtype: np.dtype[Any]
) -> None:
    config = parse_initializer(spec)
    first = initial_value(config, (7,), dtype, 42)
    again = initial_value(config, (7,), dtype, 42)
    other = initial_value(config, (7,), dtype, 43)
    assert first.shape == (7,)
    assert first.dtype == dtype
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("spec", RANDOM_SPECS)
def test_config_seed_wins_over_the_given_seed(spec: str) -> None:
    seeded = parse_initializer(f"{spec}{',' if ':' in spec else ':'}seed=5")
    assert seeded["config"]["seed"] == 5
    shape, dtype = (9,), np.dtype(np.float64)
    np.testing.assert_array_equal(
        initial_value(seeded, shape, dtype, 1), initial_value(seeded, shape, dtype, 2)
    )
    np.testing.assert_array_equal(
        initial_value(seeded, shape, dtype, None),
        initial_value(parse_initializer(spec), shape, dtype, 5),
    )


def test_no_seed_draws_fresh_values() -> None:
    config = parse_initializer("random_normal")
    first = initial_value(config, (64,), np.dtype(np.float64), None)
    second = initial_value(config, (64,), np.dtype(np.float64), None)
    assert not np.array_equal(first, second)


def _truncated_std(sigma: float) -> float:
    """Standard deviation of N(0, sigma²) truncated to [-2 sigma, 2 sigma]."""
    a = 2.0
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(a / math.sqrt(2))
    return sigma * math.sqrt(1 - 2 * a * pdf / mass)


N = 200_000


def _moments(kind: str, a: float, b: float) -> tuple[float, float, float, float]:
    """(mean, std, low, high) of a law: normal(a, b), uniform(a, b), truncated(a, b)."""
    if kind == "normal":
        return a, b, -math.inf, math.inf
    if kind == "uniform":
        return (a + b) / 2, (b - a) / math.sqrt(12), a, b
    return a, _truncated_std(b), a - 2 * b, a + 2 * b


def _scaled(scale: float, fan: float, distribution: str) -> tuple[str, float, float]:
    """Keras's VarianceScaling law, from its documentation."""
    variance = scale / max(1.0, fan)
    if distribution == "uniform":
        limit = math.sqrt(3 * variance)
        return "uniform", -limit, limit
    if distribution == "untruncated_normal":
        return "normal", 0.0, math.sqrt(variance)
    return "truncated", 0.0, math.sqrt(variance) / 0.87962566103423978


# For a 1-D shape (C,), Keras's fans are fan_in = fan_out = C.
LAWS = [
    ("random_normal", (N,), ("normal", 0.0, 0.05)),
    ("random_normal:1,2", (N,), ("normal", 1.0, 2.0)),
    ("random_uniform", (N,), ("uniform", -0.05, 0.05)),
    ("random_uniform:-3,1", (N,), ("uniform", -3.0, 1.0)),
    ("truncated_normal", (N,), ("truncated", 0.0, 0.05)),
    ("truncated_normal:1,0.5", (N,), ("truncated", 1.0, 0.5)),
    ("glorot_normal", (N,), _scaled(1.0, N, "truncated_normal")),
    ("glorot_uniform", (N,), _scaled(1.0, N, "uniform")),
    ("he_normal", (N,), _scaled(2.0, N, "truncated_normal")),
    ("he_uniform", (N,), _scaled(2.0, N, "uniform")),
    ("lecun_normal", (N,), _scaled(1.0, N, "truncated_normal")),
    ("lecun_uniform", (N,), _scaled(1.0, N, "uniform")),
    ("variance_scaling", (N,), _scaled(1.0, N, "truncated_normal")),
    (
        "variance_scaling:5,fan_out,untruncated_normal",
        (N,),
        _scaled(5.0, N, "untruncated_normal"),
    ),
    # fans of other shapes: (in, out), conv kernels, explicit axes, scalars
    ("variance_scaling:2,fan_in,uniform", (400, 500), _scaled(2.0, 400, "uniform")),
    ("variance_scaling:2,fan_out,uniform", (400, 500), _scaled(2.0, 500, "uniform")),
    ("glorot_uniform", (400, 500), _scaled(1.0, 450, "uniform")),
    ("he_normal", (3, 3, 40, 500), _scaled(2.0, 360, "truncated_normal")),
    (
        "variance_scaling:1,fan_out,uniform,input_axes=[0],output_axes=[0, 1]",
        (50, 4000),
        _scaled(1.0, 200_000, "uniform"),
    ),
    ("he_uniform", (), _scaled(2.0, 1, "uniform")),
]


@pytest.mark.parametrize(
    ("spec", "shape", "law"), LAWS, ids=[f"{s}-{shape}" for s, shape, _ in LAWS]
)
def test_random_initializers_draw_from_keras_laws(
    spec: str, shape: tuple[int, ...], law: tuple[str, float, float]
) -> None:
    mean, std, low, high = _moments(*law)
    values = initial_value(parse_initializer(spec), shape, np.dtype(np.float64), 0)
    assert values.shape == shape
    flat = values.ravel()
    assert flat.min() >= low
    assert flat.max() <= high
    if flat.size > 1:
        standard_error = std / math.sqrt(flat.size)
        assert abs(flat.mean() - mean) < 6 * standard_error
        assert flat.std() == pytest.approx(std, rel=0.02)
        # Keras's own draw from the same config has the same law.
        keras_values = np.asarray(
            init.get(parse_initializer(spec))(shape=shape, dtype="float64")
        ).ravel()
        assert keras_values.std() == pytest.approx(flat.std(), rel=0.03)
        assert abs(keras_values.mean() - flat.mean()) < 8 * standard_error
        assert keras_values.min() >= low and keras_values.max() <= high


@pytest.mark.parametrize("spec", ["orthogonal", "identity"])
def test_matrix_initializers_refuse_1d_variables_as_keras_does(spec: str) -> None:
    with pytest.raises(ValueError):
        init.get(spec)(shape=(4,), dtype="float32")
    with pytest.raises(ConfigError, match="2"):
        initial_value(parse_initializer(spec), (4,), np.dtype(np.float32), 0)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (2, 3, 6)])
def test_orthogonal_matrices(shape: tuple[int, ...]) -> None:
    gain = 2.0
    values = initial_value(
        parse_initializer(f"orthogonal:{gain}"), shape, np.dtype(np.float64), 3
    )
    assert values.shape == shape
    matrix = values.reshape(-1, shape[-1])
    small = min(matrix.shape)
    product = (
        matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    )
    np.testing.assert_allclose(product, gain**2 * np.eye(small), atol=1e-12)


def test_identity_matrix() -> None:
    values = initial_value(
        parse_initializer("identity"), (3, 4), np.dtype(np.float32), 0
    )
    np.testing.assert_array_equal(values, init.Identity()((3, 4), dtype="float32"))


def test_initial_value_refuses_a_bad_seed() -> None:
    with pytest.raises(ConfigError, match="seed"):
        initial_value(parse_initializer("he_normal"), (3,), np.dtype(np.float32), -1)


# --- regularization penalties -------------------------------------------------------

REGULARIZER_SPECS = [
    "l1",
    "l2",
    "l1:0.3",
    "l2:2.5",
    "l1_l2:0.01,0.02",
    "l1_l2:l2=0.1",
    "l1_l2",
    '{"class_name": "L1L2", "config": {"l1": 1e-3, "l2": 0.7}}',
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("spec", REGULARIZER_SPECS)
def test_penalty_equals_keras(spec: str, scale: float, dtype: type) -> None:
    config = parse_regularizer(spec)
    x: np.ndarray[Any, Any] = (np.random.default_rng(0).normal(size=17) * scale).astype(
        dtype
    )
    expected = float(reg.get(config)(x))
    assert regularization_penalty(config, x) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("spec", REGULARIZER_SPECS)
def test_penalty_formula(spec: str) -> None:
    config = parse_regularizer(spec)
    assert config is not None
    x = np.array([-2.0, 0.5, 3.0])
    l1 = config["config"].get("l1", 0.0)
    l2 = config["config"].get("l2", 0.0)
    expected = l1 * (2.0 + 0.5 + 3.0) + l2 * (4.0 + 0.25 + 9.0)
    assert regularization_penalty(config, x) == pytest.approx(expected, rel=1e-12)


def test_penalty_of_nothing_is_zero() -> None:
    assert regularization_penalty(None, np.ones(3)) == 0.0
    assert regularization_penalty(parse_regularizer("l2"), None) == 0.0


# --- constraints -------------------------------------------------------------------

CONSTRAINT_SPECS = [
    "non_neg",
    "max_norm",
    "max_norm:2",
    "max_norm:0.5,axis=-1",
    "min_max_norm",
    "min_max_norm:0.5,2",
    "min_max_norm:0.5,2,0.3",
    "unit_norm",
    "unit_norm:[0]",
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [0.01, 0.3, 1.0, 10.0])
@pytest.mark.parametrize("spec", CONSTRAINT_SPECS)
def test_constraint_equals_keras(spec: str, scale: float, dtype: type) -> None:
    config = parse_constraint(spec)
    x: np.ndarray[Any, Any] = (np.random.default_rng(1).normal(size=11) * scale).astype(
        dtype
    )
    expected = np.asarray(con.get(config)(x), dtype=np.float64)
    projected = apply_constraint(config, x)
    assert projected.dtype == np.dtype(dtype)
    assert projected.shape == x.shape
    np.testing.assert_allclose(projected.astype(np.float64), expected, rtol=RTOL)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_constraint_keeps_the_dtype(dtype: np.dtype[Any]) -> None:
    x = np.array([-1.0, 3.0, 4.0]).astype(dtype)
    assert apply_constraint(parse_constraint("non_neg"), x).dtype == dtype
    projected = apply_constraint(parse_constraint("unit_norm"), x)
    assert projected.dtype == dtype
    # The formula: x / (epsilon + ||x||), with Keras's epsilon 1e-7.
    np.testing.assert_allclose(
        projected.astype(np.float64),
        np.array([-1.0, 3.0, 4.0]) / (1e-7 + math.sqrt(26.0)),
        rtol=1e-2,
    )


def test_max_norm_formula_on_a_vector() -> None:
    # Keras's axis=0 on a (C,) variable takes the norm of the whole vector.
    x = np.array([3.0, 4.0])
    projected = apply_constraint(parse_constraint("max_norm:2"), x)
    np.testing.assert_allclose(projected, x * 2.0 / (1e-7 + 5.0), rtol=1e-12)
    inside = np.array([0.3, 0.4])
    np.testing.assert_allclose(
        apply_constraint(parse_constraint("max_norm:2"), inside),
        inside * 0.5 / (1e-7 + 0.5),
        rtol=1e-12,
    )


def test_no_constraint_is_identity() -> None:
    x = np.array([-1.0, 2.0])
    assert apply_constraint(None, x) is x


def test_constraint_axis_out_of_range() -> None:
    config = parse_constraint("max_norm:2,axis=1")
    with pytest.raises(ValueError):
        con.get(config)(np.ones(3))
    with pytest.raises(
        ConfigError, match=r"axis 1 is out of range .* valid axes: -1, 0"
    ):
        apply_constraint(config, np.ones(3))


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-1e3, max_value=1e3, allow_subnormal=False),
        min_size=1,
        max_size=8,
    ),
    spec=st.sampled_from(CONSTRAINT_SPECS),
)
def test_constraints_equal_keras_on_any_vector(values: list[float], spec: str) -> None:
    config = parse_constraint(spec)
    x = np.array(values, dtype=np.float64)
    expected = np.asarray(con.get(config)(x), dtype=np.float64)
    np.testing.assert_allclose(
        apply_constraint(config, x), expected, rtol=RTOL, atol=1e-12
    )


# --- describe ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "text"),
    [
        (None, "none"),
        (parse_initializer("zeros"), "zeros"),
        (parse_initializer("constant:0.5"), "constant(0.5)"),
        (parse_initializer("random_normal:seed=7"), "random_normal(0, 0.05, seed=7)"),
        (parse_initializer("he_normal"), "he_normal"),
        (parse_initializer("he_normal:3"), "he_normal(seed=3)"),
        (
            parse_initializer("variance_scaling:2,fan_avg,uniform"),
            "variance_scaling(2, fan_avg, uniform)",
        ),
        (parse_initializer("orthogonal"), "orthogonal"),
        (parse_regularizer("l2:0.01"), "l2(0.01)"),
        (parse_regularizer("l1"), "l1(0.01)"),
        (parse_regularizer("l1_l2:0.01,0.02"), "l1_l2(0.01, 0.02)"),
        (parse_constraint("non_neg"), "non_neg"),
        (parse_constraint("max_norm"), "max_norm(2)"),
        (parse_constraint("max_norm:3,axis=-1"), "max_norm(3, axis=-1)"),
        (
            parse_constraint("min_max_norm:0.5,2,rate=0.5"),
            "min_max_norm(0.5, 2, rate=0.5)",
        ),
        (parse_constraint("unit_norm"), "unit_norm"),
        ({"class_name": "L2", "config": {"l2": 0.25}}, "l2(0.25)"),
    ],
)
def test_describe(config: dict[str, Any] | None, text: str) -> None:
    assert describe(config) == text


def test_describe_refuses_unknown_classes() -> None:
    with pytest.raises(ConfigError, match="valid class names: Constant"):
        describe({"class_name": "Foo", "config": {}})


def test_bncli_does_not_import_keras() -> None:
    source = Path(specs_module.__file__).parent
    for path in sorted(source.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert all(not a.name.startswith("keras") for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("keras"), path
