"""``export --into``: a state written into one layer of a real Keras model file.

The models are built and read back with Keras itself (the oracle): the
layer's variables hold the state's values in the layer's dtype, every other
weight, ``.keras`` member and HDF5 object is unchanged, and Keras loads the
result and predicts with it.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "numpy")

import keras

import bncli

pytestmark = pytest.mark.keras

FORMATS = (".keras", ".weights.h5", ".h5")


def _model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, name="dense")(inputs)
    normed = keras.layers.BatchNormalization(name="bn", momentum=0.9)(hidden)
    outputs = keras.layers.Dense(2, name="head")(normed)
    model = keras.Model(inputs, outputs)
    model(np.ones((2, 5), np.float32), training=True)  # moves the statistics
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("models")
    model = _model()
    model.save(folder / "m.keras")
    model.save_weights(folder / "m.weights.h5")
    model.save(folder / "m.h5")
    x = np.random.default_rng(0).normal(3.0, 2.0, (64, 4))
    np.save(folder / "x.npy", x)
    layer = bncli.BatchNormalization(momentum=0.9)
    layer.fit(folder / "x.npy", batch_size=16)
    layer.gamma = [0.5, 1.5, 2.0, -1.0]
    layer.beta = [0.1, 0.2, 0.3, 0.4]
    layer.save(folder / "s.h5")
    return {"folder": folder, "model": model, "state": layer}


def _hdf5_objects(f: h5py.File) -> dict[str, Any]:
    objects: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        attrs = {k: np.asarray(v).tolist() for k, v in obj.attrs.items()}
        data = np.asarray(obj[()]).tolist() if isinstance(obj, h5py.Dataset) else None
        objects[name] = (attrs, data)

    f.visititems(visit)
    return objects


def _load(path: Path, fmt: str) -> keras.Model:
    if fmt == ".weights.h5":
        model = _model()
        model.load_weights(path)
        return model
    return keras.saving.load_model(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_layer_holds_the_state_and_nothing_else_changes(files, run_cli, fmt):
    folder, state = files["folder"], files["state"]
    os.chdir(folder)
    out = f"out-{fmt.strip('.')}{fmt}"
    result = run_cli("export", "s.h5", out, "--into", f"m{fmt}", "--layer", "bn")
    assert result.exit_code == 0, result.stderr
    loaded, original = _load(folder / out, fmt), _load(folder / f"m{fmt}", fmt)
    bn = loaded.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean, state.moving_mean64, rtol=2e-7)
    np.testing.assert_allclose(bn.moving_variance, state.moving_variance64, rtol=2e-7)
    np.testing.assert_allclose(bn.gamma, state.gamma, rtol=2e-7)
    np.testing.assert_allclose(bn.beta, state.beta, rtol=2e-7)
    assert np.asarray(bn.moving_mean).dtype == np.float32  # the layer's own dtype
    for name in ("dense", "head"):
        for mine, theirs in zip(
            loaded.get_layer(name).get_weights(),
            original.get_layer(name).get_weights(),
            strict=True,
        ):
            np.testing.assert_array_equal(mine, theirs)
    x = np.random.default_rng(1).normal(size=(3, 5)).astype(np.float32)
    hidden = original.get_layer("dense")(x)
    expected = state(np.asarray(hidden, np.float64))
    expected = original.get_layer("head")(expected.astype(np.float32))
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), expected, rtol=1e-5, atol=1e-5
    )


def test_other_members_and_objects_are_the_same(files, run_cli):
    folder = files["folder"]
    os.chdir(folder)
    assert (
        run_cli(
            "export", "s.h5", "o.keras", "--into", "m.keras", "--layer", "bn"
        ).exit_code
        == 0
    )
    with (
        zipfile.ZipFile(folder / "m.keras") as a,
        zipfile.ZipFile(folder / "o.keras") as b,
    ):
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            if name != "model.weights.h5":
                assert a.read(name) == b.read(name), name
    assert (
        run_cli("export", "s.h5", "o.h5", "--into", "m.h5", "--layer", "bn").exit_code
        == 0
    )
    with h5py.File(folder / "m.h5") as a, h5py.File(folder / "o.h5") as b:
        mine, theirs = _hdf5_objects(b), _hdf5_objects(a)
    changed = sorted(k for k in mine if mine[k] != theirs[k])
    assert mine.keys() == theirs.keys()
    assert len(changed) == 4 and all("/bn/" in k for k in changed), changed


def test_in_place_with_overwrite(files, run_cli, tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes((files["folder"] / "m.keras").read_bytes())
    os.chdir(files["folder"])
    refused = run_cli("export", "s.h5", str(model), "--into", str(model))
    assert refused.exit_code == 2  # exists: not without --overwrite
    done = run_cli("export", "s.h5", str(model), "--into", str(model), "--overwrite")
    assert done.exit_code == 0, done.stderr
    bn = keras.saving.load_model(model).get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean, files["state"].moving_mean64, rtol=2e-7)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"momentum": 0.9, "epsilon": 0.01}, "epsilon: the state's is 0.01, layer 'bn' has 0.001"),
        ({"momentum": 0.9, "center": False}, "center: the state's is False, layer 'bn' has True"),
    ],
)  # fmt: skip
def test_a_state_that_does_not_fit_is_exit_4(files, run_cli, tmp_path, layer, message):
    folder = files["folder"]
    other = bncli.BatchNormalization(**layer)
    other.fit(folder / "x.npy")
    other.save(tmp_path / "o.h5")
    os.chdir(tmp_path)
    result = run_cli("export", "o.h5", "out.keras", "--into", str(folder / "m.keras"))
    assert result.exit_code == 4
    assert result.stderr == f"error: o.h5: {message}\n"
    assert not (tmp_path / "out.keras").exists()


def test_channels_that_do_not_fit_are_exit_4(files, run_cli, tmp_path):
    np.save(tmp_path / "y.npy", np.ones((8, 3)))
    os.chdir(tmp_path)
    assert run_cli("fit", "three.h5", "y.npy").exit_code == 0
    result = run_cli(
        "export", "three.h5", "out.keras", "--into", str(files["folder"] / "m.keras")
    )
    assert result.exit_code == 4
    assert "channels: the state has 3, layer 'bn' has 4" in result.stderr


def test_another_momentum_is_a_warning(files, run_cli, tmp_path):
    other = bncli.BatchNormalization(momentum=0.5)
    other.fit(files["folder"] / "x.npy")
    other.save(tmp_path / "o.h5")
    os.chdir(tmp_path)
    result = run_cli(
        "export", "o.h5", "out.keras", "--into", str(files["folder"] / "m.keras")
    )
    assert result.exit_code == 0
    assert result.stderr == (
        "warning: the state's momentum 0.5 differs from the 0.9 of layer 'bn'; "
        "the layer keeps its own\n"
    )


@pytest.mark.parametrize("fmt", [".keras", ".h5"])
def test_plain_export_never_replaces_a_model(files, run_cli, tmp_path, fmt):
    model = tmp_path / f"m{fmt}"
    model.write_bytes((files["folder"] / f"m{fmt}").read_bytes())
    before = model.read_bytes()
    os.chdir(files["folder"])
    name = str(model) if fmt == ".keras" else str(model.with_suffix(".weights.h5"))
    if fmt == ".h5":
        (tmp_path / "m.weights.h5").write_bytes(
            (files["folder"] / "m.weights.h5").read_bytes()
        )
        before = (tmp_path / "m.weights.h5").read_bytes()
        model = tmp_path / "m.weights.h5"
    result = run_cli("export", "s.h5", name, "--overwrite")
    assert result.exit_code == 2
    assert "export would replace it with a one-layer model" in result.stderr
    assert "--into MODEL --layer NAME" in result.stderr
    assert model.read_bytes() == before


def test_plain_export_still_replaces_its_own_one_layer_model(files, run_cli, tmp_path):
    os.chdir(files["folder"])
    out = tmp_path / "n.keras"
    assert run_cli("export", "s.h5", str(out)).exit_code == 0
    assert run_cli("export", "s.h5", str(out), "--overwrite").exit_code == 0


def test_the_library_call(files, tmp_path):
    from bncli.workflows import export_state

    done = export_state(
        files["folder"] / "s.h5",
        tmp_path / "out.keras",
        into=files["folder"] / "m.keras",
        layer_name="bn",
    )
    assert done.notes == []
    bn = keras.saving.load_model(done.path).get_layer("bn")
    np.testing.assert_allclose(bn.beta, files["state"].beta, rtol=2e-7)
