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


# --------------------------------------------------------------------------
# A file with an unsupported layer: listed, and the other layers importable


@pytest.fixture(scope="module")
def with_renorm(tmp_path_factory):
    """bn_good then a renormalizing bn_bad, and the same bn_good alone."""
    folder = tmp_path_factory.mktemp("renorm")
    rng = np.random.default_rng(6)
    dense = keras.layers.Dense(3, name="dense")
    good = keras.layers.BatchNormalization(name="bn_good", momentum=0.9, epsilon=1e-4)
    bad = keras.layers.BatchNormalization(
        name="bn_bad", renorm=True, momentum=0.8, epsilon=1e-2
    )
    inp = keras.Input((4,), name="features")
    both = keras.Model(inp, bad(good(dense(inp))), name="both")
    for layer in (good, bad):
        weights = [rng.normal(size=w.shape) for w in layer.get_weights()]
        weights[3] = np.abs(weights[3]) + 0.5  # moving_variance
        layer.set_weights(weights)
    inp = keras.Input((4,), name="features")
    alone = keras.Model(inp, good(dense(inp)), name="alone")
    for name, model in (("both", both), ("alone", alone)):
        model.save(folder / f"{name}.keras")
        model.save(folder / f"{name}.h5")
        model.save_weights(folder / f"{name}.weights.h5")
    return folder


def _states_equal(a, b):
    assert a.get_config() == b.get_config()
    assert a.sample_shape == b.sample_shape
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), name)


@pytest.mark.parametrize("fmt", [".keras", ".h5", ".weights.h5"])
def test_import_the_supported_layer_beside_an_unsupported_one(
    run_cli, tmp_path, with_renorm, fmt
):
    for name in ("both", "alone"):
        r = run_cli(
            "import",
            with_renorm / f"{name}{fmt}",
            "--layer",
            "bn_good",
            "-o",
            f"{name}.h5",
        )
        assert r.exit_code == 0, r.stderr
    _states_equal(bncli.load(tmp_path / "both.h5"), bncli.load(tmp_path / "alone.h5"))
    assert bncli.load(tmp_path / "both.h5").moving_mean.shape == (3,)


@pytest.mark.parametrize("fmt", [".keras", ".h5", ".weights.h5"])
def test_import_of_the_unsupported_layer_is_refused(
    run_cli, tmp_path, with_renorm, fmt
):
    model = with_renorm / f"both{fmt}"
    r = run_cli("import", model, "--layer", "bn_bad", "-o", "s.h5")
    assert r.exit_code == 4
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {model}: layer 'bn_bad' ")
    assert "renorm" in lines[0] and "not support" in lines[0]
    assert not (tmp_path / "s.h5").exists()
    # Without --layer the layers are listed, the unsupported one marked: no guess.
    r = run_cli("import", model, "-o", "s.h5")
    assert r.exit_code == 2 and "bn_good, bn_bad [unsupported]" in r.stderr
    assert not (tmp_path / "s.h5").exists()


def test_inspect_lists_the_unsupported_layer(run_cli, with_renorm):
    r = run_cli("inspect", with_renorm / "both.keras", "--json")
    assert r.exit_code == 0, r.stderr
    good, bad = json.loads(r.stdout)["layers"]
    pinned = {"name", "path", "channels", "momentum", "epsilon", "config", "variables"}
    assert pinned | {"health", "supported", "problem"} == set(good) == set(bad)
    assert (good["name"], good["supported"], good["problem"]) == ("bn_good", True, None)
    assert good["health"].startswith("ok: ") and good["momentum"] == 0.9
    assert bad == {
        **bad,
        "name": "bn_bad",
        "path": "layers/batch_normalization_1",
        "channels": 3,
        "momentum": 0.8,
        "epsilon": 0.01,
        "config": None,
        "supported": False,
        "problem": "batch renormalization (renorm=True)",
        "health": "unsupported: batch renormalization (renorm=True)",
    }
    assert list(bad["variables"])[4:] == [
        "moving_stddev",
        "renorm_mean",
        "renorm_stddev",
    ]

    r = run_cli("inspect", with_renorm / "both.h5")
    assert r.exit_code == 0, r.stderr
    assert "2 BatchNormalization layer(s), 1 unsupported" in r.stdout
    (row,) = [line for line in r.stdout.splitlines() if "bn_bad" in line]
    assert "unsupported: batch renormalization (renorm=True)" in row
    assert "0.8" in row and "0.01" in row
    (row,) = [line for line in r.stdout.splitlines() if "bn_good" in line]
    assert "ok: moving std" in row


def test_weights_only_file_with_an_ambiguous_layer(run_cli, tmp_path, models):
    folder, model = models
    weights = folder / "m.weights.h5"  # bn_second has 3 variables (center=False)
    r = run_cli("inspect", weights, "--json")
    assert r.exit_code == 0, r.stderr
    first, second = json.loads(r.stdout)["layers"]
    assert first["supported"] is True and first["channels"] == 5
    assert second["supported"] is False and second["channels"] == 3
    assert second["problem"] == "3 variables and no config: gamma or beta is ambiguous"
    assert second["momentum"] is None and second["epsilon"] is None
    r = run_cli("inspect", weights)
    assert r.exit_code == 0 and "unsupported: 3 variables and no config" in r.stdout

    # bn_first needs no hint; bn_second still does.
    r = run_cli("import", weights, "--layer", "bn_first", "-o", "first.h5")
    assert r.exit_code == 0, r.stderr
    gamma, beta, mean, var = model.get_layer("bn_first").get_weights()
    state = bncli.load(tmp_path / "first.h5")
    for got, expected in zip(
        (state.gamma, state.beta, state.moving_mean, state.moving_variance),
        (gamma, beta, mean, var),
        strict=True,
    ):
        np.testing.assert_array_equal(got, expected)
    r = run_cli("import", weights, "--layer", "bn_second", "-o", "second.h5")
    assert r.exit_code == 4 and "'bn_second' has 3 variables" in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "second.h5").exists()


def test_damaged_layer_still_refuses_the_file(run_cli, tmp_path, with_renorm):
    import zipfile

    with zipfile.ZipFile(with_renorm / "both.keras") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(members["config.json"])
    for layer in config["config"]["layers"]:
        if layer["name"] == "bn_bad":
            layer["config"]["epsilon"] = "tiny"  # Keras itself would refuse it
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "damaged.keras", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    for args in (
        ("inspect", "damaged.keras"),
        ("import", "damaged.keras", "--layer", "bn_good", "-o", "s.h5"),
    ):
        r = run_cli(*args)
        assert r.exit_code == 4 and "epsilon 'tiny' is not a number" in r.stderr
    assert not (tmp_path / "s.h5").exists()
