"""Keras files read and written as plain data, checked against Keras itself.

The models are built and saved once per module with Keras 3 (NumPy backend);
the readers must return exactly what the Keras layers hold, and the files the
writers make must load in Keras and predict the inference formula. Keras 2
files cannot be written by Keras 3, so they are built by hand with h5py
following notes/keras-files.md section 3.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "numpy")

import h5py
import keras
import ml_dtypes
import numpy as np
import pytest

from bncli.errors import (
    StateError,
    StateNotFoundError,
    UnsupportedLayerError,
    UsageError,
)
from bncli.io.atomic import TEMP_MARKER
from bncli.keras_compat import files, legacy, records
from bncli.keras_compat import variables as variable_rules
from bncli.keras_compat.files import (
    KerasBatchNorm,
    is_keras_file,
    normalize_batchnorm_config,
    read_batchnorm_layers,
    select_layer,
    write_keras_model,
    write_weights_h5,
)

# --------------------------------------------------------------------------
# Models saved by Keras


def _randomize(layer: keras.layers.Layer, rng: np.random.Generator) -> None:
    """Give a BatchNormalization layer random weights (positive variance)."""
    values = []
    for weight in layer.weights:
        shape = tuple(weight.shape)
        if weight.name == "moving_variance":
            value = rng.uniform(0.5, 2.0, size=shape)
        else:
            value = rng.normal(size=shape)
        values.append(value.astype(weight.dtype))
    layer.set_weights(values)


def _batchnorms(model: keras.Model) -> list[keras.layers.Layer]:
    """The BatchNormalization layers of a model, nested ones in place."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(_batchnorms(layer))
    return found


def _two_bn() -> keras.Model:
    inputs = keras.Input((4,), name="features")
    x = keras.layers.Dense(5, name="dense_in")(inputs)
    x = keras.layers.BatchNormalization(name="bn_first", momentum=0.95, epsilon=1e-4)(x)
    x = keras.layers.Dense(3, name="dense_mid")(x)
    x = keras.layers.BatchNormalization(name="bn_second", center=False)(x)
    return keras.Model(inputs, x, name="two_bn")


def _conv() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(4, 3, name="conv"),
            keras.layers.BatchNormalization(name="conv_bn"),
        ],
        name="conv_model",
    )


def _nested() -> keras.Model:
    inner = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(5, name="inner_dense"),
            keras.layers.BatchNormalization(name="inner_bn", scale=False),
        ],
        name="inner",
    )
    inputs = keras.Input((4,))
    x = keras.layers.Dense(5, name="outer_dense")(inputs)
    x = keras.layers.BatchNormalization(name="outer_bn")(x)
    return keras.Model(inputs, inner(x), name="nested")


#: model -> (builder, read hints for its .weights.h5, expected Keras 3 paths,
#: expected legacy .h5 paths, expected legacy input shapes)
MODELS: dict[str, tuple[Any, dict[str, bool], list[str], list[str], list[Any]]] = {
    "two_bn": (
        _two_bn,
        {"center": False},
        ["layers/batch_normalization", "layers/batch_normalization_1"],
        ["model_weights/bn_first", "model_weights/bn_second"],
        [(None, 5), (None, 3)],
    ),
    "conv": (
        _conv,
        {},
        ["layers/batch_normalization"],
        ["model_weights/conv_bn"],
        # A legacy Sequential config has no build shapes: after a Conv2D only
        # the rank and the channels are known.
        [(None, None, None, 4)],
    ),
    "nested": (
        _nested,
        {"scale": False},
        ["layers/batch_normalization", "layers/sequential/layers/batch_normalization"],
        ["model_weights/outer_bn", "model_weights/inner/inner/inner_bn"],
        [(None, 5), (None, 5)],
    ),
}
FORMATS = (".keras", ".weights.h5", ".h5", "dir")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every model of MODELS, randomized and saved in every format."""
    folder = tmp_path_factory.mktemp("keras_models")
    rng = np.random.default_rng(7)
    out = {}
    for name, (build, *_) in MODELS.items():
        model = build()
        for layer in _batchnorms(model):
            _randomize(layer, rng)
        model.save(folder / f"{name}.keras")
        model.save_weights(folder / f"{name}.weights.h5")
        model.save(folder / f"{name}.h5")
        model.save(folder / f"{name}_dir", zipped=False)
        paths = {fmt: folder / f"{name}{fmt}" for fmt in FORMATS[:3]}
        paths["dir"] = folder / f"{name}_dir"
        out[name] = (model, paths)
    return out


def _expected_variables(layer: keras.layers.Layer) -> dict[str, np.ndarray]:
    return {
        w.name: np.asarray(v)
        for w, v in zip(layer.weights, layer.get_weights(), strict=True)
    }


def _assert_variables_equal(
    got: dict[str, np.ndarray], expected: dict[str, np.ndarray]
) -> None:
    assert list(got) == [k for k in files.VARIABLE_NAMES if k in expected]
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model_name", list(MODELS))
def test_reads_what_keras_saved(
    saved: dict[str, Any], model_name: str, fmt: str
) -> None:
    model, paths = saved[model_name]
    _, hints, keras3_paths, legacy_paths, legacy_shapes = MODELS[model_name]
    layers = read_batchnorm_layers(
        paths[fmt], **(hints if fmt == ".weights.h5" else {})
    )
    expected = _batchnorms(model)
    assert [layer.name for layer in layers] == [layer.name for layer in expected]
    for got, keras_layer in zip(layers, expected, strict=True):
        _assert_variables_equal(got.variables, _expected_variables(keras_layer))
        if fmt == ".weights.h5":
            assert got.config is None
            assert got.input_shape is None
        else:
            assert got.config == keras_layer.get_config()
    if fmt == ".h5":
        assert [layer.path for layer in layers] == legacy_paths
        assert [layer.input_shape for layer in layers] == legacy_shapes
    else:
        assert [layer.path for layer in layers] == keras3_paths
    if fmt in (".keras", "dir"):
        assert [layer.input_shape for layer in layers] == [
            tuple(keras_layer.get_build_config()["input_shape"])
            for keras_layer in expected
        ]


def test_weights_file_with_three_variables_is_ambiguous(
    saved: dict[str, Any],
) -> None:
    model, paths = saved["two_bn"]
    path = paths[".weights.h5"]
    # The ambiguous layer is listed with its problem; the other one is read.
    first, second = read_batchnorm_layers(path)
    assert first.problem is None
    _assert_variables_equal(
        first.variables, _expected_variables(model.get_layer("bn_first"))
    )
    assert second.problem is not None and second.config is None
    assert second.problem.reason == (
        "3 variables and no config: gamma or beta is ambiguous"
    )
    assert (second.name, second.path, second.channels) == (
        "bn_second",
        "layers/batch_normalization_1",
        3,
    )
    assert list(second.variables) == ["0", "1", "2"]  # by position: names unknown
    assert select_layer([first, second], "bn_first", path=path) is first
    with pytest.raises(StateError, match="'bn_second' has 3 variables") as info:
        select_layer([first, second], "bn_second", path=path)
    assert str(path) in str(info.value) and info.value.exit_code == 4
    layers = read_batchnorm_layers(path, center=True, scale=True)
    with pytest.raises(StateError, match="contradicts"):
        select_layer(layers, "bn_second", path=path)
    # The hint only decides 3-variable layers: bn_first keeps its 4.
    first, second = read_batchnorm_layers(path, scale=True)
    assert list(first.variables) == list(files.VARIABLE_NAMES)
    assert list(second.variables) == ["gamma", "moving_mean", "moving_variance"]
    assert first.problem is None and second.problem is None


def test_renorm_layers_are_refused(tmp_path: Path) -> None:
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.BatchNormalization(renorm=True)]
    )
    model.save(tmp_path / "renorm.keras")
    model.save_weights(tmp_path / "renorm.weights.h5")
    for name in ("renorm.keras", "renorm.weights.h5"):
        (layer,) = read_batchnorm_layers(tmp_path / name)
        assert layer.problem is not None
        with pytest.raises(UnsupportedLayerError, match="renorm") as info:
            select_layer([layer], None, path=tmp_path / name)
        assert info.value.exit_code == 4


def _with_renorm() -> keras.Model:
    """bn_good, then a renormalizing bn_bad (3.15 writes its 7 variables)."""
    inputs = keras.Input((4,), name="features")
    x = keras.layers.Dense(3, name="dense_in")(inputs)
    x = keras.layers.BatchNormalization(name="bn_good", momentum=0.9)(x)
    x = keras.layers.BatchNormalization(
        name="bn_bad", renorm=True, momentum=0.8, epsilon=1e-2
    )(x)
    return keras.Model(inputs, x, name="with_renorm")


@pytest.mark.parametrize("fmt", FORMATS)
def test_unsupported_layer_is_listed_beside_the_others(
    tmp_path: Path, fmt: str
) -> None:
    model = _with_renorm()
    rng = np.random.default_rng(8)
    for layer in _batchnorms(model):
        _randomize(layer, rng)
    path = tmp_path / ("m_dir" if fmt == "dir" else f"m{fmt}")
    if fmt == ".weights.h5":
        model.save_weights(path)
    else:
        model.save(path, **({"zipped": False} if fmt == "dir" else {}))
    good, bad = read_batchnorm_layers(path)
    keras_good, keras_bad = model.get_layer("bn_good"), model.get_layer("bn_bad")

    assert good.problem is None and good.file_config is None
    _assert_variables_equal(good.variables, _expected_variables(keras_good))
    if fmt != ".weights.h5":
        assert good.config == keras_good.get_config()

    assert bad.name == "bn_bad" and bad.config is None and bad.channels == 3
    assert bad.problem is not None and bad.problem.exit_code == 4
    # Every stored variable, renorm ones too, named as Keras names them.
    expected = _expected_variables(keras_bad)
    assert list(expected)[4:] == ["moving_stddev", "renorm_mean", "renorm_stddev"]
    assert sorted(bad.variables) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(bad.variables[key], value, err_msg=key)
    if fmt == ".weights.h5":
        assert bad.problem.reason == "batch renormalization (7 variables)"
        assert bad.file_config is None
    else:
        assert bad.problem.reason == "batch renormalization (renorm=True)"
        assert bad.file_config is not None
        assert (bad.file_config["momentum"], bad.file_config["epsilon"]) == (0.8, 0.01)

    assert select_layer([good, bad], "bn_good", path=path) is good
    with pytest.raises(UnsupportedLayerError, match=r"'bn_bad'.*renorm") as info:
        select_layer([good, bad], "bn_bad", path=path)
    assert str(info.value).startswith(f"{path}: ")
    # One supported layer among two is not guessed.
    with pytest.raises(UsageError, match=r"bn_good, bn_bad \[unsupported\]"):
        select_layer([good, bad], None, path=path)


def _replace_layer_config(
    source: Path, target: Path, layer: str, **changes: Any
) -> Path:
    """Copy a .keras archive with ``changes`` made to one layer's config.json entry."""
    with zipfile.ZipFile(source) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    model = json.loads(members["config.json"])
    (entry,) = [e for e in model["config"]["layers"] if e.get("name") == layer]
    entry["config"].update(changes)
    members["config.json"] = json.dumps(model).encode()
    return _zip(target, members)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"virtual_batch_size": 8}, "virtual batches (virtual_batch_size=8)"),
        ({"axis": [1, 2]}, "several axes (axis=[1, 2])"),
        ({"dtype": "int8_from_float32"}, "dtype policy 'int8_from_float32'"),
        (
            {"gamma_constraint": {"class_name": "Mine", "registered_name": "pkg>Mine"}},
            "custom gamma_constraint 'pkg>Mine'",
        ),
    ],
)
def test_unsupported_config_in_a_keras_archive(
    saved: dict[str, Any], tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    model, paths = saved["two_bn"]
    path = _replace_layer_config(
        paths[".keras"], tmp_path / "edited.keras", "bn_first", **changes
    )
    first, second = read_batchnorm_layers(path)
    assert first.problem is not None and first.problem.reason == reason
    assert first.config is None and first.file_config is not None
    assert list(first.variables) == list(files.VARIABLE_NAMES)
    assert first.channels == 5
    assert second.problem is None
    assert second.config == model.get_layer("bn_second").get_config()
    with pytest.raises(UnsupportedLayerError, match="'bn_first'"):
        select_layer([first, second], "bn_first", path=path)


def test_damaged_layer_still_refuses_the_file(
    saved: dict[str, Any], tmp_path: Path
) -> None:
    """A config Keras itself would refuse is damage, not an unsupported feature."""
    path = _replace_layer_config(
        saved["two_bn"][1][".keras"], tmp_path / "bad.keras", "bn_first", momentum="x"
    )
    with pytest.raises(StateError, match="momentum 'x' is not a number") as info:
        read_batchnorm_layers(path)
    assert not isinstance(info.value, UnsupportedLayerError)
    # Damage wins over what is unsupported in the same layer.
    path = _replace_layer_config(
        saved["two_bn"][1][".keras"],
        tmp_path / "worse.keras",
        "bn_first",
        renorm=True,
        axis=[1, 2],
        momentum="x",
    )
    with pytest.raises(StateError, match="momentum 'x' is not a number"):
        read_batchnorm_layers(path)


# --------------------------------------------------------------------------
# Keras 2 files, written by hand


def _keras2_bn(name: str, **overrides: Any) -> dict[str, Any]:
    """A tf.keras 2.13 BatchNormalization config (after build)."""
    config = {
        "name": name,
        "trainable": True,
        "dtype": "float32",
        "axis": [1],
        "momentum": 0.99,
        "epsilon": 0.001,
        "center": True,
        "scale": True,
        "beta_initializer": {"class_name": "Zeros", "config": {}},
        "gamma_initializer": {"class_name": "Ones", "config": {}},
        "moving_mean_initializer": {"class_name": "Zeros", "config": {}},
        "moving_variance_initializer": {"class_name": "Ones", "config": {}},
        "beta_regularizer": None,
        "gamma_regularizer": None,
        "beta_constraint": None,
        "gamma_constraint": None,
        "synchronized": False,
    }
    config.update(overrides)
    return config


def _keras2_model_config(bn_overrides: dict[str, Any]) -> dict[str, Any]:
    """input (None, 4) -> dense(5) -> bn_k2 -> inner[inner_bn] -> reshape -> bn_nchw."""
    inner = {
        "class_name": "Sequential",
        "config": {
            "name": "inner",
            "layers": [
                {
                    "class_name": "InputLayer",
                    "config": {"batch_input_shape": [None, 5], "name": "inner_in"},
                },
                {
                    "class_name": "BatchNormalization",
                    "config": _keras2_bn(
                        "inner_bn",
                        center=False,
                        dtype={
                            "class_name": "Policy",
                            "config": {"name": "mixed_float16"},
                        },
                    ),
                },
            ],
        },
        "name": "inner",
        "inbound_nodes": [[["bn_k2", 0, 0, {}]]],
    }
    layers = [
        {
            "class_name": "InputLayer",
            "config": {
                "batch_input_shape": [None, 4],
                "dtype": "float32",
                "name": "input_1",
            },
            "name": "input_1",
            "inbound_nodes": [],
        },
        {
            "class_name": "Dense",
            "config": {"name": "dense", "units": 5},
            "name": "dense",
            "inbound_nodes": [[["input_1", 0, 0, {}]]],
        },
        {
            "class_name": "BatchNormalization",
            "config": _keras2_bn(
                "bn_k2",
                momentum=0.9,
                beta_regularizer={"class_name": "L2", "config": {"l2": 0.01}},
                gamma_constraint={"class_name": "NonNeg", "config": {}},
                **bn_overrides,
            ),
            "name": "bn_k2",
            "inbound_nodes": [[["dense", 0, 0, {}]]],
        },
        inner,
        {
            "class_name": "Reshape",
            "config": {"name": "reshape", "target_shape": [5, 1, 1]},
            "name": "reshape",
            "inbound_nodes": [[["inner", 0, 0, {}]]],
        },
        {
            "class_name": "BatchNormalization",
            "config": _keras2_bn("bn_nchw"),
            "name": "bn_nchw",
            "inbound_nodes": [[["reshape", 0, 0, {}]]],
        },
    ]
    return {
        "class_name": "Functional",
        "config": {
            "name": "model",
            "layers": layers,
            "input_layers": [["input_1", 0, 0]],
            "output_layers": [["bn_nchw", 0, 0]],
        },
        "keras_version": "2.13.1",
        "backend": "tensorflow",
    }


#: Keras 2 weights: layer group -> [(weight name, value)].
def _keras2_weights(rng: np.random.Generator) -> dict[str, list[tuple[str, Any]]]:
    def bn(prefix: str, names: tuple[str, ...]) -> list[tuple[str, Any]]:
        return [
            (
                f"{prefix}/{n}:0",
                (
                    rng.uniform(0.5, 2, 5)
                    if n == "moving_variance"
                    else rng.normal(size=5)
                ).astype(np.float32),
            )
            for n in names
        ]

    return {
        "input_1": [],
        "dense": [
            ("dense/kernel:0", rng.normal(size=(4, 5)).astype(np.float32)),
            ("dense/bias:0", np.zeros(5, np.float32)),
        ],
        "bn_k2": bn("bn_k2", files.VARIABLE_NAMES),
        "inner": bn("inner/inner_bn", ("gamma", "moving_mean", "moving_variance")),
        "reshape": [],
        # tf.keras may prefix variable names with an outer scope.
        "bn_nchw": bn("model/bn_nchw", files.VARIABLE_NAMES),
    }


def _write_keras2(
    path: Path,
    weights: dict[str, list[tuple[str, Any]]],
    model_config: dict[str, Any] | None,
) -> None:
    with h5py.File(path, "w") as f:
        if model_config is None:
            root = f
        else:
            f.attrs["keras_version"] = b"2.13.1"
            f.attrs["backend"] = b"tensorflow"
            f.attrs["model_config"] = json.dumps(model_config).encode()
            root = f.create_group("model_weights")
        names = [name.encode() for name in weights]
        # Long lists are chunked as layer_names0, layer_names1, ...
        root.attrs["layer_names0"] = np.array(names[:3])
        root.attrs["layer_names1"] = np.array(names[3:])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.13.1"
        for layer, entries in weights.items():
            group = root.create_group(layer)
            group.attrs["weight_names"] = np.array([n.encode() for n, _ in entries])
            for weight_name, value in entries:
                group.create_dataset(weight_name, data=value)


def _by_kind(entries: list[tuple[str, Any]]) -> dict[str, np.ndarray]:
    return {legacy.variable_kind(name): value for name, value in entries}


def test_reads_keras2_model(tmp_path: Path) -> None:
    weights = _keras2_weights(np.random.default_rng(3))
    path = tmp_path / "keras2.h5"
    _write_keras2(path, weights, _keras2_model_config({}))
    assert is_keras_file(path)
    bn_k2, inner_bn, bn_nchw = read_batchnorm_layers(path)

    expected_k2 = keras.layers.BatchNormalization(
        name="bn_k2",
        momentum=0.9,
        beta_regularizer=keras.regularizers.L2(0.01),
        gamma_constraint=keras.constraints.NonNeg(),
    ).get_config()
    assert bn_k2.config == expected_k2
    assert (bn_k2.path, bn_k2.input_shape) == ("model_weights/bn_k2", (None, 5))
    _assert_variables_equal(bn_k2.variables, _by_kind(weights["bn_k2"]))

    expected_inner = keras.layers.BatchNormalization(
        name="inner_bn", center=False, dtype="mixed_float16"
    ).get_config()
    assert inner_bn.config == expected_inner
    assert inner_bn.path == "model_weights/inner/inner/inner_bn"
    _assert_variables_equal(inner_bn.variables, _by_kind(weights["inner"]))

    # axis [1] on a rank-4 input is the channels-first axis -3.
    assert bn_nchw.config is not None
    assert bn_nchw.config["axis"] == -3
    assert bn_nchw.input_shape == (None, 5, 1, 1)
    _assert_variables_equal(bn_nchw.variables, _by_kind(weights["bn_nchw"]))
    # Keras 3 takes every normalized config as is.
    for layer in (bn_k2, inner_bn, bn_nchw):
        assert keras.layers.BatchNormalization.from_config(layer.config).get_config()


def test_reads_keras2_weights_only(tmp_path: Path) -> None:
    weights = _keras2_weights(np.random.default_rng(4))
    path = tmp_path / "keras2_weights.h5"
    _write_keras2(path, weights, None)
    layers = read_batchnorm_layers(path)
    assert [(x.name, x.path, x.config) for x in layers] == [
        ("bn_k2", "bn_k2", None),
        ("inner_bn", "inner/inner/inner_bn", None),
        ("bn_nchw", "bn_nchw", None),
    ]
    # The weight names say which of gamma/beta a 3-variable layer has.
    assert list(layers[1].variables) == ["gamma", "moving_mean", "moving_variance"]
    _assert_variables_equal(layers[2].variables, _by_kind(weights["bn_nchw"]))


@pytest.mark.parametrize(
    ("overrides", "message", "reason"),
    [
        (
            {"virtual_batch_size": 8},
            "virtual batches",
            "virtual batches (virtual_batch_size=8)",
        ),
        (
            {"renorm": True, "renorm_clipping": None},
            "renorm",
            "batch renormalization (renorm=True)",
        ),
        ({"axis": [1, 2]}, "several axes", "several axes (axis=[1, 2])"),
        (
            {"dtype": "int8_from_float32"},
            "dtype policy",
            "dtype policy 'int8_from_float32'",
        ),
        (
            {"beta_initializer": {"class_name": "Mine", "registered_name": "pkg>Mine"}},
            "custom",
            "custom beta_initializer 'pkg>Mine'",
        ),
    ],
)
def test_keras2_unsupported_configs_are_listed_and_refused_on_import(
    tmp_path: Path, overrides: dict[str, Any], message: str, reason: str
) -> None:
    path = tmp_path / "bad.h5"
    weights = _keras2_weights(np.random.default_rng(5))
    _write_keras2(path, weights, _keras2_model_config(overrides))
    layers = read_batchnorm_layers(path)
    bn_k2, inner_bn, bn_nchw = layers
    assert bn_k2.problem is not None and bn_k2.problem.reason == reason
    assert (bn_k2.name, bn_k2.path, bn_k2.config) == (
        "bn_k2",
        "model_weights/bn_k2",
        None,
    )
    assert bn_k2.file_config is not None and bn_k2.file_config["momentum"] == 0.9
    _assert_variables_equal(bn_k2.variables, _by_kind(weights["bn_k2"]))
    assert inner_bn.problem is None and bn_nchw.problem is None
    _assert_variables_equal(bn_nchw.variables, _by_kind(weights["bn_nchw"]))
    with pytest.raises(StateError, match=message) as info:
        select_layer(layers, "bn_k2", path=path)
    assert info.value.exit_code == 4
    assert str(path) in str(info.value)


def test_keras2_weights_only_with_renorm_variables(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    weights = _keras2_weights(rng)
    weights["bn_renorm"] = [
        (f"bn_renorm/{name}:0", rng.uniform(0.5, 2, 5).astype(np.float32))
        for name in (*files.VARIABLE_NAMES, *records.RENORM_ORDER)
    ]
    path = tmp_path / "renorm_weights.h5"
    _write_keras2(path, weights, None)
    layers = read_batchnorm_layers(path)
    assert [(x.name, x.problem is None) for x in layers] == [
        ("bn_k2", True),
        ("inner_bn", True),
        ("bn_nchw", True),
        ("bn_renorm", False),
    ]
    renorm = layers[-1]
    assert renorm.problem is not None
    assert renorm.problem.reason == (
        "batch renormalization (moving_stddev, renorm_mean, renorm_stddev)"
    )
    assert renorm.variables.keys() == _by_kind(weights["bn_renorm"]).keys()
    assert select_layer(layers, "bn_nchw", path=path) is layers[2]
    with pytest.raises(UnsupportedLayerError, match="'bn_renorm'"):
        select_layer(layers, "bn_renorm", path=path)


def test_unsupported_layer_with_bad_variables_refuses_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bad.weights.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("layers/batch_normalization/vars")
        for index in range(7):
            group[str(index)] = np.ones(3 if index else 4, np.float32)
    with pytest.raises(StateError, match="different lengths"):
        read_batchnorm_layers(path)


def test_links_in_hdf5_are_not_followed(tmp_path: Path) -> None:
    weights = _keras2_weights(np.random.default_rng(6))
    path = tmp_path / "linked.h5"
    _write_keras2(path, weights, _keras2_model_config({}))
    with h5py.File(tmp_path / "other.h5", "w") as other:
        other["x"] = np.ones(5, np.float32)
    with h5py.File(path, "a") as f:
        group = f["model_weights/bn_k2/bn_k2"]
        del group["gamma:0"]
        group["gamma:0"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "x")
    with pytest.raises(StateError, match="ExternalLink"):
        read_batchnorm_layers(path)


# --------------------------------------------------------------------------
# Bad files


def _zip(
    path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED
) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StateNotFoundError, match="no such Keras file"):
        read_batchnorm_layers(tmp_path / "absent.keras")
    assert not is_keras_file(tmp_path / "absent.keras")


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.keras"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(StateError, match="not a Keras model") as info:
        read_batchnorm_layers(path)
    assert str(info.value).startswith(str(path))
    assert not is_keras_file(path)


def test_truncated_archive(saved: dict[str, Any], tmp_path: Path) -> None:
    data = saved["two_bn"][1][".keras"].read_bytes()
    path = tmp_path / "truncated.keras"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StateError, match=re.escape(str(path))):
        read_batchnorm_layers(path)


def test_zip_without_config(tmp_path: Path) -> None:
    path = _zip(tmp_path / "noconfig.keras", {"metadata.json": b"{}"})
    with pytest.raises(StateError, match=r"no config\.json"):
        read_batchnorm_layers(path)


def test_bad_config_json(tmp_path: Path) -> None:
    path = _zip(tmp_path / "bad.keras", {"config.json": b"{not json"})
    with pytest.raises(StateError, match="not valid JSON"):
        read_batchnorm_layers(path)


def test_config_json_size_bound(
    saved: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "CONFIG_MAX_BYTES", 1000)
    with pytest.raises(StateError, match=r"config\.json is larger"):
        read_batchnorm_layers(saved["two_bn"][1][".keras"])


def test_zip_bomb_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "ZIP_BOMB_FLOOR_BYTES", 1000)
    padded = b'{"class_name": "Functional"}' + b" " * 200_000
    path = _zip(tmp_path / "bomb.keras", {"config.json": padded}, zipfile.ZIP_DEFLATED)
    with pytest.raises(StateError, match="decompression bomb"):
        read_batchnorm_layers(path)


def test_npz_weights_refused(saved: dict[str, Any], tmp_path: Path) -> None:
    with zipfile.ZipFile(saved["two_bn"][1][".keras"]) as zf:
        config = zf.read("config.json")
    path = _zip(
        tmp_path / "npz.keras", {"config.json": config, "model.weights.npz": b""}
    )
    with pytest.raises(StateError, match="npz"):
        read_batchnorm_layers(path)


def test_weights_that_do_not_match_the_config(
    saved: dict[str, Any], tmp_path: Path
) -> None:
    with zipfile.ZipFile(saved["two_bn"][1][".keras"]) as zf:
        config = zf.read("config.json")
    weights = saved["conv"][1][".weights.h5"].read_bytes()
    path = _zip(
        tmp_path / "mixed.keras", {"config.json": config, "model.weights.h5": weights}
    )
    with pytest.raises(StateError, match="conv_bn"):
        read_batchnorm_layers(path)


def test_plain_hdf5_is_not_keras(tmp_path: Path) -> None:
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["data"] = np.arange(3.0)
    state = tmp_path / "state.h5"
    with h5py.File(state, "w") as f:
        f.attrs["format"] = "bncli-state"
        f.create_group("layers")
    for path, message in (
        (plain, "neither a bncli state nor a Keras model"),
        (state, "a bncli state, not a Keras model"),
    ):
        assert not is_keras_file(path)
        with pytest.raises(StateError, match=message) as info:
            read_batchnorm_layers(path)
        assert info.value.exit_code == 4


def test_is_keras_file(saved: dict[str, Any], tmp_path: Path) -> None:
    for fmt, path in saved["nested"][1].items():
        assert is_keras_file(path), fmt
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros(3))
    assert not is_keras_file(npy)


def test_bad_variables_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.weights.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("layers/batch_normalization/vars")
        group["0"] = np.ones(3, np.float32)
        group["1"] = np.ones(4, np.float32)
    with pytest.raises(StateError, match="different lengths"):
        read_batchnorm_layers(path)
    with h5py.File(path, "w") as f:
        group = f.create_group("layers/batch_normalization/vars")
        group["0"] = np.ones((3, 1), np.float32)
        group["1"] = np.ones((3, 1), np.float32)
    with pytest.raises(StateError, match="1-D"):
        read_batchnorm_layers(path)
    with h5py.File(path, "w") as f:
        group = f.create_group("layers/batch_normalization/vars")
        group["0"] = np.array([b"a", b"b"])
        group["1"] = np.ones(2, np.float32)
    with pytest.raises(StateError, match="not floating-point"):
        read_batchnorm_layers(path)


# --------------------------------------------------------------------------
# Choosing a layer


def _stub(name: str, path: str) -> KerasBatchNorm:
    return KerasBatchNorm(name, path, None, {}, None)


def test_select_layer() -> None:
    first = _stub("bn_first", "layers/batch_normalization")
    second = _stub("bn_second", "layers/batch_normalization_1")
    assert select_layer([first], None, path="m.keras") is first
    assert select_layer([first, second], "bn_second", path="m.keras") is second
    with pytest.raises(
        UsageError, match="2 BatchNormalization layers: bn_first, bn_second"
    ) as info:
        select_layer([first, second], None, path="m.keras")
    assert info.value.exit_code == 2
    assert "m.keras" in str(info.value)
    with pytest.raises(
        UsageError, match=r"no BatchNormalization layer named 'bn'.*bn_first, bn_second"
    ):
        select_layer([first, second], "bn", path="m.keras")
    with pytest.raises(StateError, match="no BatchNormalization layer"):
        select_layer([], None, path="m.keras")


def test_select_layer_marks_unsupported_layers() -> None:
    problem = UnsupportedLayerError(
        "layer 'bad' uses batch renormalization", reason="renorm", path="m.keras"
    )
    good = _stub("good", "layers/batch_normalization")
    bad = KerasBatchNorm("bad", "layers/batch_normalization_1", None, {}, None, problem)
    with pytest.raises(UsageError, match=r"layers: good, bad \[unsupported\];"):
        select_layer([good, bad], None, path="m.keras")
    with pytest.raises(UsageError, match=r"has: good, bad \[unsupported\]$"):
        select_layer([good, bad], "other", path="m.keras")
    with pytest.raises(UnsupportedLayerError) as info:
        select_layer([bad], None, path="m.keras")
    assert info.value is problem
    assert select_layer([good, bad], "good", path="m.keras") is good


def test_select_layer_with_repeated_names() -> None:
    outer = _stub("bn", "layers/batch_normalization")
    inner = _stub("bn", "layers/functional/layers/batch_normalization")
    with pytest.raises(UsageError, match=r"bn \(layers/batch_normalization\)"):
        select_layer([outer, inner], "bn", path="m.keras")
    assert select_layer([outer, inner], inner.path, path="m.keras") is inner


# --------------------------------------------------------------------------
# Writing


def _random_variables(
    config: dict[str, Any], channels: int, dtype: Any, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    names = variable_rules.expected_names(config["center"], config["scale"])
    return {
        name: (
            rng.uniform(0.5, 2.0, channels)
            if name == "moving_variance"
            else rng.normal(size=channels)
        ).astype(dtype)
        for name in names
    }


def _inference(
    x: np.ndarray, config: dict[str, Any], variables: dict[str, np.ndarray]
) -> np.ndarray:
    """gamma * (x - mm) / sqrt(mv + eps) + beta along the channel axis, in float64."""
    axis = config["axis"] % x.ndim
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]

    def get(name: str, default: float) -> np.ndarray:
        value = variables.get(name)
        if value is None:
            return np.full(shape, default)
        return value.astype(np.float64).reshape(shape)

    mean, variance = get("moving_mean", 0.0), get("moving_variance", 1.0)
    return get("gamma", 1.0) * (x - mean) / np.sqrt(variance + config["epsilon"]) + get(
        "beta", 0.0
    )


ROUND_TRIPS = [
    pytest.param({"momentum": 0.9, "epsilon": 1e-4}, (3,), np.float32, id="default"),
    pytest.param({"center": False}, (2, 4), np.float32, id="no-center-rank3"),
    pytest.param({"scale": False, "axis": 1}, (4, 2), np.float32, id="no-scale-axis1"),
    pytest.param({"center": False, "scale": False}, (3,), np.float32, id="neither"),
    pytest.param({"dtype": "float64", "axis": -2}, (5, 2), np.float64, id="float64"),
    pytest.param(
        {"gamma_regularizer": "l2", "beta_constraint": "non_neg", "trainable": False},
        (3,),
        np.float32,
        id="regularized-frozen",
    ),
]


@pytest.mark.parametrize(("kwargs", "sample_shape", "dtype"), ROUND_TRIPS)
def test_exported_model_loads_and_predicts(
    tmp_path: Path, kwargs: dict[str, Any], sample_shape: tuple[int, ...], dtype: Any
) -> None:
    config = normalize_batchnorm_config(
        keras.layers.BatchNormalization(name="exported", **kwargs).get_config()
    )
    axis = config["axis"] % (len(sample_shape) + 1)
    rng = np.random.default_rng(11)
    variables = _random_variables(config, sample_shape[axis - 1], dtype, rng)
    path = tmp_path / "exported.keras"
    write_keras_model(path, config, variables, sample_shape)

    model = keras.saving.load_model(path)
    layer = model.layers[-1]
    assert layer.get_config() == config
    _assert_variables_equal(_expected_variables(layer), variables)
    x = rng.normal(size=(6, *sample_shape)).astype(dtype)
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        _inference(x, config, variables),
        rtol=1e-5,
        atol=1e-6,
    )
    # Read back by bncli: the same layer.
    (back,) = read_batchnorm_layers(path)
    assert back.config == config
    assert back.input_shape == (None, *sample_shape)
    _assert_variables_equal(back.variables, variables)
    assert not list(tmp_path.glob(f"*{TEMP_MARKER}*"))


def test_exported_config_json(tmp_path: Path) -> None:
    config = normalize_batchnorm_config(
        keras.layers.BatchNormalization(name="bn").get_config()
    )
    config["synchronized"] = True  # Keras refuses it off TensorFlow
    variables = _random_variables(config, 3, np.float32, np.random.default_rng(1))
    path = tmp_path / "bn.keras"
    write_keras_model(path, config, variables, (3,))
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        model_config = json.loads(zf.read("config.json"))
        metadata = json.loads(zf.read("metadata.json"))
    assert set(metadata) == {"keras_version", "date_saved"}
    input_layer, bn = model_config["config"]["layers"]
    assert input_layer["config"]["batch_shape"] == [None, 3]
    assert not set(records.RENORM_KEYS) & set(bn["config"])
    assert bn["config"]["synchronized"] is False
    assert keras.saving.load_model(path).layers[-1].synchronized is False


def _layout(path: Path) -> list[Any]:
    """Every group and dataset with its attributes, shape and dtype."""
    out: list[Any] = []

    def visit(name: str, obj: Any) -> None:
        attrs = sorted((key, str(value)) for key, value in obj.attrs.items())
        out.append(
            (name, attrs, getattr(obj, "shape", None), str(getattr(obj, "dtype", "")))
        )

    with h5py.File(path, "r") as f:
        out.append(("/", sorted(f.attrs)))
        f.visititems(visit)
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weights_file_matches_keras_layout(tmp_path: Path, dtype: str) -> None:
    inputs = keras.Input((3,), name="input_layer")
    layer = keras.layers.BatchNormalization(name="bn", center=False, dtype=dtype)
    reference = keras.Model(inputs, layer(inputs), name="functional")
    _randomize(layer, np.random.default_rng(2))
    reference.save_weights(tmp_path / "keras.weights.h5")

    config = normalize_batchnorm_config(layer.get_config())
    variables = _expected_variables(layer)
    ours = tmp_path / "ours.weights.h5"
    write_weights_h5(ours, config, variables)
    assert _layout(ours) == _layout(tmp_path / "keras.weights.h5")

    for model in (
        keras.Sequential(
            [keras.Input((3,)), keras.layers.BatchNormalization(**config)]
        ),
        keras.Model(inputs, keras.layers.BatchNormalization(**config)(inputs)),
    ):
        model.load_weights(ours)
        _assert_variables_equal(_expected_variables(model.layers[-1]), variables)
    (back,) = read_batchnorm_layers(ours, center=False)
    _assert_variables_equal(back.variables, variables)
    if dtype == "bfloat16":
        assert back.variables["gamma"].dtype == ml_dtypes.bfloat16


def test_writers_refuse_bad_input(tmp_path: Path) -> None:
    config = normalize_batchnorm_config(
        keras.layers.BatchNormalization(name="bn").get_config()
    )
    variables = _random_variables(config, 3, np.float32, np.random.default_rng(3))
    target = tmp_path / "out.keras"
    with pytest.raises(StateError, match="channels"):
        write_keras_model(target, config, variables, (4,))
    with pytest.raises(StateError, match="do not match"):
        write_keras_model(
            target, config, {"moving_mean": variables["moving_mean"]}, (3,)
        )
    with pytest.raises(StateError, match="renorm"):
        write_weights_h5(
            tmp_path / "out.weights.h5", {**config, "renorm": True}, variables
        )
    with pytest.raises(StateError, match="lengths"):
        write_weights_h5(
            tmp_path / "out.weights.h5",
            config,
            {**variables, "beta": np.ones(2, np.float32)},
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "error",
    [KeyError("Unable to synchronously open object"), TypeError, AttributeError],
)
def test_probes_of_damaged_hdf5_files_never_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    """h5py reports a damaged object as KeyError (found by tests/property/test_fuzz.py)."""
    import bncli.keras_compat.detect as detect_module
    import bncli.state as state_module

    path = tmp_path / "damaged.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.arange(3.0)

    def damaged(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(detect_module, "hdf5_kind", damaged)
    monkeypatch.setattr(state_module, "attribute_text", damaged)
    assert not is_keras_file(path)
    assert not state_module.is_state(path)


def test_a_sealed_state_is_told_apart_without_parsing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bncli

    bn = bncli.BatchNormalization()
    bn(np.ones((4, 2)), training=True)
    bn.save(tmp_path / "s.h5")

    def no_hdf5(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed a state as a Keras file")

    monkeypatch.setattr(h5py, "File", no_hdf5)
    assert not is_keras_file(tmp_path / "s.h5")
    with pytest.raises(StateError, match="a bncli state, not a Keras model"):
        read_batchnorm_layers(tmp_path / "s.h5")


def test_a_damaged_keras_archive_is_refused_before_libhdf5_parses_it(
    tmp_path: Path, run_cli: Any
) -> None:
    """A flip in the weights' global heap makes libhdf5 loop forever; the CRC stops it."""
    import bncli

    bn = bncli.BatchNormalization()
    bn(np.ones((4, 2)), training=True)
    bn.save(tmp_path / "s.h5")
    assert run_cli("export", "s.h5", "m.keras").exit_code == 0
    data = bytearray((tmp_path / "m.keras").read_bytes())
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        info = zf.getinfo("model.weights.h5")
        member = zf.read(info)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    assert data[start : start + len(member)] == member  # stored, not deflated
    heap = member.index(b"GCOL")
    data[start + heap + 8] ^= 0x80  # the collection's size: the loop's trigger
    (tmp_path / "bad.keras").write_bytes(data)
    result = run_cli("inspect", "bad.keras")
    assert result.exit_code == 4
    assert "corrupt Keras archive (Bad CRC-32" in result.stderr


def test_the_fast_layer_read_takes_only_plain_vars_groups(tmp_path: Path) -> None:
    """A vars group of datasets 0..n-1 and a string name, reached by hard links only."""
    import h5py

    from bncli.keras_compat.hdf5_reading import read_budget, read_plain_vars

    with h5py.File(tmp_path / "w.h5", "w") as f:
        plain = f.create_group("layers/bn/vars")
        plain.attrs["name"] = "bn"
        for i in range(4):
            plain[str(i)] = np.full(3, i, dtype=np.float32)
        unnamed = f.create_group("layers/unnamed/vars")
        unnamed["0"] = np.ones(2)
        f["layers/soft"] = h5py.SoftLink("/layers/bn")
        extra = f.create_group("layers/extra/vars")
        extra["0"] = np.ones(2)
        extra["x"] = np.ones(2)
        gap = f.create_group("layers/gap/vars")
        gap["1"] = np.ones(2)
        matrix = f.create_group("layers/matrix/vars")
        matrix["0"] = np.ones((2, 2))
        many = f.create_group("layers/many/vars")
        for i in range(17):
            many[str(i)] = np.ones(1)
        number = f.create_group("layers/number/vars")
        number.attrs["name"] = 3
        number["0"] = np.ones(2)
        names = f.create_group("layers/names/vars")
        names.attrs["name"] = ["a", "b"]
        names["0"] = np.ones(2)
        f.create_dataset("layers/dataset/vars", data=np.ones(2))
    with h5py.File(tmp_path / "w.h5", "r") as f, read_budget():
        name, arrays = read_plain_vars(f, "layers/bn/vars", tmp_path)
        assert name == "bn"
        assert [a.tolist() for a in arrays] == [[float(i)] * 3 for i in range(4)]
        assert all(a.dtype == np.float32 for a in arrays)
        assert read_plain_vars(f, "layers/unnamed/vars", tmp_path) == (
            None,
            [pytest.approx(np.ones(2))],
        )
        for where in (
            "layers/soft/vars",
            "layers/extra/vars",
            "layers/gap/vars",
            "layers/matrix/vars",
            "layers/many/vars",
            "layers/number/vars",
            "layers/names/vars",
            "layers/dataset/vars",
            "layers/missing/vars",
        ):
            assert read_plain_vars(f, where, tmp_path) is None, where


def test_the_fast_and_the_checked_layer_reads_agree(
    tmp_path: Path, monkeypatch
) -> None:
    """A model read through the low-level calls equals the one read through h5py's checked path."""
    from bncli.keras_compat import keras3
    from bncli.keras_compat.files import read_batchnorm_layers

    model = _nested()
    rng = np.random.default_rng(0)
    for layer in _batchnorms(model):
        _randomize(layer, rng)
    path = tmp_path / "nested.keras"
    model.save(path)
    taken = []
    real = keras3.read_plain_vars

    def spy(*args):
        found = real(*args)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(keras3, "read_plain_vars", spy)
    fast = read_batchnorm_layers(path)
    assert len(fast) == 2
    assert taken == [True, True]  # both layers by the low-level calls
    monkeypatch.setattr(keras3, "read_plain_vars", lambda *args: None)
    checked = read_batchnorm_layers(path)
    assert [layer.name for layer in fast] == [layer.name for layer in checked]
    for a, b in zip(fast, checked, strict=True):
        assert a.variables.keys() == b.variables.keys()
        for key in a.variables:
            np.testing.assert_array_equal(a.variables[key], b.variables[key])
            assert a.variables[key].dtype == b.variables[key].dtype


def test_the_fast_variable_read_takes_only_plain_vectors(tmp_path: Path) -> None:
    """Anything but a hard-linked 1-D float dataset in the file goes to the checked path."""
    import h5py

    from bncli.keras_compat.hdf5_reading import read_budget, read_plain_vector

    with h5py.File(tmp_path / "w.h5", "w") as f:
        group = f.create_group("vars")
        group["0"] = np.arange(4, dtype=np.float32)
        group["1"] = np.ones((2, 2), dtype=np.float32)
        group["2"] = np.arange(3, dtype=np.int64)
        group["3"] = h5py.SoftLink("/vars/0")
        group.create_dataset("4", (4,), "f4", external=[(str(tmp_path / "raw"), 0, 16)])
        group.create_group("5")
    (tmp_path / "raw").write_bytes(bytes(16))
    with h5py.File(tmp_path / "w.h5", "r") as f, read_budget():
        group = f["vars"].id
        got = read_plain_vector(group, "0", "vars/0", tmp_path)
        np.testing.assert_array_equal(got, np.arange(4, dtype=np.float32))
        assert got.dtype == np.float32
        for name in ("1", "2", "3", "4", "5", "missing"):
            assert read_plain_vector(group, name, f"vars/{name}", tmp_path) is None, (
                name
            )
