"""``bncli export`` and ``bncli import`` against real Keras models, end to end."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import bncli


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(5)
    inp = keras.Input((4,), name="features")
    x = keras.layers.Dense(5)(inp)
    x = keras.layers.BatchNormalization(
        name="bn_first", momentum=0.95, epsilon=1e-4, gamma_constraint="non_neg"
    )(x)
    x = keras.layers.Dense(3)(x)
    x = keras.layers.BatchNormalization(name="bn_second", center=False)(x)
    model = keras.Model(inp, x, name="two_bn")
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            weights = [
                rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()
            ]
            weights[-1] = np.abs(weights[-1]) + 0.5  # a variance
            layer.set_weights(weights)
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    model.save(folder / "m.h5")
    conv = keras.Sequential(
        [
            keras.Input((None, None, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.BatchNormalization(name="cbn"),
        ]
    )
    conv.save(folder / "conv.keras")
    return folder, model


def test_import_each_format_equals_the_keras_layer(run_cli, tmp_path, models):
    folder, model = models
    layer = model.get_layer("bn_first")
    for name in ("m.keras", "m.h5"):
        r = run_cli("import", folder / name, "--layer", "bn_first", "-o", f"{name}.h5")
        assert r.exit_code == 0, r.stderr
        state = bncli.load(tmp_path / f"{name}.h5")
        assert state.get_config() == json.loads(json.dumps(layer.get_config()))
        gamma, beta, mean, var = layer.get_weights()
        np.testing.assert_array_equal(
            state.gamma, np.maximum(gamma, 0)
        )  # non_neg applied
        np.testing.assert_array_equal(state.beta, beta)
        np.testing.assert_array_equal(state.moving_mean, mean)
        np.testing.assert_array_equal(state.moving_variance, var)
        assert state.sample_shape == (5,)


def test_import_needs_a_layer_name_when_several(run_cli, models):
    folder, _ = models
    r = run_cli("import", folder / "m.keras", "-o", "s.h5")
    assert r.exit_code == 2 and "bn_first, bn_second" in r.stderr


def test_weights_only_file_takes_layer_options(run_cli, tmp_path, models):
    folder, model = models
    r = run_cli(
        "import",
        folder / "m.weights.h5",
        "--layer",
        "bn_second",
        "--no-center",
        "--momentum",
        "0.9",
        "-o",
        "w.h5",
    )
    assert r.exit_code == 0, r.stderr
    state = bncli.load(tmp_path / "w.h5")
    assert state.momentum == 0.9 and state.beta is None
    np.testing.assert_array_equal(
        state.moving_variance, model.get_layer("bn_second").get_weights()[-1]
    )


def test_export_loads_in_keras_and_predicts_like_transform(run_cli, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(3, 2, size=(64, 6, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert (
        run_cli(
            "fit",
            "s.h5",
            "x.npy",
            "--axis",
            "1",
            "--momentum",
            "0.5",
            "--gamma-initializer",
            "constant:1.5",
        ).exit_code
        == 0
    )
    assert run_cli("transform", "s.h5", "x.npy", "-o", "y.npy").exit_code == 0
    assert run_cli("export", "s.h5", "s.keras").exit_code == 0
    assert run_cli("export", "s.h5", "s.weights.h5").exit_code == 0
    model = keras.saving.load_model(tmp_path / "s.keras")
    np.testing.assert_allclose(
        model.predict(x, verbose=0), np.load(tmp_path / "y.npy"), rtol=1e-5, atol=1e-5
    )
    state = bncli.load(tmp_path / "s.h5")
    fresh = keras.Sequential(
        [
            keras.Input((6, 5)),
            keras.layers.BatchNormalization(
                **{
                    k: v
                    for k, v in state.get_config().items()
                    if not k.startswith("renorm")
                }
            ),
        ]
    )
    fresh.load_weights(tmp_path / "s.weights.h5")
    np.testing.assert_array_equal(fresh.layers[-1].get_weights()[2], state.moving_mean)
    r = run_cli("export", "s.h5", "s.keras")
    assert r.exit_code == 2 and "output exists" in r.stderr


def test_unknown_spatial_dims_round_trip(run_cli, tmp_path, models):
    folder, _ = models
    assert run_cli("import", folder / "conv.keras", "-o", "c.h5").exit_code == 0
    assert bncli.load(tmp_path / "c.h5").sample_shape == (-1, -1, 4)
    x = np.random.default_rng(2).normal(size=(3, 5, 5, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert run_cli("transform", "c.h5", "x.npy", "-o", "y.npy").exit_code == 0
    assert run_cli("export", "c.h5", "c.keras").exit_code == 0
    model = keras.saving.load_model(tmp_path / "c.keras")
    assert model.input_shape == (None, None, None, 4)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), np.load(tmp_path / "y.npy"), rtol=1e-5, atol=1e-5
    )


def test_synchronized_exports_false_with_a_warning(run_cli, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2), np.float32))
    run_cli("fit", "s.h5", "x.npy", "--synchronized")
    r = run_cli("export", "s.h5", "s.keras")
    assert (
        r.exit_code == 0
        and "warning: synchronized=True is exported as false" in r.stderr
    )
    assert (
        keras.saving.load_model(tmp_path / "s.keras").layers[-1].synchronized is False
    )


def test_inspect_model_lists_layers(run_cli, models):
    folder, _ = models
    r = run_cli("inspect", folder / "m.keras", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [layer["name"] for layer in doc["layers"]] == ["bn_first", "bn_second"]
    assert doc["layers"][0]["channels"] == 5 and doc["layers"][0]["momentum"] == 0.95
    r = run_cli("inspect", folder / "m.h5")
    assert r.exit_code == 0 and "bn_second" in r.stdout


def test_neither_state_nor_model(run_cli, tmp_path):
    import h5py

    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.ones(2)
    r = run_cli("inspect", "plain.h5")
    assert r.exit_code == 4 and "neither a bncli state nor a Keras model" in r.stderr
