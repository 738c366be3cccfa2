"""Batching properties: how the rows are stored and read never changes a fit.

The same rows, split into different files (NPY, Parquet), Parquet row groups
of any size, read in chunks of any size, computed by one worker or two, give
the state the per-batch reference loop (tests/reference.py) gives; and a fit
continued from a saved state equals one uninterrupted fit.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bncli
import bncli.engines.base
import bncli.engines.local
import bncli.io.batching
from tests import reference
from tests.conftest import FAST


@contextlib.contextmanager
def folder() -> Iterator[Path]:
    """A fresh folder per hypothesis example (tmp_path is one per test)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@st.composite
def streams(draw, max_samples: int = 60):
    """Rows of a table (N, C), a row mask, batching, and where to cut files."""
    samples = draw(st.integers(1, max_samples))
    channels = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    data = rng.normal(rng.uniform(-5, 5, channels), rng.uniform(0.1, 4, channels),
                      (samples, channels))  # fmt: skip
    mask = rng.random(samples) < 0.7 if draw(st.booleans()) else None
    if mask is not None and draw(st.booleans()):
        mask[: samples // 2] = False  # whole batches with no unmasked value
    batch_size = draw(st.integers(1, 17))
    drop_remainder = draw(st.booleans()) and samples >= batch_size
    cuts = draw(st.lists(st.integers(1, max(samples - 1, 1)), max_size=4, unique=True))
    cuts = sorted(c for c in cuts if 0 < c < samples)
    return {
        "data": data,
        "mask": mask,
        "batch_size": batch_size,
        "epochs": draw(st.integers(1, 2)),
        "drop_remainder": drop_remainder,
        "momentum": draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0])),
        "cuts": cuts,
    }


def pieces(samples: int, cuts: list[int]) -> list[tuple[int, int]]:
    edges = [0, *cuts, samples]
    return list(itertools.pairwise(edges))


def write_npy(where: Path, stream, cuts, *, one_mask: bool = False):
    """NPY files cut at ``cuts``, and their masks (one per file, or one in all)."""
    data, mask = stream["data"], stream["mask"]
    paths, masks = [], []
    for i, (lo, hi) in enumerate(pieces(len(data), cuts)):
        paths.append(where / f"part{i:02}.npy")
        np.save(paths[-1], data[lo:hi])
        if mask is not None and not one_mask:
            masks.append(where / f"mask{i:02}.npy")
            np.save(masks[-1], mask[lo:hi])
    if mask is not None and one_mask:
        masks = [where / "mask.npy"]
        np.save(masks[0], mask)
    return paths, (masks or None)


def write_parquet(where: Path, stream, cuts, row_group_size: int):
    data, mask = stream["data"], stream["mask"]
    paths = []
    for i, (lo, hi) in enumerate(pieces(len(data), cuts)):
        columns = {f"c{j}": data[lo:hi, j] for j in range(data.shape[1])}
        if mask is not None:
            columns["keep"] = mask[lo:hi]
        paths.append(where / f"part{i:02}.parquet")
        pq.write_table(pa.table(columns), paths[-1], row_group_size=row_group_size)
    return paths


def fit(paths, stream, *, masks=None, mask_column=None, dtype="float64", **options):
    bn = bncli.BatchNormalization(momentum=stream["momentum"], dtype=dtype)
    bn.fit(
        paths,
        batch_size=stream["batch_size"],
        epochs=stream["epochs"],
        drop_remainder=stream["drop_remainder"],
        mask=masks,
        mask_column=mask_column if stream["mask"] is not None else None,
        **options,
    )
    return bn


def expected(stream, **options) -> reference.Stats:
    return reference.fit(
        stream["data"],
        stream["mask"],
        momentum=stream["momentum"],
        batch_size=stream["batch_size"],
        epochs=stream["epochs"],
        drop_remainder=stream["drop_remainder"],
        **options,
    )


def assert_same_state(bn, other, what: str) -> None:
    """Equal moving statistics (FAST), float64 accumulators and counters."""
    if isinstance(other, reference.Stats):
        mean, variance = other.moving_mean, other.moving_variance
        batches, samples = other.batches_seen, other.samples_seen
        channel_batches = other.channel_batches
    else:
        mean, variance = other.moving_mean64, other.moving_variance64
        batches, samples = other.batches_seen, other.samples_seen
        channel_batches = other.channel_batches
    np.testing.assert_allclose(bn.moving_mean64, mean, err_msg=what, **FAST)
    np.testing.assert_allclose(bn.moving_variance64, variance, err_msg=what, **FAST)
    assert (bn.batches_seen, bn.samples_seen) == (batches, samples), what
    np.testing.assert_array_equal(bn.channel_batches, channel_batches, err_msg=what)


# ------------------------------------------------------------ files and groups


@given(
    stream=streams(),
    other_cuts=st.lists(st.integers(1, 59), max_size=5, unique=True),
    row_group_size=st.integers(1, 25),
    one_mask=st.booleans(),
)
def test_files_and_row_groups_do_not_matter(
    stream, other_cuts, row_group_size, one_mask
):
    ref = expected(stream)
    samples = len(stream["data"])
    with folder() as where:
        whole, whole_masks = write_npy(where, stream, [])
        bn = fit(whole, stream, masks=whole_masks)
        assert_same_state(bn, ref, "one NPY file vs the reference")

        (where / "npy").mkdir()
        cuts = sorted({c for c in other_cuts if c < samples})
        paths, masks = write_npy(where / "npy", stream, cuts, one_mask=one_mask)
        assert_same_state(fit(paths, stream, masks=masks), ref, f"NPY cut at {cuts}")

        (where / "pq").mkdir()
        paths = write_parquet(where / "pq", stream, stream["cuts"], row_group_size)
        split = fit(paths, stream, mask_column="keep")
        assert_same_state(split, ref, f"Parquet cut at {stream['cuts']}")
        # A folder of files is the same stream, in name order.
        assert_same_state(
            fit([where / "pq"], stream, mask_column="keep"), ref, "folder"
        )


# ----------------------------------------------------------------- chunks


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Make the engine read ``size`` samples at a time (a list to set it)."""
    size = [1]
    calls = []

    def block_rows(batch_size, sample_bytes, *args, **kwargs):
        calls.append(batch_size)
        return size[0]

    monkeypatch.setattr(bncli.io.batching, "block_rows", block_rows)
    monkeypatch.setattr(bncli.engines.local, "block_rows", block_rows)
    return size, calls


@given(stream=streams(), chunk=st.integers(1, 9), row_group_size=st.integers(1, 9))
def test_chunk_size_does_not_matter(stream, chunk, row_group_size, tiny_chunks):
    size, calls = tiny_chunks
    ref = expected(stream)
    with folder() as where:
        npy, masks = write_npy(where, stream, stream["cuts"])
        parquet = write_parquet(where, stream, stream["cuts"], row_group_size)
        size[0] = chunk
        calls.clear()
        small = fit(npy, stream, masks=masks)
        assert calls, "the engine did not take its chunk size from block_rows"
        assert_same_state(small, ref, f"NPY in chunks of {chunk}")
        small = fit(parquet, stream, mask_column="keep")
        assert_same_state(small, ref, f"Parquet in chunks of {chunk}")


@given(stream=streams(max_samples=30), chunk=st.integers(1, 7))
def test_transform_outputs_do_not_depend_on_chunks(stream, chunk, tiny_chunks):
    size, _ = tiny_chunks
    data, mask = stream["data"], stream["mask"]
    ref = expected(stream)
    with folder() as where:
        paths, masks = write_npy(where, stream, stream["cuts"])
        bn = bncli.BatchNormalization(dtype="float64", epsilon=0.01)
        bn.build(data.shape[1:])
        bn.moving_mean = ref.moving_mean
        bn.moving_variance = ref.moving_variance
        size[0] = chunk
        for training in (False, True):
            out = where / f"out{training}.npy"
            bncli.engines.local.transform_layer(
                bn,
                paths,
                out,
                bncli.engines.base.TransformOptions(
                    training=training,
                    batch_size=stream["batch_size"],
                    mask=masks if training else None,
                    workers=2,
                ),
            )
            if training:
                want = reference.training_outputs(
                    data, ref, mask, epsilon=0.01, batch_size=stream["batch_size"]
                )
            else:
                want = reference.inference(
                    data, ref.moving_mean, ref.moving_variance, epsilon=0.01
                )
            np.testing.assert_allclose(
                np.load(out), want, err_msg=str(training), **FAST
            )


# ---------------------------------------------------------------- workers


@given(stream=streams(), replicas=st.integers(1, 4), chunk=st.integers(1, 9))
def test_one_worker_equals_two(stream, replicas, chunk, tiny_chunks):
    size, _ = tiny_chunks
    size[0] = chunk  # many blocks, so that two workers share them
    ref = expected(stream, replicas=replicas)
    with folder() as where:
        paths, masks = write_npy(where, stream, stream["cuts"])
        one = fit(paths, stream, masks=masks, replicas=replicas, workers=1)
        two = fit(paths, stream, masks=masks, replicas=replicas, workers=2)
    assert_same_state(one, ref, "workers=1 vs the reference")
    assert_same_state(two, one, "workers=2 vs workers=1")


# ---------------------------------------------- engine == reference, any axis


SHAPES = [(4, 3), (3, 5), (2, 3, 2)]


@given(
    samples=st.integers(1, 25),
    sample_shape=st.sampled_from(SHAPES),
    axis_index=st.integers(0, 2),
    seed=st.integers(0, 2**32 - 1),
    batch_size=st.integers(1, 9),
    epochs=st.integers(1, 3),
    drop_remainder=st.booleans(),
    masked=st.booleans(),
    replicas=st.integers(1, 4),
    synchronized=st.booleans(),
    momentum=st.sampled_from([0.0, 0.3, 0.9, 0.99, 1.0]),
    chunk=st.integers(1, 12),
)
def test_engine_equals_reference(
    samples, sample_shape, axis_index, seed, batch_size, epochs, drop_remainder,
    masked, replicas, synchronized, momentum, chunk, tiny_chunks,
):  # fmt: skip
    size, _ = tiny_chunks
    size[0] = chunk
    shape = (samples, *sample_shape)
    axis = [1, -1, 2][axis_index] if len(shape) > 2 else -1
    rng = np.random.default_rng(seed)
    data = rng.normal(2.0, 3.0, shape)
    channel_axis = axis % len(shape)
    mask = None
    if masked:
        mask = rng.random(shape[:channel_axis] + shape[channel_axis + 1 :]) < 0.6
    drop_remainder = drop_remainder and samples >= batch_size
    options = {
        "batch_size": batch_size,
        "epochs": epochs,
        "drop_remainder": drop_remainder,
        "replicas": replicas,
    }
    ref = reference.fit(
        data, mask, axis=axis, momentum=momentum, synchronized=synchronized, **options
    )
    with folder() as where:
        np.save(where / "x.npy", data)
        masks = None
        if masked:
            np.save(where / "m.npy", mask)
            masks = [where / "m.npy"]
        bn = bncli.BatchNormalization(
            axis=axis, momentum=momentum, synchronized=synchronized, dtype="float64"
        )
        bn.fit([where / "x.npy"], mask=masks, **options)
    assert_same_state(bn, ref, f"axis {axis}")


# ----------------------------------------------------------- continued fits


@given(stream=streams(), dtype=st.sampled_from(["float64", "float16", "bfloat16"]))
def test_continued_fit_equals_one_fit(stream, dtype):
    """Two fits of one epoch each, through a saved state, equal one fit of two
    epochs: the state keeps the float64 accumulators, not only the variables
    in the policy's (here half-precision) dtype."""
    stream = {**stream, "epochs": 2}
    with folder() as where:
        paths, masks = write_npy(where, stream, stream["cuts"])
        whole = fit(paths, stream, masks=masks, dtype=dtype)

        once = {**stream, "epochs": 1}
        first = fit(paths, once, masks=masks, dtype=dtype)
        first.save(where / "state.h5")
        second = bncli.load(where / "state.h5")
        second.fit(
            paths,
            batch_size=stream["batch_size"],
            drop_remainder=stream["drop_remainder"],
            mask=masks,
        )
        # Two fit calls on the same layer object, without a save.
        again = fit(paths, once, masks=masks, dtype=dtype)
        again.fit(
            paths,
            batch_size=stream["batch_size"],
            drop_remainder=stream["drop_remainder"],
            mask=masks,
        )
    assert_same_state(second, whole, "save, load, fit")
    assert_same_state(again, whole, "fit, fit")
    assert second.moving_mean.dtype == whole.moving_mean.dtype
    np.testing.assert_array_equal(second.moving_mean, whole.moving_mean)
    np.testing.assert_array_equal(second.moving_variance, whole.moving_variance)
    assert second.epochs == whole.epochs == 2
    ref = expected(stream)
    assert_same_state(whole, ref, "one fit vs the reference")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cli_continued_fit_equals_one_fit(dtype, tmp_path, run_cli):
    rng = np.random.default_rng(5)
    data = rng.normal(3.0, 2.0, (45, 2, 3))
    np.save(tmp_path / "x.npy", data)
    options = ["--batch-size", "8", "--momentum", "0.9", "--dtype", dtype]
    assert run_cli("fit", "whole.h5", "x.npy", *options, "--epochs", "3").exit_code == 0
    assert run_cli("fit", "split.h5", "x.npy", *options, "--epochs", "2").exit_code == 0
    # The second fit takes its layer options from the state.
    assert run_cli("fit", "split.h5", "x.npy", "--batch-size", "8").exit_code == 0
    whole, split = bncli.load(tmp_path / "whole.h5"), bncli.load(tmp_path / "split.h5")
    assert_same_state(split, whole, "fit --epochs 2 then fit vs fit --epochs 3")
    ref = reference.fit(data, momentum=0.9, batch_size=8, epochs=3)
    assert_same_state(whole, ref, "fit --epochs 3 vs the reference")
    shown = [
        json.loads(run_cli("inspect", s, "--json").stdout)
        for s in ("whole.h5", "split.h5")
    ]
    assert shown[0]["variables"] == shown[1]["variables"]
    assert (
        shown[0]["progress"]
        == shown[1]["progress"]
        == {
            "batches_seen": 18,
            "samples_seen": 135,
            "epochs": 3,
        }
    )
