"""bncli side by side with Keras 3 and with the float64 reference (tests/reference.py).

Every case of a curated matrix runs three ways over the same data:

- Keras: ``keras.layers.BatchNormalization`` on the NumPy backend, called
  batch by batch with ``training=True`` (unsynchronized replicas emulated as
  R devices would run them: each shard from the same moving statistics, the
  updates averaged), then once in inference mode;
- the reference: the plain formulas in float64, batch by batch;
- bncli: through the Python API (``bn(x, training=True, mask=...)`` batch by
  batch, and ``bn.fit(files, ...)``) and through the CLI (``fit``, then
  ``inspect --json``, ``transform`` and ``transform --training``).

bncli must equal the reference to PRECISE and Keras to KERAS (with data
where |mean|/std <= 1, since Keras takes E[x^2] - E[x]^2 in float32), or to
the half-precision tolerance where a policy rounds to float16/bfloat16.
Masks go to Keras only with the channel axis last, and never
leave a batch (or shard) without an unmasked value: there bncli deliberately
differs from Keras, which :func:`test_fully_masked_batch_keeps_statistics`
shows on its own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zlib

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bncli
from bncli.errors import StateFrozenError
from tests import reference
from tests.conftest import HALF, KERAS, PRECISE

pytestmark = pytest.mark.keras

GAMMA = 1.5
BETA = -0.25
HALF_DTYPES = {"float16": "float16", "bfloat16": "bfloat16"}


@dataclasses.dataclass(frozen=True)
class Case:
    """One point of the matrix."""

    shape: tuple[int, ...] = (40, 3)
    axis: int = -1
    momentum: float = 0.99
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True
    batch_size: int = 7
    epochs: int = 1
    drop_remainder: bool = False
    masked: bool = False
    replicas: int = 1
    synchronized: bool = False
    dtype: str = "float32"
    frozen: bool = False
    parquet: bool = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def channel_axis(self) -> int:
        return self.axis % self.ndim

    @property
    def channels(self) -> int:
        return self.shape[self.channel_axis]

    @property
    def keras_mask(self) -> bool:
        """Keras takes a mask only with the channel axis last."""
        return self.channel_axis == self.ndim - 1

    @property
    def compares_to_keras(self) -> bool:
        return not self.masked or self.keras_mask

    @property
    def half(self) -> str | None:
        """The half-precision dtype the policy computes in, if any."""
        return HALF_DTYPES.get(self.dtype.removeprefix("mixed_"))

    @property
    def variables_half(self) -> str | None:
        return None if self.dtype.startswith("mixed_") else self.half

    def layer_kwargs(self) -> dict:
        kwargs = {
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "dtype": self.dtype,
            "gamma_initializer": {"class_name": "Constant", "config": {"value": GAMMA}},
            "beta_initializer": {"class_name": "Constant", "config": {"value": BETA}},
        }
        return kwargs

    def cli_options(self) -> list[str]:
        options = [
            "--axis", str(self.axis),
            "--momentum", repr(self.momentum),
            "--epsilon", repr(self.epsilon),
            "--center" if self.center else "--no-center",
            "--scale" if self.scale else "--no-scale",
            "--gamma-initializer", f"constant:{GAMMA}",
            "--beta-initializer", f"constant:{BETA}",
            "--dtype", self.dtype,
            "--batch-size", str(self.batch_size),
            "--epochs", str(self.epochs),
        ]  # fmt: skip
        if self.drop_remainder:
            options.append("--drop-remainder")
        if self.replicas > 1:
            options += ["--replicas", str(self.replicas)]
        if self.synchronized:
            options.append("--synchronized")
        if self.axis != -1 and self.parquet:
            raise AssertionError("tables have one axis")
        if self.parquet:
            options.remove("--axis")
            options.remove(str(self.axis))
        return options


def _id(case: Case) -> str:
    default = Case()
    parts = [f"{case.ndim}d"]
    if case.axis != -1:
        parts.append(f"axis{case.axis}")
    for field in dataclasses.fields(Case):
        if field.name in ("shape", "axis"):
            continue
        value = getattr(case, field.name)
        if value != getattr(default, field.name):
            parts.append(field.name if value is True else f"{field.name}={value}")
    return "-".join(parts)


# The matrix: each row moves a few knobs away from the defaults (2-D data of
# 40 samples, 3 channels, batches of 7, momentum 0.99).
D2, D3, D4 = (40, 3), (24, 5, 3), (12, 3, 4, 2)
CASES = [
    Case(),
    Case(momentum=0.0, batch_size=32),
    Case(shape=(12, 3), momentum=0.5, batch_size=1, epochs=3),
    Case(momentum=0.9, batch_size=64, epochs=3),
    Case(momentum=0.999, epsilon=1e-5, drop_remainder=True, epochs=3),
    Case(momentum=0.9, batch_size=32, drop_remainder=True),
    Case(momentum=0.9, masked=True),
    Case(momentum=0.5, masked=True, parquet=True, epochs=3, drop_remainder=True),
    Case(center=False, scale=False, epsilon=0.1, momentum=0.9),
    Case(center=False, momentum=0.9, batch_size=5),
    Case(scale=False, momentum=0.5, parquet=True),
    Case(shape=D3, momentum=0.9, masked=True, epochs=3),
    Case(shape=D3, axis=1, momentum=0.5, batch_size=32, scale=False),
    Case(shape=(24, 3, 5), axis=1, momentum=0.9, batch_size=5),
    Case(shape=(24, 3, 5), axis=1, momentum=0.9, batch_size=5, masked=True),
    Case(shape=D4, momentum=0.9, batch_size=1, masked=True),
    Case(shape=D4, momentum=0.9, batch_size=5, masked=True, epsilon=1e-5),
    Case(shape=(12, 2, 3, 4), axis=1, batch_size=5, epochs=3, drop_remainder=True),
    Case(shape=(12, 3, 2, 4), axis=-2, momentum=0.9, epsilon=1e-5, batch_size=50),
    Case(shape=(12, 2, 3, 4), axis=1, momentum=0.5, batch_size=5, masked=True),
    Case(momentum=0.9, replicas=3),
    Case(shape=D3, momentum=0.5, replicas=4, masked=True, epochs=3),
    Case(momentum=0.9, batch_size=5, replicas=8),
    Case(momentum=0.9, replicas=2, synchronized=True),
    Case(shape=(12, 2, 3, 4), axis=1, momentum=0.9, batch_size=6, replicas=4),
    Case(momentum=0.9, frozen=True),
    Case(shape=(12, 2, 3, 4), axis=1, frozen=True, batch_size=5),
    Case(shape=D3, momentum=0.9, masked=True, dtype="float64"),
    Case(momentum=0.9, dtype="float16"),
    Case(shape=D3, momentum=0.5, dtype="float16", masked=True),
    Case(momentum=0.9, dtype="bfloat16"),
    Case(shape=D3, momentum=0.9, dtype="mixed_float16", epochs=3),
    Case(shape=(12, 2, 3, 4), axis=1, momentum=0.9, dtype="mixed_bfloat16"),
    Case(momentum=0.9, dtype="mixed_float16", replicas=3, parquet=True),
]


# ------------------------------------------------------------------ data


@functools.cache
def make_data(case: Case) -> tuple[np.ndarray, np.ndarray | None]:
    """Well-conditioned data (|mean|/std <= 1 per channel) and, if masked, a
    mask that leaves every batch and every shard an unmasked value."""
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    broadcast = [1] * case.ndim
    broadcast[case.channel_axis] = case.channels
    # Small magnitudes too: Keras folds its output to x * a + b in float32,
    # whose error eps32 * |x| / sqrt(var + epsilon) grows where a batch or
    # shard of two or three samples has a tiny variance.
    std = rng.uniform(0.1, 0.6, case.channels).reshape(broadcast)
    loc = rng.uniform(-1.0, 1.0, case.channels).reshape(broadcast) * std
    data = loc + std * rng.standard_normal(case.shape)
    if not case.masked:
        return data, None
    without = case.shape[: case.channel_axis] + case.shape[case.channel_axis + 1 :]
    mask = rng.random(without) < 0.7
    flat = mask.reshape(len(mask), -1)
    for start, stop in reference.batch_bounds(len(data), case.batch_size):
        for shard in reference.shard_indexes(stop - start, case.replicas):
            if not flat[start + shard].any():
                flat[start + shard[0], 0] = True
    return data, mask


def _concatenate(outputs: list[np.ndarray], data: np.ndarray) -> np.ndarray:
    return np.concatenate(outputs) if outputs else np.empty((0, *data.shape[1:]))


def _reference_initial(case: Case) -> reference.Stats:
    return reference.Stats.initial(case.channels)


def _gamma_beta(case: Case) -> tuple[np.ndarray | None, np.ndarray | None]:
    gamma = np.full(case.channels, GAMMA) if case.scale else None
    beta = np.full(case.channels, BETA) if case.center else None
    return gamma, beta


@dataclasses.dataclass
class Outcome:
    """What a run produced."""

    moving_mean: np.ndarray
    moving_variance: np.ndarray
    train: np.ndarray  # training-mode outputs of every batch, epoch after epoch
    inference: np.ndarray  # the fitted layer on all the data, inference mode
    batches_seen: int = 0
    samples_seen: int = 0


@functools.cache
def run_reference(case: Case) -> Outcome:
    data, mask = make_data(case)
    gamma, beta = _gamma_beta(case)
    stats = _reference_initial(case)
    outputs = []
    for _ in range(case.epochs):
        for start, stop in reference.batch_bounds(
            len(data), case.batch_size, case.drop_remainder
        ):
            x = data[start:stop]
            m = None if mask is None else mask[start:stop]
            if case.frozen:
                outputs.append(_reference_inference(case, x, stats))
                continue
            outputs.append(
                reference.train_step(
                    stats,
                    x,
                    m,
                    axis=case.axis,
                    momentum=case.momentum,
                    epsilon=case.epsilon,
                    gamma=gamma,
                    beta=beta,
                    replicas=case.replicas,
                    synchronized=case.synchronized,
                )
            )
    return Outcome(
        stats.moving_mean,
        stats.moving_variance,
        _concatenate(outputs, data),
        _reference_inference(case, data, stats),
        stats.batches_seen,
        stats.samples_seen,
    )


def _reference_inference(
    case: Case, x: np.ndarray, stats: reference.Stats
) -> np.ndarray:
    gamma, beta = _gamma_beta(case)
    return reference.inference(
        x,
        stats.moving_mean,
        stats.moving_variance,
        axis=case.axis,
        epsilon=case.epsilon,
        gamma=gamma,
        beta=beta,
    )


def _keras_layer(case: Case) -> keras.layers.BatchNormalization:
    kwargs = case.layer_kwargs()
    layer = keras.layers.BatchNormalization(**kwargs)
    layer.build(case.shape)
    if case.frozen:
        layer.trainable = False
    return layer


def _keras_batch(layer, case: Case, x: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    if case.replicas == 1 or case.synchronized:
        return np.asarray(layer(x, training=True, mask=m))
    # R devices: each shard from the same moving statistics; the replicated
    # variables then take the mean of the R updates.
    before = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
    outputs, updates = [], []
    for shard in reference.shard_indexes(len(x), case.replicas):
        layer.moving_mean.assign(before[0])
        layer.moving_variance.assign(before[1])
        outputs.append(
            np.asarray(
                layer(x[shard], training=True, mask=None if m is None else m[shard])
            )
        )
        updates.append(
            [layer.moving_mean.numpy().astype(np.float64),
             layer.moving_variance.numpy().astype(np.float64)]
        )  # fmt: skip
    mean = np.mean(updates, axis=0)
    layer.moving_mean.assign(mean[0].astype(layer.moving_mean.dtype))
    layer.moving_variance.assign(mean[1].astype(layer.moving_variance.dtype))
    return np.concatenate(outputs)


@functools.cache
def run_keras(case: Case) -> tuple[Outcome, keras.layers.BatchNormalization]:
    assert case.compares_to_keras
    data, mask = make_data(case)
    layer = _keras_layer(case)
    outputs = []
    for _ in range(case.epochs):
        for start, stop in reference.batch_bounds(
            len(data), case.batch_size, case.drop_remainder
        ):
            m = None if mask is None else mask[start:stop]
            outputs.append(_keras_batch(layer, case, data[start:stop], m))
    outcome = Outcome(
        np.asarray(layer.moving_mean.numpy()),
        np.asarray(layer.moving_variance.numpy()),
        _concatenate(outputs, data),
        np.asarray(layer(data)),
    )
    return outcome, layer


# ------------------------------------------------------------- tolerances


def keras_tolerance(case: Case) -> dict:
    return KERAS if case.half is None else HALF[case.half]


def reference_tolerance(case: Case, what: str) -> dict:
    """PRECISE, or the half tolerance where the result is rounded to half."""
    half = case.half if what == "outputs" else case.variables_half
    return PRECISE if half is None else HALF[half]


def assert_close(actual, expected, tolerance, what):
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        np.asarray(expected, dtype=np.float64),
        err_msg=what,
        **tolerance,
    )


def check_statistics(case: Case, moving_mean, moving_variance, source: str) -> None:
    ref = run_reference(case)
    tolerance = reference_tolerance(case, "variables")
    assert_close(moving_mean, ref.moving_mean, tolerance, f"{source}: moving_mean")
    assert_close(
        moving_variance, ref.moving_variance, tolerance, f"{source}: moving_variance"
    )
    if case.compares_to_keras:
        theirs, layer = run_keras(case)
        tolerance = keras_tolerance(case)
        assert_close(
            moving_mean,
            theirs.moving_mean,
            tolerance,
            f"{source} vs Keras: moving_mean",
        )
        assert_close(
            moving_variance,
            theirs.moving_variance,
            tolerance,
            f"{source} vs Keras: moving_variance",
        )
        assert np.asarray(moving_mean).dtype.name == layer.moving_mean.dtype
        assert np.asarray(moving_variance).dtype.name == layer.moving_variance.dtype


def check_inference(case: Case, layer: bncli.BatchNormalization, source: str) -> None:
    data, _ = make_data(case)
    ours = layer(data)
    ref = run_reference(case)
    assert_close(
        ours,
        ref.inference,
        reference_tolerance(case, "outputs"),
        f"{source}: inference",
    )
    if case.compares_to_keras:
        theirs, keras_layer = run_keras(case)
        assert ours.dtype.name == keras_layer.compute_dtype
        assert_close(
            ours,
            theirs.inference,
            keras_tolerance(case),
            f"{source} vs Keras: inference",
        )


# ---------------------------------------------------------------- files


def write_inputs(case: Case, folder) -> tuple[list[str], list[str] | None]:
    """The data as two files split off a batch boundary (NPY or Parquet), and
    the NPY masks (None for Parquet, whose mask is the column "keep")."""
    data, mask = make_data(case)
    split = max(1, (len(data) * 2) // 5 + 1) if len(data) > 1 else len(data)
    pieces = [(0, split), (split, len(data))] if split < len(data) else [(0, len(data))]
    paths, masks = [], []
    for i, (lo, hi) in enumerate(pieces):
        if case.parquet:
            columns = {f"c{j}": data[lo:hi, j] for j in range(case.channels)}
            if mask is not None:
                columns["keep"] = mask[lo:hi]
            path = folder / f"part{i}.parquet"
            pq.write_table(pa.table(columns), path, row_group_size=5)
        else:
            path = folder / f"part{i}.npy"
            np.save(path, data[lo:hi])
            if mask is not None:
                masks.append(str(folder / f"mask{i}.npy"))
                np.save(masks[-1], mask[lo:hi])
        paths.append(str(path))
    return paths, (masks or None)


def fit_kwargs(case: Case, masks) -> dict:
    kwargs = {
        "batch_size": case.batch_size,
        "epochs": case.epochs,
        "drop_remainder": case.drop_remainder,
        "replicas": case.replicas,
    }
    if case.masked:
        kwargs.update({"mask_column": "keep"} if case.parquet else {"mask": masks})
    return kwargs


def read_output(path, case: Case) -> np.ndarray:
    if case.parquet:
        table = pq.read_table(path)
        return np.stack(
            [table.column(f"c{j}").to_numpy() for j in range(case.channels)], 1
        )
    return np.load(path)


# --------------------------------------------------------------- the API


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_python_api(case: Case, tmp_path) -> None:
    data, mask = make_data(case)
    ref = run_reference(case)

    # bn(x, training=True, mask=...) batch by batch, as a Keras training loop.
    if case.replicas == 1 or case.synchronized:
        bn = bncli.BatchNormalization(**case.layer_kwargs())
        bn.trainable = not case.frozen
        outputs = []
        for _ in range(case.epochs):
            for start, stop in reference.batch_bounds(
                len(data), case.batch_size, case.drop_remainder
            ):
                m = None if mask is None else mask[start:stop]
                outputs.append(bn(data[start:stop], training=True, mask=m))
        train = np.concatenate(outputs)
        assert_close(
            train, ref.train, reference_tolerance(case, "outputs"), "training outputs"
        )
        if case.compares_to_keras:
            theirs, layer = run_keras(case)
            assert train.dtype.name == layer.compute_dtype
            assert_close(
                train, theirs.train, keras_tolerance(case), "training outputs vs Keras"
            )
        check_statistics(
            case, bn.moving_mean, bn.moving_variance, "bn(x, training=True)"
        )
        check_inference(case, bn, "bn(x, training=True)")
        for name in ("gamma", "beta"):
            value = getattr(bn, name)
            assert (value is None) == (
                not (case.scale if name == "gamma" else case.center)
            )
            if value is not None and case.compares_to_keras:
                theirs = getattr(run_keras(case)[1], name)
                assert value.dtype.name == theirs.dtype
                np.testing.assert_array_equal(value, theirs.numpy())
        assert bn.batches_seen == ref.batches_seen

    # bn.fit(files, ...): the same batches streamed from two files.
    paths, masks = write_inputs(case, tmp_path)
    bn = bncli.BatchNormalization(**case.layer_kwargs(), synchronized=case.synchronized)
    if case.frozen:
        bn.trainable = False
        with pytest.raises(StateFrozenError):
            bn.fit(paths, **fit_kwargs(case, masks))
        return
    summary = bn.fit(paths, **fit_kwargs(case, masks))
    assert (summary.batches, summary.samples) == (ref.batches_seen, ref.samples_seen)
    check_statistics(case, bn.moving_mean, bn.moving_variance, "bn.fit")
    check_inference(case, bn, "bn.fit")


# --------------------------------------------------------------- the CLI


CLI_CASES = [c for c in CASES if not c.frozen]


@pytest.mark.parametrize("case", CLI_CASES, ids=_id)
def test_cli(case: Case, tmp_path, run_cli) -> None:
    data, mask = make_data(case)
    ref = run_reference(case)
    paths, masks = write_inputs(case, tmp_path)
    state = tmp_path / "state.h5"
    mask_options = []
    if case.masked:
        mask_options = (
            ["--mask-column", "keep"]
            if case.parquet
            else [arg for m in masks for arg in ("--mask", m)]
        )
    result = run_cli("fit", state, *paths, *case.cli_options(), *mask_options, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["batches"], report["samples"]) == (
        ref.batches_seen,
        ref.samples_seen,
    )

    layer = bncli.load(state)
    check_statistics(case, layer.moving_mean, layer.moving_variance, "bncli fit")

    result = run_cli("inspect", state, "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["progress"]["batches_seen"] == ref.batches_seen
    assert shown["progress"]["samples_seen"] == ref.samples_seen
    assert shown["progress"]["epochs"] == case.epochs
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_array_equal(
            np.asarray(shown["variables"][name], dtype=getattr(layer, name).dtype),
            getattr(layer, name),
        )
    assert ("gamma" in shown["variables"]) == case.scale
    assert ("beta" in shown["variables"]) == case.center
    assert shown["initializer_share"] == pytest.approx(case.momentum**ref.batches_seen)

    suffix = ".parquet" if case.parquet else ".npy"
    out = tmp_path / f"inference{suffix}"
    result = run_cli("transform", state, *paths, "-o", out)
    assert result.exit_code == 0, result.stderr
    ours = read_output(out, case)
    expected_dtype = (
        "float32" if case.half == "bfloat16" else case.dtype.removeprefix("mixed_")
    )
    assert ours.dtype.name == expected_dtype
    assert_close(ours, ref.inference, reference_tolerance(case, "outputs"), "transform")
    if case.compares_to_keras:
        theirs, _ = run_keras(case)
        assert_close(
            ours, theirs.inference, keras_tolerance(case), "transform vs Keras"
        )

    out = tmp_path / f"training{suffix}"
    options = ["--batch-size", case.batch_size, "--replicas", case.replicas]
    result = run_cli(
        "transform", state, *paths, "-o", out, "--training", *options, *mask_options
    )
    assert result.exit_code == 0, result.stderr
    ours = read_output(out, case)
    gamma, beta = _gamma_beta(case)
    stats = reference.Stats(
        ref.moving_mean, ref.moving_variance, np.zeros(case.channels)
    )
    expected = reference.training_outputs(
        data,
        stats,
        mask,
        axis=case.axis,
        epsilon=case.epsilon,
        gamma=gamma,
        beta=beta,
        batch_size=case.batch_size,
        replicas=case.replicas,
        synchronized=case.synchronized,
    )
    assert_close(
        ours, expected, reference_tolerance(case, "outputs"), "transform --training"
    )
    if case.compares_to_keras:
        # Keras's first epoch saw the same batches (all but a dropped remainder).
        theirs, _ = run_keras(case)
        covered = sum(
            hi - lo
            for lo, hi in reference.batch_bounds(
                len(data), case.batch_size, case.drop_remainder
            )
        )
        assert_close(
            ours[:covered],
            theirs.train[:covered],
            keras_tolerance(case),
            "transform --training vs Keras",
        )


# ------------------------------------------------------------- frozen


@pytest.mark.parametrize(
    "case",
    [Case(momentum=0.9), Case(shape=(12, 2, 3, 4), axis=1, momentum=0.5, batch_size=5)],
    ids=_id,
)
def test_cli_frozen_state(case: Case, tmp_path, run_cli) -> None:
    """A frozen state: fit refuses (exit 4, state unchanged), and transform
    --training runs as inference, as Keras's trainable=False layer does."""
    data, _ = make_data(case)
    paths, _ = write_inputs(case, tmp_path)
    state = tmp_path / "state.h5"
    assert run_cli("fit", state, *paths, *case.cli_options()).exit_code == 0
    assert run_cli("freeze", state).exit_code == 0
    before = state.read_bytes()
    result = run_cli("fit", state, *paths)
    assert result.exit_code == 4
    assert result.stderr.startswith("error:") and "unfreeze" in result.stderr
    assert state.read_bytes() == before

    ref = run_reference(case)
    keras_layer = _keras_layer(case)
    keras_layer.moving_mean.assign(ref.moving_mean.astype(np.float32))
    keras_layer.moving_variance.assign(ref.moving_variance.astype(np.float32))
    keras_layer.trainable = False
    keras_out = np.asarray(keras_layer(data, training=True))
    np.testing.assert_array_equal(
        keras_layer.moving_mean.numpy(), ref.moving_mean.astype(np.float32)
    )
    for flags in ([], ["--training", "--batch-size", "5"]):
        out = tmp_path / f"out{len(flags)}.npy"
        assert run_cli("transform", state, *paths, "-o", out, *flags).exit_code == 0
        ours = np.load(out)
        assert_close(ours, ref.inference, PRECISE, f"frozen transform {flags}")
        assert_close(ours, keras_out, KERAS, f"frozen transform {flags} vs Keras")
    assert state.read_bytes() == before


def test_python_frozen_layer_statistics_never_move() -> None:
    case = Case(momentum=0.5)
    data, _ = make_data(case)
    bn = bncli.BatchNormalization(**case.layer_kwargs(), trainable=False)
    layer = _keras_layer(dataclasses.replace(case, frozen=True))
    for _ in range(3):
        ours = bn(data, training=True)
        theirs = np.asarray(layer(data, training=True))
        assert_close(ours, theirs, KERAS, "frozen training output vs Keras")
    np.testing.assert_array_equal(bn.moving_mean, np.zeros(3, np.float32))
    np.testing.assert_array_equal(bn.moving_variance, np.ones(3, np.float32))
    np.testing.assert_array_equal(layer.moving_mean.numpy(), np.zeros(3, np.float32))
    assert bn.batches_seen == 0
    bn.trainable = True
    bn(data, training=True)
    assert bn.batches_seen == 1
    assert not np.array_equal(bn.moving_mean, np.zeros(3, np.float32))


# ------------------------------------------------ a deliberate difference


def test_fully_masked_batch_keeps_statistics(tmp_path) -> None:
    """A channel with no unmasked value in a batch keeps its moving
    statistics (and its training output uses them). Keras divides by
    count + 1e-7 and so moves them toward 0; bncli deliberately does not."""
    rng = np.random.default_rng(7)
    data = rng.normal(1.0, 2.0, (21, 4, 3))
    mask = rng.random((21, 4)) < 0.7
    mask[7:14] = False  # batch 1 (of 3, batch size 7) has no unmasked value
    mask[:7, 0] = True
    mask[14:, 0] = True
    momentum = 0.9

    stats = reference.Stats.initial(3)
    expected = [
        reference.train_step(stats, data[lo:hi], mask[lo:hi], momentum=momentum)
        for lo, hi in reference.batch_bounds(21, 7)
    ]
    bn = bncli.BatchNormalization(momentum=momentum)
    layer = keras.layers.BatchNormalization(momentum=momentum)
    layer.build(data.shape)
    for (lo, hi), y_ref in zip(reference.batch_bounds(21, 7), expected, strict=True):
        before = bn.moving_mean, bn.moving_variance
        keras_before = layer.moving_mean.numpy(), layer.moving_variance.numpy()
        y = bn(data[lo:hi], training=True, mask=mask[lo:hi])
        y_keras = np.asarray(layer(data[lo:hi], training=True, mask=mask[lo:hi]))
        assert_close(y, y_ref, PRECISE, "training output")
        if lo == 7:
            # bncli: the statistics stay put; the output uses them.
            np.testing.assert_array_equal(bn.moving_mean, before[0])
            np.testing.assert_array_equal(bn.moving_variance, before[1])
            assert_close(
                y, reference.inference(data[lo:hi], *before), PRECISE, "masked output"
            )
            # Keras: mean 0 and variance 0 for the batch, so both decay.
            assert_close(
                layer.moving_mean.numpy(), keras_before[0] * momentum, KERAS, ""
            )
            assert_close(
                layer.moving_variance.numpy(), keras_before[1] * momentum, KERAS, ""
            )
            assert_close(y_keras, data[lo:hi] / np.sqrt(1e-3), KERAS, "Keras's output")
        else:
            assert_close(y, y_keras, KERAS, "output vs Keras")
    assert_close(bn.moving_mean, stats.moving_mean, PRECISE, "moving_mean")
    assert_close(bn.moving_variance, stats.moving_variance, PRECISE, "moving_variance")
    assert stats.channel_batches.tolist() == [2, 2, 2]
    share = bn.initializer_share()
    np.testing.assert_allclose(share, momentum**2, **PRECISE)
    # The difference is there: Keras's variance decayed by a factor momentum.
    assert np.all(layer.moving_variance.numpy() < bn.moving_variance * (1 - 0.05))

    # The same through files: a Parquet column whose cells are all null in
    # one batch keeps that channel's statistics only (nulls mask their own
    # channel), and fit and the reference agree.
    table = {"a": data[:, 0, 0].copy(), "b": data[:, 0, 1].copy()}
    nulls = np.zeros((21, 2), bool)
    nulls[7:14, 1] = True
    nulls[rng.random(21) < 0.2, 0] = True
    nulls[[0, 7, 14], 0] = False
    arrays = {
        k: pa.array(v, mask=nulls[:, j]) for j, (k, v) in enumerate(table.items())
    }
    path = tmp_path / "nulls.parquet"
    pq.write_table(pa.table(arrays), path)
    bn = bncli.BatchNormalization(momentum=momentum)
    bn.fit([path], batch_size=7)
    flat = np.stack(list(table.values()), 1)
    expected = reference.fit(flat, ~nulls, momentum=momentum, batch_size=7)
    assert_close(bn.moving_mean, expected.moving_mean, PRECISE, "nulls: moving_mean")
    assert_close(
        bn.moving_variance, expected.moving_variance, PRECISE, "nulls: moving_var"
    )
    assert expected.channel_batches.tolist() == [3, 2]
    np.testing.assert_array_equal(bn.channel_batches, [3, 2])


def test_masked_moments_are_unbiased_where_keras_adds_epsilon() -> None:
    """Keras divides masked sums by count + 1e-7; bncli by the count. On one
    unmasked element of value 1e3 the Keras mean is low by ~1e-4. (Two
    channels: Keras's masked moments fail on a single channel.)"""
    x = np.array([[1000.0, 1000.0], [5.0, 5.0]])
    mask = np.array([True, False])
    bn = bncli.BatchNormalization(momentum=0.0, dtype="float64")
    bn(x, training=True, mask=mask)
    np.testing.assert_array_equal(bn.moving_mean, [1000.0, 1000.0])
    layer = keras.layers.BatchNormalization(momentum=0.0, dtype="float64")
    layer(x, training=True, mask=mask)
    bias = 1000.0 - layer.moving_mean.numpy()
    assert np.all((5e-5 < bias) & (bias < 2e-4))


# ------------------------------------------- constraints and regularizers


CONSTRAINTS = [
    ("non_neg", keras.constraints.NonNeg()),
    ("max_norm:2", keras.constraints.MaxNorm(2)),
    ("min_max_norm:0.5,2", keras.constraints.MinMaxNorm(0.5, 2)),
    ("min_max_norm:3,4", keras.constraints.MinMaxNorm(3, 4, rate=1.0)),
    ("unit_norm", keras.constraints.UnitNorm()),
    (
        '{"class_name": "MinMaxNorm", "config": {"min_value": 1.0, "max_value": 1.5, "rate": 0.5}}',
        keras.constraints.MinMaxNorm(1.0, 1.5, rate=0.5),
    ),
]
REGULARIZERS = [
    ("l1:0.01", keras.regularizers.L1(0.01)),
    ("l2:0.02", keras.regularizers.L2(0.02)),
    ("l1_l2:0.01,0.03", keras.regularizers.L1L2(0.01, 0.03)),
    ('{"class_name": "L2", "config": {"l2": 0.5}}', keras.regularizers.L2(0.5)),
]


@pytest.mark.parametrize(
    ("constraint", "keras_constraint"), CONSTRAINTS, ids=[c for c, _ in CONSTRAINTS]
)
@pytest.mark.parametrize(
    ("regularizer", "keras_regularizer"),
    [REGULARIZERS[i] for i in (0, 2)],
    ids=["l1", "l1_l2"],
)
def test_set_applies_constraints_and_inspect_reports_penalties(
    constraint, keras_constraint, regularizer, keras_regularizer, tmp_path, run_cli
) -> None:
    data = np.random.default_rng(3).normal(size=(10, 3))
    np.save(tmp_path / "x.npy", data)
    state = tmp_path / "s.h5"
    result = run_cli(
        "fit", state, tmp_path / "x.npy",
        "--gamma-constraint", constraint, "--beta-constraint", constraint,
        "--gamma-regularizer", regularizer, "--beta-regularizer", regularizer,
        "--gamma-initializer", "constant:5",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # Constraints are applied when a value is set, never to initial values.
    np.testing.assert_array_equal(bncli.load(state).gamma, np.full(3, 5.0, np.float32))
    gamma, beta = np.array([3.0, -4.0, 0.5]), np.array([-0.2, 0.1, 0.0])
    result = run_cli("set", state, "--gamma", "3,-4,0.5", "--beta", "-0.2,0.1,0")
    assert result.exit_code == 0, result.stderr
    layer = bncli.load(state)
    keras_gamma = np.asarray(keras_constraint(gamma.astype(np.float32)))
    keras_beta = np.asarray(keras_constraint(beta.astype(np.float32)))
    assert_close(layer.gamma, keras_gamma, KERAS, "gamma")
    assert_close(layer.beta, keras_beta, KERAS, "beta")

    shown = json.loads(run_cli("inspect", state, "--json").stdout)
    assert_close(shown["variables"]["gamma"], keras_gamma, KERAS, "inspect gamma")
    penalties = shown["regularization"]
    assert_close(
        penalties["gamma"],
        float(keras_regularizer(keras_gamma)),
        KERAS,
        "gamma penalty",
    )
    assert_close(
        penalties["beta"], float(keras_regularizer(keras_beta)), KERAS, "beta penalty"
    )
    assert (
        shown["config"]["gamma_constraint"]["class_name"]
        == type(keras_constraint).__name__
    )
    assert (
        shown["config"]["gamma_regularizer"]["class_name"]
        == type(keras_regularizer).__name__
    )


@pytest.mark.parametrize(
    ("regularizer", "keras_regularizer"), REGULARIZERS, ids=[r for r, _ in REGULARIZERS]
)
def test_python_api_constraints_and_penalties(regularizer, keras_regularizer) -> None:
    config = keras.regularizers.serialize(keras_regularizer)
    bn = bncli.BatchNormalization(
        gamma_regularizer=regularizer,
        beta_regularizer=config,
        gamma_constraint="max_norm:2",
        center=True,
    )
    bn(np.ones((2, 4)))
    bn.gamma = [3.0, 0.0, -4.0, 1.0]
    expected = np.asarray(
        keras.constraints.MaxNorm(2)(np.array([3.0, 0, -4, 1], np.float32))
    )
    assert_close(bn.gamma, expected, KERAS, "constrained gamma")
    bn.beta = [1.0, -2.0, 0.0, 0.5]
    penalties = bn.regularization_penalties()
    assert_close(penalties["gamma"], float(keras_regularizer(expected)), KERAS, "gamma")
    beta = np.array([1.0, -2.0, 0.0, 0.5], np.float32)
    assert_close(penalties["beta"], float(keras_regularizer(beta)), KERAS, "beta")
    assert bn.get_config()["beta_regularizer"]["config"] == config["config"]
    unregularized = bncli.BatchNormalization(center=False)
    unregularized(np.ones((2, 4)))
    assert unregularized.regularization_penalties() == {"gamma": 0.0, "beta": 0.0}


# ------------------------------------------------------ random combinations


AXES = [
    ((13, 3), -1),
    ((9, 4, 2), -1),
    ((9, 2, 4), 1),
    ((6, 2, 3, 2), -1),
    ((6, 2, 3, 2), 2),
]


@given(
    shape_axis=st.sampled_from(AXES),
    samples=st.integers(1, 14),
    momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99, 0.999, 1.0]),
    epsilon=st.sampled_from([1e-3, 1e-2, 0.5]),
    center=st.booleans(),
    scale=st.booleans(),
    batch_size=st.integers(1, 16),
    epochs=st.integers(1, 3),
    drop_remainder=st.booleans(),
    masked=st.booleans(),
    replicas=st.sampled_from([1, 1, 2, 3]),
)
def test_random_combinations(
    shape_axis, samples, momentum, epsilon, center, scale, batch_size, epochs,
    drop_remainder, masked, replicas,
) -> None:  # fmt: skip
    shape, axis = shape_axis
    case = Case(
        shape=(samples, *shape[1:]),
        axis=axis,
        momentum=momentum,
        epsilon=epsilon,
        center=center,
        scale=scale,
        batch_size=batch_size,
        epochs=epochs,
        drop_remainder=drop_remainder,
        masked=masked,
        replicas=replicas,
    )
    data, mask = make_data(case)
    ref = run_reference(case)
    bn = bncli.BatchNormalization(**case.layer_kwargs())
    if replicas == 1:
        outputs = [
            bn(data[lo:hi], training=True, mask=None if mask is None else mask[lo:hi])
            for _ in range(epochs)
            for lo, hi in reference.batch_bounds(samples, batch_size, drop_remainder)
        ]
        if not outputs:  # every batch dropped: the initial statistics
            bn.build(data.shape[1:])
        else:
            train = np.concatenate(outputs)
            assert_close(train, ref.train, PRECISE, "training outputs")
            if case.compares_to_keras:
                assert_close(train, run_keras(case)[0].train, KERAS, "vs Keras")
        check_statistics(case, bn.moving_mean, bn.moving_variance, "bn(x)")
        check_inference(case, bn, "bn(x)")
    else:
        # Unsynchronized replicas: the engine, on the whole array at once.
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as folder:
            paths, masks = write_inputs(case, Path(folder))
            if ref.batches_seen == 0:
                return  # everything dropped: an empty fit, tested in tests/cli
            bn.fit(paths, **fit_kwargs(case, masks))
        check_statistics(case, bn.moving_mean, bn.moving_variance, "bn.fit")
        check_inference(case, bn, "bn.fit")


# ----------------------------------------------------- inputs Keras takes too


@pytest.mark.parametrize(
    ("mask_shape", "kind"),
    [((6, 2, 1), "bool"), ((6, 1, 3), "bool"), ((1, 2, 3), "bool"), ((6, 2, 3), "int")],
)
def test_broadcast_masks_as_keras(mask_shape, kind) -> None:
    """In the Python API a mask may be any shape that broadcasts to
    the data's shape without the channel axis, as Keras's."""
    rng = np.random.default_rng(11)
    data = rng.normal(0.5, 0.4, (6, 2, 3, 4))
    mask = rng.random(mask_shape) < 0.6
    mask.reshape(-1)[0] = True
    mask = mask.astype(kind)
    keep = np.broadcast_to(mask, (6, 2, 3)).astype(bool)
    stats = reference.Stats.initial(4)
    expected = reference.train_step(stats, data, keep, momentum=0.5)
    bn = bncli.BatchNormalization(momentum=0.5)
    layer = keras.layers.BatchNormalization(momentum=0.5)
    ours = bn(data, training=True, mask=mask)
    theirs = np.asarray(layer(data, training=True, mask=mask))
    assert_close(ours, expected, PRECISE, "outputs")
    assert_close(ours, theirs, KERAS, "outputs vs Keras")
    assert_close(bn.moving_mean, stats.moving_mean, PRECISE, "moving_mean")
    assert_close(bn.moving_variance, layer.moving_variance.numpy(), KERAS, "vs Keras")


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.float16, np.float32])
def test_other_input_dtypes_as_keras(dtype) -> None:
    """Integer and narrower float inputs: Keras's output dtype, its statistics."""
    rng = np.random.default_rng(12)
    data = (rng.normal(3.0, 2.0, (10, 3)) + 3).astype(dtype)
    bn = bncli.BatchNormalization(momentum=0.5)
    layer = keras.layers.BatchNormalization(momentum=0.5)
    ours = bn(data, training=True)
    theirs = np.asarray(layer(data, training=True))
    assert ours.dtype == theirs.dtype == np.float32
    assert_close(ours, theirs, KERAS, "outputs vs Keras")
    assert_close(bn.moving_variance, layer.moving_variance.numpy(), KERAS, "vs Keras")
    stats = reference.fit(data.astype(np.float64), momentum=0.5, batch_size=10)
    assert_close(bn.moving_variance, stats.moving_variance, PRECISE, "vs reference")
    assert_close(bn(data), layer(data), KERAS, "inference vs Keras")
