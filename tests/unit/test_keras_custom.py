"""Keras files with custom classes: subclasses of BatchNormalization, and
BatchNormalization layers held as attributes of custom layers.

``inspect`` must list every one (never a silent miss with exit 0); the ones
whose config is not in the file are unsupported, saying why. The classes are
defined here and registered with Keras to save the model; bncli reads the
file without them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "numpy")

import keras

pytestmark = pytest.mark.keras

MODULE = """
import keras

@keras.saving.register_keras_serializable(package="bncli_test")
class SubclassedNorm(keras.layers.BatchNormalization):
    pass

@keras.saving.register_keras_serializable(package="bncli_test")
class Block(keras.layers.Layer):
    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units)
        self.norm = keras.layers.BatchNormalization(momentum=0.9)

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.norm.build((*input_shape[:-1], self.units))

    def call(self, x, training=None):
        return self.norm(self.dense(x), training=training)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
"""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("custom")
    (folder / "bncli_custom_classes.py").write_text(MODULE)
    sys.path.insert(0, str(folder))
    try:
        import bncli_custom_classes as classes
    finally:
        sys.path.remove(str(folder))
    inputs = keras.Input((5,))
    hidden = classes.Block(4, name="block")(inputs)
    outputs = classes.SubclassedNorm(name="sub_bn")(hidden)
    model = keras.Model(inputs, outputs)
    model(np.ones((2, 5), np.float32), training=True)
    model.save(folder / "c.keras")
    np.save(
        folder / "x.npy",
        np.random.default_rng(0).normal(size=(32, 5)).astype(np.float32),
    )
    return folder


def test_inspect_lists_subclasses_and_layers_inside_custom_layers(model_file, run_cli):
    os.chdir(model_file)
    result = run_cli("inspect", "c.keras", "--json")
    assert result.exit_code == 0
    layers = {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert sorted(layers) == ["block/norm", "sub_bn"]
    assert layers["sub_bn"]["supported"] and layers["sub_bn"]["channels"] == 4
    inner = layers["block/norm"]
    assert not inner["supported"] and inner["channels"] == 4
    assert (
        inner["problem"]
        == "inside custom layer 'block' (found by its weights; no config)"
    )


def test_a_subclass_imports_like_a_batchnormalization(model_file, run_cli):
    os.chdir(model_file)
    assert (
        run_cli(
            "import", "c.keras", "--layer", "sub_bn", "-o", "s.h5", "--overwrite"
        ).exit_code
        == 0
    )
    refused = run_cli("import", "c.keras", "--layer", "block/norm", "-o", "t.h5")
    assert refused.exit_code == 4
    assert "inside custom layer 'block'" in refused.stderr


@pytest.mark.slow
def test_recalibrate_needs_the_custom_classes(model_file):
    env = {**os.environ, "KERAS_BACKEND": "numpy", "PYTHONPATH": str(model_file)}
    base = [sys.executable, "-m", "bncli", "recalibrate", "c.keras", "x.npy", "-o"]

    def run(*args):
        return subprocess.run(
            [*base, *args],
            cwd=model_file,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    missing = run("o1.keras")
    assert missing.returncode == 2
    assert "--custom-objects MODULE" in missing.stderr
    every = run("o2.keras", "--custom-objects", "bncli_custom_classes", "--json")
    assert every.returncode == 0, every.stderr
    assert sorted(json.loads(every.stdout)["layers"]) == ["block/norm", "sub_bn"]
    one = run(
        "o3.keras", "--custom-objects", "bncli_custom_classes", "--layers", "sub_bn",
        "--json",
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert sorted(json.loads(one.stdout)["layers"]) == ["sub_bn"]


def test_recalibrate_reaches_a_layer_inside_a_custom_layer(model_file, run_cli):
    """The held layer gets its inputs' population statistics (exact), as Keras sees them."""
    sys.path.insert(0, str(model_file))
    try:
        import bncli_custom_classes  # noqa: F401 - registers the classes
    finally:
        sys.path.remove(str(model_file))
    os.chdir(model_file)
    done = run_cli(
        "recalibrate", "c.keras", "x.npy", "-o", "r.keras", "--stats", "exact"
    )
    assert done.exit_code == 0, done.stderr
    out = keras.saving.load_model(model_file / "r.keras")
    block = out.get_layer("block")
    x = np.load(model_file / "x.npy")
    inputs = keras.ops.convert_to_numpy(block.dense(x)).astype(np.float64)
    mean = keras.ops.convert_to_numpy(block.norm.moving_mean).astype(np.float64)
    np.testing.assert_allclose(mean, inputs.mean(axis=0), rtol=2e-4, atol=1e-5)
