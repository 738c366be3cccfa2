"""The library's workflows are the commands: ``fit_state`` is ``bncli fit``."""

from __future__ import annotations

import numpy as np
import pytest

import bncli
from bncli.engines.base import FitOptions, TransformOptions
from bncli.errors import StateMismatchError, UsageError
from bncli.workflows import (
    export_state,
    fit_state,
    import_state,
    keras_layer,
    transform_state,
)
from tests.conftest import PRECISE


def test_fit_state_creates_then_continues_a_state_file(tmp_path):
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(40, 3))
    np.save(tmp_path / "x.npy", x)
    state = tmp_path / "s.h5"
    options = FitOptions(batch_size=40)
    first = fit_state(
        state, [tmp_path / "x.npy"], options, layer_options={"momentum": 0.5}
    )
    assert (first.summary.batches, first.batches_seen, first.samples_seen) == (1, 1, 40)
    second = fit_state(state, [tmp_path / "x.npy"], options)
    assert second.batches_seen == 2
    # two updates of momentum 0.5 toward the batch's statistics, from 0 and 1
    mean, var = x.mean(axis=0), x.var(axis=0)
    layer = bncli.load(state)
    np.testing.assert_allclose(layer.moving_mean64, 0.75 * mean, **PRECISE)
    np.testing.assert_allclose(layer.moving_variance64, 0.25 + 0.75 * var, **PRECISE)


def test_fit_state_refuses_options_that_contradict_the_state(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((8, 2)))
    state = tmp_path / "s.h5"
    fit_state(
        state, [tmp_path / "x.npy"], FitOptions(), layer_options={"momentum": 0.9}
    )
    before = state.read_bytes()
    with pytest.raises(StateMismatchError, match=r"--momentum 0\.5 contradicts"):
        fit_state(
            state, [tmp_path / "x.npy"], FitOptions(), layer_options={"momentum": 0.5}
        )
    assert state.read_bytes() == before


def test_an_unknown_engine_is_a_usage_error(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    layer = bncli.BatchNormalization()
    with pytest.raises(
        UsageError, match="unknown engine 'spark'; choose one of local, dask"
    ):
        layer.fit(tmp_path / "x.npy", engine="spark")
    assert not layer.built


def test_a_scheduler_needs_the_dask_engine(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    with pytest.raises(UsageError, match="options of the dask engine"):
        bncli.BatchNormalization().fit(tmp_path / "x.npy", scheduler="tcp://x:1")


# ------------------------------------------------- transform, import, export


def test_transform_state_normalizes_with_the_state_file(tmp_path):
    x = np.random.default_rng(3).normal(5.0, 2.0, (40, 3))
    np.save(tmp_path / "x.npy", x)
    fit_state(tmp_path / "s.h5", [tmp_path / "x.npy"], FitOptions(batch_size=8))
    layer = bncli.load(tmp_path / "s.h5")
    summary = transform_state(
        tmp_path / "s.h5", [tmp_path / "x.npy"], tmp_path / "y.npy"
    )
    expected = (x - layer.moving_mean64) / np.sqrt(layer.moving_variance64 + 1e-3)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6)
    assert summary.samples == 40


def test_transform_state_never_writes_over_its_state(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    fit_state(tmp_path / "s.npy", [tmp_path / "x.npy"], FitOptions())
    before = (tmp_path / "s.npy").read_bytes()
    with pytest.raises(UsageError):
        transform_state(
            tmp_path / "s.npy",
            [tmp_path / "x.npy"],
            tmp_path / "s.npy",
            TransformOptions(overwrite=True),
        )
    assert (tmp_path / "s.npy").read_bytes() == before


def test_export_then_import_gives_the_state_back(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(4).normal(size=(30, 2)))
    fit_state(
        tmp_path / "s.h5",
        [tmp_path / "x.npy"],
        FitOptions(batch_size=4),
        layer_options={"momentum": 0.7, "synchronized": True},
    )
    result = export_state(tmp_path / "s.h5", tmp_path / "m.keras")
    assert result.path == (tmp_path / "m.keras").resolve()
    assert result.notes and "synchronized=True is exported as false" in result.notes[0]
    layer = keras_layer(tmp_path / "m.keras")
    fitted = bncli.load(tmp_path / "s.h5")
    np.testing.assert_allclose(layer.moving_mean, fitted.moving_mean)
    np.testing.assert_allclose(layer.moving_variance, fitted.moving_variance)
    assert layer.momentum == 0.7
    path = import_state(tmp_path / "m.keras", tmp_path / "back.h5")
    np.testing.assert_allclose(bncli.load(path).moving_mean, fitted.moving_mean)


def test_keras_layer_refuses_layer_options_where_the_file_has_the_config(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    fit_state(tmp_path / "s.h5", [tmp_path / "x.npy"], FitOptions())
    export_state(tmp_path / "s.h5", tmp_path / "m.keras")
    with pytest.raises(
        StateMismatchError,
        match=r"--momentum 0\.5 contradicts the file's momentum 0\.99",
    ):
        keras_layer(tmp_path / "m.keras", momentum=0.5)
    same = keras_layer(tmp_path / "m.keras", momentum=0.99)  # agreeing is fine
    assert same.momentum == 0.99


def test_an_import_contradicting_the_files_config_is_exit_4(tmp_path, run_cli):
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    assert run_cli("fit", "s.h5", "x.npy").exit_code == 0
    assert run_cli("export", "s.h5", "m.keras").exit_code == 0
    result = run_cli(
        "import", "m.keras", "-o", "i.h5", "--axis", "1", "--epsilon", "0.5"
    )
    assert result.exit_code == 4
    assert result.stderr.startswith("error: m.keras: --")
    assert "contradicts the file's" in result.stderr
    assert not (tmp_path / "i.h5").exists()


def test_a_weights_only_import_keeps_the_stored_dtype(tmp_path):
    import h5py

    with h5py.File(tmp_path / "w.h5", "w") as f:  # a Keras 2 weights-only file
        f.attrs["layer_names"] = [b"bn"]
        group = f.create_group("bn")
        names = [
            b"bn/gamma:0",
            b"bn/beta:0",
            b"bn/moving_mean:0",
            b"bn/moving_variance:0",
        ]
        group.attrs["weight_names"] = names
        for name in names:
            group.create_dataset(name.decode(), data=np.ones(3, dtype=np.float64))
    layer = keras_layer(tmp_path / "w.h5")
    assert layer.dtype_policy.name == "float64"
    assert layer.to_state().variables["moving_mean"].dtype == np.float64


def test_an_axis_spelled_otherwise_is_no_contradiction(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(2).normal(size=(8, 3, 2)))
    fit_state(tmp_path / "s.h5", [tmp_path / "x.npy"], FitOptions())  # axis -1
    export_state(tmp_path / "s.h5", tmp_path / "m.keras")
    assert keras_layer(tmp_path / "m.keras", axis=2).channels == 2  # -1 of rank 3
    with pytest.raises(
        StateMismatchError, match="--axis 1 contradicts the file's axis -1"
    ):
        keras_layer(tmp_path / "m.keras", axis=1)
