"""The Dask engine equals the local engine and the float64 reference loop.

One real cluster per module: a scheduler and two worker processes on
127.0.0.1. Inputs are cut into tasks of every shape (task boundaries inside
batches, batches larger than a task, batches across files and row groups);
the moving statistics, counters and outputs must equal the local engine's
(``FAST``) and the reference loop's (``PRECISE``). The planning and the
combination of task results are also checked in-process, without a cluster,
for arbitrary task boundaries.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bncli
from bncli.engines import dask_engine, dask_tasks, local
from bncli.engines.base import FitOptions, FitParams, TransformOptions
from bncli.engines.blocks import EpochFold, FitPlan
from bncli.errors import (
    DataError,
    StateFrozenError,
    StateMismatchError,
    UsageError,
)
from bncli.io.dataset import open_dataset
from tests import reference
from tests.conftest import FAST, PRECISE


def _dask_fit(
    layer, paths, *, scheduler=None, tasks=None, resume=False, checkpoint_every=None,
    **options,
):  # fmt: skip
    """The Dask engine's fit, with the fit options as keywords."""
    return dask_engine.fit_layer(
        layer, paths, FitOptions(**options), scheduler=scheduler, tasks=tasks,
        resume=resume, checkpoint_every=checkpoint_every,
    )  # fmt: skip


def _local_fit(layer, paths, **options):
    """The local engine's fit, with the fit options as keywords."""
    return local.fit_layer(layer, paths, FitOptions(**options))


def _dask_transform(
    layer, paths, output, *, scheduler=None, single_file=False, tasks=None, **options
):
    """The Dask engine's transform, with the transform options as keywords."""
    return dask_engine.transform_layer(
        layer, paths, output, TransformOptions(**options), scheduler=scheduler,
        single_file=single_file, tasks=tasks,
    )  # fmt: skip


def _local_transform(layer, paths, output, **options):
    """The local engine's transform, with the transform options as keywords."""
    return local.transform_layer(layer, paths, output, TransformOptions(**options))


pytestmark = pytest.mark.dask

N_A, N_B = 203, 97  # NPY files: 300 samples of shape (4, 3)
ROW_GROUPS = ([13, 50, 7], [1, 40], [29, 3, 3, 11, 60])  # 217 rows in 3 files
N_ROWS = 217


# ------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """Two NPY files (float64 and float32), a whole-stream mask and per-file masks."""
    folder = tmp_path_factory.mktemp("arrays")
    rng = np.random.default_rng(7)
    a = rng.normal(3.0, 2.0, (N_A, 4, 3))
    b = rng.normal(-1.0, 5.0, (N_B, 4, 3)).astype(np.float32)
    mask = rng.random((N_A + N_B, 4)) > 0.3
    mask[10:20] = False  # samples with no unmasked element
    paths = {"a": folder / "a.npy", "b": folder / "b.npy", "mask": folder / "mask.npy"}
    np.save(paths["a"], a)
    np.save(paths["b"], b)
    np.save(paths["mask"], mask)
    # Per-file masks for axis 1: the data's shape without axis 1.
    np.save(folder / "mask_a.npy", mask[:N_A, :3])
    np.save(folder / "mask_b.npy", mask[N_A:, :3])
    paths["masks"] = [folder / "mask_a.npy", folder / "mask_b.npy"]
    data = np.concatenate([a, b.astype(np.float64)])
    return {"paths": paths, "data": data, "mask": mask, "folder": folder}


def _table(rng: np.random.Generator, n: int, start: int) -> pa.Table:
    nulls = rng.random(n) < 0.1
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "x": pa.array(rng.normal(10.0, 3.0, n)),
            "name": pa.array([f"r{start + i}" for i in range(n)]),
            "y": pa.array(rng.normal(-2.0, 0.5, n).astype(np.float32), mask=nulls),
            "z": pa.array(rng.integers(0, 1000, n)),
            "keep": pa.array(rng.random(n) > 0.2),
        }
    )


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """Three Parquet files with uneven row groups, null cells and a mask column."""
    folder = tmp_path_factory.mktemp("tables")
    rng = np.random.default_rng(11)
    paths, parts = [], []
    start = 0
    for i, groups in enumerate(ROW_GROUPS):
        path = folder / f"part{i}.parquet"
        pieces = [_table(rng, n, start + sum(groups[:j])) for j, n in enumerate(groups)]
        with pq.ParquetWriter(path, pieces[0].schema) as writer:
            for piece in pieces:
                writer.write_table(piece)
        assert pq.ParquetFile(path).metadata.num_row_groups == len(groups)
        paths.append(path)
        parts.extend(pieces)
        start += sum(groups)
    whole = pa.concat_tables(parts)
    columns = ["x", "y", "z"]
    data = np.stack(
        [whole[c].fill_null(0).to_numpy().astype(np.float64) for c in columns], axis=1
    )
    cells = np.stack([whole[c].is_valid().to_numpy() for c in columns], axis=1)
    keep = whole["keep"].to_numpy(zero_copy_only=False)
    return {
        "paths": paths,
        "folder": folder,
        "table": whole,
        "data": data,
        "cells": cells,
        "keep": keep,
        "columns": columns,
    }


def _equal_states(ours, theirs, tolerance=FAST):
    np.testing.assert_allclose(ours.moving_mean64, theirs.moving_mean64, **tolerance)
    np.testing.assert_allclose(
        ours.moving_variance64, theirs.moving_variance64, **tolerance
    )
    assert (ours.channel_batches == theirs.channel_batches).all()
    assert (ours.batches_seen, ours.samples_seen, ours.epochs) == (
        theirs.batches_seen,
        theirs.samples_seen,
        theirs.epochs,
    )


def _against_reference(layer, data, keep, batch_size, options, synchronized):
    """``layer`` equals the plain per-batch loop over ``data`` with these options."""
    expected = reference.fit(
        data,
        keep,
        momentum=0.9,
        batch_size=batch_size,
        epochs=options.get("epochs", 1),
        drop_remainder=options.get("drop_remainder", False),
        replicas=options.get("replicas", 1),
        synchronized=synchronized,
    )
    np.testing.assert_allclose(layer.moving_mean64, expected.moving_mean, **PRECISE)
    np.testing.assert_allclose(
        layer.moving_variance64, expected.moving_variance, **PRECISE
    )
    assert (layer.channel_batches == expected.channel_batches).all()
    assert layer.batches_seen == expected.batches_seen


# ------------------------------------------------------------------------ fit

CASES = {
    "plain": {},
    "epochs": {"epochs": 3},
    "drop": {"drop_remainder": True, "epochs": 2},
    "replicas": {"replicas": 3},
    "synchronized": {"replicas": 3, "synchronized": True},
    "mask": {"mask": True, "replicas": 2},
}


def _fit_both(paths, scheduler, layer_options, tasks, **options):
    mine = bncli.BatchNormalization(momentum=0.9, **layer_options)
    theirs = bncli.BatchNormalization(momentum=0.9, **layer_options)
    summary = _dask_fit(mine, paths, scheduler=scheduler, tasks=tasks, **options)
    expected = _local_fit(theirs, paths, **options)
    assert (summary.batches, summary.samples, summary.epochs) == (
        expected.batches,
        expected.samples,
        expected.epochs,
    )
    _equal_states(mine, theirs)
    return mine


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch_size", [1, 7, 32, 120])
def test_fit_npy(scheduler, arrays, batch_size, case):
    """Two NPY files; 5 tasks of 60 samples, so batches of 120 span tasks."""
    options = dict(CASES[case])
    layer_options = {"synchronized": options.pop("synchronized", False)}
    paths = [arrays["paths"]["a"], arrays["paths"]["b"]]
    if options.pop("mask", False):
        options["mask"] = [arrays["paths"]["mask"]]
    mine = _fit_both(
        paths, scheduler, layer_options, 5, batch_size=batch_size, **options
    )
    mask = arrays["mask"] if "mask" in options else None
    _against_reference(
        mine, arrays["data"], mask, batch_size, options, layer_options["synchronized"]
    )


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("batch_size", [1, 7, 32, 100])
def test_fit_parquet(scheduler, tables, batch_size, case):
    """Three Parquet files with uneven row groups, null cells, a mask column."""
    options = dict(CASES[case])
    layer_options = {"synchronized": options.pop("synchronized", False)}
    keep = tables["cells"]
    if options.pop("mask", False):
        options["mask_column"] = "keep"
        keep = keep & tables["keep"][:, None]
    mine = _fit_both(
        tables["paths"],
        scheduler,
        layer_options,
        4,
        batch_size=batch_size,
        columns=tables["columns"],
        **options,
    )
    assert mine.features == tables["columns"]
    _against_reference(
        mine, tables["data"], keep, batch_size, options, layer_options["synchronized"]
    )


@pytest.mark.parametrize("tasks", [1, 2, 3, 8, 30, 300])
def test_fit_any_number_of_tasks(scheduler, arrays, tasks):
    """Per-file masks, unsynchronized replicas, axis 1, two epochs."""
    paths = [arrays["paths"]["a"], arrays["paths"]["b"]]
    _fit_both(
        paths,
        scheduler,
        {"axis": 1},
        tasks,
        batch_size=9,
        epochs=2,
        replicas=4,
        mask=arrays["paths"]["masks"],
    )


def test_fit_other_formats_and_a_continued_fit(scheduler, tables, tmp_path):
    """CSV (sizes counted by tasks, one per file) and Arrow IPC files."""
    csv_paths, arrow_paths = [], []
    offset = 0
    for i, groups in enumerate(ROW_GROUPS):
        part = tables["table"].slice(offset, sum(groups))
        offset += sum(groups)
        csv_paths.append(tmp_path / f"p{i}.csv")
        pacsv.write_csv(part, csv_paths[-1])
        arrow_paths.append(tmp_path / f"p{i}.arrow")
        with pa.ipc.new_file(arrow_paths[-1], part.schema) as writer:
            for batch in part.to_batches(max_chunksize=17):
                writer.write_batch(batch)
    for paths in (csv_paths, arrow_paths):
        mine = _fit_both(
            paths,
            scheduler,
            {},
            3,
            batch_size=10,
            exclude=["id", "keep"],
            mask_column="keep",
        )
        # A second fit goes on from the first, as with the local engine.
        theirs = copy.deepcopy(mine)
        _dask_fit(mine, paths, scheduler=scheduler, batch_size=6)
        _local_fit(theirs, paths, batch_size=6)
        _equal_states(mine, theirs)


@pytest.mark.parametrize("where", [0, 55, 160])
def test_fit_nan_is_the_local_engines_error(scheduler, tables, tmp_path, where):
    """The same DataError, naming file, column and row, wherever the NaN lies."""
    table = tables["table"]
    x = table["x"].to_numpy().copy()
    x[where] = np.nan
    table = table.set_column(1, "x", pa.array(x))
    paths = []
    for i, (lo, hi) in enumerate([(0, 70), (70, 111), (111, N_ROWS)]):
        paths.append(tmp_path / f"n{i}.parquet")
        pq.write_table(table.slice(lo, hi - lo), paths[-1], row_group_size=13)
    errors = []
    for fit in (
        lambda layer: _dask_fit(
            layer, paths, scheduler=scheduler, batch_size=32, tasks=7
        ),
        lambda layer: _local_fit(layer, paths, batch_size=32),
    ):
        with pytest.raises(DataError) as caught:
            fit(bncli.BatchNormalization())
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "column 'x'" in errors[0] and "NaN" in errors[0]
    # nan_policy="mask" skips it, as the local engine does.
    _fit_both(paths, scheduler, {}, 5, batch_size=32, nan_policy="mask")


def test_fit_refusals(scheduler, arrays, tables):
    paths = [arrays["paths"]["a"]]
    layer = bncli.BatchNormalization(trainable=False)
    with pytest.raises(StateFrozenError):
        _dask_fit(layer, paths, scheduler=scheduler)
    layer = bncli.BatchNormalization()
    _local_fit(layer, paths)
    with pytest.raises(StateMismatchError):
        _dask_fit(layer, tables["paths"], scheduler=scheduler)
    for options in ({"resume": True}, {"checkpoint_every": 3}):
        with pytest.raises(UsageError, match="engine local"):
            _dask_fit(layer, paths, scheduler=scheduler, **options)
    with pytest.raises(UsageError, match="stdin"):
        _dask_fit(layer, ["-"], scheduler=scheduler)
    with pytest.raises(DataError, match="empty input"):
        _dask_fit(
            layer, paths, scheduler=scheduler, batch_size=1000, drop_remainder=True
        )


# ------------------------------------------------- in-process, any boundaries


def _local_state(paths, **options):
    layer = bncli.BatchNormalization(momentum=0.8, **options.pop("layer", {}))
    _local_fit(layer, paths, **options)
    return layer


@given(
    cuts=st.lists(st.integers(1, N_A + N_B - 1), max_size=12),
    batch_size=st.sampled_from([1, 2, 5, 9, 64, 250]),
    replicas=st.sampled_from([1, 3]),
    masked=st.booleans(),
)
def test_task_results_combine_for_any_boundaries(
    arrays, cuts, batch_size, replicas, masked
):
    """Tasks cut anywhere, run in-process: their folds compose to the local fit."""
    paths = [arrays["paths"]["a"], arrays["paths"]["b"]]
    mask = [arrays["paths"]["mask"]] if masked else None
    expected = _local_state(paths, batch_size=batch_size, replicas=replicas, mask=mask)
    layer = bncli.BatchNormalization(momentum=0.8)
    dataset = open_dataset(paths, masks=mask)
    layer.build(dataset.sample_shape, dataset.features, dataset.kind)
    total = N_A + N_B
    edges = [0, *sorted(set(cuts)), total]
    ranges = list(itertools.pairwise(edges))
    files = dask_tasks.input_files(dataset, [N_A, N_B], mask)
    tasks = dask_tasks.make_tasks(ranges, files, dataset, rows=batch_size * 3)
    params = FitParams(batch_size, 0.8, replicas, False, 3)
    plan = FitPlan(params, total)
    epoch = EpochFold(plan)
    for task in tasks:
        epoch.add(dask_engine.fit_task(task, plan))
    fold, batches = epoch.finish()
    layer.apply_fold(fold, batches=batches, samples=total)
    np.testing.assert_allclose(layer.moving_mean64, expected.moving_mean64, **FAST)
    np.testing.assert_allclose(
        layer.moving_variance64, expected.moving_variance64, **FAST
    )
    assert (layer.channel_batches == expected.channel_batches).all()
    assert layer.batches_seen == expected.batches_seen


@given(
    total=st.integers(1, 10_000),
    tasks=st.integers(1, 50),
    step=st.integers(1, 300),
)
def test_plan_ranges_cover_the_stream_in_order(total, tasks, step):
    ranges = dask_tasks.plan_ranges(total, tasks, lambda p: p // step * step)
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(lo < hi for lo, hi in ranges)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(lo % step == 0 for lo, _ in ranges)
    assert len(ranges) <= tasks


def test_tasks_start_on_row_groups(tables):
    dataset = open_dataset(tables["paths"], columns=tables["columns"])
    files = dask_tasks.input_files(dataset, [sum(g) for g in ROW_GROUPS], None)
    snap = dask_tasks.snap_to_units(dataset, files)
    starts = {0}
    offset = 0
    for groups in ROW_GROUPS:
        for size in groups:
            starts.add(offset)
            offset += size
    for count in (2, 3, 4, 8, 50):
        ranges = dask_tasks.plan_ranges(offset, count, snap)
        assert {lo for lo, _ in ranges} <= starts


def test_reading_from_inside_a_row_group(tables):
    """Training-mode tasks start on batch boundaries, inside row groups."""
    dataset = open_dataset(tables["paths"], columns=tables["columns"])
    for start in (0, 20, 56, 64, 120, 216):
        data = np.concatenate([c.data for c in dataset.chunks(start, 8)])
        np.testing.assert_array_equal(data, tables["data"][start:])


# ------------------------------------------------------------------ transform


def _assert_tables_close(got: pa.Table, expected: pa.Table) -> None:
    """Same schema, rows, nulls and other columns; channels within ``FAST``."""
    assert got.schema.equals(expected.schema)
    assert got.num_rows == expected.num_rows
    for name in expected.column_names:
        ours, theirs = got[name].combine_chunks(), expected[name].combine_chunks()
        if pa.types.is_floating(theirs.type):
            assert ours.is_null().equals(theirs.is_null())
            np.testing.assert_allclose(
                ours.fill_null(0).to_numpy(), theirs.fill_null(0).to_numpy(), **FAST
            )
        else:
            assert ours.equals(theirs)


def _read_parts(folder):
    parts = sorted(folder.glob("part-*.parquet"))
    assert parts and parts[0].name == "part-00000.parquet"
    return pa.concat_tables(pq.read_table(p) for p in parts), len(parts)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"training": True, "batch_size": 7},
        {"training": True, "batch_size": 64, "replicas": 3, "mask_column": "keep"},
        {"output_dtype": "float16"},
    ],
)
def test_transform_parquet_parts_equal_the_local_file(
    scheduler, tables, tmp_path, options
):
    layer = bncli.BatchNormalization(momentum=0.5)
    _local_fit(layer, tables["paths"], columns=tables["columns"], batch_size=16)
    _local_transform(layer, tables["paths"], tmp_path / "local.parquet", **options)
    expected = pq.read_table(tmp_path / "local.parquet")
    summary = _dask_transform(
        layer,
        tables["paths"],
        tmp_path / "out.parquet",
        scheduler=scheduler,
        tasks=4,
        **options,
    )
    assert summary.samples == expected.num_rows
    got, num_parts = _read_parts(tmp_path / "out.parquet")
    assert num_parts > 1
    _assert_tables_close(got, expected)
    for name in tables["columns"]:  # null cells stay null
        assert got[name].is_null().equals(tables["table"][name].is_null())
    # --single-file joins the parts into one Parquet file.
    _dask_transform(
        layer,
        tables["paths"],
        tmp_path / "one.parquet",
        scheduler=scheduler,
        single_file=True,
        tasks=4,
        **options,
    )
    assert (tmp_path / "one.parquet").is_file()
    assert pq.read_table(tmp_path / "one.parquet").equals(got)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "local.parquet",
        "one.parquet",
        "out.parquet",
    ]


@pytest.mark.parametrize("suffix", [".npy", ".arrow", ".csv"])
def test_transform_other_formats_are_joined(
    scheduler, arrays, tables, tmp_path, suffix
):
    if suffix == ".npy":
        paths = [arrays["paths"]["a"], arrays["paths"]["b"]]
        options = {
            "training": True,
            "batch_size": 32,
            "mask": [arrays["paths"]["mask"]],
        }
    else:
        paths = tables["paths"]
        options = {"training": True, "batch_size": 10}
    layer = bncli.BatchNormalization()
    _local_fit(layer, paths, exclude=["id"] if suffix != ".npy" else None)
    _local_transform(layer, paths, tmp_path / f"local{suffix}", **options)
    _dask_transform(
        layer, paths, tmp_path / f"out{suffix}", scheduler=scheduler, tasks=5, **options
    )
    if suffix == ".npy":
        got, expected = (
            np.load(tmp_path / f"out{suffix}"),
            np.load(tmp_path / f"local{suffix}"),
        )
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, **FAST)
    elif suffix == ".arrow":
        _assert_tables_close(
            pa.ipc.open_file(tmp_path / f"out{suffix}").read_all(),
            pa.ipc.open_file(tmp_path / f"local{suffix}").read_all(),
        )
    else:
        assert (tmp_path / f"out{suffix}").read_text() == (
            tmp_path / f"local{suffix}"
        ).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"local{suffix}",
        f"out{suffix}",
    ]


def test_transform_errors_leave_nothing(scheduler, arrays, tmp_path):
    paths = [arrays["paths"]["a"], arrays["paths"]["b"]]
    layer = bncli.BatchNormalization()
    _local_fit(layer, paths)
    existing = tmp_path / "out.parquet"
    existing.write_text("keep me")
    with pytest.raises(UsageError, match="overwrite"):
        _dask_transform(layer, paths, existing, scheduler=scheduler)
    assert existing.read_text() == "keep me"
    # An array of sample shape (4, 3) can only be written as .npy.
    with pytest.raises(UsageError, match="npy"):
        _dask_transform(layer, paths, existing, scheduler=scheduler, overwrite=True)
    assert existing.read_text() == "keep me"
    # NaN in the data: the local engine's error, and nothing written.
    bad = np.load(arrays["paths"]["b"])
    bad[50, 2, 1] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    errors = []
    for transform, extra in (
        (_dask_transform, {"scheduler": scheduler, "tasks": 4}),
        (_local_transform, {}),
    ):
        with pytest.raises(DataError) as caught:
            transform(
                layer,
                [arrays["paths"]["a"], tmp_path / "bad.npy"],
                tmp_path / "y.npy",
                **extra,
            )
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and "row 50" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy", "out.parquet"]
    with pytest.raises(UsageError, match="stdout"):
        _dask_transform(layer, paths, "-", scheduler=scheduler)


def test_transform_output_folder_holding_an_input_is_refused(
    scheduler, tables, tmp_path
):
    layer = bncli.BatchNormalization()
    _local_fit(layer, tables["paths"], columns=tables["columns"])
    folder = tmp_path / "out.parquet"
    _dask_transform(layer, tables["paths"], folder, scheduler=scheduler)
    with pytest.raises(UsageError, match="holds the input"):
        _dask_transform(layer, [folder], folder, scheduler=scheduler, overwrite=True)
    assert _read_parts(folder)[0].num_rows == N_ROWS


# ------------------------------------------------------------------------ CLI


def test_cli_fit_and_transform_on_a_cluster(run_cli, scheduler, tables, tmp_path):
    inputs = [str(p) for p in tables["paths"]]
    common = [
        "--batch-size",
        "7",
        "--epochs",
        "2",
        "--exclude",
        "id,keep",
        "--momentum",
        "0.9",
    ]
    done = run_cli("fit", "local.h5", *inputs, *common, "--quiet")
    assert done.exit_code == 0, done.stderr
    done = run_cli(
        "fit",
        "dask.h5",
        *inputs,
        *common,
        "--engine",
        "dask",
        "--scheduler",
        scheduler,
        "--json",
    )
    assert done.exit_code == 0, done.stderr
    assert '"batches": 62' in done.stdout  # 31 batches of 7 samples, twice
    _equal_states(bncli.load(tmp_path / "dask.h5"), bncli.load(tmp_path / "local.h5"))
    done = run_cli(
        "transform", "dask.h5", *inputs, "-o", "out.parquet", "--engine", "dask",
        "--scheduler", scheduler, "--single-file", "--quiet",
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    assert pq.read_table(tmp_path / "out.parquet").num_rows == N_ROWS


def test_cli_local_cluster_of_workers(run_cli, arrays, tmp_path):
    """Without --scheduler, bncli starts (and stops) a local cluster.

    The process's environment is left as it was: the cluster's nannies set
    OMP_NUM_THREADS=1 and more in their parent's before they spawn workers.
    """
    a = str(arrays["paths"]["a"])
    before = dict(os.environ)
    done = run_cli("fit", "dask.h5", a, "--engine", "dask", "--workers", "2", "--quiet")
    assert done.exit_code == 0, done.stderr
    assert done.stderr == ""
    assert dict(os.environ) == before
    assert run_cli("fit", "local.h5", a, "--quiet").exit_code == 0
    _equal_states(bncli.load(tmp_path / "dask.h5"), bncli.load(tmp_path / "local.h5"))


def test_cli_refuses_checkpoints_and_resume(run_cli, scheduler, arrays):
    a = str(arrays["paths"]["a"])
    assert run_cli("fit", "s.h5", a, "--quiet").exit_code == 0
    for flags in (["--checkpoint-every", "2"], ["--resume"]):
        done = run_cli(
            "fit", "s.h5", a, "--engine", "dask", "--scheduler", scheduler, *flags
        )
        assert done.exit_code == 2, done.stderr
        assert done.stderr.startswith("error: --") and done.stderr.count("\n") == 1
        assert "--engine local" in done.stderr


def test_cli_without_dask_names_the_install_command(
    run_cli, arrays, monkeypatch, tmp_path
):
    monkeypatch.setitem(sys.modules, "distributed", None)
    a = str(arrays["paths"]["a"])
    for args in (["fit", "s.h5", a], ["transform", "s.h5", a, "-o", "y.npy"]):
        if args[0] == "transform":
            layer = bncli.BatchNormalization()
            layer.fit(a)
            layer.save(tmp_path / "s.h5")
        done = run_cli(*args, "--engine", "dask")
        assert done.exit_code == 2
        assert done.stderr == (
            "error: --engine dask needs Dask, which is not installed; install it "
            "with: pip install 'bncli[dask]'\n"
        )
    assert not (tmp_path / "y.npy").exists()


def test_cli_unreachable_scheduler(run_cli, arrays, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    done = run_cli(
        "fit", "s.h5", arrays["paths"]["a"], "--engine", "dask", "--scheduler", address
    )
    # Exit 1 "within seconds" (the connect timeout is 5 s).
    assert time.monotonic() - started < 30
    assert done.exit_code == 1
    assert done.stderr.startswith(
        f"error: cannot reach the Dask scheduler at {address}"
    )
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "s.h5").exists()


def test_cli_address_that_is_not_a_scheduler(run_cli, arrays):
    """A service that answers in another protocol (here HTTP) is named as such."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = server.accept()
                with connection:
                    connection.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n" * 64)

    threading.Thread(target=answer, daemon=True).start()
    try:
        address = f"tcp://127.0.0.1:{port}"
        done = run_cli(
            "fit",
            "s.h5",
            arrays["paths"]["a"],
            "--engine",
            "dask",
            "--scheduler",
            address,
        )
    finally:
        server.close()
    assert done.exit_code == 1
    assert done.stderr.startswith(
        f"error: cannot reach the Dask scheduler at {address}"
    )
    assert "not a Dask scheduler" in done.stderr and done.stderr.count("\n") == 1
    done = run_cli(
        "fit",
        "s.h5",
        arrays["paths"]["a"],
        "--engine",
        "dask",
        "--scheduler",
        "bad://x",
    )
    assert done.exit_code == 2 and "bad scheduler address" in done.stderr


def test_importing_bncli_imports_no_dask():
    code = (
        "import sys, bncli, bncli.cli.fit, bncli.cli.transform, bncli.engines.dask_engine\n"
        "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stderr


def test_environment_kept_undoes_what_the_block_changed(monkeypatch):
    from bncli.engines.dask_cluster import environment_kept

    monkeypatch.setenv("BNCLI_TEST_KEPT", "mine")
    monkeypatch.setenv("BNCLI_TEST_GONE", "here")
    monkeypatch.delenv("BNCLI_TEST_NEW", raising=False)
    before = dict(os.environ)
    with pytest.raises(RuntimeError), environment_kept():
        os.environ.update(BNCLI_TEST_KEPT="theirs", BNCLI_TEST_NEW="1")
        del os.environ["BNCLI_TEST_GONE"]
        raise RuntimeError("the block failed")
    assert dict(os.environ) == before


def test_a_local_cluster_leaves_pyarrow_its_threads(tmp_path):
    """pyarrow's pool is sized once, when first used, from OMP_NUM_THREADS.

    In a process of its own: a transform on a local cluster, whose parts
    are joined into one Parquet file in this process while the cluster is
    up; pyarrow's pool afterwards has the process's threads, not one.
    """
    data = tmp_path / "x.parquet"
    pq.write_table(pa.table({"a": np.arange(64.0), "b": np.ones(64)}), data)
    layer = bncli.BatchNormalization()
    layer.fit(data)
    layer.save(tmp_path / "s.h5")
    code = (
        "import atexit, os\n"
        "def report():\n"
        "    import pyarrow as pa\n"
        "    print(pa.cpu_count(), os.environ.get('OMP_NUM_THREADS'))\n"
        "atexit.register(report)\n"
        "from bncli.cli.main import main\n"
        "main(['transform', 's.h5', 'x.parquet', '-o', 'out.parquet', "
        "'--engine', 'dask', '--workers', '1', '--single-file', '--quiet'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 64
    alone = subprocess.run(
        [sys.executable, "-c", "import pyarrow as pa; print(pa.cpu_count())"],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )  # fmt: skip
    assert done.stdout.split() == [alone.stdout.strip(), "None"]
