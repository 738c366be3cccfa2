"""``bncli recalibrate``: the BatchNormalization layers of a model re-estimated from data.

Keras is the oracle: the layers' inputs are taken from sub-models of the
model Keras built (in training mode for the batch statistics of ``precise``
and ``ema``, in inference mode for ``exact``), and their moments computed
here in float64; the result, loaded by Keras, must hold them (float32
tolerance, rtol 2e-4).
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "numpy")

import keras

pytestmark = pytest.mark.keras

TOL = {"rtol": 2e-4, "atol": 1e-5}
BATCH = 16


def _model(dropout: bool = False) -> keras.Model:
    keras.utils.set_random_seed(4)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(4, name="d1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1", momentum=0.8)(h)
    h = keras.layers.ReLU()(h)
    if dropout:
        h = keras.layers.Dropout(0.5)(h)
    h = keras.layers.Dense(3, name="d2")(h)
    outputs = keras.layers.BatchNormalization(name="bn2", momentum=0.9)(h)
    return keras.Model(inputs, outputs)


@pytest.fixture
def files(tmp_path):
    model = _model()
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    x = np.random.default_rng(0).normal(2.0, 3.0, (100, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    os.chdir(tmp_path)
    return {"model": model, "x": x, "path": tmp_path}


def _inputs_of(
    model: keras.Model, name: str, x: np.ndarray, training: bool
) -> np.ndarray:
    probe = keras.Model(model.inputs, model.get_layer(name).input)
    return keras.ops.convert_to_numpy(probe(x, training=training)).astype(np.float64)


def _batch_moments(model, name, x):
    means, variances = [], []
    for lo in range(0, len(x), BATCH):
        values = _inputs_of(model, name, x[lo : lo + BATCH], training=True)
        means.append(values.mean(axis=0))
        variances.append(values.var(axis=0))
    return np.array(means), np.array(variances)


def _stats(model, name):
    layer = model.get_layer(name)
    return (
        keras.ops.convert_to_numpy(layer.moving_mean).astype(np.float64),
        keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64),
    )


def test_precise_is_the_mean_of_the_batch_statistics(files, run_cli):
    result = run_cli(
        "recalibrate", "m.keras", "x.npy", "-o", "out.keras", "--batch-size", str(BATCH)
    )
    assert result.exit_code == 0, result.stderr
    out = keras.saving.load_model(files["path"] / "out.keras")
    for name in ("bn1", "bn2"):
        means, variances = _batch_moments(files["model"], name, files["x"])
        mean, variance = _stats(out, name)
        np.testing.assert_allclose(mean, means.mean(axis=0), **TOL)
        np.testing.assert_allclose(variance, variances.mean(axis=0), **TOL)


def test_ema_moves_each_layer_with_its_momentum(files, run_cli):
    result = run_cli(
        "recalibrate", "m.keras", "x.npy", "-o", "out.keras", "--stats", "ema",
        "--batch-size", str(BATCH),
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    out = keras.saving.load_model(files["path"] / "out.keras")
    for name, momentum in (("bn1", 0.8), ("bn2", 0.9)):
        mean, variance = _stats(files["model"], name)
        for batch_mean, batch_variance in zip(
            *_batch_moments(files["model"], name, files["x"]), strict=True
        ):
            mean = mean * momentum + batch_mean * (1 - momentum)
            variance = variance * momentum + batch_variance * (1 - momentum)
        got_mean, got_variance = _stats(out, name)
        np.testing.assert_allclose(got_mean, mean, **TOL)
        np.testing.assert_allclose(got_variance, variance, **TOL)


def test_exact_gives_every_layer_its_inputs_population_statistics(files, run_cli):
    result = run_cli(
        "recalibrate", "m.keras", "x.npy", "-o", "out.keras", "--stats", "exact"
    )
    assert result.exit_code == 0, result.stderr
    out = keras.saving.load_model(files["path"] / "out.keras")
    for name in ("bn1", "bn2"):  # on the re-estimated model, in inference mode
        values = _inputs_of(out, name, files["x"], training=False)
        mean, variance = _stats(out, name)
        np.testing.assert_allclose(mean, values.mean(axis=0), **TOL)
        np.testing.assert_allclose(variance, values.var(axis=0), **TOL)


def test_only_the_statistics_change(files, run_cli):
    assert (
        run_cli(
            "recalibrate", "m.keras", "x.npy", "-o", "out.keras", "--layers", "bn2"
        ).exit_code
        == 0
    )
    out = keras.saving.load_model(files["path"] / "out.keras")
    original = files["model"]
    for name in ("d1", "d2"):
        for a, b in zip(
            out.get_layer(name).get_weights(),
            original.get_layer(name).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(
        out.get_layer("bn1").get_weights(),
        original.get_layer("bn1").get_weights(),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)  # left out by --layers
    gamma_out, gamma_in = out.get_layer("bn2").gamma, original.get_layer("bn2").gamma
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(gamma_out), keras.ops.convert_to_numpy(gamma_in)
    )
    assert not np.allclose(_stats(out, "bn2")[0], _stats(original, "bn2")[0])
    with (
        zipfile.ZipFile(files["path"] / "m.keras") as a,
        zipfile.ZipFile(files["path"] / "out.keras") as b,
    ):
        for name in a.namelist():
            if name != "model.weights.h5":
                assert a.read(name) == b.read(name)


def test_dropout_stays_off(tmp_path, run_cli):
    _model(dropout=True).save(tmp_path / "d.keras")
    np.save(
        tmp_path / "x.npy",
        np.random.default_rng(1).normal(size=(64, 5)).astype(np.float32),
    )
    os.chdir(tmp_path)
    for out in ("a.keras", "b.keras"):
        assert run_cli("recalibrate", "d.keras", "x.npy", "-o", out).exit_code == 0
    first = keras.saving.load_model(tmp_path / "a.keras")
    second = keras.saving.load_model(tmp_path / "b.keras")
    np.testing.assert_array_equal(_stats(first, "bn2")[0], _stats(second, "bn2")[0])


def test_json_reports_each_layers_change(files, run_cli):
    import json

    result = run_cli("recalibrate", "m.keras", "x.npy", "-o", "out.keras", "--json")
    doc = json.loads(result.stdout)
    assert sorted(doc) == ["batches", "layers", "output", "samples", "seconds"]
    assert (doc["batches"], doc["samples"]) == (4, 100)
    assert sorted(doc["layers"]) == ["bn1", "bn2"]
    assert doc["layers"]["bn1"]["channels"] == 4
    mean, variance = _stats(files["model"], "bn1")
    new_mean, _ = _stats(keras.saving.load_model(files["path"] / "out.keras"), "bn1")
    shift = np.abs(new_mean - mean) / np.sqrt(variance + 1e-3)
    assert doc["layers"]["bn1"]["mean_shift"] == pytest.approx(shift.max(), rel=1e-4)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["m.weights.h5", "x.npy", "-o", "o.keras"], 2, "recalibrate needs a .keras model"),
        (["m.keras", "x.npy", "-o", "o.keras", "--layers", "nope"], 2, "--layers 'nope': no such BatchNormalization layer"),
        (["m.keras", "x.npy", "-o", "m.keras"], 2, "m.keras"),
        (["missing.keras", "x.npy", "-o", "o.keras"], 4, "no such model file"),
    ],
)  # fmt: skip
def test_refusals(files, run_cli, args, code, message):
    result = run_cli("recalibrate", *args)
    assert result.exit_code == code, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert not (files["path"] / "o.keras").exists()


def test_without_keras_it_names_the_install_command(files, run_cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "keras", None)
    result = run_cli("recalibrate", "m.keras", "x.npy", "-o", "o.keras")
    assert result.exit_code == 2
    assert "install it with: pip install 'bncli[keras]'" in result.stderr


def test_inputs_of_another_shape_are_refused(files, run_cli):
    np.save(files["path"] / "y.npy", np.ones((10, 6), np.float32))
    result = run_cli("recalibrate", "m.keras", "y.npy", "-o", "o.keras")
    assert result.exit_code == 2
    assert "the inputs' samples have shape (6,), the model takes (5,)" in result.stderr


def test_layers_of_nested_models_are_found(tmp_path, run_cli):
    keras.utils.set_random_seed(5)
    inner = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(3),
            keras.layers.BatchNormalization(name="inner_bn"),
        ],
        name="inner",
    )
    inputs = keras.Input((5,))
    outputs = keras.layers.BatchNormalization(name="outer_bn")(inner(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "n.keras")
    x = np.random.default_rng(2).normal(1.0, 2.0, (40, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    os.chdir(tmp_path)
    result = run_cli(
        "recalibrate", "n.keras", "x.npy", "-o", "o.keras", "--stats", "exact", "--json"
    )
    assert result.exit_code == 0, result.stderr
    import json

    assert sorted(json.loads(result.stdout)["layers"]) == ["inner_bn", "outer_bn"]
    out = keras.saving.load_model(tmp_path / "o.keras")
    nested = out.get_layer("inner")
    dense_out = keras.ops.convert_to_numpy(nested.layers[0](x)).astype(np.float64)
    mean, variance = _stats(nested, "inner_bn")
    np.testing.assert_allclose(mean, dense_out.mean(axis=0), **TOL)
    np.testing.assert_allclose(variance, dense_out.var(axis=0), **TOL)


@pytest.mark.slow
def test_through_a_real_process(files):
    import subprocess
    import sys

    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bncli",
            "recalibrate",
            "m.keras",
            "x.npy",
            "-o",
            "p.keras",
            "-q",
        ],
        cwd=files["path"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "bncli",
            "recalibrate",
            "m.weights.h5",
            "x.npy",
            "-o",
            "q.keras",
        ],
        cwd=files["path"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "error: m.weights.h5: recalibrate needs a .keras model"
    )


def test_a_semicolon_csv_and_an_npz_feed_it_as_the_npy_does(files, run_cli):
    x = files["x"]
    header = ";".join(f"f{j}" for j in range(x.shape[1]))
    rows = "\n".join(";".join(repr(float(v)) for v in row) for row in x)
    (files["path"] / "x.csv").write_text(header + "\n" + rows + "\n")
    np.savez(files["path"] / "x.npz", x=x, other=x[:10])
    for args in (
        ["x.npy"],
        ["x.csv", "--delimiter", ";"],
        ["x.npz", "--array", "x"],
    ):
        out = f"out-{args[0]}.keras"
        result = run_cli("recalibrate", "m.keras", *args, "-o", out)
        assert result.exit_code == 0, result.stderr
    reference = keras.saving.load_model(files["path"] / "out-x.npy.keras")
    for name in ("out-x.csv.keras", "out-x.npz.keras"):
        other = keras.saving.load_model(files["path"] / name)
        for layer in ("bn1", "bn2"):
            for got, want in zip(
                _stats(other, layer), _stats(reference, layer), strict=True
            ):
                np.testing.assert_allclose(got, want, **TOL)
