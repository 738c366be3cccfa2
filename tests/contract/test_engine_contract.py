"""The engine contract: what every engine must do, written once, run per engine.

Each engine's class says only how to fit and transform with it; the tests
are :class:`EngineContract`'s. Expected values come from the plain per-batch
loop of ``tests/reference.py`` (NumPy float64, no bncli), never from an
engine: fits on arrays and tables, with masks, unsynchronized replicas,
epochs and a dropped remainder; inference and training outputs; and the
errors every engine raises alike (a frozen layer, an empty input, channels
unlike the state's, stdin read twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bncli
from bncli.engines import dask_engine, local
from bncli.engines.base import FitOptions, FitSummary, TransformOptions
from bncli.errors import DataError, StateFrozenError, StateMismatchError, UsageError
from tests import reference
from tests.conftest import FAST

N = 211  # samples: not a multiple of any batch size used


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two NPY files of samples (4, 3), a mask, and a Parquet file in row groups."""
    folder = tmp_path_factory.mktemp("engine-contract")
    rng = np.random.default_rng(11)
    x = rng.normal(2.0, 3.0, (N, 4, 3))
    mask = rng.random((N, 4)) > 0.25
    mask[30:40] = False  # samples with nothing unmasked
    np.save(folder / "a.npy", x[:120])
    np.save(folder / "b.npy", x[120:].astype(np.float32))
    np.save(folder / "mask.npy", mask)
    table_x = rng.normal(-1.0, 0.5, (N, 2))
    table = pa.table(
        {"id": np.arange(N), "u": table_x[:, 0], "v": table_x[:, 1]},
    )
    pq.write_table(table, folder / "t.parquet", row_group_size=37)
    stored = np.concatenate([x[:120], x[120:].astype(np.float32).astype(np.float64)])
    return {
        "folder": folder,
        "arrays": [folder / "a.npy", folder / "b.npy"],
        "x": stored,
        "mask": mask,
        "mask_path": folder / "mask.npy",
        "table": folder / "t.parquet",
        "table_x": table_x,
    }


def _assert_matches(layer: bncli.BatchNormalization, expected: reference.Stats) -> None:
    np.testing.assert_allclose(layer.moving_mean64, expected.moving_mean, **FAST)
    np.testing.assert_allclose(
        layer.moving_variance64, expected.moving_variance, **FAST
    )
    assert layer.batches_seen == expected.batches_seen
    assert layer.samples_seen == expected.samples_seen
    assert list(layer.channel_batches) == list(expected.channel_batches)


class EngineContract:
    """The tests every engine passes. Subclasses define ``fit`` and ``transform``,
    and the engine's name and arguments for :meth:`bncli.BatchNormalization.fit`."""

    name = ""

    def engine_arguments(self) -> dict[str, Any]:
        return {}

    def fit(
        self, layer: bncli.BatchNormalization, paths: list[Any], **options: Any
    ) -> FitSummary:
        raise NotImplementedError

    def transform(
        self,
        layer: bncli.BatchNormalization,
        paths: list[Any],
        output: Path,
        **options: Any,
    ) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ fit

    @pytest.mark.parametrize(
        ("batch_size", "epochs", "drop_remainder", "replicas"),
        [(32, 1, False, 1), (7, 2, True, 1), (16, 3, False, 3)],
    )
    def test_fit_on_arrays_equals_the_reference_loop(
        self, data, batch_size, epochs, drop_remainder, replicas
    ):
        layer = bncli.BatchNormalization(momentum=0.9)
        summary = self.fit(
            layer,
            data["arrays"],
            batch_size=batch_size,
            epochs=epochs,
            drop_remainder=drop_remainder,
            replicas=replicas,
        )
        expected = reference.fit(
            data["x"],
            momentum=0.9,
            batch_size=batch_size,
            epochs=epochs,
            drop_remainder=drop_remainder,
            replicas=replicas,
        )
        _assert_matches(layer, expected)
        assert summary.epochs == epochs
        assert summary.batches == expected.batches_seen
        assert summary.samples == expected.samples_seen
        assert layer.epochs == epochs and layer.resume is None

    def test_the_layers_own_fit_runs_on_this_engine(self, data):
        layer = bncli.BatchNormalization(momentum=0.9)
        layer.fit(
            data["arrays"],
            batch_size=9,
            epochs=2,
            engine=self.name,
            **self.engine_arguments(),
        )
        expected = reference.fit(data["x"], momentum=0.9, batch_size=9, epochs=2)
        _assert_matches(layer, expected)

    @pytest.mark.parametrize("mode", ["precise", "exact"])
    def test_population_modes_equal_their_formulas(self, data, mode):
        layer = bncli.BatchNormalization()
        self.fit(
            layer,
            data["arrays"],
            batch_size=9,
            replicas=2,
            epochs=2,
            mask=[data["mask_path"]],
            statistics=mode,
        )
        keep = np.broadcast_to(data["mask"][:, :, None], (N, 4, 3))
        if mode == "exact":
            mean, variance = reference.exact_reference(data["x"], keep)
        else:
            mean, variance = reference.precise_reference(
                data["x"], keep, batch_size=9, replicas=2, epochs=2
            )
        np.testing.assert_allclose(layer.moving_mean64, mean, **FAST)
        np.testing.assert_allclose(layer.moving_variance64, variance, **FAST)
        assert layer.statistics == mode

    def test_fit_with_a_mask_equals_the_reference_loop(self, data):
        layer = bncli.BatchNormalization(momentum=0.8)
        self.fit(layer, data["arrays"], batch_size=10, mask=[data["mask_path"]])
        expected = reference.fit(data["x"], data["mask"], momentum=0.8, batch_size=10)
        _assert_matches(layer, expected)

    def test_fit_on_a_table_equals_the_reference_loop(self, data):
        layer = bncli.BatchNormalization(momentum=0.95)
        self.fit(layer, [data["table"]], batch_size=24, exclude=["id"])
        expected = reference.fit(data["table_x"], momentum=0.95, batch_size=24)
        _assert_matches(layer, expected)
        assert layer.features == ["u", "v"]

    def test_a_continued_fit_equals_one_fit_of_both(self, data):
        layer = bncli.BatchNormalization(momentum=0.9)
        self.fit(layer, data["arrays"][:1], batch_size=8)
        self.fit(layer, data["arrays"][1:], batch_size=8)
        expected = reference.fit(data["x"][:120], momentum=0.9, batch_size=8)
        expected = reference.fit(
            data["x"][120:], momentum=0.9, batch_size=8, stats=expected
        )
        _assert_matches(layer, expected)

    def test_a_frozen_layer_is_refused(self, data):
        layer = bncli.BatchNormalization(trainable=False)
        with pytest.raises(StateFrozenError, match="frozen"):
            self.fit(layer, data["arrays"])
        assert not layer.built

    def test_an_empty_input_is_refused(self, data):
        empty = data["folder"] / "empty.npy"
        np.save(empty, np.zeros((0, 4, 3)))
        layer = bncli.BatchNormalization()
        with pytest.raises(DataError, match="empty input"):
            self.fit(layer, [empty])

    def test_channels_unlike_the_state_are_refused(self, data):
        layer = bncli.BatchNormalization()
        self.fit(layer, data["arrays"][:1])
        before = layer.moving_mean64.copy()
        with pytest.raises(
            StateMismatchError, match="channels differ from the state's"
        ):
            self.fit(layer, [data["table"]], exclude=["id"])
        np.testing.assert_array_equal(layer.moving_mean64, before)

    # ------------------------------------------------------------ transform

    def _fitted(self, data) -> bncli.BatchNormalization:
        layer = bncli.BatchNormalization(momentum=0.5, gamma_initializer="ones")
        layer.fit(data["arrays"], batch_size=50)
        layer.gamma = np.array([0.5, 2.0, -1.0])
        layer.beta = np.array([1.0, 0.0, 3.0])
        return layer

    def test_inference_outputs_equal_the_formula(self, data, tmp_path):
        layer = self._fitted(data)
        out = tmp_path / "y.npy"
        summary = self.transform(layer, data["arrays"], out, output_dtype="float64")
        expected = reference.inference(
            data["x"],
            layer.moving_mean64,
            layer.moving_variance64,
            epsilon=layer.epsilon,
            gamma=layer.gamma,
            beta=layer.beta,
        )
        np.testing.assert_allclose(np.load(out), expected, **FAST)
        assert summary.samples == N

    def test_training_outputs_equal_the_reference_loop(self, data, tmp_path):
        layer = self._fitted(data)
        out = tmp_path / "y.npy"
        self.transform(
            layer,
            data["arrays"],
            out,
            training=True,
            batch_size=16,
            replicas=2,
            output_dtype="float64",
        )
        stats = reference.Stats(
            layer.moving_mean64.copy(),
            layer.moving_variance64.copy(),
            np.zeros(3, dtype=np.int64),
        )
        expected = reference.training_outputs(
            data["x"],
            stats,
            epsilon=layer.epsilon,
            gamma=layer.gamma,
            beta=layer.beta,
            batch_size=16,
            replicas=2,
        )
        np.testing.assert_allclose(np.load(out), expected, **FAST)

    def test_an_output_that_is_an_input_is_refused(self, data):
        layer = self._fitted(data)
        before = data["arrays"][0].read_bytes()
        with pytest.raises(UsageError):
            self.transform(layer, data["arrays"], data["arrays"][0], overwrite=True)
        assert data["arrays"][0].read_bytes() == before


class TestLocalEngine(EngineContract):
    """The local engine, with two worker threads."""

    name = "local"

    def engine_arguments(self):
        return {"workers": 2}

    def fit(self, layer, paths, **options):
        return local.fit_layer(layer, paths, FitOptions(workers=2, **options))

    def transform(self, layer, paths, output, **options):
        return local.transform_layer(
            layer, paths, output, TransformOptions(workers=2, **options)
        )


@pytest.mark.dask
class TestDaskEngine(EngineContract):
    """The Dask engine, on a cluster of two worker processes, five tasks an epoch."""

    name = "dask"

    @pytest.fixture(autouse=True)
    def _cluster(self, scheduler):
        self.scheduler = scheduler

    def engine_arguments(self):
        return {"scheduler": self.scheduler}

    def fit(self, layer, paths, **options):
        return dask_engine.fit_layer(
            layer, paths, FitOptions(**options), scheduler=self.scheduler, tasks=5
        )

    def transform(self, layer, paths, output, **options):
        return dask_engine.transform_layer(
            layer,
            paths,
            output,
            TransformOptions(**options),
            scheduler=self.scheduler,
            tasks=5,
        )
